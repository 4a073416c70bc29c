"""Poison never blocks, on the real broker (SQLite and PostgreSQL), one platform per backend.

Straight onto the orders topic (its readers: dividends and referrals), keyed by a
registered member, each poison is followed by a good ``OrderPaid`` of the same key — so on
the same partition, behind it:

- an ``OrderPaid`` with ``amount: "1e30"``, an event of an unknown ``type``, an
  ``OrderPaid`` without ``member``, bytes that are not JSON: dead-lettered at once by both
  readers with a reason naming the problem;
- an ``OrderRefunded`` whose handler raises ``RuntimeError`` (``TOKENMALL_FAULT_RAISE_ON``
  in dividends): retried ``TOKENMALL_HANDLER_ATTEMPTS`` times with backoff, dead-lettered
  once with the exception, never redelivered;

and in every case the good event behind it is applied.  Garbage on every topic is
dead-lettered by each of its readers (orders, wallet, dividends, referrals), and the
member's registration, order and adjustment behind it reach every service.  Also
``tokenmall parked``: what a running platform has parked (an order for a member never
registered), exit 1, then 0 once an operator discarded it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.kafka_tools import (
    DeadLetter,
    RunningPlatform,
    eventually,
    metric,
    module_platform,
    produce,
    read_dead_letters,
)
from tokenmall import contracts

ATTEMPTS = 5  # TOKENMALL_HANDLER_ATTEMPTS (the default)
RAISING = ("dividends-orders", "OrderRefunded")
READERS = ("dividends", "referrals")  # the consumers of the orders topic
DEAD_LETTER_WITHIN = 10.0  # seconds


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPlatform]:
    env = {"dividends": {"TOKENMALL_FAULT_RAISE_ON": ":".join(RAISING)}}
    with module_platform(request, tmp_path_factory, request.param, env) as running:
        yield running


def order_paid(order_id: str, member: str, amount: str) -> contracts.OrderPaid:
    return contracts.OrderPaid(order_id=order_id, member=member, amount=Decimal(amount))


def huge_amount(member: str) -> bytes:
    return contracts.encode(order_paid(f"{member}-huge", member, "1e30"))


def unknown_type(member: str) -> bytes:
    body = json.loads(contracts.encode(order_paid(f"{member}-odd", member, "10")))
    body["type"] = "OrderShipped"
    return json.dumps(body).encode()


def wrong_shape(member: str) -> bytes:
    body = json.loads(contracts.encode(order_paid(f"{member}-shape", member, "10")))
    del body["member"]
    return json.dumps(body).encode()


def not_json(member: str) -> bytes:
    return b'\xff{"type": "OrderPaid", not json'


# poison → (its bytes, what the reason of each reader must name)
POISONS = {
    "amount-1e30": (huge_amount, ("amount", "1E+30")),
    "unknown-type": (unknown_type, ("unparseable", "'OrderShipped'", "does not match")),
    "wrong-shape": (wrong_shape, ("unparseable", "OrderPaid.member", "Field required")),
    "not-json": (not_json, ("unparseable", "Invalid JSON")),
}


async def register(client: httpx.AsyncClient, platform: RunningPlatform, member: str) -> None:
    """Registered in referrals, and known to dividends (so nothing here is parked)."""
    urls = platform.urls
    created = await client.post(urls["referrals"] + "/v1/members", json={"member": member})
    assert created.status_code == 201, created.text

    async def known() -> bool | None:
        r = await client.get(f"{urls['dividends']}/v1/members/{member}")
        return True if r.status_code == 200 else None

    await eventually(known, 30, f"dividends knows {member}")


async def applied_in_dividends(
    client: httpx.AsyncClient, platform: RunningPlatform, input_id: str, timeout: float = 15
) -> dict[str, Any]:
    url = f"{platform.urls['dividends']}/v1/inputs/{input_id}"

    async def logged() -> dict[str, Any] | None:
        r = await client.get(url)
        return r.json() if r.status_code == 200 else None

    return await eventually(logged, timeout, f"dividends applied {input_id}")


async def referrals_spend(
    client: httpx.AsyncClient, platform: RunningPlatform, member: str, spend: str
) -> None:
    url = f"{platform.urls['referrals']}/v1/members/{member}"

    async def reached() -> bool | None:
        r = await client.get(url)
        assert r.status_code == 200, r.text
        return True if r.json()["spend"] == spend else None

    await eventually(reached, 15, f"referrals: spend of {member} is {spend}")


def of(letters: list[DeadLetter], value: bytes) -> dict[str, list[DeadLetter]]:
    """The dead letters of one message, by the consumer that sent them."""
    by: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        if letter.value == value:
            by.setdefault(letter.consumer, []).append(letter)
    return by


def sent_by(value: bytes, readers: set[str]) -> Callable[[list[DeadLetter]], bool]:
    """Whether each of ``readers`` has dead-lettered ``value``."""
    return lambda letters: set(of(letters, value)) >= readers


@pytest.mark.parametrize("kind", sorted(POISONS))
def test_a_poison_is_dead_lettered_at_once_and_the_next_event_of_its_partition_applied(
    platform: RunningPlatform, kind: str
) -> None:
    make, named = POISONS[kind]
    member = f"p-{kind}"
    poison = make(member)
    good = order_paid(f"{member}-good", member, "100")
    orders_topic = platform.topic(contracts.ORDERS)
    dlq = platform.topic(contracts.dead_letter_topic(contracts.ORDERS))

    async def go() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await register(client, platform, member)
            key = member.encode()
            sent = time.monotonic()
            await produce(
                platform.bootstrap,
                [(orders_topic, key, poison), (orders_topic, key, contracts.encode(good))],
            )
            letters = await read_dead_letters(
                platform.bootstrap,
                dlq,
                until=sent_by(poison, set(READERS)),
                timeout=DEAD_LETTER_WITHIN,
            )
            took = time.monotonic() - sent
            by = of(letters, poison)
            assert set(by) == set(READERS), (took, letters, platform.log_tail())
            assert took < DEAD_LETTER_WITHIN
            for consumer, copies in by.items():
                assert len(copies) == 1, copies
                letter = copies[0]
                for word in named:
                    assert word in letter.reason, (consumer, letter.reason)
            # the good event behind it on the same partition went through, in both readers
            logged = await applied_in_dividends(client, platform, f"order:{good.order_id}")
            assert logged["accepted"] is True, logged
            await referrals_spend(client, platform, member, "100.00")
            dividends_view = await client.get(f"{platform.urls['dividends']}/v1/members/{member}")
            assert dividends_view.json()["spend"] == "100.00"
            # the poison changed nothing in the engine
            poisoned = await client.get(
                f"{platform.urls['dividends']}/v1/inputs/order:{member}-huge"
            )
            assert poisoned.status_code == 404

    asyncio.run(go())


def test_a_handler_that_raises_is_retried_then_dead_lettered_once_and_the_partition_moves_on(
    platform: RunningPlatform,
) -> None:
    member = "p-raises"
    first = order_paid(f"{member}-1", member, "100")
    refund = contracts.OrderRefunded(order_id=first.order_id, member=member, amount=first.amount)
    after = order_paid(f"{member}-2", member, "40")
    orders_topic = platform.topic(contracts.ORDERS)
    dlq = platform.topic(contracts.dead_letter_topic(contracts.ORDERS))
    dividends = platform.urls["dividends"]
    key = member.encode()

    async def go() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await register(client, platform, member)
            await produce(platform.bootstrap, [(orders_topic, key, contracts.encode(first))])
            await applied_in_dividends(client, platform, f"order:{first.order_id}")
            retries_before = await metric(
                client, dividends, "tokenmall_handler_retries_total", consumer=RAISING[0]
            )
            sent = time.monotonic()
            await produce(
                platform.bootstrap,
                [
                    (orders_topic, key, contracts.encode(refund)),
                    (orders_topic, key, contracts.encode(after)),
                ],
            )
            letters = await read_dead_letters(
                platform.bootstrap,
                dlq,
                until=lambda got: "dividends" in of(got, contracts.encode(refund)),
                timeout=DEAD_LETTER_WITHIN,
            )
            took = time.monotonic() - sent
            by = of(letters, contracts.encode(refund))
            assert list(by) == ["dividends"], (letters, platform.log_tail())
            assert took < DEAD_LETTER_WITHIN
            reason = by["dividends"][0].reason
            assert f"after {ATTEMPTS} attempt(s)" in reason, reason
            assert "RuntimeError" in reason and "fault injection" in reason, reason
            # the partition moved on: the order behind it is applied
            logged = await applied_in_dividends(client, platform, f"order:{after.order_id}")
            assert logged["accepted"] is True
            # the refund never reached the engine; referrals (no fault) applied it
            gone = await client.get(f"{dividends}/v1/inputs/refund:{first.order_id}")
            assert gone.status_code == 404, gone.text
            await referrals_spend(client, platform, member, "40.00")
            view = (await client.get(f"{dividends}/v1/members/{member}")).json()
            assert view["spend"] == "140.00"
            # no redelivery loop: a few seconds on, still exactly one dead letter and the
            # bounded number of retries
            await asyncio.sleep(3)
            letters = await read_dead_letters(platform.bootstrap, dlq)
            assert list(of(letters, contracts.encode(refund))) == ["dividends"]
            assert len(of(letters, contracts.encode(refund))["dividends"]) == 1
            retries = await metric(
                client, dividends, "tokenmall_handler_retries_total", consumer=RAISING[0]
            )
            assert retries - retries_before == ATTEMPTS - 1
            parked = (await client.get(f"{dividends}/v1/parked")).json()
            assert parked["total"] == 0, parked

    asyncio.run(go())


# every subscriber of every topic (at least these; orders may read the dividends topic too)
SUBSCRIBERS = {
    contracts.MEMBERS: {"orders", "wallet", "dividends"},
    contracts.ORDERS: {"dividends", "referrals"},
    contracts.WALLET_REQUESTS: {"dividends"},
    contracts.DIVIDENDS: {"wallet", "referrals"},
}


def test_garbage_on_every_topic_is_dead_lettered_by_every_reader_and_its_partition_goes_on(
    platform: RunningPlatform,
) -> None:
    """Not JSON, keyed by a member not yet registered, on each topic; then that member's
    registration, order and adjustment — through the APIs, so their events follow the
    garbage on the same partitions of all four topics — reach every service."""
    member = "p-everywhere"
    key = member.encode()
    garbage = b"\x00 not json at all"
    urls = platform.urls

    async def go() -> None:
        await produce(
            platform.bootstrap, [(platform.topic(topic), key, garbage) for topic in SUBSCRIBERS]
        )
        async with httpx.AsyncClient(timeout=30) as client:
            # members topic, behind the garbage: every reader learns the member
            await register(client, platform, member)

            async def wallet_knows() -> bool | None:
                r = await client.get(f"{urls['wallet']}/v1/members/{member}/balances")
                return True if r.status_code == 200 else None

            await eventually(wallet_knows, 15, "the wallet knows the member")
            order = {"member": member, "amount": "50", "order_id": f"{member}-1"}

            async def created() -> bool | None:
                r = await client.post(urls["orders"] + "/v1/orders", json=order)
                if r.status_code == 404:  # orders has not heard of the member yet
                    return None
                assert r.status_code == 201, r.text
                return True

            await eventually(created, 15, "orders accepts an order for the member")
            paid = await client.post(f"{urls['orders']}/v1/orders/{member}-1/pay")
            assert paid.status_code in (200, 202), paid.text
            adjust = {
                "request_id": f"{member}-adj",
                "member": member,
                "asset": "stable",
                "amount": "7",
                "reason": "goodwill",
                "operator": "poison-test",
            }
            submitted = await client.post(urls["wallet"] + "/v1/admin/adjustments", json=adjust)
            assert submitted.status_code == 202, submitted.text
            # orders topic: dividends and referrals applied the order
            assert (await applied_in_dividends(client, platform, f"order:{member}-1"))["accepted"]
            await referrals_spend(client, platform, member, "50.00")
            # wallet-requests topic: dividends applied the adjustment; dividends topic: its
            # result reached the wallet (and the order's verdict the orders service)
            assert (await applied_in_dividends(client, platform, f"request:{member}-adj"))[
                "accepted"
            ]

            async def adjusted() -> bool | None:
                r = await client.get(f"{urls['wallet']}/v1/requests/{member}-adj")
                assert r.status_code == 200, r.text
                return True if r.json()["status"] == "done" else None

            await eventually(adjusted, 15, "the wallet applied the adjustment's result")
            balances = (await client.get(f"{urls['wallet']}/v1/members/{member}/balances")).json()
            assert balances["stable"] == "7.00", balances

            async def decided() -> bool | None:
                r = await client.get(f"{urls['orders']}/v1/orders/{member}-1")
                return True if r.json()["status"] == "paid" else None

            await eventually(decided, 15, "the order is paid")
        for topic, readers in SUBSCRIBERS.items():
            letters = await read_dead_letters(
                platform.bootstrap,
                platform.topic(contracts.dead_letter_topic(topic)),
                until=sent_by(garbage, readers),
                timeout=DEAD_LETTER_WITHIN,
            )
            by = of(letters, garbage)
            assert set(by) >= readers, (topic, letters)
            for consumer, copies in by.items():
                assert len(copies) == 1, (topic, consumer, copies)
                assert copies[0].reason.startswith("unparseable: Invalid JSON"), copies[0]

    asyncio.run(go())


def parked_cli(platform: RunningPlatform, tmp: Path) -> tuple[int, dict[str, Any]]:
    """``tokenmall parked --json`` against this platform: (exit code, its JSON)."""
    env = {
        **os.environ,
        "TOKENMALL_DEV_DIR": str(tmp),  # no dev platform: the URLs below
        **{f"TOKENMALL_{name.upper()}_URL": url for name, url in platform.urls.items()},
    }
    done = subprocess.run(
        [str(Path(sys.executable).with_name("tokenmall")), "parked", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_tokenmall_parked_lists_what_waits_and_exits_1_then_0_once_nothing_does(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    code, listing = parked_cli(platform, tmp_path)
    assert code == 0, listing
    assert listing["items"] == [] and not any(listing["totals"].values()), listing

    ghost = order_paid("ghost-order", "ghost-never-registered", "25")

    async def park() -> None:
        key = ghost.member.encode()
        await produce(
            platform.bootstrap,
            [(platform.topic(contracts.ORDERS), key, contracts.encode(ghost))],
        )
        async with httpx.AsyncClient(timeout=30) as client:

            async def parked_everywhere() -> bool | None:
                totals = [
                    (await client.get(platform.urls[s] + "/v1/parked")).json()["total"]
                    for s in READERS
                ]
                return True if all(totals) else None

            await eventually(parked_everywhere, 15, "the ghost order parked by both readers")

    asyncio.run(park())
    code, listing = parked_cli(platform, tmp_path)
    assert code == 1, listing
    assert listing["totals"] == {"orders": 0, "wallet": 0, "dividends": 1, "referrals": 1}
    items = sorted(listing["items"], key=lambda i: i["service"])
    assert [i["service"] for i in items] == ["dividends", "referrals"]
    for item in items:
        assert item["event_type"] == "OrderPaid"
        assert item["event_id"] == ghost.event_id
        assert item["key"] == ghost.member
        assert item["waiting_for"] == f"member:{ghost.member}"
        assert item["topic"] == contracts.ORDERS

    # an operator discards them (dead-lettered): nothing is parked any more
    async def discard() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            for item in items:
                url = f"{platform.urls[item['service']]}/v1/parked/{item['id']}"
                gone = await client.delete(url)
                assert gone.status_code == 200, gone.text

    asyncio.run(discard())
    code, listing = parked_cli(platform, tmp_path)
    assert code == 0, listing
    assert not any(listing["totals"].values()), listing
