"""The outbox relay: publish unpublished rows in id order, then mark them.

At-least-once: a crash between publishing and marking publishes again, and the
consumers' inbox makes that harmless.  On PostgreSQL the batch is locked with
``FOR UPDATE SKIP LOCKED``; ordering per key is kept by running one relay per
service (design-clarifications: several relays could reorder one key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tokenmall.db import among
from tokenmall.messaging.lease import Lease
from tokenmall.messaging.tables import MessagingTables
from tokenmall.messaging.uow import begin_write

log = logging.getLogger(__name__)


class Outgoing(NamedTuple):
    topic: str
    key: str
    value: bytes
    partition: int | None = None  # None: the key's partition (the default partitioner)


class Publisher(Protocol):
    async def publish_many(self, messages: list[Outgoing]) -> None:
        """Publish the messages in order; return once the broker acknowledged all."""

    async def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (markers go to each)."""


class KafkaPublisher:
    """aiokafka producer: idempotent, batched (all sends in flight, then awaited)."""

    def __init__(self, bootstrap: str, client_id: str, compression: str = "none") -> None:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            enable_idempotence=True,
            acks="all",
            # an outbox batch is handed over whole and sent at once: nothing to wait for
            linger_ms=0,
            # a record batch per partition and request: 256 kB, not aiokafka's 16 kB — a
            # poll's worth of small events is a few batches, not dozens; under the
            # broker's message.max.bytes (1 MB), which bounds a whole record batch (a
            # larger event, e.g. a release chunk, goes in a batch of its own)
            max_batch_size=256 * 1024,
            max_request_size=16 * 1024 * 1024,
            compression_type=None if compression == "none" else compression,
        )

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def publish_many(self, messages: list[Outgoing]) -> None:
        futures = [
            await self.producer.send(topic, value=value, key=key.encode(), partition=partition)
            for topic, key, value, partition in messages
        ]
        await asyncio.gather(*futures)

    async def partitions(self, topic: str) -> int:
        return len(await self.producer.partitions_for(topic))


class OutboxRelay:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tables: MessagingTables,
        publisher: Publisher,
        batch_size: int = 1000,
        idle_seconds: float = 0.02,
        on_published: Any = None,
        lease: Lease | None = None,
    ) -> None:
        self.sessions = sessions
        self.outbox = tables.outbox
        self.publisher = publisher
        self.batch_size = batch_size
        self.idle_seconds = idle_seconds
        self.on_published = on_published  # callback(list of event types), for metrics
        # one relay per service publishes (per-key order); the others wait for the lease
        self.lease = lease
        self._wake = asyncio.Event()
        self._one_at_a_time = asyncio.Lock()  # the loop and an explicit drain never overlap

    def wake(self) -> None:
        """A transaction just committed outbox rows: publish without waiting for the poll."""
        self._wake.set()

    async def backlog(self) -> int:
        async with self.sessions() as session:
            stmt = (
                select(func.count())
                .select_from(self.outbox)
                .where(self.outbox.c.published_at.is_(None))
            )
            return int((await session.execute(stmt)).scalar_one())

    async def run_once(self) -> int:
        """Publish one batch; returns how many rows were published (0 while another
        process's relay holds the lease)."""
        async with self._one_at_a_time:
            if self.lease is not None and not await self.lease.hold():
                return 0
            return await self._publish_batch()

    async def _publish_batch(self) -> int:
        async with self.sessions() as session:
            stmt = (
                select(
                    self.outbox.c.id,
                    self.outbox.c.topic,
                    self.outbox.c.key,
                    self.outbox.c.payload,
                    self.outbox.c.event_type,
                    self.outbox.c.partition,
                )
                .where(self.outbox.c.published_at.is_(None))
                .order_by(self.outbox.c.id)
                .limit(self.batch_size)
            )
            postgres = session.get_bind().dialect.name == "postgresql"
            if postgres:  # rows stay locked until marked: other relays skip them
                stmt = stmt.with_for_update(skip_locked=True)
            rows = await self._up_to_barrier(session, list((await session.execute(stmt)).all()))
            if not postgres:
                # SQLite: no lock held while publishing (writers would wait on it); the
                # mark below takes the write lock first, so it cannot fail on a snapshot
                await session.rollback()
            if not rows:
                await session.rollback()
                return 0
            await self.publisher.publish_many(
                [Outgoing(r.topic, r.key, r.payload.encode(), r.partition) for r in rows]
            )
            await begin_write(session)
            await session.execute(
                update(self.outbox)
                .where(among(session, self.outbox.c.id, [r.id for r in rows]))
                .values(published_at=datetime.now(UTC))
            )
            await session.commit()
        if self.on_published is not None:
            self.on_published([r.event_type for r in rows])
        return len(rows)

    async def _up_to_barrier(self, session: AsyncSession, rows: list[Any]) -> list[Any]:
        """A row pinned to a partition (a day's marker) is a barrier: it must reach its
        partition after every row written before it.  So it never shares a batch with
        earlier rows (a send that fails while a later one succeeds would put the marker
        ahead), and it waits while an earlier row is unpublished anywhere — on PostgreSQL
        a relay that hung past its lease may still hold such rows locked (skipped
        above)."""
        first = next((i for i, r in enumerate(rows) if r.partition is not None), None)
        if first is None:
            return rows
        if first > 0:
            self._wake.set()  # the barrier goes in the very next batch, not after a poll
            return rows[:first]  # the earlier rows now
        end = next((i for i, r in enumerate(rows) if r.partition is None), len(rows))
        earlier = (
            await session.execute(
                select(self.outbox.c.id)
                .where(self.outbox.c.published_at.is_(None), self.outbox.c.id < rows[0].id)
                .limit(1)
            )
        ).first()
        if earlier is not None:
            log.info("outbox: marker %s waits for earlier row %s", rows[0].id, earlier.id)
            return []
        if end < len(rows):
            self._wake.set()
        return rows[:end]

    async def run_forever(self) -> None:
        while True:
            # cleared before the batch is read: a commit that wakes the relay while the
            # batch is being published is seen at the wait below, never lost
            self._wake.clear()
            try:
                published = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # broker or database hiccup: keep the rows, try again
                log.exception("outbox relay failed; retrying")
                published = 0
                await asyncio.sleep(0.5)
            if published < self.batch_size:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel
                # that arrives as the event fires, and shutdown would hang
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.idle_seconds * 50):
                        await self._wake.wait()
