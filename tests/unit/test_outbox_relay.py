"""The outbox relay on SQLite: id order, marking, and a wake-up that arrives while a
batch is being published is not lost (the relay does not sleep through it)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from tokenmall import migrations
from tokenmall.db import make_engine, make_sessions
from tokenmall.messaging import Lease, MessagingTables, OutboxRelay, Outgoing
from tokenmall.testing import MemoryPublisher
from tokenmall_orders.adapters.tables import messaging_tables


def row(i: int) -> dict[str, object]:
    return {
        "event_id": f"e{i}",
        "topic": "t",
        "key": "k",
        "event_type": "X",
        "payload": str(i),
        "created_at": datetime.now(UTC),
    }


class CommitsWhilePublishing(MemoryPublisher):
    """While the first batch is in flight, another transaction commits a row and wakes
    the relay, as a service's handler does."""

    def __init__(self, add_row: object) -> None:
        super().__init__()
        self.add_row = add_row
        self.sent_at: list[float] = []

    async def publish_many(self, messages: list[Outgoing]) -> None:
        if not self.messages:
            await self.add_row()  # type: ignore[operator]
        await super().publish_many(messages)
        self.sent_at.extend(time.monotonic() for _ in messages)


def test_rows_go_in_id_order_and_a_wake_during_a_batch_is_not_lost(tmp_path: Path) -> None:
    async def go() -> None:
        tables: MessagingTables = messaging_tables  # the outbox of a service's schema
        url = f"sqlite:///{tmp_path}/outbox.db"
        await migrations.upgrade_async("orders", url)
        engine = make_engine(url)
        async with engine.begin() as conn:
            await conn.execute(insert(tables.outbox), [row(i) for i in range(5)])
        sessions = make_sessions(engine)
        relay: OutboxRelay

        async def add_row() -> None:
            async with sessions() as session, session.begin():
                await session.execute(insert(tables.outbox), [row(5)])
            relay.wake()

        publisher = CommitsWhilePublishing(add_row)
        # idle_seconds × 50 = 2 s: the relay's poll, were the wake-up lost
        relay = OutboxRelay(sessions, tables, publisher, batch_size=100, idle_seconds=0.04)
        started = time.monotonic()
        task = asyncio.create_task(relay.run_forever())
        try:
            while len(publisher.messages) < 6 and time.monotonic() - started < 5:
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await engine.dispose()
        assert [int(v) for _, _, v, _ in publisher.messages] == list(range(6))
        assert publisher.sent_at[-1] - started < 1.0  # woken, not polled 2 s later

    asyncio.run(go())


def test_of_two_relays_on_one_database_one_publishes_and_the_other_takes_over(
    tmp_path: Path,
) -> None:
    """Two processes of a service: the relay holding the lease publishes (per-key order
    needs one); the other publishes nothing until that lease is given up."""

    async def go() -> None:
        tables: MessagingTables = messaging_tables
        url = f"sqlite:///{tmp_path}/outbox.db"
        await migrations.upgrade_async("orders", url)
        engine = make_engine(url)
        async with engine.begin() as conn:
            await conn.execute(insert(tables.outbox), [row(i) for i in range(3)])
        sessions = make_sessions(engine)
        leases = [Lease(sessions, tables, "relay", 60.0, holder=h) for h in ("a", "b")]
        pubs = [MemoryPublisher(), MemoryPublisher()]
        relays = [
            OutboxRelay(sessions, tables, pub, batch_size=2, lease=lease)
            for pub, lease in zip(pubs, leases, strict=True)
        ]
        assert await relays[0].run_once() == 2
        assert await relays[1].run_once() == 0  # not the leader
        async with engine.begin() as conn:
            await conn.execute(insert(tables.outbox), [row(i) for i in range(3, 5)])
        await leases[0].release()  # the first process stops
        while await relays[1].run_once():
            pass
        await engine.dispose()
        assert [int(v) for _, _, v, _ in pubs[0].messages] == [0, 1]
        assert [int(v) for _, _, v, _ in pubs[1].messages] == [2, 3, 4]

    asyncio.run(go())


class Batches(MemoryPublisher):
    """Records the batches; the first attempt at a batch holding row ``fail_on`` fails
    (a send the broker refused while the others of its batch went through)."""

    def __init__(self, fail_on: str | None = None) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.fail_on = fail_on

    async def publish_many(self, messages: list[Outgoing]) -> None:
        values = [m.value.decode() for m in messages]
        if self.fail_on in values:
            self.fail_on = None
            raise ConnectionError("broker refused one send")
        self.batches.append(values)
        await super().publish_many(messages)


def test_a_marker_goes_alone_and_only_after_every_earlier_row(tmp_path: Path) -> None:
    """A row pinned to a partition (a day's DayClosed marker) must follow every row
    written before it: never in a batch with them (one failed send of the batch would
    let the marker overtake it), never while an earlier row is unpublished (on
    PostgreSQL another relay may hold it locked)."""

    async def go() -> None:
        tables: MessagingTables = messaging_tables
        url = f"sqlite:///{tmp_path}/outbox.db"
        await migrations.upgrade_async("orders", url)
        engine = make_engine(url)
        rows = [row(i) | {"partition": None} for i in range(8)]
        for i in (3, 4):  # two markers, on partitions 0 and 1
            rows[i] |= {"partition": i - 3, "event_type": "DayClosed"}
        async with engine.begin() as conn:
            await conn.execute(insert(tables.outbox), rows)
        sessions = make_sessions(engine)
        publisher = Batches(fail_on="2")
        relay = OutboxRelay(sessions, tables, publisher, batch_size=100)
        published = []
        for _ in range(6):
            try:
                published.append(await relay.run_once())
            except ConnectionError:
                published.append(-1)
        assert publisher.batches == [["0", "1", "2"], ["3", "4"], ["5", "6", "7"]]
        assert published == [-1, 3, 2, 3, 0, 0]
        assert [(m.value, m.partition) for m in publisher.messages][3:5] == [
            (b"3", 0),
            (b"4", 1),
        ]

        # a relay that sees the marker first while an earlier row is still unpublished
        # (held by a relay that hung past its lease) publishes nothing
        async with engine.begin() as conn:
            await conn.execute(
                insert(tables.outbox), [row(8) | {"partition": None}, row(9) | {"partition": 0}]
            )
        async with sessions() as session:
            unlocked = (
                await session.execute(select(tables.outbox).where(tables.outbox.c.event_id == "e9"))
            ).all()
            assert await relay._up_to_barrier(session, list(unlocked)) == []
        assert await relay.run_once() == 1  # e8
        assert await relay.run_once() == 1  # then the marker
        await engine.dispose()

    asyncio.run(go())


def test_the_relay_producer_compresses_as_configured() -> None:
    """TOKENMALL_KAFKA_COMPRESSION: none (the default) or gzip — built into aiokafka; a
    codec this installation lacks is refused when the settings load, not at the first
    send."""
    import pydantic

    from tokenmall.messaging.relay import KafkaPublisher
    from tokenmall.servicekit import ServiceSettings

    assert ServiceSettings().kafka_compression == "none"
    assert ServiceSettings(kafka_compression="gzip").kafka_compression == "gzip"
    with pytest.raises(pydantic.ValidationError):
        ServiceSettings(kafka_compression="lz4")

    async def made() -> tuple[object, object]:  # aiokafka's producer wants a running loop
        plain = KafkaPublisher("127.0.0.1:9", "t")
        packed = KafkaPublisher("127.0.0.1:9", "t", compression="gzip")
        return plain.producer._compression_type, packed.producer._compression_type

    assert asyncio.run(made()) == (None, "gzip")
