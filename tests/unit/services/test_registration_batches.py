"""Registrations in batches (``MembersRegistered``): referrals publishes a registration
batch as a few bounded events on one key; dividends, orders and the wallet apply one
exactly as the ``MemberRegistered`` of each of its members in turn — a batch whose
sponsor has not joined waits whole and joins when the sponsor does, a batch delivered
twice (or re-sent as a new event) joins once, a malformed one is dead-lettered whole."""

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
from sqlalchemy import func, select

from tests.unit.services import test_orders, test_wallet
from tests.unit.services.test_day_boundaries import (
    dividends_app,
    equals_simulate_of_its_log,
    settled,
)
from tokenmall import contracts
from tokenmall.contracts import MembersRegistered, Registration
from tokenmall.messaging import parking
from tokenmall.testing import FakeBroker, by_member, drain, member_registered, running
from tokenmall_orders.adapters import tables as order_tables
from tokenmall_wallet.adapters import tables as wallet_tables


def registration(member: str, sponsor: str | None, seq: int) -> Registration:
    return Registration(member=member, sponsor=sponsor, seq=seq)


# ------------------------------------------------------------------ the contract


@pytest.mark.parametrize("id_length", [3, 30, 64])
def test_batches_keep_the_order_and_stay_under_the_bound(id_length: int) -> None:
    people = [
        registration(f"{i:0{id_length}d}", f"{i - 1:0{id_length}d}" if i else None, i + 1)
        for i in range(7000)
    ]
    batches = contracts.registration_batches(people)
    assert [r for b in batches for r in b.members] == people
    for batch in batches:
        assert len(batch.members) <= contracts.REGISTRATION_BATCH_MEMBERS
        # the broker's default message.max.bytes is 1,048,588
        assert len(contracts.encode(batch)) <= contracts.REGISTRATION_BATCH_BYTES + 4096
        assert batch.key == contracts.REGISTRATIONS_KEY
    assert contracts.decode(contracts.encode(batches[0])) == batches[0]


def test_the_byte_bound_cuts_a_batch_before_the_count_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(contracts, "REGISTRATION_BATCH_BYTES", 50_000)
    people = [registration(f"{i:064d}", None, i + 1) for i in range(3000)]
    batches = contracts.registration_batches(people)
    assert len(batches) > 3000 // contracts.REGISTRATION_BATCH_MEMBERS + 1
    assert all(len(contracts.encode(b)) <= 50_000 + 4096 for b in batches)
    assert [r for b in batches for r in b.members] == people


@pytest.mark.parametrize(
    "members",
    [
        [],
        [{"member": "", "seq": 1}],
        [{"member": "a", "seq": 0}],
        [{"member": "a"}],
        [{"member": "a b", "seq": 1}],  # not a member id
        [{"member": "a" * 66, "seq": 1}],
        [{"member": "a", "seq": 2**62}],  # beyond the engine's registration order
    ],
)
def test_a_malformed_batch_is_not_an_event(members: list[dict[str, Any]]) -> None:
    with pytest.raises(contracts.ContractError):
        contracts.decode({"type": "MembersRegistered", "members": members})


# ------------------------------------------------------------------ dividends


def schedule(seed: int, batched: bool) -> list[tuple[str, list[contracts.Event]]]:
    """Polls of a random population registered in chunks — each chunk one
    MembersRegistered (``batched``) or its members one by one, the chunks shuffled (so a
    batch may come before its sponsors' chunk) — and orders, some before their members;
    one poll redelivered.  The same ``seed`` gives the same arrivals either way."""
    rng = random.Random(seed)
    people = [
        registration(f"m{i}", f"m{rng.randrange(i)}" if i else None, i + 1) for i in range(60)
    ]
    chunks: list[list[Registration]] = []
    while len(people) > sum(len(c) for c in chunks):
        start = sum(len(c) for c in chunks)
        chunks.append(people[start : start + rng.randint(1, 15)])
    rng.shuffle(chunks)
    units: list[list[contracts.Event]] = []
    for chunk in chunks:
        if batched:
            event: contracts.Event = MembersRegistered(members=chunk)
            units.append([event])
        else:
            units.append([member_registered(r.member, r.sponsor, r.merchant, r.seq) for r in chunk])
    orders: list[contracts.Event] = [
        contracts.OrderPaid(
            order_id=f"o{j}",
            member=f"m{rng.randrange(60)}",
            amount=Decimal(rng.choice(["100", "999.99", "3000", "50000"])),
        )
        for j in range(40)
    ]
    polls: list[tuple[str, list[contracts.Event]]] = []
    while units or orders:
        taken = units[: rng.randint(1, 3)]
        del units[: len(taken)]
        if taken:
            polls.append((contracts.MEMBERS, [e for unit in taken for e in unit]))
        size = rng.randint(1, 10)
        if orders:
            polls.append((contracts.ORDERS, orders[:size]))
            del orders[:size]
    again = random.Random(seed + 1)
    polls.insert(again.randrange(len(polls)), polls[again.randrange(len(polls))])
    return polls


async def dividends_outcome(tmp_path: Path, polls: Any) -> dict[str, Any]:
    app, _ = dividends_app(tmp_path, day_watermarks=[], parked_sweep_seconds=3600)
    async with running(app) as client:
        broker: FakeBroker = app.state.svc.broker
        for topic, events in polls:
            await broker.deliver_batch(topic, list(events))
        requested = await client.post("/v1/settlements/1")
        assert requested.status_code in (200, 202), requested.text
        await settled(client, 1)
        await equals_simulate_of_its_log(client)
        log = (await client.get("/v1/inputs", params={"limit": 1000})).json()["items"]
        outcome = {
            "log": sorted((row["input_id"], row["accepted"]) for row in log),
            "members": by_member((await client.get("/v1/members", params={"limit": 1000})).json()),
            "state": (await client.get("/v1/state")).json(),
            "parked": (await client.get("/v1/parked")).json()["total"],
            "dead": broker.dead_letters,
        }
        await drain(app)
        return outcome


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10**6))
def test_a_batch_joins_as_its_members_one_by_one_whatever_the_arrival_order(
    tmp_path: Path, seed: int
) -> None:
    async def go() -> None:
        tag = random.random()
        batched = await dividends_outcome(tmp_path / f"b-{seed}-{tag}", schedule(seed, True))
        single = await dividends_outcome(tmp_path / f"s-{seed}-{tag}", schedule(seed, False))
        assert batched == single
        assert batched["parked"] == 0 and batched["dead"] == []
        assert batched["state"]["member_count"] == 60

    # parked events are woken by what they wait for, never by the clock
    with mock.patch.object(parking, "RETRY_FIRST_SECONDS", 3600):
        asyncio.run(go())


def test_a_batch_waits_whole_for_a_sponsor_and_joins_once(tmp_path: Path) -> None:
    async def go() -> None:
        app, _ = dividends_app(tmp_path, day_watermarks=[])
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            batch = MembersRegistered(
                members=[registration("a", None, 2), registration("b", "root", 3)]
            )
            await broker.deliver_batch(contracts.MEMBERS, [batch])
            state = (await client.get("/v1/state")).json()
            assert state["member_count"] == 0  # "a" did not go ahead of the rest of its batch
            assert (await client.get("/v1/parked")).json()["total"] == 1
            await broker.deliver_batch(contracts.MEMBERS, [member_registered("root", seq=1)])
            await broker.deliver_batch(
                contracts.MEMBERS,
                [batch, MembersRegistered(members=batch.members)],  # again; re-sent anew
            )
            assert (await client.get("/v1/state")).json()["member_count"] == 3
            assert (await client.get("/v1/parked")).json()["total"] == 0
            log = (await client.get("/v1/inputs", params={"limit": 100})).json()["items"]
            joins = [row["input_id"] for row in log if row["input_id"].startswith("join:")]
            assert joins == ["join:root", "join:a", "join:b"]
            assert broker.dead_letters == []

    asyncio.run(go())


def test_a_parked_batch_that_waits_anew_does_not_hold_up_the_next_one(tmp_path: Path) -> None:
    """Two parked batches wait for the same sponsor; it comes, the first now waits for
    another one — the second, which waited for the same, goes all the same."""

    async def go() -> None:
        app, _ = dividends_app(tmp_path, day_watermarks=[], parked_sweep_seconds=3600)
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            first = MembersRegistered(
                members=[registration("p", "s1", 3), registration("q", "s2", 4)]
            )
            second = MembersRegistered(members=[registration("r", "s1", 5)])
            await broker.deliver_batch(contracts.MEMBERS, [first])
            await broker.deliver_batch(contracts.MEMBERS, [second])
            assert (await client.get("/v1/parked")).json()["total"] == 2
            # s1 in a batch too: behind the parked ones of its key, alone, then it wakes them
            await broker.deliver_batch(
                contracts.MEMBERS, [MembersRegistered(members=[registration("s1", None, 1)])]
            )
            members = by_member((await client.get("/v1/members", params={"limit": 10})).json())
            assert sorted(members) == ["r", "s1"]
            [parked] = (await client.get("/v1/parked")).json()["items"]
            assert parked["waiting_for"] == "member:s2"
            # a retry still missing something is no failed attempt: the handler's attempts
            # are kept for failures (a long wait must not use them up)
            assert (parked["attempts"], parked["last_error"]) == (0, None)
            await broker.deliver_batch(contracts.MEMBERS, [member_registered("s2", seq=2)])
            assert (await client.get("/v1/state")).json()["member_count"] == 5

    with mock.patch.object(parking, "RETRY_FIRST_SECONDS", 3600):
        asyncio.run(go())


def test_a_batch_out_of_order_is_dead_lettered_whole(tmp_path: Path) -> None:
    async def go() -> None:
        app, _ = dividends_app(tmp_path, day_watermarks=[])
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            wrong = MembersRegistered(
                members=[
                    registration("a", None, 1),
                    registration("c", "b", 3),  # its sponsor comes after it
                    registration("b", "a", 2),
                ]
            )
            fine = MembersRegistered(members=[registration("x", None, 4)])
            await broker.deliver_batch(contracts.MEMBERS, [wrong, fine])
            assert (await client.get("/v1/state")).json()["member_count"] == 1  # x
            [(_, _, headers)] = broker.dead_letters
            assert "sponsor 'b' comes after its referral" in headers["reason"]

    asyncio.run(go())


# ------------------------------------------------------------------ orders, wallet


async def count(app: Any, table: Any) -> int:
    async with app.state.svc.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(table))).scalar_one())


def read_model_polls() -> list[contracts.Event]:
    first = MembersRegistered(members=[registration(f"m{i}", None, i + 1) for i in range(250)])
    return [
        first,
        member_registered("single", seq=300),
        MembersRegistered(
            members=[registration(f"n{i}", "m0", 301 + i) for i in range(100)]
            + [registration("m5", None, 6)]  # a member known already: ignored
        ),
        first,  # delivered twice
    ]


def test_orders_learns_the_members_of_a_batch(tmp_path: Path) -> None:
    async def go() -> None:
        app = test_orders.make_app(tmp_path)
        async with running(app) as client:
            await app.state.svc.broker.deliver_batch(contracts.MEMBERS, read_model_polls())
            assert await count(app, order_tables.members) == 351
            order = {"order_id": "o1", "member": "n99", "amount": "10.00"}
            assert (await client.post("/v1/orders", json=order)).status_code == 201
            assert app.state.svc.broker.dead_letters == []

    asyncio.run(go())


def test_the_wallet_learns_the_members_of_a_batch(tmp_path: Path) -> None:
    async def go() -> None:
        app, _ = test_wallet.make_app(tmp_path)
        async with running(app) as client:
            await app.state.svc.broker.deliver_batch(contracts.MEMBERS, read_model_polls())
            assert await count(app, wallet_tables.members) == 351
            listing = (await client.get("/v1/balances", params={"limit": 1000})).json()
            assert listing["total"] == 351
            async with app.state.svc.sessions() as session:
                seq = (
                    await session.execute(
                        select(wallet_tables.members.c.seq).where(
                            wallet_tables.members.c.member == "n7"
                        )
                    )
                ).scalar_one()
            assert seq == 308

    asyncio.run(go())
