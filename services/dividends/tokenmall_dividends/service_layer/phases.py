"""Timing a settlement's phases for ``tokenmall_settlement_phase_seconds``: ``engine``
(the engine settles the day, under the lock) and ``publish`` (from the settlement's
commit until the relay has published every message it made: its release batches and
``DaySettled``).  The wallet times the third, ``book``."""

from __future__ import annotations

import time

from tokenmall.servicekit import Service

SETTLEMENT_MESSAGES = frozenset({"ReleaseComputed", "DaySettled"})


class SettlementPhases:
    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self._unpublished = 0
        self._committed_at: float | None = None
        svc.on_published = self.published

    def settled(self, members_released: int, engine_seconds: float, messages: int) -> None:
        """A settlement committed, having made ``messages`` to publish."""
        metrics = self.svc.metrics
        metrics.members_released.labels(self.svc.name).inc(members_released)
        metrics.settlement_phase.labels(self.svc.name, "engine").observe(engine_seconds)
        self._unpublished, self._committed_at = messages, time.perf_counter()

    def published(self, types: list[str]) -> None:
        if self._committed_at is None:
            return
        self._unpublished -= sum(t in SETTLEMENT_MESSAGES for t in types)
        if self._unpublished <= 0:
            seconds = time.perf_counter() - self._committed_at
            self.svc.metrics.settlement_phase.labels(self.svc.name, "publish").observe(seconds)
            self._committed_at = None


def phases_of(svc: Service) -> SettlementPhases:
    phases = svc.state["phases"]
    assert isinstance(phases, SettlementPhases)
    return phases
