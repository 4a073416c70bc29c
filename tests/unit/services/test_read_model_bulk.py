"""The read models of orders and wallet take a poll in bulk — registrations by one
multi-row insert, the rules' verdicts on orders by one update per business day — with
the effects the handler gives one message at a time (a refused one still goes alone)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import event as sa_event
from sqlalchemy import func, select

from tests.unit.services import test_orders, test_wallet
from tokenmall import contracts
from tokenmall.contracts import InputApplied
from tokenmall.testing import member_registered, running
from tokenmall_orders.adapters import tables as order_tables
from tokenmall_wallet.adapters import tables as wallet_tables


def statements_of(app: FastAPI) -> tuple[list[str], Callable[[], None]]:
    seen: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        seen.append(statement.split("(")[0].strip().split(" SET")[0])

    engine = app.state.svc.engine.sync_engine
    sa_event.listen(engine, "before_cursor_execute", record)
    return seen, lambda: sa_event.remove(engine, "before_cursor_execute", record)


async def count(app: FastAPI, table: Any) -> int:
    async with app.state.svc.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(table))).scalar_one())


def registrations() -> list[Any]:
    polls: list[Any] = [member_registered(f"m{i}", seq=i + 1) for i in range(400)]
    polls.insert(100, polls[5])  # delivered twice inside the poll
    polls.insert(200, member_registered("m7", seq=8))  # the same member, another event
    return polls


def test_orders_learns_a_poll_of_members_in_one_insert_and_refuses_a_bad_one(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        app = test_orders.make_app(tmp_path)
        async with running(app):
            polls = registrations()
            polls.insert(300, member_registered("x" * 201, seq=999))  # too long: refused
            seen, stop = statements_of(app)
            await app.state.svc.broker.deliver_batch(contracts.MEMBERS, polls)
            stop()
            assert await count(app, order_tables.members) == 400
            # one insert per stretch: before the redelivered one, up to the refused one,
            # after it
            assert seen.count("INSERT INTO members") == 3
            [(_, _, headers)] = app.state.svc.broker.dead_letters
            assert "1–200 characters" in headers["reason"]

    asyncio.run(go())


def test_the_wallet_learns_a_poll_of_members_in_bulk(tmp_path: Path) -> None:
    async def go() -> None:
        app, _ = test_wallet.make_app(tmp_path)
        async with running(app) as client:
            seen, stop = statements_of(app)
            await app.state.svc.broker.deliver_batch(contracts.MEMBERS, registrations())
            stop()
            assert await count(app, wallet_tables.members) == 400
            # before the redelivered one (100 rows), after it (301 rows: SQLite takes 333
            # rows of three columns per statement)
            assert seen.count("INSERT INTO members") == 2
            listing = (await client.get("/v1/balances", params={"limit": 1000})).json()
            assert listing["total"] == 400

    asyncio.run(go())


def test_a_poll_of_verdicts_is_one_update_per_day_and_each_refusal_its_own(
    tmp_path: Path,
) -> None:
    async def scenario(app: FastAPI, client: test_orders.Client) -> None:
        items = [{"order_id": f"o{i}", "member": "A", "amount": f"{i + 1}"} for i in range(50)]
        r = await client.post("/v1/orders:batch", json={"orders": items})
        assert r.json()["accepted"] == 50
        verdicts = [
            InputApplied(
                input_id=f"order:o{i}",
                member="A",
                accepted=i % 10 != 3,
                reason=None if i % 10 != 3 else f"refused {i}",
                day=1 if i < 40 else 2,
            )
            for i in range(50)
        ]
        verdicts.insert(10, verdicts[0])  # redelivered
        verdicts.insert(
            20, InputApplied(input_id="order:o5", member="A", accepted=False, reason="late")
        )  # a second verdict on an order: the first decides
        verdicts.insert(30, InputApplied(input_id="request:r1", member="A", accepted=True))
        seen, stop = statements_of(app)
        await app.state.svc.broker.deliver_batch(contracts.DIVIDENDS, verdicts)
        stop()
        # the redelivered one splits the poll in two stretches: before it, day 1's accepted
        # and o3's refusal; after it, days 1 and 2 accepted, four refusals and the late
        # second verdict on o5 (which changes nothing: o5 is decided)
        assert seen.count("UPDATE orders") == 2 + 7
        views = [(await client.get(f"/v1/orders/o{i}")).json() for i in range(50)]
        assert [v["status"] for v in views] == [
            "refused" if i % 10 == 3 else "paid" for i in range(50)
        ]
        assert views[13]["reason"] == "refused 13" and views[5]["reason"] is None
        assert {v["day"] for v in views[40:]} == {2}
        paid = sum(Decimal(i + 1) for i in range(50) if i % 10 != 3)
        assert Decimal((await client.get("/v1/sales")).json()["paid"]) == paid

    test_orders.run(tmp_path, scenario)


def test_the_wallet_books_a_poll_of_order_verdicts_like_one_by_one(tmp_path: Path) -> None:
    """Postings of many orders' verdicts in one journal insert and summed deltas, their
    stable holds captured or released — the same books as one message at a time."""

    def verdicts() -> list[Any]:
        out: list[Any] = []
        for i in range(60):
            accepted = i % 7 != 0
            postings = (
                [test_wallet.line("stable", "m:A", "sales", "1.00", "order_stable")]
                if accepted
                else []
            )
            out.append(
                InputApplied(
                    input_id=f"order:h{i}", member="A", accepted=accepted, postings=postings
                )
            )
        out.insert(20, out[3])  # redelivered: booked once
        return out

    async def books(bulk: bool) -> tuple[Any, ...]:
        app, _ = test_wallet.make_app(tmp_path / ("bulk" if bulk else "alone"))
        async with running(app) as client:
            if not bulk:
                app.state.svc.subscriptions["wallet-dividends"].bulk = None
            await test_wallet.register(app, "A")
            await test_wallet.fund(app, "A", "stable", "100")
            for i in range(60):
                hold = {"hold_id": f"h{i}", "member": "A", "asset": "stable", "amount": "1"}
                assert (await client.post("/v1/holds", json=hold)).status_code == 201
            await app.state.svc.broker.deliver_batch(contracts.DIVIDENDS, verdicts())
            balances = await test_wallet.member(client, "A")
            async with app.state.svc.sessions() as session:
                holds = sorted(
                    (
                        await session.execute(
                            select(wallet_tables.holds.c.hold_id, wallet_tables.holds.c.status)
                        )
                    ).all()
                )
            journal = await count(app, wallet_tables.journal)
            return balances, holds, journal, await test_wallet.sums_by_asset(app)

    async def go() -> None:
        alone, bulk = await books(False), await books(True)
        assert bulk == alone
        balances, holds, journal, sums = bulk
        accepted = sum(1 for i in range(60) if i % 7 != 0)
        assert journal == 1 + accepted  # the funding, then one posting per accepted order
        assert balances["stable"] == f"{100 - accepted}.00"
        assert dict(holds)["h0"] == "released" and dict(holds)["h1"] == "captured"
        assert all(v == 0 for v in sums.values())

    asyncio.run(go())
