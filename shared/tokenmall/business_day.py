"""The business day of a service that stamps inputs for the engine (orders, wallet).

Every input such a service publishes (an order paid or refunded, a trade request)
carries the business day it was accepted on.  The day is one row, read under a shared
lock in the transaction that writes the input's outbox row; closing the day takes the
lock exclusively to update that row, so it waits until every transaction that stamped
the old day has committed — and every transaction after it stamps the next day.  On
PostgreSQL the lock is a transaction-scoped advisory lock, not ``FOR SHARE`` on the
row: the lock manager queues a shared request behind a waiting exclusive one, so a
steady stream of orders cannot starve the close (row share locks let newcomers past a
waiting UPDATE), and no MultiXact is made per order.  The close then writes one
:class:`~tokenmall.contracts.DayClosed` marker per partition of the service's topic,
after all of the day's inputs in the outbox (the relay publishes a marker only after
every earlier row): on each partition, nothing of the closed day can follow its marker.
(On SQLite every writer holds the database's write lock, which gives the same order.)

Dividends asks for the close (``DayClosing``) and settles the day once it has every
marker (the watermark) and has applied every input of the day.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Integer, MetaData, Table, insert, select, text, update
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


# the advisory lock's key (PostgreSQL; one per database, and each service has its own)
LOCK_KEY = 0x746F6B656E646179  # "tokenday"


class NoBusinessDay(RuntimeError):
    """The database lacks the day row: it was not migrated (``tokenmall migrate``)."""


async def _lock(session: AsyncSession, exclusive: bool) -> None:
    """Until the transaction ends.  SQLite: nothing — ``begin_write`` already holds the
    database's write lock, which orders every writer."""
    if session.get_bind().dialect.name != "postgresql":
        return
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await session.execute(text(f"SELECT {function}(:key)"), {"key": LOCK_KEY})


async def stamp(session: AsyncSession, table: Table) -> int:
    """The day an input accepted in this transaction counts in.  Holds the day's lock
    (shared) until the transaction ends: call it in the transaction that writes the
    input's outbox row, after ``begin_write``."""
    await _lock(session, exclusive=False)
    day = (
        await session.execute(select(table.c.day).where(table.c.id == ROW_ID))
    ).scalar_one_or_none()
    if day is None:
        raise NoBusinessDay("the business_day row is missing: run the migrations")
    return int(day)


async def current(session: AsyncSession, table: Table) -> int:
    """The current day, without a lock (reads, views)."""
    day = (
        await session.execute(select(table.c.day).where(table.c.id == ROW_ID))
    ).scalar_one_or_none()
    return FIRST_DAY if day is None else int(day)


async def _advance(session: AsyncSession, table: Table, to_day: int) -> bool:
    """Make ``to_day`` the current day unless the day is already later; True if it moved.
    Waits for every transaction that stamped the day before (the exclusive lock) — only
    when it must move: a day never goes back, so a DaySettled that finds it moved
    already (the usual case, DayClosing came first) locks nothing and holds up no order."""
    if await current(session, table) >= to_day:
        return False
    await _lock(session, exclusive=True)
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
