"""Webhook rows: registering endpoints, queueing notifications (in the transaction of the
effect that caused them), reading the delivery log, redelivering."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tokenmall.api_style import iso_utc
from tokenmall.contracts import Event
from tokenmall.db import among, insert_many
from tokenmall.messaging.uow import begin_write
from tokenmall.webhooks.signing import new_secret
from tokenmall.webhooks.tables import WebhookTables


@contextlib.asynccontextmanager
async def writing(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One write transaction, committed when the block ends (rolled back if it raises);
    on SQLite the write lock is taken first (see tokenmall.messaging.uow.begin_write)."""
    async with sessions() as session:
        await begin_write(session)
        yield session
        await session.commit()


PING = "webhook.ping"  # what POST .../ping sends: every endpoint takes it


@dataclass(frozen=True)
class Notification:
    """One webhook event: ``event_id`` is stable (derived from the event that caused it),
    so a receiver that sees it twice knows it is the same."""

    event_id: str
    kind: str
    data: dict[str, Any]
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def body(self) -> str:
        """The JSON every attempt of its deliveries sends, byte for byte."""
        envelope = {
            "id": self.event_id,
            "type": self.kind,
            "created_at": iso_utc(self.occurred_at),
            "data": self.data,
        }
        return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, default=str)


NotificationsOf = Callable[[Event], Iterable[Notification]]


class WebhookOutbox:
    """Turns the events a unit of work emits into deliveries, in the same transaction:
    a delivery exists exactly when its effect committed (no dual write), and sending it
    is the dispatcher's job, never the consumer's."""

    def __init__(self, tables: WebhookTables, notifications_of: NotificationsOf) -> None:
        self.tables = tables
        self.notifications_of = notifications_of
        self.on_queued: Callable[[], None] | None = None  # wakes the dispatcher

    async def enqueue(self, session: AsyncSession, events: Sequence[Event]) -> int:
        notes = [note for event in events for note in self.notifications_of(event)]
        if not notes:
            return 0
        return await queue(session, self.tables, notes)

    def wake(self) -> None:
        """Deliveries were committed: the dispatcher need not wait for its next poll."""
        if self.on_queued is not None:
            self.on_queued()


async def queue(
    session: AsyncSession,
    tables: WebhookTables,
    notes: Sequence[Notification],
    endpoint_id: str | None = None,
) -> int:
    """A delivery of each notification to every active endpoint subscribed to its kind
    (or to ``endpoint_id`` alone); an endpoint with no subscriber costs one lookup."""
    subs, endpoints = tables.subscriptions, tables.endpoints
    kinds = sorted({note.kind for note in notes})
    if endpoint_id is not None:
        targets: dict[str, list[str]] = {kind: [endpoint_id] for kind in kinds}
    else:
        rows = await session.execute(
            select(subs.c.kind, subs.c.endpoint_id)
            .join(endpoints, endpoints.c.id == subs.c.endpoint_id)
            .where(endpoints.c.active.is_(True), among(session, subs.c.kind, kinds))
        )
        targets = {}
        for kind, endpoint in rows:
            targets.setdefault(kind, []).append(endpoint)
    if not targets:
        return 0
    now = datetime.now(UTC)
    deliveries = [
        {
            "endpoint_id": endpoint,
            "event_id": note.event_id,
            "kind": note.kind,
            "payload": note.body(),
            "status": "pending",
            "attempts": 0,
            "next_try_at": now,
            "retry_from": now,
            "created_at": now,
        }
        for note in notes
        for endpoint in targets.get(note.kind, ())
    ]
    # the same event for the same endpoint once (a ping's id is new each time)
    await insert_many(session, tables.deliveries, deliveries, ignore_conflicts=True)
    return len(deliveries)


# ------------------------------------------------------------------ the registry


def new_endpoint_id() -> str:
    return "wh_" + secrets.token_hex(12)


async def register(
    session: AsyncSession,
    tables: WebhookTables,
    url: str,
    kinds: Sequence[str],
    description: str | None,
) -> tuple[dict[str, Any], str]:
    """A new active endpoint subscribed to ``kinds``: (its row, its secret)."""
    secret = new_secret()
    row = {
        "id": new_endpoint_id(),
        "url": url,
        "description": description,
        "secret": secret,
        "active": True,
        "created_at": datetime.now(UTC),
        "deleted_at": None,
    }
    await session.execute(tables.endpoints.insert().values(row))
    await insert_many(
        session,
        tables.subscriptions,
        [{"endpoint_id": row["id"], "kind": kind} for kind in sorted(set(kinds))],
    )
    return endpoint_view(row, sorted(set(kinds))), secret


def endpoint_view(row: Any, kinds: Sequence[str]) -> dict[str, Any]:
    get = row.get if isinstance(row, dict) else row._mapping.get
    return {
        "id": get("id"),
        "url": get("url"),
        "description": get("description"),
        "events": list(kinds),
        "active": bool(get("active")),
        "created_at": iso_utc(get("created_at")),
    }


async def _kinds_of(
    session: AsyncSession, tables: WebhookTables, ids: Sequence[str]
) -> dict[str, list[str]]:
    subs = tables.subscriptions
    rows = await session.execute(
        select(subs.c.endpoint_id, subs.c.kind)
        .where(among(session, subs.c.endpoint_id, ids))
        .order_by(subs.c.endpoint_id, subs.c.kind)
    )
    kinds: dict[str, list[str]] = {}
    for endpoint, kind in rows:
        kinds.setdefault(endpoint, []).append(kind)
    return kinds


async def endpoint(
    session: AsyncSession, tables: WebhookTables, endpoint_id: str
) -> dict[str, Any] | None:
    row = (
        await session.execute(
            select(tables.endpoints).where(
                tables.endpoints.c.id == endpoint_id, tables.endpoints.c.deleted_at.is_(None)
            )
        )
    ).first()
    if row is None:
        return None
    return endpoint_view(
        row, (await _kinds_of(session, tables, [endpoint_id])).get(endpoint_id, [])
    )


async def endpoints_page(
    session: AsyncSession, tables: WebhookTables, offset: int, limit: int
) -> dict[str, Any]:
    table = tables.endpoints
    live = table.c.deleted_at.is_(None)
    counted = select(func.count()).select_from(table).where(live)
    total = (await session.execute(counted)).scalar_one()
    rows = (
        await session.execute(
            select(table)
            .where(live)
            .order_by(table.c.created_at, table.c.id)
            .offset(offset)
            .limit(limit)
        )
    ).all()
    kinds = await _kinds_of(session, tables, [row.id for row in rows]) if rows else {}
    items = [endpoint_view(row, kinds.get(row.id, [])) for row in rows]
    return {"items": items, "total": total, "offset": offset, "limit": limit}


async def delete(session: AsyncSession, tables: WebhookTables, endpoint_id: str) -> bool:
    """Stops the endpoint: nothing more is queued for it, and what waits is cancelled
    (its routes answer 404 from then on; the rows stay in the table)."""
    now = datetime.now(UTC)
    done = await session.execute(
        update(tables.endpoints)
        .where(tables.endpoints.c.id == endpoint_id, tables.endpoints.c.deleted_at.is_(None))
        .values(active=False, deleted_at=now)
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        return False
    await session.execute(
        update(tables.deliveries)
        .where(
            tables.deliveries.c.endpoint_id == endpoint_id,
            tables.deliveries.c.status == "pending",
        )
        .values(status="cancelled", claim=None)
    )
    return True


# ------------------------------------------------------------------ the delivery log


def delivery_view(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "id": m["id"],
        "endpoint_id": m["endpoint_id"],
        "event_id": m["event_id"],
        "type": m["kind"],
        "status": m["status"],
        "attempts": m["attempts"],
        "next_try_at": iso_utc(m["next_try_at"]) if m["status"] == "pending" else None,
        "created_at": iso_utc(m["created_at"]),
        "delivered_at": iso_utc(m["delivered_at"]),
        "last_status_code": m["last_status_code"],
        "last_error": m["last_error"],
    }


async def deliveries_page(
    session: AsyncSession,
    tables: WebhookTables,
    endpoint_id: str,
    offset: int,
    limit: int,
    status: str | None = None,
) -> dict[str, Any]:
    """The endpoint's deliveries, newest first."""
    table = tables.deliveries
    where = [table.c.endpoint_id == endpoint_id]
    if status is not None:
        where.append(table.c.status == status)
    total = (
        await session.execute(select(func.count()).select_from(table).where(*where))
    ).scalar_one()
    rows = (
        await session.execute(
            select(table).where(*where).order_by(table.c.id.desc()).offset(offset).limit(limit)
        )
    ).all()
    return {
        "items": [delivery_view(row) for row in rows],
        "total": total,
        "offset": offset,
        "limit": limit,
    }


async def delivery(
    session: AsyncSession, tables: WebhookTables, endpoint_id: str, delivery_id: int
) -> dict[str, Any] | None:
    """One delivery with the body it sends and every attempt, oldest first."""
    table, attempts = tables.deliveries, tables.attempts
    row = (
        await session.execute(
            select(table).where(table.c.id == delivery_id, table.c.endpoint_id == endpoint_id)
        )
    ).first()
    if row is None:
        return None
    tries = (
        await session.execute(
            select(attempts).where(attempts.c.delivery_id == delivery_id).order_by(attempts.c.id)
        )
    ).all()
    view = delivery_view(row)
    view["payload"] = json.loads(row.payload)
    view["attempt_log"] = [
        {
            "attempt": t.attempt,
            "at": iso_utc(t.at),
            "status_code": t.status_code,
            "error": t.error,
            "duration_ms": t.duration_ms,
        }
        for t in tries
    ]
    return view


async def redeliver(
    session: AsyncSession, tables: WebhookTables, endpoint_id: str, delivery_id: int
) -> Literal["queued", "missing", "in_flight"]:
    """Due again now, with a fresh retry window, whatever became of it (the receiver
    lost it, it gave up, it was cancelled) — unless it is being sent this moment (a live
    claim): two sends of one event at once would race a receiver's dedup, and the
    answer to the first would be lost."""
    d = tables.deliveries
    now = datetime.now(UTC)
    mine = (d.c.id == delivery_id, d.c.endpoint_id == endpoint_id)
    done = await session.execute(
        update(d)
        .where(*mine, or_(d.c.claim.is_(None), d.c.next_try_at <= now))
        .values(status="pending", next_try_at=now, retry_from=now, claim=None)
    )
    if done.rowcount:  # type: ignore[attr-defined]
        return "queued"
    exists = (await session.execute(select(d.c.id).where(*mine))).first()
    return "in_flight" if exists is not None else "missing"
