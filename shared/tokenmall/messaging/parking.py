"""Parked events: what arrived before the thing it depends on.

Events of different Kafka keys arrive in any order: a referral's registration can
overtake its sponsor's (they sit on different partitions), an order its member's, a
refund its order's.  A handler that finds its dependency missing raises
:class:`Missing`; the consumer then *parks* the event — a row in the consumer's own
database, written in the same transaction as the event's inbox row — and moves on.
A handler that brings a dependency into being says so (``uow.provide("member:A")``);
after its commit the service applies every event parked on it, oldest first.

Order: a key's parked events are applied oldest first, and before an event of a key
with parked events is applied, those of them that can be applied by then are.  An event
that does not depend on what a parked one waits for is not held up by it: a refund
whose order never comes blocks no one (an operator can discard it), and an order
re-published from the dead-letter topic can still provide the refund parked before it.
Whether a parked one can go is decided again, in the event's own transaction, when
what it waits for was provided in between (``Service._apply``): a dependency provided
a moment before never lets a later event overtake an earlier one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokenmall.db import among
from tokenmall.messaging.tables import MessagingTables

# How long a parked event waits before it is tried again without being woken (the
# dependency may have been provided by another process, whose wake-up this one did
# not hear): doubling from FIRST up to LAST seconds.
RETRY_FIRST_SECONDS = 1.0
RETRY_LAST_SECONDS = 60.0


class Missing(Exception):
    """The event depends on something not here yet (``dependency``, e.g. "member:A")."""

    def __init__(self, dependency: str, reason: str = "") -> None:
        super().__init__(reason or f"waiting for {dependency}")
        self.dependency = dependency


@dataclass(frozen=True)
class ParkedEvent:
    id: int
    consumer: str
    key: str
    waiting_for: str
    topic: str
    event_id: str
    event_type: str
    body: str
    parked_at: datetime
    attempts: int
    last_error: str | None
    day: int | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(RETRY_LAST_SECONDS, RETRY_FIRST_SECONDS * 2 ** max(0, attempts)))


def _aware(value: datetime) -> datetime:
    """SQLite hands timestamps back naive (they were stored in UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class ParkingLot:
    """The ``parked`` table's operations; every one runs in the caller's session."""

    def __init__(self, tables: MessagingTables) -> None:
        self.table = tables.parked

    def _columns(self) -> list[Any]:
        t = self.table
        return [
            t.c.id,
            t.c.consumer,
            t.c.key,
            t.c.waiting_for,
            t.c.topic,
            t.c.event_id,
            t.c.event_type,
            t.c.body,
            t.c.parked_at,
            t.c.attempts,
            t.c.last_error,
            t.c.day,
        ]

    def _row(self, row: Any) -> ParkedEvent:
        return ParkedEvent(
            id=int(row.id),
            consumer=row.consumer,
            key=row.key,
            waiting_for=row.waiting_for,
            topic=row.topic,
            event_id=row.event_id,
            event_type=row.event_type,
            body=row.body,
            parked_at=_aware(row.parked_at),
            attempts=int(row.attempts),
            last_error=row.last_error,
            day=row.day,
        )

    async def keys_with_parked(
        self, session: AsyncSession, consumer: str, keys: Iterable[str]
    ) -> set[str]:
        """Which of ``keys`` have parked events of this consumer (one statement)."""
        t = self.table
        wanted = sorted(set(keys))
        if not wanted:
            return set()
        rows = await session.execute(
            select(t.c.key)
            .where(t.c.consumer == consumer, among(session, t.c.key, wanted))
            .distinct()
        )
        return {row.key for row in rows}

    async def keys_waiting_for(
        self, session: AsyncSession, consumer: str, dependencies: Iterable[str]
    ) -> list[str]:
        """The keys of this consumer's events parked on one of ``dependencies``, oldest
        first."""
        t = self.table
        wanted = sorted(set(dependencies))
        found: dict[str, int] = {}
        for start in range(0, len(wanted), 5000):  # below every driver's parameter bound
            rows = await session.execute(
                select(t.c.key, func.min(t.c.id).label("first"))
                .where(
                    t.c.consumer == consumer,
                    among(session, t.c.waiting_for, wanted[start : start + 5000]),
                )
                .group_by(t.c.key)
            )
            for row in rows:
                found[row.key] = min(found.get(row.key, row.first), row.first)
        return sorted(found, key=found.__getitem__)

    async def dependencies_of(self, session: AsyncSession, consumer: str, key: str) -> set[str]:
        """What the parked events of this consumer and key wait for (empty: none parked)."""
        t = self.table
        rows = await session.execute(
            select(t.c.waiting_for).where(t.c.consumer == consumer, t.c.key == key).distinct()
        )
        return {row.waiting_for for row in rows}

    async def get(self, session: AsyncSession, parked_id: int) -> ParkedEvent | None:
        row = (
            await session.execute(select(*self._columns()).where(self.table.c.id == parked_id))
        ).first()
        return None if row is None else self._row(row)

    async def park(
        self,
        session: AsyncSession,
        *,
        consumer: str,
        key: str,
        waiting_for: str,
        topic: str,
        event_id: str,
        event_type: str,
        body: bytes,
        day: int | None = None,
    ) -> None:
        await self.park_many(
            session,
            [
                {
                    "consumer": consumer,
                    "key": key,
                    "waiting_for": waiting_for,
                    "topic": topic,
                    "event_id": event_id,
                    "event_type": event_type,
                    "body": body,
                    "day": day,
                }
            ],
        )

    async def park_many(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        """Park several events in one statement (``rows``: the columns of :meth:`park`, the
        body as bytes); ids follow the list's order (per-key order)."""
        if not rows:
            return
        now = _now()
        await session.execute(
            self.table.insert(),
            [
                row
                | {
                    "body": row["body"].decode("utf-8", errors="replace"),
                    "parked_at": now,
                    "attempts": 0,
                    "next_try_at": now + retry_delay(0),
                }
                for row in rows
            ],
        )

    async def groups(
        self,
        session: AsyncSession,
        dependencies: Iterable[str],
        limit: int = 500,
        after: int = 0,
        due: bool = True,
        failed_only: bool = False,
    ) -> list[tuple[str, str, int]]:
        """(consumer, key, first id) of the groups with an event parked on one of
        ``dependencies`` or (``due``) due for a retry — ``failed_only``: only those whose
        handler failed, not those waiting for a dependency — oldest first; ``after``: the
        page after the one whose last group's first id it is."""
        t = self.table
        deps = sorted(set(dependencies))
        conditions: list[ColumnElement[bool]] = (
            [among(session, t.c.waiting_for, deps)] if deps else []
        )
        if due:
            retry: ColumnElement[bool] = t.c.next_try_at <= _now()
            if failed_only:
                retry = and_(retry, t.c.last_error.is_not(None))
            conditions.append(retry)
        if not conditions:
            return []
        first = func.min(t.c.id).label("first")
        rows = await session.execute(
            select(t.c.consumer, t.c.key, first)
            .where(or_(*conditions))
            .group_by(t.c.consumer, t.c.key)
            .having(first > after)
            .order_by(first)
            .limit(limit)
        )
        return [(r.consumer, r.key, int(r.first)) for r in rows]

    async def of_group(
        self, session: AsyncSession, consumer: str, key: str, limit: int = 1000
    ) -> Sequence[ParkedEvent]:
        t = self.table
        rows = await session.execute(
            select(*self._columns())
            .where(t.c.consumer == consumer, t.c.key == key)
            .order_by(t.c.id)
            .limit(limit)
        )
        return [self._row(r) for r in rows]

    async def take(self, session: AsyncSession, parked_id: int) -> bool:
        """Delete the row in the caller's transaction (committed with the event's effect);
        False if another process took it first."""
        t = self.table
        result = await session.execute(delete(t).where(t.c.id == parked_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def still_waiting(
        self, session: AsyncSession, parked: ParkedEvent, waiting_for: str, error: str | None
    ) -> None:
        """It was tried and must wait: for ``waiting_for`` (``error`` None: still missing
        something) or after a failure (``error``).  Only failures count as attempts (the
        handler's attempts run out on them, a long wait must not use them up); a wait's
        next try comes after as long again as it has waited, within the retry bounds."""
        t = self.table
        now = _now()
        if error is None:
            attempts = parked.attempts
            waited = (now - _aware(parked.parked_at)).total_seconds()
            delay = timedelta(seconds=min(RETRY_LAST_SECONDS, max(RETRY_FIRST_SECONDS, waited)))
        else:
            attempts = parked.attempts + 1
            delay = retry_delay(attempts)
        await session.execute(
            update(t)
            .where(t.c.id == parked.id)
            .values(
                waiting_for=waiting_for,
                attempts=attempts,
                next_try_at=now + delay,
                last_error=error,
            )
        )

    async def listing(
        self, session: AsyncSession, offset: int = 0, limit: int = 100
    ) -> tuple[list[ParkedEvent], int]:
        t = self.table
        total = (await session.execute(select(func.count()).select_from(t))).scalar_one()
        rows = await session.execute(
            select(*self._columns()).order_by(t.c.id).offset(offset).limit(limit)
        )
        return [self._row(r) for r in rows], int(total)

    async def stats(self, session: AsyncSession) -> dict[str, tuple[int, datetime]]:
        """Per consumer: (parked count, when the oldest was parked)."""
        t = self.table
        rows = await session.execute(
            select(t.c.consumer, func.count(), func.min(t.c.parked_at)).group_by(t.c.consumer)
        )
        return {r[0]: (int(r[1]), _aware(r[2])) for r in rows}
