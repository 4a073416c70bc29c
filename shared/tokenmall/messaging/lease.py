"""A named lease in a service's own database: one holder at a time, with fencing.

Used where exactly one process of a service may act: the dividends engine (a single
writer: two engines in memory over one database would diverge) and every service's
outbox relay (two relays could send one key's events out of order).  The holder renews
the lease well within ``ttl``; another process takes it over only once it expired (the
holder died or hung).  Each takeover increments ``fence``; a holder checks its
(holder, fence) inside every transaction that must only commit while it still leads
(``check``): a process that lost the lease — paused past the expiry, then woken — finds
that out before its commit, never after.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tokenmall.messaging.tables import MessagingTables
from tokenmall.messaging.uow import begin_write

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """This process no longer holds the lease: it must not commit what it was doing."""


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tables: MessagingTables,
        name: str,
        ttl_seconds: float = 5.0,
        holder: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.table = tables.leases
        self.name = name
        self.ttl = timedelta(seconds=ttl_seconds)
        self.holder = holder or holder_id()
        self.fence: int | None = None  # set while held
        self._renewed = 0.0  # monotonic time of the last renewal

    @property
    def held(self) -> bool:
        return self.fence is not None

    async def hold(self) -> bool:
        """``acquire`` at most every ttl/3: cheap enough to call before every batch."""
        if (
            self.fence is not None
            and time.monotonic() - self._renewed < self.ttl.total_seconds() / 3
        ):
            return True
        return await self.acquire()

    async def acquire(self) -> bool:
        """Take or renew the lease; True while this process holds it."""
        t = self.table
        now = datetime.now(UTC)
        async with self.sessions() as session:
            await begin_write(session)
            result = await session.execute(
                update(t)
                .where(t.c.name == self.name)
                .where((t.c.holder == self.holder) | (t.c.expires_at < now))
                .values(
                    fence=case((t.c.holder == self.holder, t.c.fence), else_=t.c.fence + 1),
                    holder=self.holder,
                    expires_at=now + self.ttl,
                )
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                exists = await session.execute(select(t.c.name).where(t.c.name == self.name))
                if exists.first() is not None:
                    await session.rollback()
                    self._lost_if_held("another process holds it")
                    return False
                try:
                    await session.execute(
                        insert(t).values(
                            name=self.name, holder=self.holder, fence=1, expires_at=now + self.ttl
                        )
                    )
                except IntegrityError:  # another process created it first
                    await session.rollback()
                    return False
            fence = (
                await session.execute(select(t.c.fence).where(t.c.name == self.name))
            ).scalar_one()
            await session.commit()
        if self.fence is not None and self.fence != fence:
            self._lost_if_held("taken over and back")
            return False
        if self.fence is None:
            log.info("lease %s taken by %s (fence %d)", self.name, self.holder, fence)
        self.fence = int(fence)
        self._renewed = time.monotonic()
        return True

    def _lost_if_held(self, why: str) -> None:
        if self.fence is not None:
            log.error("lease %s lost by %s: %s", self.name, self.holder, why)
            self.fence = None

    async def check(self, session: AsyncSession) -> None:
        """In the caller's transaction: still ours (renewed), or ``LeaseLost``.  On
        PostgreSQL the lease row stays locked until that transaction ends, so no takeover
        can slip in between this check and the commit."""
        t = self.table
        if self.fence is None:
            raise LeaseLost(f"lease {self.name} is not held by {self.holder}")
        result = await session.execute(
            update(t)
            .where(t.c.name == self.name, t.c.holder == self.holder, t.c.fence == self.fence)
            .values(expires_at=datetime.now(UTC) + self.ttl)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            self._lost_if_held("fenced off")
            raise LeaseLost(f"lease {self.name} was taken over from {self.holder}")

    async def release(self) -> None:
        """Let a standby take over at once (clean shutdown)."""
        if self.fence is None:
            return
        t = self.table
        async with self.sessions() as session:
            await begin_write(session)
            await session.execute(
                update(t)
                .where(t.c.name == self.name, t.c.holder == self.holder, t.c.fence == self.fence)
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
            await session.commit()
        self.fence = None
