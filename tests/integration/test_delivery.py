"""Delivery guarantees on the real broker (SQLite and PostgreSQL):

- every message of every topic delivered a second time changes nothing (the inbox);
- a consumer killed after its transaction committed, before its offset was
  acknowledged, gets the message again on restart and applies it once;
- what cannot be parsed or applied goes to ``<topic>.dlq`` with the reason, and the
  consumer goes on with the next message.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from tests.integration.conftest import Platforms
from tokenmall import contracts, devenv
from tokenmall.replay import Platform, read_document, replay
from tokenmall.scenario import parse_scenario, simulate

# which consumer groups read each topic (the services' subscriptions)
READERS = {
    contracts.MEMBERS: 3,  # orders, wallet, dividends
    contracts.ORDERS: 2,  # dividends, referrals
    contracts.WALLET_REQUESTS: 1,  # dividends
    contracts.DIVIDENDS: 3,  # wallet, referrals, orders (verdicts)
}

TRADES = {
    "name": "delivery",
    "plan": {"preset": "equity", "referral": {"gen1_rate": 0}},
    "steps": [
        {"join": {"member": "A"}},
        {"join": {"member": "B", "sponsor": "A"}},
        {"order": {"member": "A", "amount": 100}},
        {"order": {"member": "B", "amount": 300}},
        {"sell": {"member": "A", "points": 5}},
        {"settle": {}},
        {"order": {"member": "A", "amount": 200}},
        {"refund": {"order": "order-2"}},
        {"adjust": {"member": "B", "asset": "stable", "amount": 7, "reason": "goodwill"}},
    ],
}


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Everything on ``topic`` so far, partition by partition, without a consumer group."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 10
        while not consumer.assignment():  # group-less: every partition, once metadata is in
            assert time.monotonic() < deadline, f"no partitions of {topic}"
            await asyncio.sleep(0.05)
        partitions = sorted(consumer.assignment())
        ends = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=1000)
            for batch in batches.values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def metric(platform: Platform, service: str, name: str) -> float:
    """The sum of one Prometheus metric over its labels, read from ``/metrics``."""
    text = (await platform.call(service, "GET", "/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


async def total_duplicates(platform: Platform) -> float:
    counts = await asyncio.gather(
        *(metric(platform, s, "tokenmall_events_duplicate_total") for s in devenv.SERVICES)
    )
    return sum(counts)


def launch(platforms: Platforms, **extra_env: dict[str, str]) -> tuple[dict[str, Any], Platform]:
    run = platforms.launch_with(extra_env)
    return run, Platform(platforms.urls(run), timeout=60)


def test_every_message_delivered_twice_is_applied_once(platforms: Platforms) -> None:
    scenario = parse_scenario(TRADES)
    expected = simulate(scenario).document

    async def go() -> None:
        run, platform = launch(platforms)
        try:
            result = await replay(scenario, platform)
            assert result.document == expected
            assert await total_duplicates(platform) == 0
            prefix = run["run"]["prefix"]
            copies = 0
            producer = AIOKafkaProducer(bootstrap_servers=platforms.bootstrap)
            await producer.start()
            try:
                for topic, readers in READERS.items():
                    records = await read_topic(platforms.bootstrap, prefix + topic)
                    assert records, f"nothing on {topic}"
                    for r in records:  # same key, so the same partition, after the originals
                        await producer.send(r.topic, r.value, key=r.key)
                    copies += len(records) * readers
                await producer.flush()
            finally:
                await producer.stop()
            await platform.wait_quiet()
            assert await total_duplicates(platform) == copies
            assert await read_document(platform) == expected
        finally:
            await platform.close()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("service", "consumer", "nth"),
    [
        ("wallet", "wallet-dividends", 3),
        ("dividends", "dividends-orders", 2),
        ("referrals", "referrals-orders", 2),
    ],
)
def test_a_consumer_killed_between_commit_and_ack_applies_the_message_once(
    platforms: Platforms, service: str, consumer: str, nth: int
) -> None:
    joins = {**TRADES, "steps": TRADES["steps"][:2]}
    orders = [{"order": {"member": m, "amount": a}} for m, a in [("A", 100), ("B", 300)] * 2]
    expected = simulate(parse_scenario({**TRADES, "steps": joins["steps"] + orders})).document

    async def go() -> None:
        fault = {"TOKENMALL_FAULT_EXIT_AFTER_COMMIT": f"{consumer}:{nth}"}
        run, platform = launch(platforms, **{service: fault})
        try:
            await replay(parse_scenario(joins), platform)
            for i, step in enumerate(orders, start=1):  # straight to orders, no waiting
                order = step["order"]
                body = {"member": order["member"], "amount": str(order["amount"])}
                body["order_id"] = f"order-{i}"
                created = await platform.call("orders", "POST", "/v1/orders", json=body)
                assert created.status_code == 201, created.text
                paid = await platform.call("orders", "POST", f"/v1/orders/order-{i}/pay")
                assert paid.status_code == 202, paid.text  # pending: the verdict follows
            pid = run["services"][service]["pid"]
            deadline = time.monotonic() + 30
            while devenv._alive(pid):
                assert time.monotonic() < deadline, f"{service} did not hit its fault point"
                await asyncio.sleep(0.05)
            log = Path(run["services"][service]["log"]).read_text()
            assert "fault injection: exiting after commit" in log
            await asyncio.to_thread(
                devenv.restart_service, run, service, {"TOKENMALL_FAULT_EXIT_AFTER_COMMIT": ""}
            )
            await platform.wait_quiet()
            assert await metric(platform, service, "tokenmall_events_duplicate_total") >= 1
            assert await read_document(platform) == expected
        finally:
            await platform.close()

    asyncio.run(go())


def test_unusable_messages_are_dead_lettered_and_the_consumer_goes_on(
    platforms: Platforms,
) -> None:
    scenario = parse_scenario({**TRADES, "steps": TRADES["steps"][:3]})
    expected = simulate(scenario).document

    async def go() -> None:
        run, platform = launch(platforms)
        prefix = run["run"]["prefix"]
        try:
            producer = AIOKafkaProducer(bootstrap_servers=platforms.bootstrap)
            await producer.start()
            try:
                ghost = contracts.OrderPaid(order_id="g-1", member="ghost", amount=100)
                await producer.send_and_wait(prefix + contracts.ORDERS, b"{not json", key=b"x")
                await producer.send_and_wait(
                    prefix + contracts.ORDERS, contracts.encode(ghost), key=b"ghost"
                )
            finally:
                await producer.stop()
            # an order of a member nobody registered waits (parked) in both readers of the
            # orders topic — never dropped because time passed — until an operator
            # discards it, which dead-letters it
            for name in ("dividends", "referrals"):
                deadline = time.monotonic() + 30
                while not (items := (await platform.json(name, "/v1/parked"))["items"]):
                    assert time.monotonic() < deadline, f"{name} did not park the ghost order"
                    await asyncio.sleep(0.1)
                [parked] = items
                assert parked["waiting_for"] == "member:ghost", parked
                gone = await platform.call(name, "DELETE", f"/v1/parked/{parked['id']}")
                assert gone.status_code == 200, gone.text
            result = await replay(scenario, platform)  # the consumers went on
            assert result.document == expected
            dead = await read_topic(
                platforms.bootstrap, prefix + contracts.dead_letter_topic(contracts.ORDERS)
            )
            reasons = {
                (dict(r.headers)["consumer"].decode(), dict(r.headers)["reason"].decode())
                for r in dead
            }
            by_consumer: dict[str, list[str]] = {}
            for name, reason in reasons:
                by_consumer.setdefault(name, []).append(reason)
            for name in ("dividends", "referrals"):
                assert any("unparseable" in r for r in by_consumer[name]), by_consumer
                assert any("discarded by an operator" in r for r in by_consumer[name])
        finally:
            await platform.close()

    asyncio.run(go())
