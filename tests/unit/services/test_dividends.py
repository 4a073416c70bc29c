"""The dividends service at unit level: events in (fake broker), engine state and
contract events out, durability across restarts (snapshot + input log)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from tokenmall import contracts
from tokenmall.scenario import load_scenario, simulate
from tokenmall.testing import (
    FakeBroker,
    MemoryPublisher,
    by_member,
    drain,
    member_registered,
    running,
)
from tokenmall_dividends.app import DividendsSettings, build_app

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def make_app(tmp_path: Path, publisher: MemoryPublisher | None = None) -> Any:
    settings = DividendsSettings(
        database_url=f"sqlite:///{tmp_path}/dividends.db", day_watermarks=[]
    )
    pub = publisher or MemoryPublisher()
    return build_app(
        settings, broker_factory=lambda svc: FakeBroker(), publisher_factory=lambda svc: pub
    )


async def feed(app: Any, client: Any, scenario_path: Path) -> None:
    """Drive a scenario into dividends the way the other services would."""
    scenario = load_scenario(scenario_path)
    broker: FakeBroker = app.state.svc.broker
    resp = await client.post(
        "/v1/plan", json={"plan": contracts.plain(scenario.plan.raw), "activate_now": True}
    )
    assert resp.status_code == 202, resp.text
    orders = 0
    for step in scenario.steps:
        f = step.fields
        if step.kind == "join":
            await broker.deliver(
                contracts.MEMBERS,
                member_registered(
                    member=str(f["member"]),
                    sponsor=f.get("sponsor"),
                    merchant=bool(f.get("merchant")),
                ),
            )
        elif step.kind == "order":
            oid = str(f.get("id") or f"order-{orders + 1}")
            await broker.deliver(
                contracts.ORDERS,
                contracts.OrderPaid(
                    order_id=oid,
                    member=str(f["member"]),
                    amount=f["amount"],
                    stable=f.get("stable", 0),
                ),
            )
            status = (await client.get(f"/v1/inputs/order:{oid}")).json()
            orders += bool(status.get("accepted"))
        elif step.kind == "settle":
            day = (await client.get("/v1/state")).json()["day"]
            assert (await client.post(f"/v1/settlements/{day}")).status_code == 200
        elif step.kind == "plan":
            plan = {"plan": contracts.plain(f)}
            assert (await client.post("/v1/plan", json=plan)).status_code == 202
        elif step.kind == "sell":
            points = "all" if f.get("all") or f.get("points") == "all" else str(f["points"])
            await broker.deliver(
                contracts.WALLET_REQUESTS,
                contracts.WalletRequest(
                    request_id=f"r{step.number}",
                    member=str(f["member"]),
                    kind="sell",
                    points=None if points == "all" else points,
                ),
            )
        else:  # the engine-level equality of other steps is covered by replay tests
            raise AssertionError(f"feed() does not drive {step.kind}")


def owned_fields(doc: dict[str, Any]) -> dict[str, Any]:
    keys = ("quota_remaining", "shares", "contribution", "released", "equity", "spend")
    return {name: {k: m[k] for k in keys} for name, m in doc["members"].items()}


def test_dividends_state_equals_simulate(tmp_path: Path) -> None:
    for name in ("seed-points-release.yaml", "seed-equity-wine-sell.yaml", "seed-cycle-pools.yaml"):
        path = SCENARIOS / name
        expected = simulate(load_scenario(path)).document

        async def run(path: Path = path) -> dict[str, Any]:
            app = make_app(tmp_path / path.stem)
            async with running(app) as client:
                await feed(app, client, path)
                state = (await client.get("/v1/state")).json()
                members = by_member((await client.get("/v1/members")).json())
                return {"day": state["day"], "equity": state["equity"], "members": members}

        got = asyncio.run(run())
        assert got["day"] == expected["day"]
        assert got["equity"] == expected["equity"]
        assert owned_fields(got) == owned_fields(expected)


def test_a_members_grants_page_and_an_input_asked_for_by_the_clients_id(tmp_path: Path) -> None:
    """Grants as decimal strings, a page at a time; an order asked for by its own id at
    /v1/inputs gets a 404 that names the input id and where the verdict is."""
    path = SCENARIOS / "seed-points-release.yaml"
    scenario = load_scenario(path)

    async def go() -> None:
        app = make_app(tmp_path)
        async with running(app) as client:
            await feed(app, client, path)
            state = (await client.get("/v1/state")).json()
            assert state["member_count"] == len(by_member((await client.get("/v1/members")).json()))
            buyer = next(s.fields["member"] for s in scenario.steps if s.kind == "order")
            member = (await client.get(f"/v1/members/{buyer}")).json()
            count = member["grant_count"]
            assert count >= 1
            pages = [
                (await client.get(f"/v1/members/{buyer}/grants?offset={i}&limit=1")).json()
                for i in range(count + 1)
            ]
            assert [p["total"] for p in pages] == [count] * (count + 1)
            assert [len(p["items"]) for p in pages] == [1] * count + [0]
            grants = [p["items"][0] for p in pages[:count]]
            assert [g["seq"] for g in grants] == sorted(g["seq"] for g in grants)
            for grant in grants:
                assert "." in grant["quota"] and "." in grant["remaining"]
                assert Decimal(grant["remaining"]) <= Decimal(grant["quota"])
            remaining = sum(Decimal(g["remaining"]) for g in grants)
            assert remaining == Decimal(member["quota_remaining"])
            nobody = await client.get("/v1/members/nobody/grants")
            assert (nobody.status_code, nobody.json()["field"]) == (404, "member")

            oid = next(
                str(s.fields.get("id") or "order-1") for s in scenario.steps if s.kind == "order"
            )
            applied = await client.get(f"/v1/inputs/order:{oid}")
            assert (applied.status_code, applied.json()["kind"]) == (200, "order")
            bare = await client.get(f"/v1/inputs/{oid}")
            assert bare.status_code == 404
            assert f"'order:{oid}'" in bare.json()["message"]
            assert f"GET /v1/orders/{oid}" in bare.json()["message"]

    asyncio.run(go())


def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = SCENARIOS / "seed-points-release.yaml"

    async def first() -> Any:
        app = make_app(tmp_path)
        async with running(app) as client:
            await feed(app, client, path)
            return (await client.get("/v1/members")).json()

    async def second() -> Any:
        app = make_app(tmp_path)  # same database: snapshot + input log
        async with running(app) as client:
            return (await client.get("/v1/members")).json()

    before = asyncio.run(first())
    assert asyncio.run(second()) == before


def test_events_out_duplicates_and_dead_letters(tmp_path: Path) -> None:
    publisher = MemoryPublisher()

    async def run() -> FakeBroker:
        app = make_app(tmp_path, publisher)
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            await client.post("/v1/plan", json={"plan": {"preset": "equity"}, "activate_now": True})
            await broker.deliver(contracts.MEMBERS, member_registered(member="A"))
            paid = contracts.OrderPaid(order_id="o1", member="A", amount="100")
            await broker.deliver(contracts.ORDERS, paid)
            await broker.deliver(contracts.ORDERS, paid)  # delivered twice: applied once
            await broker.deliver(contracts.ORDERS, b"{not json")
            await broker.deliver(
                contracts.WALLET_REQUESTS,
                contracts.WalletRequest(request_id="s1", member="A", kind="sell", points="1000"),
            )  # more than held
            response = await client.post("/v1/settlements/5")
            assert response.status_code == 409 and "has not started" in response.json()["message"]
            assert (await client.post("/v1/settlements/1")).status_code == 200
            again = await client.post("/v1/settlements/1")
            assert again.json()["already_settled"] is True
            await drain(app)
            return broker

    broker = asyncio.run(run())
    events = publisher.events(contracts.DIVIDENDS)
    applied = [e for e in events if isinstance(e, contracts.InputApplied)]
    assert [e.input_id for e in applied] == ["order:o1", "request:s1"]
    order = applied[0]
    assert (
        order.accepted and order.producer == "dividends" and order.causation_id == paid_id(events)
    )
    assert {(p.asset, p.debit, p.credit, str(p.amount)) for p in order.postings} >= {
        ("cny", "external", "sales", "100.00"),
        ("cny", "sales", "pool", "30.00"),
        ("equity", "issuance", "m:A", "21.00000000"),
    }
    assert not applied[1].accepted and "fewer than" in (applied[1].reason or "")
    assert [type(e).__name__ for e in events].count("DaySettled") == 1
    assert len(broker.dead_letters) == 1
    topic, _, headers = broker.dead_letters[0]
    assert topic == contracts.dead_letter_topic(contracts.ORDERS)
    assert headers["reason"].startswith("unparseable")


def paid_id(events: list[contracts.Event]) -> str | None:
    applied = next(e for e in events if isinstance(e, contracts.InputApplied))
    return applied.causation_id


def test_the_fault_point_setting_is_checked_when_the_service_is_built() -> None:
    import pytest

    from tokenmall.servicekit import parse_fault

    assert parse_fault("") is None
    assert parse_fault("wallet-dividends:3") == ("wallet-dividends", 3)
    for bad in ("wallet", "wallet:", ":3", "wallet:0", "wallet:x"):
        with pytest.raises(ValueError, match="consumer"):
            parse_fault(bad)
    with pytest.raises(ValueError):
        build_app(DividendsSettings(fault_exit_after_commit="nonsense"))


async def one_paid_order(
    app: Any, client: Any, preset: str, order_id: str, amount: str
) -> FakeBroker:
    """A fresh dividends on ``preset`` with member A and one paid order of A."""
    broker: FakeBroker = app.state.svc.broker
    await client.post("/v1/plan", json={"plan": {"preset": preset}, "activate_now": True})
    await broker.deliver(contracts.MEMBERS, member_registered(member="A"))
    await broker.deliver(
        contracts.ORDERS, contracts.OrderPaid(order_id=order_id, member="A", amount=amount)
    )
    return broker


def test_input_ids_of_different_kinds_never_collide_and_a_reused_id_is_dead_lettered(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        app = make_app(tmp_path)
        async with running(app) as client:
            broker = await one_paid_order(app, client, "equity", "x1", "100")
            # a client names its sell request like the order: a different input
            sell = contracts.WalletRequest(request_id="x1", member="A", kind="sell", points="5")
            await broker.deliver(contracts.WALLET_REQUESTS, sell)
            state = (await client.get("/v1/state")).json()
            assert state["equity"]["circulating"] == "16.00000000"
            assert (await client.get("/v1/inputs/order:x1")).json()["accepted"] is True
            assert (await client.get("/v1/inputs/request:x1")).json()["accepted"] is True
            # a new event (new event id) for an order already applied: dead-lettered once
            await broker.deliver(
                contracts.ORDERS, contracts.OrderPaid(order_id="x1", member="A", amount="100")
            )
            assert (await client.get("/v1/state")).json() == state
            [(_, _, headers)] = broker.dead_letters
            assert "already applied" in headers["reason"]

    asyncio.run(run())


def test_a_settlement_while_a_consumer_is_busy_neither_deadlocks_nor_loses_the_day(
    tmp_path: Path,
) -> None:
    publisher = MemoryPublisher()

    async def run() -> None:
        app = make_app(tmp_path, publisher)
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            await client.post("/v1/plan", json={"plan": {"preset": "points"}, "activate_now": True})
            for i in range(20):
                await broker.deliver(contracts.MEMBERS, member_registered(member=f"M{i}"))
                order = contracts.OrderPaid(order_id=f"o{i}", member=f"M{i}", amount="3000")
                await broker.deliver(contracts.ORDERS, order)

            async def settle() -> int:
                await asyncio.sleep(0)  # the consumer starts its transaction first
                return (await client.post("/v1/settlements/1")).status_code

            late = contracts.OrderPaid(order_id="late", member="M1", amount="3000")
            started = time.monotonic()
            _, status = await asyncio.wait_for(
                asyncio.gather(broker.deliver(contracts.ORDERS, late), settle()), timeout=10
            )
            assert status == 200 and time.monotonic() - started < 5
            assert (await client.get("/v1/settlements/1")).status_code == 200
            assert (await client.get("/v1/inputs/order:late")).json()["accepted"] is True
            await drain(app)
        assert [type(e).__name__ for e in publisher.events()].count("DaySettled") == 1

    asyncio.run(run())


def test_a_failed_write_after_the_engine_moved_rebuilds_the_engine(tmp_path: Path) -> None:
    from sqlalchemy import insert

    from tokenmall_dividends.adapters.tables import settlements

    async def run() -> None:
        app = make_app(tmp_path)
        async with running(app) as client:
            await one_paid_order(app, client, "points", "o1", "3000")
            before = (await client.get("/v1/state")).json()
            svc = app.state.svc
            async with svc.sessions() as session, session.begin():  # day 1's row, planted
                await session.execute(
                    insert(settlements).values(
                        day=1,
                        members_released=0,
                        released="{}",
                        seconds=0.0,
                        created_at=datetime.now(UTC),
                    )
                )
            from tokenmall_dividends.service_layer import handlers

            with pytest.raises(IntegrityError):  # the engine settled, its commit failed
                await handlers.settle(svc, 1)
            assert (await client.get("/v1/state")).json() == before  # still day 1, unsettled

    asyncio.run(run())


def test_the_plan_document_has_one_form_per_field_whatever_was_posted(tmp_path: Path) -> None:
    """Amounts, rates and multiples are decimal strings, counts integers (API style),
    whether the plan said ``3`` or ``"2.5"``; the document posted back is the same plan."""

    def numbers(value: Any, key: str = "") -> list[tuple[str, Any]]:
        if isinstance(value, dict):
            return [n for k, v in value.items() for n in numbers(v, k)]
        if isinstance(value, list):
            return [n for v in value for n in numbers(v, key)]
        return (
            [(key, value)]
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else []
        )

    async def run() -> None:
        app = make_app(tmp_path)
        async with running(app) as client:
            plan = {
                "preset": "cycle",
                "grants": {
                    "tiers": [
                        {"threshold": 0, "multiple": 3},
                        {"threshold": "9000", "multiple": "2.5"},
                    ]
                },
                "team": {
                    "levels": [{"threshold": 50000, "rate": "0.10"}],
                    "peer_rate": 0,
                    "max_depth": 3,
                },
            }
            answer = await client.post("/v1/plan", json={"plan": plan, "activate_now": True})
            assert answer.status_code == 202, answer.text
            current = (await client.get("/v1/plan")).json()["current"]
            assert {key for key, _ in numbers(current)} == {"min", "max", "max_depth"}
            tiers = current["grants"]["tiers"]
            assert tiers == [
                {"threshold": "0", "multiple": "3"},
                {"threshold": "9000", "multiple": "2.5"},
            ]
            assert current["team"]["max_depth"] == 3 and current["team"]["peer_rate"] == "0"
            assert current["pools"][1]["tiers"][0] | {"rate": None} == {
                "name": "V1",
                "min": 50,
                "max": 100,
                "rate": None,
            }
            again = await client.post("/v1/plan", json={"plan": current})
            assert again.status_code == 202, again.text
            pending = (await client.get("/v1/plan")).json()["pending"]
            assert pending == current

    asyncio.run(run())
