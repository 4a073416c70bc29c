"""Sends due webhook deliveries, records every attempt, schedules retries.

At least once: a delivery is sent until an endpoint answers 2xx, with exponential
backoff (``base · 2^(n-1)``, capped, ±10 % jitter) for the retry window (72 h by
default; the last try on the window's end), then marked failed (a redelivery opens a
new window).  Runs in every process of a hosting service: a delivery is claimed by one
conditional UPDATE, so a second process takes only what nobody holds; a claim is never
more than can be sent at once and every send ends by a hard deadline, so a live
sender records its result before the claim runs out, and a claim older than that (a
process that died mid-send) is due again.  Nothing here holds a database transaction
while it waits for a receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

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
ANSWER_BYTES = 4096  # of a receiver's answer read at most


class InternalTarget(Exception):
    """The endpoint's host resolves to an address deliveries are not sent to."""


def public_address(text: str) -> bool:
    """Whether ``text`` is a globally routable address (not loopback, private, shared
    100.64/10, link-local, reserved, multicast or unspecified)."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


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
        allow_private: bool = False,
    ) -> None:
        self.sessions = sessions
        self.tables = tables
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        # no more than can be sent at once: a claimed delivery never waits for a slot
        self.batch = max(1, min(batch, concurrency))
        self.allow_private = allow_private
        self.poll_seconds = poll_seconds
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        # a claim older than this is a dead sender's: every send of a claim ends within
        # the timeout (a hard deadline), then its result is recorded; twice that, and a margin
        self.in_flight = timedelta(seconds=timeout * 2 + 5)
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
        """Take what is due, at most one send slot's worth (every claimed delivery is
        sent at once, so a claim never waits longer than one send's deadline)."""
        d, e = self.tables.deliveries, self.tables.endpoints
        now = datetime.now(UTC)
        due = (
            select(d.c.id, e.c.active)
            .join(e, e.c.id == d.c.endpoint_id)
            .where(d.c.status == "pending", d.c.next_try_at <= now)
            .order_by(d.c.next_try_at, d.c.id)
            .limit(self.batch)
        )
        # a plain read first: an idle poll takes no write lock (SQLite: the engine's too)
        async with self.sessions() as session:
            found = (await session.execute(due)).all()
        if not found:
            return []
        token = uuid.uuid4().hex
        async with writing(self.sessions) as session:
            stale = [row.id for row in found if not row.active]
            if stale:  # queued by a transaction that read the endpoint just before its deletion
                await session.execute(
                    update(d)
                    .where(d.c.id.in_(stale), d.c.status == "pending")
                    .values(status="cancelled", claim=None)
                )
            ids = [row.id for row in found if row.active]
            if not ids:
                return []
            locked = select(d.c.id).where(
                d.c.id.in_(ids), d.c.status == "pending", d.c.next_try_at <= now
            )
            if session.get_bind().dialect.name == "postgresql":
                # rows another process is claiming are skipped, not waited for (no deadlock)
                locked = locked.with_for_update(skip_locked=True)
            ids = [row.id for row in await session.execute(locked.order_by(d.c.id))]
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
            # a receiver's answer is read up to ANSWER_BYTES, as sent (no decompression)
            "Accept-Encoding": "identity",
            EVENT_ID_HEADER: item.event_id,
            EVENT_TYPE_HEADER: item.kind,
            DELIVERY_HEADER: str(item.id),
            SIGNATURE_HEADER: signature_header(item.secret, timestamp, body),
        }
        at = datetime.now(UTC)
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            # the whole exchange within the timeout (httpx's own is per read: a receiver
            # trickling bytes would hold the batch, and its claim, for ever)
            async with asyncio.timeout(self.timeout):
                await self._refuse_internal(item.url)
                status, answer = await self._post(item.url, body, headers)
            if not 200 <= status < 300:
                error = f"HTTP {status}: {answer[:ERROR_TEXT]}"
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except InternalTarget as exc:
            error = str(exc)
        except (httpx.HTTPError, OSError) as exc:
            error = f"{type(exc).__name__}: {str(exc)[:ERROR_TEXT] or 'no answer'}"
        seconds = time.perf_counter() - started
        if self.on_attempt is not None:
            self.on_attempt("delivered" if error is None else "failed", seconds)
        return at, status, error, round(seconds * 1000)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """The answer's status and the start of its body: at most ANSWER_BYTES are read
        (a receiver's answer is not ours to buffer whole)."""
        async with self._http().stream("POST", url, content=body, headers=headers) as answer:
            kept = b""
            async for chunk in answer.aiter_raw():
                kept += chunk
                if len(kept) >= ANSWER_BYTES:
                    break
            return answer.status_code, kept[:ANSWER_BYTES].decode("utf-8", "replace")

    async def _refuse_internal(self, url: str) -> None:
        """A URL whose host resolves to a loopback, private or otherwise non-public
        address is not sent to (unless allowed): registration checked the literal, the
        resolver may still answer with one.  Not on an injected transport (tests)."""
        if self.allow_private or self._transport is not None:
            return
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for info in infos:
            if not public_address(str(info[4][0])):
                raise InternalTarget(f"refused: {host} resolves to a non-public address")

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
                    closes = _utc(item.retry_from) + window
                    if now >= closes:
                        values |= {"status": "failed"}  # the window closed: a redelivery reopens it
                    else:
                        # the last try falls on the window's end: retries cover all of it
                        next_try = now + timedelta(seconds=self.policy.delay(attempts))
                        values |= {"next_try_at": min(next_try, closes)}
                # only while still ours: a redelivery or a deletion meanwhile wins
                await session.execute(
                    update(d).where(d.c.id == item.id, d.c.claim == item.claim).values(values)
                )
