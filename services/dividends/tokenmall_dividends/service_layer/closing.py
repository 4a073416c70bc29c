"""Day boundaries: day D is settled once every input of D has reached the engine.

1. ``request`` (``POST /v1/settlements/{day}``, later the scheduler) records the
   closing and emits ``DayClosing(D)`` (dividends topic).
2. Orders and wallet close their business day (tokenmall.business_day): inputs they
   accept from then on carry D + 1, and one ``DayClosed(D)`` marker follows the day's
   inputs on every partition of their topic.
3. Here the markers are recorded as they arrive (:func:`record_marker`).  The
   :class:`DayCloser` settles D when every partition of every watermarked topic has
   its marker (of D or later) and no input of D is parked (an order waiting for its
   member, a refund for its order): those are applied first.
4. Inputs stamped D + 1 that overtake the markers are parked on ``day:D+1`` and
   applied right after D settled, in arrival order per key.

An input stamped with a day that is already settled (only after a forced settlement,
or from a producer older than the watermark) is applied to the current day and
counted (``tokenmall_late_inputs_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from tokenmall import contracts
from tokenmall.messaging import Missing, UnitOfWork
from tokenmall.servicekit import Service
from tokenmall_dividends.adapters.tables import day_closings, day_markers, settlements

log = logging.getLogger(__name__)

# the consumers whose events carry a business day (what a settlement waits for)
DAY_STAMPED_CONSUMERS = ("dividends-orders", "dividends-requests")
DAY_STAMPED_TYPES = frozenset({"OrderPaid", "OrdersPaid", "OrderRefunded", "WalletRequest"})


class DayMetrics:
    def __init__(self, svc: Service) -> None:
        registry = svc.metrics.registry
        self.late = Counter(
            "tokenmall_late_inputs_total",
            "Inputs that reached the engine after their business day was settled (counted "
            "in the current day instead), per kind",
            ["service", "kind"],
            registry=registry,
        )
        self.early = Counter(
            "tokenmall_early_inputs_total",
            "Inputs of the next business day that arrived before the current one settled "
            "(parked until it has)",
            ["service"],
            registry=registry,
        )
        self.wait = Histogram(
            "tokenmall_settlement_wait_seconds",
            "From a settlement's request to the settlement: waiting for the day markers and "
            "the day's parked inputs",
            ["service"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=registry,
        )
        self.waiting = Gauge(
            "tokenmall_settlement_waiting_seconds",
            "Age of the requested settlement that still waits (0: none waits)",
            ["service"],
            registry=registry,
        )
        self.service = svc.name


@dataclass
class Waiting:
    """What a requested settlement still waits for."""

    day: int
    # topic -> partitions whose marker has not arrived (None: no marker of it at all yet)
    markers: dict[str, list[int] | None] = field(default_factory=dict)
    parked_inputs: int = 0
    # the oldest of them (an operator may discard one that will never be applicable)
    parked: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.markers and self.parked_inputs == 0

    def describe(self) -> dict[str, Any]:
        return {
            "markers": {
                topic: "no marker yet" if missing is None else missing
                for topic, missing in self.markers.items()
            },
            "parked_inputs": self.parked_inputs,
            "parked": self.parked,
        }


def check_day(svc: Service, engine_day: int, kind: str, day: int | None, inputs: int = 1) -> None:
    """Before an input (or a batch of ``inputs``) is applied: park one of a later day,
    count one of a settled day."""
    if day is None or day == engine_day:
        return
    metrics: DayMetrics = svc.state["day_metrics"]
    if day > engine_day:
        metrics.early.labels(svc.name).inc(inputs)
        raise Missing(
            f"day:{day}", f"an input of day {day} while day {engine_day} is not settled yet"
        )
    metrics.late.labels(svc.name, kind).inc(inputs)
    log.warning(
        "a %s of day %d arrived after that day was settled: it counts in day %d",
        kind,
        day,
        engine_day,
    )


def park_day(svc: Service, event: contracts.Event) -> int | None:
    """The day a parked input holds up (``parked.day``): the day it carries, or the
    engine's current day for one without a day (an older producer) or of a day settled
    already (by force) — it counts in the current day once applied."""
    if event.type not in DAY_STAMPED_TYPES:
        return None
    from tokenmall_dividends.service_layer.handlers import host_of

    current = host_of(svc).engine.day
    day: int | None = getattr(event, "day", None)
    return current if day is None or day < current else day


async def record_marker(event: contracts.DayClosed, uow: UnitOfWork, svc: Service) -> None:
    """A producer's watermark for one partition; the closer looks whether the day can go."""
    values = {
        "day": event.day,
        "topic": event.topic,
        "partition": event.partition,
        "partitions": event.partitions,
        "received_at": datetime.now(UTC),
    }
    dialect = uow.session.get_bind().dialect.name
    stmt: Any = (postgresql if dialect == "postgresql" else sqlite).insert(day_markers)
    await uow.session.execute(stmt.values(values).on_conflict_do_nothing())
    closer_of(svc).poke()  # it takes the engine's lock: it looks once this has committed


async def missing(svc: Service, session: AsyncSession, day: int) -> Waiting:
    """What settling ``day`` still waits for.  A marker of a later day closes it too."""
    waiting = Waiting(day)
    rows = (
        await session.execute(
            select(day_markers.c.topic, day_markers.c.partition, day_markers.c.partitions).where(
                day_markers.c.day >= day
            )
        )
    ).all()
    for topic in svc.settings.day_watermarks:  # type: ignore[attr-defined]
        mine = [r for r in rows if r.topic == topic]
        if not mine:
            waiting.markers[topic] = None
            continue
        expected = max(r.partitions for r in mine)
        absent = sorted(set(range(expected)) - {r.partition for r in mine})
        if absent:
            waiting.markers[topic] = absent
    waiting.parked_inputs, waiting.parked = await parked_inputs(svc, session, day)
    return waiting


SHOWN_PARKED = 20


async def parked_inputs(
    svc: Service, session: AsyncSession, day: int
) -> tuple[int, list[dict[str, Any]]]:
    """The parked inputs that count in ``day`` (parked.day, see park_day): how many, and
    the oldest of them.  Only that day's: one that will never be applicable (its member
    never registers) holds up its own day's settlement — until an operator discards it
    or forces the day — not every later one (applied some day after, it counts as
    late)."""
    parked = svc.tables.parked
    of_day = (
        parked.c.day == day,
        parked.c.consumer.in_(DAY_STAMPED_CONSUMERS),
        parked.c.event_type.in_(DAY_STAMPED_TYPES),
    )
    count = (
        await session.execute(select(func.count()).select_from(parked).where(*of_day))
    ).scalar_one()
    if not count:
        return 0, []
    rows = await session.execute(
        select(parked.c.id, parked.c.event_type, parked.c.key, parked.c.waiting_for)
        .where(*of_day)
        .order_by(parked.c.id)
        .limit(SHOWN_PARKED)
    )
    return int(count), [dict(row._mapping) for row in rows]


# a repeated POST of a waiting settlement re-emits DayClosing at most this often
REASK_ON_REQUEST_SECONDS = 1.0


@dataclass
class Requested:
    accepted: bool
    reason: str | None = None
    settled: bool = False  # the day was settled before
    # this call requested the settlement, or forced it (the others found it asked)
    first: bool = False


class DayCloser:
    """Settles the requested day as soon as it can go (event-driven, and every second
    while one waits, for what another process provided)."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.pending: int | None = None  # the requested, unsettled day (the engine's day)
        self.requested_at: float | None = None  # monotonic, for the waiting gauge
        self.asked_at: float | None = None  # monotonic: the last DayClosing emitted
        self.waiting: Waiting | None = None  # what the pending day waited for at the last look
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        metrics: DayMetrics = svc.state["day_metrics"]
        metrics.waiting.labels(svc.name).set_function(self._waiting_seconds)

    def _waiting_seconds(self) -> float:
        return 0.0 if self.requested_at is None else time.monotonic() - self.requested_at

    def poke(self) -> None:
        if self.pending is not None:
            self._wake.set()

    async def start(self) -> None:
        """On becoming active: pick up a closing requested before a restart."""
        from tokenmall_dividends.service_layer.handlers import host_of

        assert self.svc.sessions is not None
        day = host_of(self.svc).engine.day
        async with self.svc.sessions() as session:
            row = (
                await session.execute(
                    select(day_closings.c.day).where(
                        day_closings.c.day == day, day_closings.c.settled_at.is_(None)
                    )
                )
            ).first()
        if row is not None:
            self._pending(day)
        self._task = asyncio.create_task(self.run_forever(), name="dividends-day-closer")
        self.svc.closers.append(self.stop)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _pending(self, day: int | None) -> None:
        self.pending = day
        self.requested_at = None if day is None else time.monotonic()
        self.waiting = None

    def _asked_long_ago(self, seconds: float) -> bool:
        return self.asked_at is None or time.monotonic() - self.asked_at >= seconds

    def _ask(self, uow: UnitOfWork, day: int) -> None:
        """Ask the producers to close ``day`` (in the caller's transaction).  Asking again
        is harmless: a producer whose day is already closed writes its markers again."""
        uow.emit(contracts.DIVIDENDS, contracts.DayClosing(day=day))
        self.asked_at = time.monotonic()

    async def _ask_again(self, day: int) -> None:
        svc = self.svc
        async with svc.uow() as uow:
            await uow.begin_write()
            self._ask(uow, day)
            await svc.check_lease(uow.session)
            await uow.commit()
        svc.committed()
        log.warning("day %d still misses markers; asked the producers again", day)

    async def run_forever(self) -> None:
        reask = float(self.svc.settings.day_reask_seconds)  # type: ignore[attr-defined]
        while True:
            self._wake.clear()
            if self.pending is not None:
                try:
                    await self.settle_if_ready()
                    waiting, day = self.waiting, self.pending
                    if (
                        day is not None
                        and waiting is not None
                        and waiting.markers
                        and self._asked_long_ago(reask)
                    ):
                        await self._ask_again(day)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("settling day %s failed; trying again", self.pending)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0 if self.pending is not None else None):
                    await self._wake.wait()

    async def request(self, day: int, force: bool) -> Requested:
        """Record the closing of ``day`` (once) and ask the producers for their markers;
        ``force``: settle now, without waiting for them."""
        from tokenmall_dividends.service_layer.handlers import host_of

        svc = self.svc
        host = host_of(svc)
        async with host.lock, svc.uow() as uow:
            await uow.begin_write()
            current = host.engine.day
            first = False
            if day < current:
                return Requested(True, settled=True)
            if day > current:
                return Requested(False, f"day {day} has not started yet (current day is {current})")
            known = (
                await uow.session.execute(
                    select(day_closings.c.forced).where(day_closings.c.day == day)
                )
            ).first()
            if known is None:
                await uow.session.execute(
                    insert(day_closings).values(
                        day=day, requested_at=datetime.now(UTC), forced=force
                    )
                )
                self._ask(uow, day)
                first = True
            else:
                if force and not known.forced:
                    await uow.session.execute(
                        update(day_closings).where(day_closings.c.day == day).values(forced=True)
                    )
                elif not force and self._asked_long_ago(REASK_ON_REQUEST_SECONDS):
                    self._ask(uow, day)  # the caller asks again: so do we
            await svc.check_lease(uow.session)
            await uow.commit()
        svc.committed()
        if self.pending != day:
            self._pending(day)
        if force:
            # this call settled it, though another asked first (already_settled: false)
            first = await self.settle_if_ready(force=True) or first
        else:
            self._wake.set()
        return Requested(True, first=first)

    async def settle_if_ready(self, force: bool = False) -> bool:
        """Settle the pending day if nothing of it is missing (or ``force``)."""
        from tokenmall_dividends.service_layer import handlers

        svc = self.svc
        host = handlers.host_of(svc)
        day = host.engine.day
        # inputs of this day that overtook the previous day's settlement go first
        await svc.unpark({f"day:{day}"})
        async with host.lock, svc.uow() as uow:
            if host.engine.day != day:
                return False  # settled meanwhile
            closing = (
                await uow.session.execute(select(day_closings).where(day_closings.c.day == day))
            ).first()
            if closing is None:
                return False
            if not (force or closing.forced):
                waiting = await missing(svc, uow.session, day)
                self.waiting = waiting
                if not waiting.ready:
                    return False
            # the inputs of the next day may go once this commits: one that arrives now
            # must not pass those of its key parked on it (Service._apply)
            svc.providing({f"day:{day + 1}"})
            outcome = await handlers.apply(svc, uow, "settle", f"settle:{day}", {"day": day})
        if not outcome.accepted:  # pragma: no cover - the day is the engine's day
            log.error("settling day %d was refused: %s", day, outcome.reason)
            return False
        self._pending(None)
        self._settled.set()
        self._settled = asyncio.Event()
        # what waited for the next day goes now, per key in arrival order
        await svc.unpark({f"day:{day + 1}"})
        return True

    async def wait_settled(self, day: int, timeout: float) -> bool:
        """True once ``day`` is settled, False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if await settled_row(self.svc, day) is not None:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            settled = self._settled
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await settled.wait()


async def settled_row(svc: Service, day: int) -> Any:
    assert svc.sessions is not None
    async with svc.sessions() as session:
        return (await session.execute(select(settlements).where(settlements.c.day == day))).first()


async def closing_status(svc: Service, day: int) -> dict[str, Any] | None:
    """A requested, unsettled settlement: since when, and what it waits for."""
    assert svc.sessions is not None
    async with svc.sessions() as session:
        row = (await session.execute(select(day_closings).where(day_closings.c.day == day))).first()
        if row is None or row.settled_at is not None:
            return None
        waiting = await missing(svc, session, day)
    return {
        "day": day,
        "status": "waiting",
        "requested_at": row.requested_at,
        "waiting_for": waiting.describe(),
    }


def closer_of(svc: Service) -> DayCloser:
    closer: DayCloser = svc.state["closer"]
    return closer
