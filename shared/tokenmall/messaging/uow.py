"""The unit of work: one local transaction for an effect, its inbox row and its events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tokenmall.contracts import Event, encode
from tokenmall.db import among, insert_many
from tokenmall.messaging.tables import MessagingTables


async def begin_write(session: AsyncSession) -> None:
    """``BEGIN IMMEDIATE`` on SQLite when no transaction is open yet (see UnitOfWork)."""
    if session.get_bind().dialect.name == "sqlite" and not session.in_transaction():
        await session.execute(text("BEGIN IMMEDIATE"))


class WebhookQueue(Protocol):
    """tokenmall.webhooks.WebhookOutbox, as the unit of work needs it."""

    async def enqueue(self, session: AsyncSession, events: Sequence[Event]) -> int: ...

    def wake(self) -> None: ...


class UnitOfWork:
    """``async with uow: ... await uow.commit()`` — rolls back unless committed.

    ``emit`` collects events; ``commit`` writes them to the outbox in the same
    transaction as everything else the handler did (no dual write).  ``claim``
    records an incoming message id in the inbox: ``False`` means it was already
    applied, and the handler does nothing.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tables: MessagingTables,
        producer: str,
        webhooks: WebhookQueue | None = None,
    ) -> None:
        self._sessions = sessions
        # where the events it emits also become webhook deliveries (a hosting service)
        self.webhooks = webhooks
        self.tables = tables
        self.producer = producer
        self.session: AsyncSession
        self.events: list[tuple[str, Event, int | None]] = []
        self.causation_id: str | None = None
        self.provided: set[str] = set()  # dependencies this work brought into being
        # set by the kit around a bulk handler: dependencies that messages parked in the
        # run wait for; providing one sets ``wanted_provided`` (the bulk handler then
        # stops, so the waiting messages go next — where one by one they would have)
        self.wanted: set[str] = set()
        self.wanted_provided = False
        self._committed = False
        # False while the kit applies several messages in this transaction: a handler's
        # own commit would commit their effects without their inbox rows
        self.handlers_may_commit = True

    async def __aenter__(self) -> UnitOfWork:
        self.session = self._sessions()
        self.events = []
        self.provided = set()
        self._committed = False
        self.handlers_may_commit = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._committed:
            await self.session.rollback()
        await self.session.close()

    async def begin_write(self) -> None:
        """Start a transaction that will write (call first).  On SQLite this takes the
        write lock now (``BEGIN IMMEDIATE``): a transaction that read first and writes
        later fails at once ("database is locked") when another writer committed in
        between, whatever the busy timeout.  PostgreSQL needs nothing."""
        await begin_write(self.session)

    async def claim(self, consumer: str, event_id: str) -> bool:
        """Insert (consumer, event_id) into the inbox; False if it is already there."""
        self.causation_id = event_id
        dialect = self.session.get_bind().dialect.name
        values = {"consumer": consumer, "event_id": event_id, "processed_at": datetime.now(UTC)}
        stmt: Any
        if dialect == "postgresql":
            stmt = postgresql.insert(self.tables.inbox).values(values).on_conflict_do_nothing()
        elif dialect == "sqlite":
            stmt = sqlite.insert(self.tables.inbox).values(values).on_conflict_do_nothing()
        else:  # pragma: no cover - the two supported databases are above
            raise RuntimeError(f"unsupported database {dialect}")
        result = await self.session.execute(stmt)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def claimed(self, consumer: str, event_ids: Sequence[str]) -> set[str]:
        """Which of ``event_ids`` this consumer has applied already (one statement)."""
        inbox = self.tables.inbox
        rows = await self.session.execute(
            select(inbox.c.event_id).where(
                inbox.c.consumer == consumer, among(self.session, inbox.c.event_id, event_ids)
            )
        )
        return {row.event_id for row in rows}

    async def claim_many(self, consumer: str, event_ids: Sequence[str]) -> None:
        """Record the messages as applied, in one statement.  A plain insert: a message
        another process claimed meanwhile fails the whole transaction (then applied one
        by one, where the claim decides), never applies twice."""
        if not event_ids:
            return
        now = datetime.now(UTC)
        await insert_many(
            self.session,
            self.tables.inbox,
            [{"consumer": consumer, "event_id": e, "processed_at": now} for e in event_ids],
        )

    def provide(self, dependency: str) -> None:
        """This work brings ``dependency`` (e.g. "member:A") into being: events parked on
        it are applied once the transaction has committed."""
        self.provided.add(dependency)
        if dependency in self.wanted:
            self.wanted_provided = True

    def emit(self, topic: str, event: Event, partition: int | None = None) -> Event:
        """Write ``event`` to the outbox at commit; ``partition`` overrides the key's
        partition (a marker that must reach one particular partition)."""
        stamped = event.model_copy(
            update={
                "producer": self.producer,
                "causation_id": event.causation_id or self.causation_id,
            }
        )
        self.events.append((topic, stamped, partition))
        return stamped

    def emit_many(self, topic: str, events: Sequence[Event]) -> None:
        for event in events:
            self.emit(topic, event)

    async def commit(self) -> None:
        if not self.handlers_may_commit:
            raise RuntimeError(
                "a handler committed inside a batch of messages: the kit commits their "
                "effects together with their inbox rows"
            )
        queued = 0
        if self.events and self.webhooks is not None:
            queued = await self.webhooks.enqueue(self.session, [e for _, e, _ in self.events])
        if self.events:
            now = datetime.now(UTC)
            await insert_many(
                self.session,
                self.tables.outbox,
                [
                    {
                        "event_id": e.event_id,
                        "topic": topic,
                        "key": e.key,
                        "event_type": e.type,
                        "payload": encode(e).decode(),
                        "created_at": now,
                        "partition": partition,
                    }
                    for topic, e, partition in self.events
                ],
            )
            self.events = []  # written: a later commit() must not write them again
        await self.session.commit()
        self._committed = True
        if queued and self.webhooks is not None:
            self.webhooks.wake()  # committed: the dispatcher can see them now

    @property
    def committed(self) -> bool:
        return self._committed
