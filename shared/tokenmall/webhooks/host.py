"""What a service that hosts webhooks holds: its kinds, tables, outbox and dispatcher,
and the commands its routes call (each one transaction, committed here)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tokenmall.webhooks import store
from tokenmall.webhooks.dispatcher import WebhookDispatcher
from tokenmall.webhooks.store import PING, Notification, NotificationsOf, WebhookOutbox, writing
from tokenmall.webhooks.tables import WebhookTables


class Webhooks:
    def __init__(
        self,
        tables: WebhookTables,
        kinds: Mapping[str, str],
        notifications_of: NotificationsOf,
    ) -> None:
        self.tables = tables
        self.kinds = dict(kinds)  # kind -> what it announces (the registration's enum)
        self.outbox = WebhookOutbox(tables, notifications_of)
        self.dispatcher: WebhookDispatcher | None = None
        self.sessions: async_sessionmaker[AsyncSession] | None = None
        # how deliveries travel: None is the network; tests give an httpx.ASGITransport
        self.transport: Any = None

    def start(
        self, sessions: async_sessionmaker[AsyncSession], **dispatcher: Any
    ) -> WebhookDispatcher:
        self.sessions = sessions
        self.dispatcher = WebhookDispatcher(sessions, self.tables, **dispatcher)
        self.outbox.on_queued = self.dispatcher.wake
        return self.dispatcher

    def _sessions(self) -> async_sessionmaker[AsyncSession]:
        assert self.sessions is not None, "webhooks not started"
        return self.sessions

    def _session(self) -> AsyncSession:
        return self._sessions()()

    def _woken(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def register(
        self, url: str, kinds: Sequence[str], description: str | None
    ) -> tuple[dict[str, Any], str]:
        async with writing(self._sessions()) as session:
            return await store.register(session, self.tables, url, kinds, description)

    async def endpoint(self, endpoint_id: str) -> dict[str, Any] | None:
        async with self._session() as session:
            return await store.endpoint(session, self.tables, endpoint_id)

    async def endpoints(self, offset: int, limit: int) -> dict[str, Any]:
        async with self._session() as session:
            return await store.endpoints_page(session, self.tables, offset, limit)

    async def delete(self, endpoint_id: str) -> bool:
        async with writing(self._sessions()) as session:
            return await store.delete(session, self.tables, endpoint_id)

    async def deliveries(
        self, endpoint_id: str, offset: int, limit: int, status: str | None
    ) -> dict[str, Any]:
        async with self._session() as session:
            return await store.deliveries_page(
                session, self.tables, endpoint_id, offset, limit, status
            )

    async def delivery(self, endpoint_id: str, delivery_id: int) -> dict[str, Any] | None:
        async with self._session() as session:
            return await store.delivery(session, self.tables, endpoint_id, delivery_id)

    async def redeliver(
        self, endpoint_id: str, delivery_id: int
    ) -> tuple[str, dict[str, Any] | None]:
        """("queued" | "missing" | "in_flight", the delivery as it is now)."""
        async with writing(self._sessions()) as session:
            outcome = await store.redeliver(session, self.tables, endpoint_id, delivery_id)
        if outcome == "queued":
            self._woken()
        return outcome, await self.delivery(endpoint_id, delivery_id)

    async def ping(self, endpoint_id: str) -> dict[str, Any] | None:
        """A ``webhook.ping`` to this endpoint alone (a receiver's first test)."""
        note = Notification(f"ping-{uuid.uuid4()}", PING, {"endpoint_id": endpoint_id})
        async with writing(self._sessions()) as session:
            await store.queue(session, self.tables, [note], endpoint_id=endpoint_id)
            d = self.tables.deliveries
            queued = await session.execute(
                select(d.c.id).where(d.c.endpoint_id == endpoint_id, d.c.event_id == note.event_id)
            )
            delivery_id = queued.scalar_one()
        self._woken()
        return await self.delivery(endpoint_id, delivery_id)
