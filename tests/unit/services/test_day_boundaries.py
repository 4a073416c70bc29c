"""Day boundaries (fake broker): a settlement waits for every input of its day.

Dividends settles day D only once each partition of the orders and wallet topics has
brought its DayClosed(D) marker and no input of D is parked; inputs of D + 1 that
overtake the markers wait (parked) until D is settled; an input of a day settled by
force counts in the next day and is counted as late.  Orders and wallet stamp their
inputs with their business day and close it on DayClosing.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.unit.services import test_orders, test_wallet
from tokenmall import contracts
from tokenmall.inputlog import scenario_from_inputs
from tokenmall.scenario import parse_scenario, simulate
from tokenmall.testing import (
    FakeBroker,
    MemoryPublisher,
    by_member,
    drain,
    member_registered,
    running,
)
from tokenmall_dividends.app import DividendsSettings, build_app

PARTITIONS = contracts.PARTITIONS
ORDERS, WALLET = contracts.ORDERS, contracts.WALLET_REQUESTS


def dividends_app(tmp_path: Path, **overrides: Any) -> tuple[FastAPI, MemoryPublisher]:
    settings = DividendsSettings(
        database_url=f"sqlite:///{tmp_path}/dividends.db", settle_wait_seconds=0.2, **overrides
    )
    publisher = MemoryPublisher()
    app = build_app(
        settings, broker_factory=lambda svc: FakeBroker(), publisher_factory=lambda svc: publisher
    )
    return app, publisher


def paid(order_id: str, member: str, amount: str, day: int | None) -> contracts.OrderPaid:
    return contracts.OrderPaid(order_id=order_id, member=member, amount=Decimal(amount), day=day)


def marker(topic: str, day: int, partition: int) -> contracts.DayClosed:
    return contracts.DayClosed(day=day, topic=topic, partition=partition, partitions=PARTITIONS)


async def close_topic(
    broker: FakeBroker, topic: str, day: int, skip: frozenset[int] = frozenset()
) -> None:
    for partition in range(PARTITIONS):
        if partition not in skip:
            await broker.deliver(topic, marker(topic, day, partition))


async def settled(client: httpx.AsyncClient, day: int, timeout: float = 10.0) -> dict[str, Any]:
    """The settlement of ``day`` once it happened (the closer settles in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/v1/settlements/{day}")
        if response.status_code == 200:
            return dict(response.json())
        assert response.status_code == 202, response.text
        assert time.monotonic() < deadline, f"day {day} still waits: {response.text}"
        await asyncio.sleep(0.02)


async def input_days(client: httpx.AsyncClient) -> dict[str, int]:
    log = (await client.get("/v1/inputs", params={"limit": 1000})).json()["items"]
    return {row["input_id"]: row["day"] for row in log}


def metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


async def equals_simulate_of_its_log(client: httpx.AsyncClient) -> None:
    log = (await client.get("/v1/inputs", params={"limit": 1000})).json()["items"]
    expected = simulate(parse_scenario(scenario_from_inputs(log))).document
    state = (await client.get("/v1/state")).json()
    members = by_member((await client.get("/v1/members", params={"limit": 1000})).json())
    assert state["day"] == expected["day"]
    assert state["equity"] == expected["equity"]
    keys = ("quota_remaining", "released", "spend")
    assert {m: {k: v[k] for k in keys} for m, v in members.items()} == {
        m: {k: v[k] for k in keys} for m, v in expected["members"].items()
    }


def test_an_order_in_flight_while_its_day_is_settled_counts_in_that_day(tmp_path: Path) -> None:
    async def go() -> None:
        app, publisher = dividends_app(tmp_path)
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            await broker.deliver(contracts.MEMBERS, member_registered("A", seq=1))
            await broker.deliver(contracts.MEMBERS, member_registered("B", "A", seq=2))
            await broker.deliver(ORDERS, paid("o1", "A", "3000", day=1))

            asked = await client.post("/v1/settlements/1")
            assert asked.status_code == 202, asked.text  # the markers are not in
            body = asked.json()
            assert body["status"] == "waiting"
            assert body["waiting_for"]["markers"] == {
                ORDERS: "no marker yet",
                WALLET: "no marker yet",
            }
            await drain(app)
            closing = [e for e in publisher.events(contracts.DIVIDENDS) if e.type == "DayClosing"]
            assert [e.day for e in closing] == [1]  # type: ignore[attr-defined]

            # orders closed day 1: B's next order (day 2) overtakes a marker, A's last
            # order of day 1 is still on its way on a partition not closed yet
            await broker.deliver(ORDERS, paid("o2", "B", "2000", day=2))
            await close_topic(broker, WALLET, 1)
            await close_topic(broker, ORDERS, 1, skip={3})
            await broker.deliver(ORDERS, paid("o3", "A", "1000", day=1))
            waiting = await client.get("/v1/settlements/1")
            assert waiting.status_code == 202
            assert waiting.json()["waiting_for"]["markers"] == {ORDERS: [3]}
            assert (await client.get("/v1/state")).json()["day"] == 1

            await broker.deliver(ORDERS, marker(ORDERS, 1, 3))
            report = await settled(client, 1)
            assert report["day"] == 1 and report["status"] == "completed"
            assert report["settled_at"].endswith(("Z", "+00:00"))  # a UTC time, zone given
            # o2 is woken right after the settlement's commit, which a GET may see first
            deadline = time.monotonic() + 10
            while "order:o2" not in (days := await input_days(client)):
                assert time.monotonic() < deadline, "o2 was not applied after the settlement"
                await asyncio.sleep(0.02)
            assert days["order:o1"] == days["order:o3"] == 1  # in flight: still day 1
            assert days["order:o2"] == 2  # applied right after day 1 settled
            assert (await client.get("/v1/parked")).json()["total"] == 0
            metrics = (await client.get("/metrics")).text
            assert metric(metrics, "tokenmall_early_inputs_total") == 1
            assert metric(metrics, "tokenmall_late_inputs_total") == 0
            assert metric(metrics, "tokenmall_settlement_wait_seconds_count") == 1
            assert metric(metrics, "tokenmall_settlement_waiting_seconds") == 0
            # the same settlement asked again: nothing changes
            again = await client.post("/v1/settlements/1")
            assert again.status_code == 200 and again.json()["already_settled"] is True
            assert broker.dead_letters == []
            await equals_simulate_of_its_log(client)

    asyncio.run(go())


@pytest.mark.parametrize("batched", [False, True])
def test_a_parked_input_of_the_day_is_applied_before_the_day_settles(
    tmp_path: Path, batched: bool
) -> None:
    async def go() -> None:
        app, _ = dividends_app(tmp_path)
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            await broker.deliver(contracts.MEMBERS, member_registered("A", seq=1))
            # C's order overtook C's registration: parked (a batch with it: whole)
            if batched:
                orders = [
                    contracts.PaidOrder(order_id=o, member=m, amount=Decimal("3000"))
                    for o, m in (("a1", "A"), ("o1", "C"))
                ]
                await broker.deliver(ORDERS, contracts.OrdersPaid(orders=orders, day=1))
            else:
                await broker.deliver(ORDERS, paid("o1", "C", "3000", day=1))
            assert (await client.post("/v1/settlements/1")).status_code == 202
            await close_topic(broker, ORDERS, 1)
            await close_topic(broker, WALLET, 1)
            await asyncio.sleep(0.3)  # the closer looked: it still waits for the parked order
            waiting = await client.get("/v1/settlements/1")
            assert waiting.status_code == 202
            waiting_for = waiting.json()["waiting_for"]
            assert (waiting_for["markers"], waiting_for["parked_inputs"]) == ({}, 1)
            key = contracts.ORDER_BATCHES_KEY if batched else "C"
            assert [(p["key"], p["waiting_for"]) for p in waiting_for["parked"]] == [
                (key, "member:C")
            ]

            await broker.deliver(contracts.MEMBERS, member_registered("C", "A", seq=2))
            await settled(client, 1)
            days = await input_days(client)
            assert days["order:o1"] == 1
            assert days.get("order:a1", 1) == 1 and ("order:a1" in days) == batched
            await equals_simulate_of_its_log(client)

    asyncio.run(go())


def test_a_marker_of_a_later_day_closes_the_earlier_ones_too(tmp_path: Path) -> None:
    async def go() -> None:
        app, _ = dividends_app(tmp_path)
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            assert (await client.post("/v1/settlements/1")).status_code == 202
            await close_topic(broker, WALLET, 1)
            await close_topic(broker, ORDERS, 1, skip={0})
            await broker.deliver(ORDERS, marker(ORDERS, 2, 0))  # day 1's was superseded
            await settled(client, 1)

    asyncio.run(go())


def test_a_forced_settlement_counts_a_late_input_in_the_next_day(tmp_path: Path) -> None:
    async def go() -> None:
        app, publisher = dividends_app(tmp_path)
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            await broker.deliver(contracts.MEMBERS, member_registered("A", seq=1))
            forced = await client.post("/v1/settlements/1", params={"force": "true"})
            assert forced.status_code == 200, forced.text
            assert forced.json()["already_settled"] is False
            await broker.deliver(ORDERS, paid("late", "A", "3000", day=1))
            assert (await input_days(client))["order:late"] == 2
            await drain(app)  # the relay publishes in the background: all of it now
            verdicts = [
                e
                for e in publisher.events(contracts.DIVIDENDS)
                if isinstance(e, contracts.InputApplied) and e.input_id == "order:late"
            ]
            assert [v.day for v in verdicts][-1:] == [2]  # the order learns the day it counts in
            metrics = (await client.get("/metrics")).text
            assert metric(metrics, "tokenmall_late_inputs_total") == 1
            # the markers that come afterwards change nothing
            await close_topic(broker, ORDERS, 1)
            assert (await client.get("/v1/state")).json()["day"] == 2
            assert broker.dead_letters == []

    asyncio.run(go())


def test_settling_a_day_not_started_is_refused_and_asks_nobody(tmp_path: Path) -> None:
    async def go() -> None:
        app, publisher = dividends_app(tmp_path)
        async with running(app) as client:
            refused = await client.post("/v1/settlements/2")
            assert refused.status_code == 409
            assert refused.json()["field"] == "day"
            assert (await client.get("/v1/settlements/2")).status_code == 404
            await drain(app)
            assert not [e for e in publisher.events() if e.type == "DayClosing"]

    asyncio.run(go())


def test_a_restarted_dividends_goes_on_with_a_requested_settlement(tmp_path: Path) -> None:
    async def go() -> None:
        app, _ = dividends_app(tmp_path)
        async with running(app) as client:
            assert (await client.post("/v1/settlements/1")).status_code == 202
            await close_topic(app.state.svc.broker, ORDERS, 1)
        app, _ = dividends_app(tmp_path)  # the same database: the closing was recorded
        async with running(app) as client:
            assert (await client.get("/v1/settlements/1")).status_code == 202
            await close_topic(app.state.svc.broker, WALLET, 1)
            await settled(client, 1)

    asyncio.run(go())


def day_closings(publisher: MemoryPublisher) -> list[int]:
    return [
        e.day  # type: ignore[attr-defined]
        for e in publisher.events(contracts.DIVIDENDS)
        if e.type == "DayClosing"
    ]


def test_a_lost_day_closing_is_asked_again_until_the_markers_come(tmp_path: Path) -> None:
    """A DayClosing the producers never acted on (lost, dead-lettered by a producer of an
    older version, consumed before a restart) is emitted again while markers are
    missing — periodically, and at once when the caller repeats the POST."""

    async def go() -> None:
        app, publisher = dividends_app(tmp_path, day_reask_seconds=0.3)
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            assert (await client.post("/v1/settlements/1")).status_code == 202
            deadline = time.monotonic() + 10
            while len(day_closings(publisher)) < 3:  # the first, then asked again
                assert time.monotonic() < deadline, day_closings(publisher)
                await asyncio.sleep(0.05)
            assert set(day_closings(publisher)) == {1}
            await close_topic(broker, ORDERS, 1)
            asked = len(day_closings(publisher))
            await asyncio.sleep(1.1)  # past the POST's minimum interval
            assert (await client.post("/v1/settlements/1")).status_code == 202
            await drain(app)
            assert len(day_closings(publisher)) > asked  # the repeated POST asked at once
            await close_topic(broker, WALLET, 1)
            await settled(client, 1)
            await drain(app)
            asked = len(day_closings(publisher))
            await asyncio.sleep(0.8)
            await drain(app)
            assert len(day_closings(publisher)) == asked  # settled: nobody is asked again

    asyncio.run(go())


def test_a_never_applicable_input_holds_up_its_own_day_only(tmp_path: Path) -> None:
    """An order of day 1 whose member never registers: day 1 waits for it (and names
    it) until forced; day 2 then settles without it.  When it does apply, some day
    later, it counts as late in the engine's current day."""

    async def go() -> None:
        app, _ = dividends_app(tmp_path)
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            await broker.deliver(contracts.MEMBERS, member_registered("A", seq=1))
            await broker.deliver(ORDERS, paid("ghost-order", "ghost", "500", day=1))
            for day in (1, 2):
                await close_topic(broker, ORDERS, day)
                await close_topic(broker, WALLET, day)
                if day == 1:
                    waiting = await client.post("/v1/settlements/1")
                    assert waiting.status_code == 202
                    [parked] = waiting.json()["waiting_for"]["parked"]
                    assert parked["waiting_for"] == "member:ghost"
                    forced = await client.post("/v1/settlements/1", params={"force": "true"})
                    assert forced.status_code == 200
                    assert forced.json()["already_settled"] is False  # this call settled it
                else:
                    await broker.deliver(ORDERS, paid("o2", "A", "700", day=2))
                    answer = await client.post("/v1/settlements/2")
                    assert answer.status_code in (200, 202), answer.text
                    await settled(client, 2)  # without waiting for the day-1 order
            await broker.deliver(contracts.MEMBERS, member_registered("ghost", "A", seq=2))
            assert (await input_days(client))["order:ghost-order"] == 3
            metrics = (await client.get("/metrics")).text
            assert metric(metrics, "tokenmall_late_inputs_total") == 1
            await equals_simulate_of_its_log(client)

    asyncio.run(go())


def test_an_input_arriving_as_its_day_opens_does_not_pass_the_one_parked_before_it(
    tmp_path: Path,
) -> None:
    """Two day-2 orders of one member (one key): the first is parked while day 1 is
    unsettled; day 1 settles just after the second tried the key's parked events and
    before it is applied.  The second must still come after the first."""

    async def go() -> None:
        app, _ = dividends_app(tmp_path)
        async with running(app) as client:
            svc = app.state.svc
            closer = svc.state["closer"]
            broker: FakeBroker = svc.broker
            await broker.deliver(contracts.MEMBERS, member_registered("A", seq=1))
            # requested; no marker comes, so only the forced settlement below settles it
            assert (await client.post("/v1/settlements/1")).status_code == 202
            await broker.deliver(ORDERS, paid("o1", "A", "300", day=2))  # early: parked
            assert (await client.get("/v1/parked")).json()["total"] == 1

            original = svc.unpark
            opened = asyncio.Event()
            settling: list[asyncio.Task[bool]] = []

            async def unpark(dependencies: set[str], groups: Any = None) -> None:
                if dependencies == {"day:2"}:
                    await opened.wait()  # the closer's own wake-up comes late
                await original(dependencies, groups)
                if groups is not None and not settling:
                    # the second order tried the key's parked ones (still day 1): now
                    # day 1 settles, before the second order is applied
                    settling.append(asyncio.create_task(closer.settle_if_ready(force=True)))
                    while (await client.get("/v1/state")).json()["day"] != 2:
                        await asyncio.sleep(0.01)

            svc.unpark = unpark
            await broker.deliver(ORDERS, paid("o2", "A", "200", day=2))
            opened.set()
            assert await settling[0] is True
            log = (await client.get("/v1/inputs", params={"limit": 100})).json()["items"]
            orders = [row["input_id"] for row in log if row["input_id"].startswith("order:")]
            assert orders == ["order:o1", "order:o2"]
            assert (await client.get("/v1/parked")).json()["total"] == 0

    asyncio.run(go())


# ------------------------------------------------------------------ the producers


def test_orders_stamps_its_day_and_closes_it_with_a_marker_on_every_partition(
    tmp_path: Path,
) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        broker: FakeBroker = app.state.svc.broker
        for order_id in ("o1", "o2"):
            assert (await test_orders.create(client, order_id=order_id)).status_code == 201
        await test_orders.pay(app, client, "o1")
        await broker.deliver(contracts.DIVIDENDS, contracts.DayClosing(day=1))
        await test_orders.pay(app, client, "o2")
        assert (await client.post("/v1/orders/o1/refund")).status_code == 200

        events = await test_orders.published(app)
        kinds = [(e.type, getattr(e, "day", None)) for e in events]
        markers = [e for e in events if isinstance(e, contracts.DayClosed)]
        assert kinds[0] == ("OrderPaid", 1)
        assert kinds[1 : 1 + PARTITIONS] == [("DayClosed", 1)] * PARTITIONS
        assert kinds[1 + PARTITIONS :] == [("OrderPaid", 2), ("OrderRefunded", 2)]
        assert [m.partition for m in markers] == list(range(PARTITIONS))
        assert {(m.topic, m.partitions) for m in markers} == {(ORDERS, PARTITIONS)}
        # each marker on its own partition, the inputs by their key
        sent = app.state.svc.relay.publisher.messages
        assert [m.partition for m in sent if b"DayClosed" in m.value] == list(range(PARTITIONS))
        assert all(m.partition is None for m in sent if b"DayClosed" not in m.value)
        assert (await client.get("/v1/orders/o2")).json()["day"] == 2
        # a settled day later than the orders' own (a service that joined late) moves it on
        await broker.deliver(
            contracts.DIVIDENDS,
            contracts.DaySettled(day=4, released={}, members_released=0, batches=0),
        )
        assert (await test_orders.create(client, order_id="o3")).status_code == 201
        assert (await client.post("/v1/orders/o3/pay")).json()["day"] == 5

    test_orders.run(tmp_path, scenario)


def test_the_verdict_of_a_late_order_moves_it_to_the_day_it_counts_in(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        assert (await test_orders.create(client, order_id="o1")).status_code == 201
        assert (await client.post("/v1/orders/o1/pay")).json()["day"] == 1
        await app.state.svc.broker.deliver(
            contracts.DIVIDENDS,
            contracts.InputApplied(input_id="order:o1", member="A", accepted=True, day=2),
        )
        order = (await client.get("/v1/orders/o1")).json()
        assert (order["status"], order["day"]) == ("paid", 2)

    test_orders.run(tmp_path, scenario)


def test_the_wallet_stamps_its_requests_and_closes_its_day(tmp_path: Path) -> None:
    async def body(app: FastAPI, client: httpx.AsyncClient, publisher: MemoryPublisher) -> None:
        await test_wallet.register(app, "A")
        await test_wallet.fund(app, "A", "equity", "100")
        sell = {"request_id": "s1", "kind": "sell", "points": "10"}
        assert (await client.post("/v1/members/A/requests", json=sell)).is_success
        await test_wallet.deliver(app, contracts.DayClosing(day=1))
        sell = {"request_id": "s2", "kind": "sell", "points": "10"}
        assert (await client.post("/v1/members/A/requests", json=sell)).is_success
        await drain(app)
        events = publisher.events(WALLET)
        assert [(e.type, getattr(e, "day", None)) for e in events] == (
            [("WalletRequest", 1)] + [("DayClosed", 1)] * PARTITIONS + [("WalletRequest", 2)]
        )

    test_wallet.run(tmp_path, body)


def test_every_input_parked_on_the_next_day_goes_right_after_the_settlement(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """More groups wait for day 2 than one page of the unparking pass holds: all go at
    once after day 1 settled, not a page now and the rest at the next retry."""
    from tokenmall import servicekit

    monkeypatch.setattr(servicekit, "GROUPS_PER_PAGE", 2)

    async def go() -> None:
        app, _ = dividends_app(tmp_path, parked_sweep_seconds=3600)
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            members = [f"M{i}" for i in range(5)]
            for seq, name in enumerate(members, start=1):
                await broker.deliver(contracts.MEMBERS, member_registered(name, seq=seq))
            assert (await client.post("/v1/settlements/1")).status_code == 202
            for name in members:  # day 2 opened at orders: these overtake its markers
                await broker.deliver(ORDERS, paid(f"o-{name}", name, "100", day=2))
            assert (await client.get("/v1/parked")).json()["total"] == 5
            await close_topic(broker, ORDERS, 1)
            await close_topic(broker, WALLET, 1)
            await settled(client, 1)
            deadline = time.monotonic() + 3  # far below the sweep's hour
            while (await client.get("/v1/parked")).json()["total"]:
                assert time.monotonic() < deadline, (await client.get("/v1/parked")).json()
                await asyncio.sleep(0.02)
            days = await input_days(client)
            assert {days[f"order:o-{name}"] for name in members} == {2}

    asyncio.run(go())


def test_an_input_is_not_held_up_by_a_parked_one_of_its_key_that_cannot_go(
    tmp_path: Path,
) -> None:
    """A's refund of an order that never arrives is parked; A's next order of day 2 is
    parked behind the day.  Once day 1 is settled (by force: the refund holds it up),
    that order goes — the stuck refund does not hold it — and day 2 settles without
    waiting for it; A's later order comes after it."""

    async def go() -> None:
        app, _ = dividends_app(tmp_path)
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            await broker.deliver(contracts.MEMBERS, member_registered("A", seq=1))
            refund = contracts.OrderRefunded(
                order_id="lost", member="A", amount=Decimal("10"), day=1
            )
            await broker.deliver(ORDERS, refund)
            assert (await client.post("/v1/settlements/1")).status_code == 202
            await broker.deliver(ORDERS, paid("o3", "A", "300", day=2))
            parked = (await client.get("/v1/parked")).json()["items"]
            assert [p["waiting_for"] for p in parked] == ["order:lost", "day:2"]
            forced = await client.post("/v1/settlements/1", params={"force": "true"})
            assert forced.status_code == 200
            deadline = time.monotonic() + 3
            while "order:o3" not in await input_days(client):
                assert time.monotonic() < deadline, (await client.get("/v1/parked")).json()
                await asyncio.sleep(0.02)
            await broker.deliver(ORDERS, paid("o4", "A", "200", day=2))
            log = (await client.get("/v1/inputs", params={"limit": 100})).json()["items"]
            orders = [row["input_id"] for row in log if row["input_id"].startswith("order:")]
            assert orders == ["order:o3", "order:o4"]
            await close_topic(broker, ORDERS, 2)
            await close_topic(broker, WALLET, 2)
            answer = await client.post("/v1/settlements/2")
            assert answer.status_code in (200, 202), answer.text
            await settled(client, 2)  # the day-1 refund is day 1's: day 2 does not wait
            [still] = (await client.get("/v1/parked")).json()["items"]
            assert still["waiting_for"] == "order:lost" and still["day"] == 1

    asyncio.run(go())
