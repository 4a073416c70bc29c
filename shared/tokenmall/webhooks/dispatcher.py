"""Sends due webhook deliveries, records every attempt, schedules retries.

At least once: a delivery is sent until an endpoint answers 2xx, with exponential
backoff (``base · 2^(n-1)``, capped, ±10 % jitter) for the retry window (72 h by
default), then marked failed (a redelivery starts it over).  Runs in every process of a
hosting service: a delivery is claimed by one conditional UPDATE, so a second process
takes only what nobody holds, and a claim older than the in-flight window (a process
that died mid-send) is due again.  Nothing here holds a database transaction while it
waits for a receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tokenmall.webhooks.signing import (
    DELIVERY_HEADER,
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)
from tokenmall.webhooks.store import writing
from tokenmall.webhooks.tables import WebhookTables

log = logging.getLogger("tokenmall.webhooks")

ERROR_TEXT = 500  # characters of a receiver's error kept in the log


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 10.0
    max_delay_seconds: float = 6 * 3600.0
    window_seconds: float = 72 * 3600.0  # at least 24 h of retries (the floor)
    jitter: float = 0.1

    def delay(self, attempts: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds after the ``attempts``-th failed attempt before the next one."""
        raw = min(self.base_seconds * 2.0 ** min(attempts - 1, 60), self.max_delay_seconds)
        return raw * (1 + self.jitter * (2 * rng() - 1))

    def schedule(self, attempts: int) -> list[float]:
        """The attempts' offsets from the first (no jitter) until the window closes."""
        offsets, at = [0.0], 0.0
        for n in range(1, attempts):
            at += min(self.base_seconds * 2.0 ** (n - 1), self.max_delay_seconds)
            if at > self.window_seconds:
                break
            offsets.append(at)
        return offsets


@dataclass
class _Taken:
    id: int
    attempts: int
    payload: str
    event_id: str
    kind: str
    retry_from: datetime
    url: str
    secret: str
    claim: str


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class WebhookDispatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tables: WebhookTables,
        *,
        policy: RetryPolicy | None = None,
        timeout: float = 10.0,
        concurrency: int = 16,
        batch: int = 100,
        poll_seconds: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_attempt: Callable[[str, float], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.tables = tables
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.batch = batch
        self.poll_seconds = poll_seconds
        self._gate = asyncio.Semaphore(concurrency)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        # a claim older than this is a dead sender's: the send's timeout and a margin
        self.in_flight = timedelta(seconds=timeout * 3 + 5)
        self.on_attempt = on_attempt  # (outcome, seconds): metrics

    def wake(self) -> None:
        self._wake.set()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # redirects are not followed: the registered URL is the one that is signed for
            self._client = httpx.AsyncClient(
                timeout=self.timeout, transport=self._transport, follow_redirects=False
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def run_forever(self) -> None:
        while True:
            try:
                sent = await self.dispatch_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database outage: try again at the next poll
                log.exception("webhook dispatch failed")
                sent = 0
            if sent:
                continue  # there may be more due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()

    async def _claim(self) -> list[_Taken]:
        d, e = self.tables.deliveries, self.tables.endpoints
        token = uuid.uuid4().hex
        now = datetime.now(UTC)
        async with writing(self.sessions) as session:
            due = (
                select(d.c.id)
                .join(e, e.c.id == d.c.endpoint_id)
                .where(d.c.status == "pending", d.c.next_try_at <= now, e.c.active.is_(True))
                .order_by(d.c.next_try_at, d.c.id)
                .limit(self.batch)
            )
            ids = [row.id for row in await session.execute(due)]
            if not ids:
                return []
            # conditional: a delivery another process claimed meanwhile is no longer due
            await session.execute(
                update(d)
                .where(d.c.id.in_(ids), d.c.status == "pending", d.c.next_try_at <= now)
                .values(claim=token, next_try_at=now + self.in_flight)
            )
            rows = await session.execute(
                select(
                    d.c.id,
                    d.c.attempts,
                    d.c.payload,
                    d.c.event_id,
                    d.c.kind,
                    d.c.retry_from,
                    e.c.url,
                    e.c.secret,
                    d.c.claim,
                )
                .join(e, e.c.id == d.c.endpoint_id)
                .where(d.c.claim == token)
            )
            return [_Taken(**row._mapping) for row in rows]

    async def dispatch_due(self) -> int:
        """Send what is due now (one batch); the number of attempts made."""
        taken = await self._claim()
        if not taken:
            return 0
        results = await asyncio.gather(*(self._send(item) for item in taken))
        await self._record(list(zip(taken, results, strict=True)))
        return len(taken)

    async def _send(self, item: _Taken) -> tuple[datetime, int | None, str | None, int]:
        body = item.payload.encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "tokenmall-webhooks/1",
            EVENT_ID_HEADER: item.event_id,
            EVENT_TYPE_HEADER: item.kind,
            DELIVERY_HEADER: str(item.id),
            SIGNATURE_HEADER: signature_header(item.secret, timestamp, body),
        }
        at = datetime.now(UTC)
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        async with self._gate:
            try:
                answer = await self._http().post(item.url, content=body, headers=headers)
                status = answer.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}: {answer.text[:ERROR_TEXT]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {str(exc)[:ERROR_TEXT] or 'no answer'}"
        seconds = time.perf_counter() - started
        if self.on_attempt is not None:
            self.on_attempt("delivered" if error is None else "failed", seconds)
        return at, status, error, round(seconds * 1000)

    async def _record(
        self, results: list[tuple[_Taken, tuple[datetime, int | None, str | None, int]]]
    ) -> None:
        d, a = self.tables.deliveries, self.tables.attempts
        now = datetime.now(UTC)
        window = timedelta(seconds=self.policy.window_seconds)
        async with writing(self.sessions) as session:
            await session.execute(
                a.insert(),
                [
                    {
                        "delivery_id": item.id,
                        "attempt": item.attempts + 1,
                        "at": at,
                        "status_code": status,
                        "error": error,
                        "duration_ms": ms,
                    }
                    for item, (at, status, error, ms) in results
                ],
            )
            for item, (_at, status, error, _ms) in results:
                attempts = item.attempts + 1
                values: dict[str, Any] = {
                    "attempts": attempts,
                    "last_status_code": status,
                    "last_error": error,
                    "claim": None,
                }
                if error is None:
                    values |= {"status": "delivered", "delivered_at": now}
                else:
                    next_try = now + timedelta(seconds=self.policy.delay(attempts))
                    if next_try > _utc(item.retry_from) + window:
                        values |= {"status": "failed"}  # the window closed: a redelivery reopens it
                    else:
                        values |= {"next_try_at": next_try}
                # only while still ours: a redelivery or a deletion meanwhile wins
                await session.execute(
                    update(d).where(d.c.id == item.id, d.c.claim == item.claim).values(values)
                )
