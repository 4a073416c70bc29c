"""Engine snapshots, written after the settlement that made them, off its commit path.

Recovery needs one snapshot and the accepted inputs logged after it (``load_engine``);
the input log is the truth and the snapshot only saves replaying it from the start.
So a settlement commits without one: it copies the engine's state under the lock
(``EngineHost.capture``: array copies, a fraction of a second at 1,000,000 members) and
hands it here; the compression runs in a thread and the row goes in with its own
transaction.  A crash before that loses nothing: the restart replays from the snapshot
before, over the settlement's own input.  The newest ``keep`` snapshots stay (the one
before the newest covers a newest one found damaged); older ones are deleted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from prometheus_client import Gauge, Histogram
from sqlalchemy import delete, select

from tokenmall.engine import snapshot
from tokenmall.servicekit import Service
from tokenmall_dividends.adapters.tables import snapshots

log = logging.getLogger(__name__)

KEEP = 2


class SnapshotWriter:
    """One snapshot written at a time; a newer one waiting replaces an older one that
    has not started (only the newest matters)."""

    def __init__(self, svc: Service, keep: int = KEEP) -> None:
        self.svc = svc
        self.keep = keep
        self._pending: tuple[int, int, snapshot.Captured] | None = None
        self._task: asyncio.Task[None] | None = None
        registry = svc.metrics.registry
        self.size = Gauge(
            "tokenmall_snapshot_bytes",
            "Size of the newest engine snapshot written (compressed)",
            ["service"],
            registry=registry,
        )
        self.seconds = Histogram(
            "tokenmall_snapshot_seconds",
            "Sealing (compressing) and writing one engine snapshot, off the settlement's commit",
            ["service"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )

    def submit(self, seq: int, day: int, captured: snapshot.Captured) -> None:
        """Write this state as of input ``seq`` (the settlement's, committed)."""
        self._pending = (seq, day, captured)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._write_pending(), name="dividends-snapshot")

    async def flush(self) -> None:
        """Wait for the snapshots submitted so far to be written (tests, shutdown)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _write_pending(self) -> None:
        while self._pending is not None:
            seq, day, captured = self._pending
            self._pending = None
            started = time.perf_counter()
            try:
                data = await asyncio.to_thread(snapshot.seal, captured)
                await self._insert(seq, day, data)
            except asyncio.CancelledError:
                raise
            except Exception:  # the log still has everything: the next settlement tries again
                log.exception("writing the engine snapshot at input %d failed", seq)
                continue
            self.size.labels(self.svc.name).set(len(data))
            self.seconds.labels(self.svc.name).observe(time.perf_counter() - started)

    async def _insert(self, seq: int, day: int, data: bytes) -> None:
        async with self.svc.uow() as uow:
            await uow.begin_write()
            session = uow.session
            if (
                await session.execute(select(snapshots.c.seq).where(snapshots.c.seq == seq))
            ).first():
                return  # written already (a settlement replayed after a restart)
            await session.execute(
                snapshots.insert().values(
                    seq=seq, day=day, state=data, created_at=datetime.now(UTC)
                )
            )
            newest = (
                (
                    await session.execute(
                        select(snapshots.c.seq).order_by(snapshots.c.seq.desc()).limit(self.keep)
                    )
                )
                .scalars()
                .all()
            )
            if len(newest) == self.keep:
                await session.execute(delete(snapshots).where(snapshots.c.seq < newest[-1]))
            await uow.commit()


def writer_of(svc: Service) -> SnapshotWriter:
    writer = svc.state["snapshots"]
    assert isinstance(writer, SnapshotWriter)
    return writer
