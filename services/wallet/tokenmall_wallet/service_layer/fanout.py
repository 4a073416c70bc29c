"""The wallet's side of a settlement's fan-out metrics: release lines booked (a counter)
and the ``book`` phase of ``tokenmall_settlement_phase_seconds`` — from the settlement
(``DaySettled``'s time) until every release batch of its day is booked here.  Counted
after the commit of each applied event (``Subscription.on_applied``): a rolled-back or
duplicate batch never counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from tokenmall.contracts import DaySettled, Event, ReleaseComputed
from tokenmall.servicekit import Service

DAYS_TRACKED = 8  # a day whose batches never all arrive here is forgotten after that many


@dataclass
class _Day:
    booked: int = 0
    batches: int | None = None  # from DaySettled
    settled_at: datetime | None = None


class ReleaseFanout:
    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self._days: dict[int, _Day] = {}

    def applied(self, event: Event) -> None:
        if isinstance(event, ReleaseComputed):
            self.svc.metrics.release_lines.labels(self.svc.name).inc(len(event.members))
            day = self._day(event.day)
            day.booked += 1
        elif isinstance(event, DaySettled):
            day = self._day(event.day)
            day.batches, day.settled_at = event.batches, event.occurred_at
        else:
            return
        self._done(event.day, day)

    def _day(self, number: int) -> _Day:
        if number not in self._days:
            self._days[number] = _Day()
            for old in sorted(self._days)[:-DAYS_TRACKED]:
                del self._days[old]
        return self._days[number]

    def _done(self, number: int, day: _Day) -> None:
        if day.batches is None or day.settled_at is None or day.booked < day.batches:
            return
        settled_at = day.settled_at if day.settled_at.tzinfo else day.settled_at.replace(tzinfo=UTC)
        seconds = max(0.0, (datetime.now(UTC) - settled_at).total_seconds())
        self.svc.metrics.settlement_phase.labels(self.svc.name, "book").observe(seconds)
        del self._days[number]
