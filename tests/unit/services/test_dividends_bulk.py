"""Dividends' bulk consumers: a poll of registrations or paid orders is applied by one
bulk call (one input-log lookup, one insert) with exactly the effects of the handler
applied one message at a time — same input log, same engine, same dead letters —
whatever the arrival order, duplicates and parking."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event as sa_event

from tests.unit.services.test_day_boundaries import (
    dividends_app,
    equals_simulate_of_its_log,
    settled,
)
from tokenmall import contracts
from tokenmall.messaging import parking
from tokenmall.testing import FakeBroker, drain, member_registered, running


def schedule(seed: int) -> list[tuple[str, list[contracts.Event]]]:
    """Polls of a random population: registrations shuffled (referrals before their
    sponsors), orders before their members' registrations, one poll redelivered, one
    order id reused by a new event."""
    rng = random.Random(seed)
    members = [
        member_registered(f"m{i}", f"m{rng.randrange(i)}" if i else None, seq=i + 1)
        for i in range(40)
    ]
    rng.shuffle(members)
    orders: list[contracts.Event] = [
        contracts.OrderPaid(
            order_id=f"o{j}",
            member=f"m{rng.randrange(40)}",
            amount=Decimal(rng.choice(["100", "999.99", "3000", "50000"])),
        )
        for j in range(60)
    ]
    orders.append(contracts.OrderPaid(order_id="o3", member="m0", amount=Decimal("10")))
    rng.shuffle(orders)
    orders = batched(rng, orders)
    polls: list[tuple[str, list[contracts.Event]]] = []
    while members or orders:
        for topic, queue in ((contracts.MEMBERS, members), (contracts.ORDERS, orders)):
            size = rng.randint(1, 25)
            if queue:
                polls.append((topic, queue[:size]))
                del queue[:size]
    polls.insert(rng.randrange(len(polls)), polls[rng.randrange(len(polls))])  # again
    return polls


def batched(rng: random.Random, orders: list[contracts.Event]) -> list[contracts.Event]:
    """Some runs of consecutive orders as one OrdersPaid (an orders:batch): it waits for
    its members together.  o3 stays single (its second event is refused by the handler,
    whichever comes first)."""
    out: list[contracts.Event] = []
    i = 0
    while i < len(orders):
        window = orders[i : i + rng.randint(2, 6)]
        run = [o for o in window if isinstance(o, contracts.OrderPaid) and o.order_id != "o3"]
        if rng.random() < 0.4 and len(run) > 1 and len({o.order_id for o in run}) == len(run):
            out.append(
                contracts.OrdersPaid(
                    orders=[
                        contracts.PaidOrder(
                            order_id=o.order_id, member=o.member, amount=o.amount, stable=o.stable
                        )
                        for o in run
                    ]
                )
            )
            out.extend(o for o in window if o not in run)
            i += len(window)
        else:
            out.append(orders[i])
            i += 1
    return out


async def outcome(tmp_path: Path, polls: Any, bulk: bool) -> dict[str, Any]:
    # no sweeper, no retry coming due: parked events are woken only by what they wait for
    # (else by the clock, at moments of its own)
    app, publisher = dividends_app(tmp_path, day_watermarks=[], parked_sweep_seconds=3600)
    async with running(app) as client:
        svc = app.state.svc
        if not bulk:
            for sub in svc.subscriptions.values():
                sub.bulk = None
        broker: FakeBroker = svc.broker
        for topic, events in polls:
            await broker.deliver_batch(topic, list(events))
        requested = await client.post("/v1/settlements/1")
        assert requested.status_code in (200, 202), requested.text
        await settled(client, 1)  # the closer may take longer than the request waits
        if bulk:
            await equals_simulate_of_its_log(client)
        log = (await client.get("/v1/inputs", params={"limit": 1000})).json()["items"]
        result = {
            "log": [(row["input_id"], row["accepted"]) for row in log],
            "members": (await client.get("/v1/members", params={"limit": 1000})).json(),
            "state": (await client.get("/v1/state")).json(),
            "parked": (await client.get("/v1/parked")).json()["total"],
            "dead": sorted(headers["reason"] for _, _, headers in broker.dead_letters),
        }
        await drain(app)
        result["events"] = [
            e.model_dump(mode="json", exclude={"event_id", "occurred_at", "producer"})
            for e in publisher.events()
        ]
        return result


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10**6))
def test_bulk_equals_one_by_one_whatever_the_arrival_order(tmp_path: Path, seed: int) -> None:
    polls = schedule(seed)

    async def go() -> None:
        tag = random.random()
        with_bulk = await outcome(tmp_path / f"bulk-{seed}-{tag}", polls, bulk=True)
        alone = await outcome(tmp_path / f"alone-{seed}-{tag}", polls, bulk=False)
        assert with_bulk["log"] == alone["log"]
        assert with_bulk == alone
        assert with_bulk["parked"] == 0
        # o3 twice (a new event, an old order id): refused by the handler (once, or twice
        # when the redelivered poll holds it: a dead letter is not remembered, so that it
        # can be replayed)
        assert with_bulk["dead"]
        assert all("'order:o3' was already applied" in reason for reason in with_bulk["dead"])

    with mock.patch.object(parking, "RETRY_FIRST_SECONDS", 3600):
        asyncio.run(go())


def test_a_poll_of_registrations_is_one_lookup_and_one_insert(tmp_path: Path) -> None:
    async def go() -> None:
        app, _ = dividends_app(tmp_path, day_watermarks=[])
        async with running(app) as client:
            svc = app.state.svc
            statements: list[str] = []

            def record(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
                statements.append(statement.split("(")[0].strip())

            sa_event.listen(svc.engine.sync_engine, "before_cursor_execute", record)
            polls = [member_registered(f"n{i}", f"n{i - 1}" if i else None) for i in range(300)]
            await svc.broker.deliver_batch(contracts.MEMBERS, polls)
            sa_event.remove(svc.engine.sync_engine, "before_cursor_execute", record)
            # SQLite: multi-row inserts of 999 parameters (seven columns: 142 rows each)
            assert statements.count("INSERT INTO inputs") == 3
            assert sum(s.startswith("SELECT inputs.input_id") for s in statements) == 1
            state = (await client.get("/v1/state")).json()
            assert state["member_count"] == 300

    asyncio.run(go())


def test_orders_of_another_day_and_malformed_ones_go_through_the_handler(
    tmp_path: Path,
) -> None:
    """The bulk call leaves to the handler what needs its care: an order of a later day
    waits for that day (parked), a malformed amount is dead-lettered; the orders around
    them are applied."""

    async def go() -> None:
        app, _ = dividends_app(tmp_path, day_watermarks=[])
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            await broker.deliver_batch(contracts.MEMBERS, [member_registered("A", seq=1)])
            good = contracts.OrderPaid(order_id="g1", member="A", amount=Decimal("100"), day=1)
            later = contracts.OrderPaid(order_id="l1", member="A", amount=Decimal("5"), day=2)
            bad = contracts.OrderPaid(order_id="b1", member="A", amount=Decimal("1.001"))
            after = contracts.OrderPaid(order_id="g2", member="A", amount=Decimal("7"))
            await broker.deliver_batch(contracts.ORDERS, [good, later, bad, after])
            log = (await client.get("/v1/inputs", params={"limit": 100})).json()["items"]
            assert [row["input_id"] for row in log if row["kind"] == "order"] == [
                "order:g1",
                "order:g2",
            ]
            [parked] = (await client.get("/v1/parked")).json()["items"]
            assert parked["waiting_for"] == "day:2"
            [(_, _, headers)] = broker.dead_letters
            assert "1.001" in headers["reason"] or "cent" in headers["reason"]
            await equals_simulate_of_its_log(client)

    asyncio.run(go())


def test_an_orders_batch_waits_whole_and_a_malformed_one_is_refused_whole(
    tmp_path: Path,
) -> None:
    """An OrdersPaid naming a member who has not joined is parked whole (none of its
    orders applied) and applied when the member joins; an order of it logged already is
    skipped; one malformed amount dead-letters the batch with nothing applied."""

    def batch(*orders: tuple[str, str, str]) -> contracts.OrdersPaid:
        return contracts.OrdersPaid(
            orders=[
                contracts.PaidOrder(order_id=o, member=m, amount=Decimal(a)) for o, m, a in orders
            ],
            day=1,
        )

    async def go() -> None:
        app, _ = dividends_app(tmp_path, day_watermarks=[])
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker

            async def orders_logged() -> list[str]:
                log = (await client.get("/v1/inputs", params={"limit": 100})).json()["items"]
                return [row["input_id"] for row in log if row["kind"] == "order"]

            await broker.deliver_batch(contracts.MEMBERS, [member_registered("A", seq=1)])
            waiting = batch(("w1", "A", "100"), ("w2", "B", "200"), ("w3", "A", "300"))
            single = contracts.OrderPaid(order_id="s1", member="A", amount=Decimal("5"), day=1)
            await broker.deliver_batch(contracts.ORDERS, [waiting, single])
            assert await orders_logged() == ["order:s1"]
            [parked] = (await client.get("/v1/parked")).json()["items"]
            assert parked["waiting_for"] == "member:B"
            await broker.deliver_batch(contracts.MEMBERS, [member_registered("B", seq=2)])
            assert await orders_logged() == ["order:s1", "order:w1", "order:w2", "order:w3"]
            # delivered again (across polls): applied once
            await broker.deliver_batch(contracts.ORDERS, [waiting])
            # a new batch holding a logged order: that one is skipped, the other applied
            await broker.deliver_batch(
                contracts.ORDERS, [batch(("w1", "A", "100"), ("n1", "B", "1"))]
            )
            bad = batch(("x1", "A", "10"), ("x2", "A", "1.001"))
            await broker.deliver_batch(contracts.ORDERS, [bad])
            assert await orders_logged() == [
                "order:s1",
                "order:w1",
                "order:w2",
                "order:w3",
                "order:n1",
            ]
            [(_, _, headers)] = broker.dead_letters
            assert "x2" in headers["reason"]
            assert (await client.get("/v1/parked")).json()["total"] == 0
            await equals_simulate_of_its_log(client)

    asyncio.run(go())


@pytest.mark.parametrize("batched", [True, False])
def test_a_commit_failing_after_the_engine_moved_rebuilds_it(tmp_path: Path, batched: bool) -> None:
    """The run's commit fails once (after the handlers moved the engine): the kit has the
    engine rebuilt from the database before the one-by-one retry, so the orders are
    applied once and accepted — not refused as known by an engine that ran ahead."""

    async def go() -> None:
        app, _ = dividends_app(tmp_path, day_watermarks=[])
        async with running(app) as client:
            svc = app.state.svc
            broker: FakeBroker = svc.broker
            await broker.deliver(contracts.MEMBERS, member_registered("A", seq=1))
            real_commit, failures = svc._commit, [1]

            async def commit_failing_once(uow: Any) -> None:
                if failures:
                    failures.pop()
                    raise ConnectionResetError("the database went away at the commit")
                await real_commit(uow)

            svc._commit = commit_failing_once
            if batched:
                orders = [
                    contracts.PaidOrder(order_id=f"w{i}", member="A", amount=Decimal("100"))
                    for i in range(3)
                ]
                await broker.deliver_batch(contracts.ORDERS, [contracts.OrdersPaid(orders=orders)])
            else:
                await broker.deliver_batch(
                    contracts.ORDERS,
                    [contracts.OrderPaid(order_id="w0", member="A", amount=Decimal("100"))],
                )
            assert not failures  # it did fail once
            log = (await client.get("/v1/inputs", params={"limit": 100})).json()["items"]
            orders_logged = [(r["input_id"], r["accepted"]) for r in log if r["kind"] == "order"]
            wanted = [f"order:w{i}" for i in range(3 if batched else 1)]
            assert orders_logged == [(i, True) for i in wanted]
            assert broker.dead_letters == []
            await equals_simulate_of_its_log(client)

    asyncio.run(go())


def test_the_answers_to_a_batch_fit_the_configured_message_size(tmp_path: Path) -> None:
    """InputsApplied splits under TOKENMALL_MAX_MESSAGE_BYTES (as release batches do), in
    the batch's order, one answer per order."""

    async def go() -> None:
        app, publisher = dividends_app(tmp_path, day_watermarks=[], max_message_bytes=8192)
        async with running(app) as _client:
            broker: FakeBroker = app.state.svc.broker
            await broker.deliver(contracts.MEMBERS, member_registered("A", seq=1))
            orders = [
                contracts.PaidOrder(order_id=f"order-{i:04d}", member="A", amount=Decimal("3000"))
                for i in range(120)
            ]
            await broker.deliver(contracts.ORDERS, contracts.OrdersPaid(orders=orders, day=1))
            await drain(app)
            sent = [
                value
                for topic, _, value, _ in publisher.messages
                if b'"InputsApplied"' in value and topic.endswith(contracts.DIVIDENDS)
            ]
            answers = [contracts.decode(value) for value in sent]
            assert len(sent) > 1
            assert all(len(value) <= 8192 for value in sent)
            ids = [
                a.input_id
                for e in answers
                if isinstance(e, contracts.InputsApplied)
                for a in e.inputs
            ]
            assert ids == [f"order:order-{i:04d}" for i in range(120)]

    asyncio.run(go())


def test_the_input_log_pages_by_seq(tmp_path: Path) -> None:
    """``after_seq`` pages the log by seq (what the bench and a reader of a long log use):
    the pages together are the log, in order, as offsets give it."""

    async def go() -> None:
        app, _ = dividends_app(tmp_path, day_watermarks=[])
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            joins = [member_registered(f"p{i}", seq=i + 1) for i in range(25)]
            await broker.deliver_batch(contracts.MEMBERS, joins)
            whole = (await client.get("/v1/inputs", params={"limit": 1000})).json()
            paged: list[dict[str, Any]] = []
            while True:
                params: dict[str, Any] = {"limit": 7}
                if paged:
                    params["after_seq"] = paged[-1]["seq"]
                page = (await client.get("/v1/inputs", params=params)).json()
                paged += page["items"]
                assert page["total"] == whole["total"]
                if len(page["items"]) < 7:
                    break
            assert paged == whole["items"] and len(paged) == whole["total"] > 25
            bad = await client.get("/v1/inputs", params={"after_seq": -1})
            assert bad.status_code == 422

    asyncio.run(go())
