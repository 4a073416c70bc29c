"""The business day of a service that stamps inputs for the engine (orders, wallet).

Every input such a service publishes (an order paid or refunded, a trade request)
carries the business day it was accepted on.  The day is one row, read with a shared
lock (``FOR SHARE`` on PostgreSQL) in the transaction that writes the input's outbox
row; closing the day updates that row, so it waits until every transaction that
stamped the old day has committed — and every transaction after it stamps the next
day.  The close then writes one :class:`~tokenmall.contracts.DayClosed` marker per
partition of the service's topic, after all of the day's inputs in the outbox: on
each partition, nothing of the closed day can follow its marker.  (On SQLite every
writer holds the database's write lock, which gives the same order.)

Dividends asks for the close (``DayClosing``) and settles the day once it has every
marker (the watermark) and has applied every input of the day.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Integer, MetaData, Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokenmall.contracts import DayClosed, DayClosing, DaySettled, Event
from tokenmall.messaging import UnitOfWork

log = logging.getLogger(__name__)

ROW_ID = 1
FIRST_DAY = 1


def define(metadata: MetaData) -> Table:
    """The one-row table of the service's current business day."""
    return Table(
        "business_day",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("day", Integer, nullable=False),  # inputs accepted now count in this day
        Column("closed_at", DateTime(timezone=True), nullable=True),  # of the day before
    )


async def stamp(session: AsyncSession, table: Table) -> int:
    """The day an input accepted in this transaction counts in.  Locks the day row
    (shared) until the transaction ends: call it in the transaction that writes the
    input's outbox row, after ``begin_write``."""
    stmt = select(table.c.day).where(table.c.id == ROW_ID).with_for_update(read=True)
    day = (await session.execute(stmt)).scalar_one_or_none()
    return FIRST_DAY if day is None else int(day)


async def current(session: AsyncSession, table: Table) -> int:
    """The current day, without a lock (reads, views)."""
    day = (
        await session.execute(select(table.c.day).where(table.c.id == ROW_ID))
    ).scalar_one_or_none()
    return FIRST_DAY if day is None else int(day)


async def _advance(session: AsyncSession, table: Table, to_day: int) -> bool:
    """Make ``to_day`` the current day unless the day is already later; True if it moved."""
    now = datetime.now(UTC)
    moved = await session.execute(
        update(table)
        .where(table.c.id == ROW_ID, table.c.day < to_day)
        .values(day=to_day, closed_at=now)
    )
    if moved.rowcount:  # type: ignore[attr-defined]
        return True
    exists = (await session.execute(select(table.c.id).where(table.c.id == ROW_ID))).first()
    if exists is None:  # a database migrated before the row existed
        await session.execute(insert(table).values(id=ROW_ID, day=to_day, closed_at=now))
        return True
    return False


async def close(uow: UnitOfWork, table: Table, day: int, topic: str, partitions: int) -> None:
    """Close ``day``: later inputs count in ``day + 1``; one marker per partition of
    ``topic`` says so.  A repeated close (another DayClosing of the same day) writes the
    markers again — harmless, and what lets an operator ask again."""
    await uow.begin_write()
    if await _advance(uow.session, table, day + 1):
        log.info("business day %d closed; inputs now count in day %d", day, day + 1)
    for partition in range(partitions):
        uow.emit(
            topic,
            DayClosed(day=day, topic=topic, partition=partition, partitions=partitions),
            partition=partition,
        )


async def on_day_event(
    event: Event,
    uow: UnitOfWork,
    table: Table,
    topic: str,
    partitions: Callable[[str], Awaitable[int]],
) -> bool:
    """Handle ``DayClosing`` (close the day, write the markers; True: nothing else to do)
    and follow ``DaySettled`` (the day after a settled one is open here too — a service
    that joined late catches up; False: the service may have more to do with it)."""
    if isinstance(event, DayClosing):
        await close(uow, table, event.day, topic, await partitions(topic))
        return True
    if isinstance(event, DaySettled):
        await uow.begin_write()
        await _advance(uow.session, table, event.day + 1)
    return False
