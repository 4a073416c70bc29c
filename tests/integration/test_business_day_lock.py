"""The business day's lock on PostgreSQL is fair: once a close waits for the orders
still stamping the old day, a newly arriving order waits behind the close and is
stamped with the next day — a steady stream of orders cannot starve the close (row
``FOR SHARE`` locks let each newcomer past a waiting UPDATE; the advisory lock queues
it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from tests.integration.test_migrations_postgres import fresh_database
from tokenmall import business_day, migrations
from tokenmall.db import make_engine, make_sessions
from tokenmall_orders.adapters.tables import business_days


def test_an_order_arriving_while_the_close_waits_goes_after_it(postgres_data: Path) -> None:
    url = fresh_database(postgres_data, "business_day_lock")
    migrations.upgrade("orders", url)

    async def go() -> None:
        engine = make_engine(url)
        sessions = make_sessions(engine)
        finished: list[str] = []

        async def stamp_in(session: AsyncSession, name: str) -> int:
            async with session.begin():
                day = await business_day.stamp(session, business_days)
                finished.append(name)
                return day

        try:
            async with sessions() as stamping, sessions() as closing, sessions() as late:
                await stamping.begin()
                assert await business_day.stamp(stamping, business_days) == 1  # in flight

                async def close() -> bool:
                    async with closing.begin():
                        moved = await business_day._advance(closing, business_days, 2)
                        finished.append("close")
                        return moved

                closer = asyncio.create_task(close())
                await asyncio.sleep(0.3)
                assert not closer.done()  # it waits for the order stamping day 1
                newcomer = asyncio.create_task(stamp_in(late, "newcomer"))
                await asyncio.sleep(0.3)
                # queued behind the waiting close, not let past it
                assert not newcomer.done()
                await stamping.commit()
                assert await asyncio.wait_for(closer, 10) is True
                assert await asyncio.wait_for(newcomer, 10) == 2
                assert finished == ["close", "newcomer"]
        finally:
            await engine.dispose()

    asyncio.run(go())
