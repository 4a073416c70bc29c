"""Batched consumers (fake broker, referrals' order consumer): what one poll returns is
applied in one transaction — inbox rows in one statement, one commit — with per-key
order kept, duplicates inside and across batches applied once, and a message that
fails (poison, a parked key, a failing handler) isolated: the messages before it
commit, it goes the one-by-one way (retries, parking, dead letter), the rest go on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import event as sa_event

from tokenmall import contracts
from tokenmall.servicekit import ServiceSettings
from tokenmall.testing import FakeBroker, MemoryPublisher, by_member, running
from tokenmall_referrals.app import build_app

Scenario = Callable[[FastAPI, httpx.AsyncClient], Awaitable[None]]
CONSUMER = "referrals-orders"


def run(tmp_path: Path, scenario: Scenario, **settings: Any) -> None:
    async def main() -> None:
        app = build_app(
            ServiceSettings(database_url=f"sqlite:///{tmp_path}/r.db", **settings),
            broker_factory=lambda svc: FakeBroker(),
            publisher_factory=lambda svc: MemoryPublisher(),
        )
        async with running(app) as client:
            await scenario(app, client)

    asyncio.run(main())


def paid(order_id: str, member: str, amount: str) -> contracts.OrderPaid:
    return contracts.OrderPaid(order_id=order_id, member=member, amount=Decimal(amount))


def refunded(order_id: str, member: str, amount: str) -> contracts.OrderRefunded:
    return contracts.OrderRefunded(order_id=order_id, member=member, amount=Decimal(amount))


async def batch(app: FastAPI, *events: contracts.Event | bytes) -> None:
    broker: FakeBroker = app.state.svc.broker
    await broker.deliver_batch(contracts.ORDERS, list(events))


async def spend(client: httpx.AsyncClient, member: str) -> str:
    response = await client.get(f"/v1/members/{member}")
    assert response.status_code == 200, response.text
    return str(response.json()["spend"])


async def register(client: httpx.AsyncClient, *members: str) -> None:
    for member in members:
        created = await client.post("/v1/members", json={"member": member})
        assert created.status_code == 201, created.text


def metric(text: str, name: str, consumer: str = CONSUMER) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'consumer="{consumer}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def inbox_statements(app: FastAPI) -> list[str]:
    """The statements on the inbox from now on (an executemany is one)."""
    seen: list[str] = []

    @sa_event.listens_for(app.state.svc.engine.sync_engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "inbox" in statement:
            seen.append(statement.split()[0].upper())

    return seen


def test_a_poll_is_applied_in_one_transaction_and_duplicates_across_polls_once(
    tmp_path: Path,
) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        await register(client, "a", "b")
        statements = inbox_statements(app)
        orders = [paid(f"o{i}", "a" if i % 2 else "b", "1.25") for i in range(200)]
        await batch(app, *orders)
        assert statements == ["SELECT", "INSERT"]  # 200 messages: one look, one write
        assert (await spend(client, "a"), await spend(client, "b")) == ("125.00", "125.00")
        # redelivered after a crash before the offsets were committed, with new ones,
        # and one message twice inside the same poll
        again = [*orders[150:], paid("new", "a", "10"), paid("new", "a", "10")]
        again[-1] = again[-2]
        await batch(app, *again)
        assert await spend(client, "a") == "135.00"
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "tokenmall_consumer_batch_size_count") == 2
        assert metric(metrics, "tokenmall_consumer_batch_size_sum") == 200 + 52
        assert metric(metrics, "tokenmall_events_duplicate_total") == 51
        assert metric(metrics, "tokenmall_consumer_batch_seconds_count") == 2

    run(tmp_path, scenario)


def test_a_poison_message_inside_a_poll_goes_alone_to_the_dead_letter_topic(
    tmp_path: Path,
) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        await register(client, "a", "b")
        await batch(
            app,
            paid("o1", "a", "10"),
            b"{not an event",
            paid("o2", "a", "20"),
            refunded("o1", "b", "10"),  # o1 is a's: rejected by the rules
            paid("o3", "a", "30"),
        )
        assert await spend(client, "a") == "60.00"
        broker: FakeBroker = app.state.svc.broker
        reasons = [headers["reason"] for _, _, headers in broker.dead_letters]
        assert len(reasons) == 2
        assert reasons[0].startswith("unparseable")
        assert "belongs to 'a', not to 'b'" in reasons[1]

    run(tmp_path, scenario)


def test_a_failing_handler_mid_poll_rolls_back_only_its_own_effect(tmp_path: Path) -> None:
    """The handler of 'boom' writes, then raises: the transaction of the poll is rolled
    back, the messages before it are applied again (once), 'boom' goes alone — retried,
    then dead-lettered, its writes gone — and the messages after it are applied."""

    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        await register(client, "a")
        sub = app.state.svc.subscriptions[CONSUMER]
        original = sub.handler
        sub.bulk = None  # the handler below, on every message

        async def explodes_after_writing(event: contracts.Event, uow: Any) -> None:
            await original(event, uow)
            if isinstance(event, contracts.OrderPaid) and event.order_id == "boom":
                raise RuntimeError("the handler failed after writing")

        sub.handler = explodes_after_writing
        await batch(
            app,
            paid("o1", "a", "1"),
            paid("o2", "a", "2"),
            paid("boom", "a", "100"),
            paid("o3", "a", "4"),
        )
        assert await spend(client, "a") == "7.00"
        broker: FakeBroker = app.state.svc.broker
        [(_, body, headers)] = broker.dead_letters
        assert contracts.decode(body).order_id == "boom"  # type: ignore[attr-defined]
        assert "the handler failed after writing" in headers["reason"]

    run(tmp_path, scenario, handler_attempts=2, handler_backoff_seconds=0)


def test_per_key_order_holds_inside_a_poll_with_a_parked_event(tmp_path: Path) -> None:
    """a's refund arrives before its order (parked); in the same poll come the order and
    a later order of a: the order provides the refund, which goes before the later one."""

    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        await register(client, "a", "b")
        await batch(app, refunded("o1", "a", "10"), paid("b1", "b", "3"))
        assert (await client.get("/v1/parked")).json()["total"] == 1
        await batch(app, paid("b2", "b", "4"), paid("o1", "a", "10"), paid("o2", "a", "5"))
        assert (await spend(client, "a"), await spend(client, "b")) == ("5.00", "7.00")
        assert (await client.get("/v1/parked")).json()["total"] == 0

    run(tmp_path, scenario)


def test_a_handler_that_commits_by_itself_is_refused_in_a_poll(tmp_path: Path) -> None:
    """Its commit would carry the effects of the poll without their inbox rows: the poll's
    transaction refuses it, and the message goes the one-by-one way (applied once)."""

    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        await register(client, "a")
        sub = app.state.svc.subscriptions[CONSUMER]
        original = sub.handler
        sub.bulk = None  # the handler below, on every message

        async def commits(event: contracts.Event, uow: Any) -> None:
            await original(event, uow)
            await uow.commit()

        sub.handler = commits
        await batch(app, paid("o1", "a", "1"), paid("o2", "a", "2"))
        await batch(app, paid("o1", "a", "1"), paid("o2", "a", "2"))
        assert await spend(client, "a") == "3.00"
        assert app.state.svc.broker.dead_letters == []

    run(tmp_path, scenario)


def test_a_refund_before_its_order_in_one_poll_is_applied_in_that_poll(tmp_path: Path) -> None:
    """The refund misses its order: parked inside the poll's transaction; the order comes
    later in the poll, provides it, and the refund goes right after it — one transaction,
    nothing left parked."""

    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        await register(client, "a", "b")
        statements = inbox_statements(app)
        await batch(
            app,
            refunded("o1", "a", "10"),
            paid("b1", "b", "3"),
            paid("o1", "a", "10"),
            paid("o2", "a", "5"),
        )
        assert statements == ["SELECT", "INSERT"]
        assert (await spend(client, "a"), await spend(client, "b")) == ("5.00", "3.00")
        assert (await client.get("/v1/parked")).json()["total"] == 0
        metrics = (await client.get("/metrics")).text
        assert metric(metrics, "tokenmall_events_parked_total") == 1  # it did wait
        assert metric(metrics, "tokenmall_events_unparked_total") == 1
        # a refund whose order never comes stays parked, in the table, from the poll
        await batch(app, refunded("lost", "b", "1"), paid("b2", "b", "4"))
        [parked] = (await client.get("/v1/parked")).json()["items"]
        assert parked["waiting_for"] == "order:lost"
        assert await spend(client, "b") == "7.00"  # not held up by it

    run(tmp_path, scenario)


def test_dividends_applies_a_poll_of_referrals_before_their_sponsors_in_one_run(
    tmp_path: Path,
) -> None:
    """The engine's consumers are batched too: referrals that came before their sponsors
    (other partitions, one poll) join as soon as the sponsor has, in the same run, and
    an order before its member's registration follows it; equal to simulate."""
    from tests.unit.services.test_day_boundaries import dividends_app, equals_simulate_of_its_log
    from tokenmall.testing import member_registered

    async def go() -> None:
        app, _ = dividends_app(tmp_path, day_watermarks=[])
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            await broker.deliver_batch(
                contracts.MEMBERS,
                [
                    member_registered("C", "B", seq=3),
                    member_registered("B", "A", seq=2),
                    member_registered("D", "C", seq=4),
                    member_registered("A", seq=1),
                ],
            )
            await broker.deliver_batch(
                contracts.ORDERS,
                [paid("o1", "E", "3000"), paid("o2", "A", "1000")],
            )
            assert (await client.get("/v1/parked")).json()["total"] == 1  # E's order
            await broker.deliver_batch(contracts.MEMBERS, [member_registered("E", "D", seq=5)])
            assert (await client.get("/v1/parked")).json()["total"] == 0
            members = by_member((await client.get("/v1/members")).json())
            assert sorted(members) == ["A", "B", "C", "D", "E"]
            assert (await client.post("/v1/settlements/1")).status_code == 200
            await equals_simulate_of_its_log(client)
            assert broker.dead_letters == []

    asyncio.run(go())


def test_dividends_starts_a_run_over_when_a_failure_rebuilt_its_engine(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """'boom' fails after the engine applied it (its log row cannot be written — in the
    bulk insert of the run's orders, then alone): the engine is rebuilt from the
    database, which lacks the run's first orders too — so the run starts over on the
    rebuilt engine, those orders apply once, 'boom' goes alone (dead-lettered after its
    tries), and the engine still equals simulate of its log."""
    from tests.unit.services.test_day_boundaries import dividends_app, equals_simulate_of_its_log
    from tokenmall.testing import member_registered

    async def go() -> None:
        app, _ = dividends_app(
            tmp_path, day_watermarks=[], handler_attempts=2, handler_backoff_seconds=0
        )
        async with running(app) as client:
            svc = app.state.svc
            broker: FakeBroker = svc.broker

            def fail_boom_log_row(
                conn: Any, cursor: Any, statement: str, params: Any, *_: Any
            ) -> None:
                rows = params if isinstance(params, list) else [params]
                if statement.startswith("INSERT INTO inputs") and any(
                    "order:boom" in map(str, row) for row in rows
                ):
                    raise RuntimeError("the log row could not be written")

            sa_event.listen(svc.engine.sync_engine, "before_cursor_execute", fail_boom_log_row)
            await broker.deliver_batch(
                contracts.MEMBERS,
                [member_registered("A", seq=1), member_registered("B", "A", seq=2)],
            )
            epoch = svc.memory_epoch
            await broker.deliver_batch(
                contracts.ORDERS,
                [
                    paid("o1", "A", "1000"),
                    paid("o2", "B", "2000"),
                    paid("boom", "A", "50"),
                    paid("o3", "B", "300"),
                ],
            )
            assert svc.memory_epoch > epoch  # rebuilt
            log = (await client.get("/v1/inputs", params={"limit": 100})).json()["items"]
            orders = [row["input_id"] for row in log if row["input_id"].startswith("order:")]
            assert orders == ["order:o1", "order:o2", "order:o3"]
            [(_, _, headers)] = broker.dead_letters
            assert "could not be written" in headers["reason"]
            assert (await client.post("/v1/settlements/1")).status_code == 200
            await equals_simulate_of_its_log(client)

    asyncio.run(go())


def test_events_parked_by_earlier_polls_go_inside_the_poll_that_provides_them(
    tmp_path: Path,
) -> None:
    """C waits for B (parked by the first poll), B for A (the second); the poll with A
    applies B and then C inside its own transaction, not one transaction each after."""
    from tests.unit.services.test_day_boundaries import dividends_app, equals_simulate_of_its_log
    from tokenmall.testing import member_registered

    async def go() -> None:
        app, _ = dividends_app(tmp_path, day_watermarks=[], parked_sweep_seconds=3600)
        async with running(app) as client:
            svc = app.state.svc
            broker: FakeBroker = svc.broker
            await broker.deliver_batch(contracts.MEMBERS, [member_registered("C", "B", seq=3)])
            await broker.deliver_batch(contracts.MEMBERS, [member_registered("B", "A", seq=2)])
            parked = (await client.get("/v1/parked")).json()["items"]
            assert [p["waiting_for"] for p in parked] == ["member:B", "member:A"]
            one_by_one: list[int] = []
            original = svc._apply_parked

            async def counted(sub: Any, parked: Any) -> Any:
                one_by_one.append(parked.id)
                return await original(sub, parked)

            svc._apply_parked = counted
            await broker.deliver_batch(contracts.MEMBERS, [member_registered("A", seq=1)])
            assert one_by_one == []
            assert (await client.get("/v1/parked")).json()["total"] == 0
            log = (await client.get("/v1/inputs", params={"limit": 10})).json()["items"]
            joins = [row["input_id"] for row in log if row["input_id"].startswith("join:")]
            assert joins == ["join:A", "join:B", "join:C"]
            assert (await client.post("/v1/settlements/1")).status_code == 200
            await equals_simulate_of_its_log(client)

    asyncio.run(go())
