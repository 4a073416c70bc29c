"""What every service shares: settings, metrics, the Kafka consumer wrapper, the app factory.

A service is a thin shell: its own tables, HTTP routers and event handlers.  This
module wires them: the database (created from the URL at start-up, never at import),
a FastStream ``KafkaBroker`` started in FastAPI's lifespan, subscribers that
acknowledge only after the handler's transaction committed (``AckPolicy.NACK_ON_ERROR``) and
send what cannot be parsed or applied to ``<topic>.dlq`` with the reason, and the
outbox relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Path
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import MetaData
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.routing import BaseRoute, Mount
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenmall import api_docs, contracts, http_errors, migrations
from tokenmall.api_style import DEFAULT_LIMIT, Limit, Offset, Page
from tokenmall.body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimit
from tokenmall.contracts import ContractError, Event, dead_letter_topic, decode
from tokenmall.db import make_engine, make_sessions
from tokenmall.messaging import (
    KafkaPublisher,
    Lease,
    LeaseLost,
    MessagingTables,
    Missing,
    OutboxRelay,
    Outgoing,
    ParkedEvent,
    ParkingLot,
    Publisher,
    UnitOfWork,
)

log = logging.getLogger(__name__)


class ServiceSettings(BaseSettings):
    """Environment: TOKENMALL_DATABASE_URL, TOKENMALL_KAFKA_BOOTSTRAP, TOKENMALL_PORT, …"""

    model_config = SettingsConfigDict(env_prefix="TOKENMALL_", extra="ignore")

    database_url: str = ""  # empty: sqlite file data/<service>.db
    kafka_bootstrap: str = "127.0.0.1:9092"
    host: str = "127.0.0.1"
    port: int = 0
    relay_batch: int = 1000
    # what the relay's producer compresses its batches with: none on one host (loopback
    # costs nothing to cross, compressing costs CPU); gzip (built into aiokafka) where the
    # broker is across a network — a batch of answers shrinks to about a fifth
    kafka_compression: Literal["none", "gzip"] = "none"
    log_level: str = "INFO"
    # Physical topic = prefix + logical topic: separate platform instances (a fresh
    # replay, a test) share one broker without seeing each other's events.
    topic_prefix: str = ""
    # Fault injection for the delivery tests, "<consumer>:<n>": the process dies
    # (exit 70) right after the n-th message of that consumer committed its effect and
    # before its offset is acknowledged, so Kafka redelivers it on restart.  Empty: off.
    fault_exit_after_commit: str = ""
    # Fault injection for the poison tests, "<consumer>:<event type>": that consumer's
    # handler raises RuntimeError on every event of that type (retried, then
    # dead-lettered like any failing handler).  Empty: off.
    fault_raise_on: str = ""
    # A handler that raises is tried this many times in all (backoff doubling from
    # handler_backoff_seconds), then its message is dead-lettered with the exception
    # and the partition moves on.  Database and network outages are not the message's
    # fault: those are retried until they pass (capped backoff) and never dead-lettered.
    handler_attempts: int = Field(default=5, ge=1, le=100)
    # Consumers apply what one poll returns — up to this many messages — in one
    # transaction (Service.handle_batch).  A poll that finds nothing waits
    # consumer_poll_ms for the next.
    consumer_batch: int = Field(default=500, ge=1, le=10_000)
    consumer_poll_ms: int = Field(default=25, ge=1, le=5_000)
    handler_backoff_seconds: float = Field(default=0.1, ge=0, le=60)
    # Parked events (tokenmall.messaging.parking) are applied as soon as what they wait
    # for arrives; every this many seconds the ones due for a retry are tried as well.
    parked_sweep_seconds: float = Field(default=1.0, gt=0, le=3600)
    # Leases (tokenmall.messaging.lease): the outbox relay of each service, and the
    # dividends engine, run in one process at a time; a standby takes over this many
    # seconds after the holder stopped renewing (died or hung).
    lease_seconds: float = Field(default=5.0, gt=0.1, le=600)
    # orders and wallet: the member registry (referrals), asked when their read model
    # lacks a member that registered a moment ago (read-your-writes)
    referrals_url: str = "http://127.0.0.1:8104"
    # Off: a service refuses to start on a database not at its migrations' head (run
    # `tokenmall migrate` first, as dev up and docker compose do).  On: it upgrades itself.
    migrate_on_start: bool = False
    # a request body above this many bytes is refused with 413 before it is parsed
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024, le=256 * 1024 * 1024)
    # Webhooks (a service that hosts them: dividends).  A failed delivery is retried
    # after base · 2^(n-1) seconds (capped at the max delay, ±10 % jitter) until the
    # window has passed since it was queued (at least a day: the receiver's outage of a
    # night loses nothing), then marked failed; a redelivery starts it over.
    webhook_retry_base_seconds: float = Field(default=10.0, gt=0, le=3600)
    webhook_retry_max_delay_seconds: float = Field(default=6 * 3600.0, gt=0, le=86_400)
    webhook_retry_window_seconds: float = Field(default=72 * 3600.0, ge=86_400, le=30 * 86_400)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    webhook_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
    # Off: a webhook URL naming a loopback, private, link-local or reserved address
    # (127.0.0.1, 10.x, 169.254.169.254, localhost, …) is refused at registration — a
    # delivery must not become a way to call the platform's own internal services.  On:
    # allowed (tokenmall dev, where the receiver runs on the same machine).
    webhook_allow_private_targets: bool = False


# Service.partition_count
PARTITIONS_CACHE_SECONDS = 60.0
PARTITIONS_TIMEOUT_SECONDS = 5.0
# parked groups (consumer, key) read at a time while unparking
GROUPS_PER_PAGE = 500
# how many recent provisions a service remembers (Service.providing)
RECENT_PROVISIONS = 10_000


_FAILED = object()  # Service._try_in_run: the handler raised (not a missing dependency)
_TAKEN = object()  # Service._try_in_run: the parked row was gone (another process applied it)


@dataclass
class _RunState:
    """What one batched run (Service._apply_run) has done so far."""

    epoch: int = 0  # the service's memory_epoch when the run began
    parks: int = 0  # messages of the run that had to wait (parked, maybe woken in it)
    claimed: list[str] = field(default_factory=list)  # inbox rows to write
    applied: list[Event] = field(default_factory=list)
    provided: set[str] = field(default_factory=set)  # by the run
    # provided, not yet looked at, in the order provided: the messages they wake go in
    # that order, the same whether the run went message by message or in bulk
    fresh: dict[str, None] = field(default_factory=dict)
    # per key, its parked messages of this run in arrival order: [event, body, waits for]
    waiting: dict[str, list[list[Any]]] = field(default_factory=dict)
    by_dependency: dict[str, set[str]] = field(default_factory=dict)  # -> keys waiting

    def newly_provided(self, dependencies: set[str]) -> None:
        self.fresh.update(dict.fromkeys(sorted(dependencies - self.provided)))
        self.provided |= dependencies

    def park(self, event: Event, body: bytes, dependency: str) -> None:
        self.parks += 1
        self.waiting.setdefault(event.key, []).append([event, body, dependency])
        self.by_dependency.setdefault(dependency, set()).add(event.key)

    def parked_rows(
        self, sub: Subscription, park_day: Callable[[Event], int | None]
    ) -> list[dict[str, Any]]:
        return [
            {
                "consumer": sub.consumer,
                "key": key,
                "waiting_for": waits,
                "topic": sub.topic,
                "event_id": event.event_id,
                "event_type": event.type,
                "body": body,
                "day": park_day(event),
            }
            for key, queue in self.waiting.items()
            for event, body, waits in queue
        ]


class _KeyHasParked(Exception):
    """Inside ``Service._apply``: the event's key has parked events; apply those that
    can go first, then try again."""


class Rejected(ValueError):
    """An event the rules cannot apply: dead-lettered with this reason, then acknowledged."""


def is_outage(exc: BaseException) -> bool:
    """A failure of the database or the network, not of the message: retried until it
    passes instead of dead-lettering a good event.  (A statement the database refused —
    an integrity error, a value out of range — is the message's doing.)"""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    from aiokafka.errors import KafkaError, KafkaTimeoutError

    # the broker did not answer in time (a metadata request, a send): not the message's
    # fault; aiokafka marks the other passing conditions (no connection, no leader yet,
    # …) retriable
    if isinstance(exc, KafkaTimeoutError) or (isinstance(exc, KafkaError) and exc.retriable):
        return True
    return isinstance(exc, ConnectionError | TimeoutError | OSError)


# The client's defaults start at 5 ms: most answers of a service on one host take less,
# and a p50 would sit in the first bucket.
HTTP_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ServiceMetrics:
    """Prometheus metrics, one registry per app (several apps may share a test process)."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.consumed = Counter(
            "tokenmall_events_consumed_total",
            "Events consumed",
            ["service", "type"],
            registry=self.registry,
        )
        self.published = Counter(
            "tokenmall_events_published_total",
            "Events published",
            ["service", "type"],
            registry=self.registry,
        )
        self.dead_lettered = Counter(
            "tokenmall_events_dead_lettered_total",
            "Events sent to a dead-letter topic",
            ["service", "topic"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "tokenmall_events_duplicate_total",
            "Events delivered again and skipped by the inbox (applied once)",
            ["service", "consumer"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tokenmall_handler_seconds",
            "Event handler latency",
            ["service", "type"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "tokenmall_consumer_batch_size",
            "Messages per poll applied together (one transaction), per consumer",
            ["service", "consumer"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "tokenmall_consumer_batch_seconds",
            "Time to apply one poll's messages, per consumer",
            ["service", "consumer"],
            registry=self.registry,
        )
        self.outbox_backlog = Gauge(
            "tokenmall_outbox_backlog",
            "Unpublished outbox rows",
            ["service"],
            registry=self.registry,
        )
        self.retries = Counter(
            "tokenmall_handler_retries_total",
            "Handler failures retried (backoff), per consumer",
            ["service", "consumer"],
            registry=self.registry,
        )
        self.webhook_attempts = Counter(
            "tokenmall_webhook_attempts_total",
            "Webhook delivery attempts, by outcome (delivered: a 2xx answer; failed: retried)",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "tokenmall_webhook_attempt_seconds",
            "Time a receiver took to answer a webhook delivery",
            ["service"],
            registry=self.registry,
        )
        self.parked_total = Counter(
            "tokenmall_events_parked_total",
            "Events parked because what they depend on had not arrived, per consumer",
            ["service", "consumer"],
            registry=self.registry,
        )
        self.unparked = Counter(
            "tokenmall_events_unparked_total",
            "Parked events applied once their dependency arrived, per consumer",
            ["service", "consumer"],
            registry=self.registry,
        )
        self.parked = Gauge(
            "tokenmall_parked_events",
            "Events parked now, per consumer",
            ["service", "consumer"],
            registry=self.registry,
        )
        self.parked_oldest = Gauge(
            "tokenmall_parked_oldest_seconds",
            "Age of the oldest parked event, per consumer (0: none)",
            ["service", "consumer"],
            registry=self.registry,
        )
        self.fanout = Gauge(
            "tokenmall_release_fanout_members_per_second",
            "Members released per second in the last settlement step",
            ["service"],
            registry=self.registry,
        )
        # the fan-out of a settlement, as counters (dashboards take their rate())
        self.members_released = Counter(
            "tokenmall_members_released",
            "Members a settlement released value to (dividends)",
            ["service"],
            registry=self.registry,
        )
        self.release_lines = Counter(
            "tokenmall_release_lines_booked",
            "Release lines (a member's releases of one day in one asset) booked (wallet)",
            ["service"],
            registry=self.registry,
        )
        self.settlement_phase = Histogram(
            "tokenmall_settlement_phase_seconds",
            "A settlement's phases: engine (the engine settles the day; dividends), publish "
            "(its commit → every release message published; dividends), book (the "
            "settlement → every release line booked; wallet)",
            ["service", "phase"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "tokenmall_consumer_lag",
            "Messages on the topic not yet consumed, per consumer group (Kafka only)",
            ["service", "group"],
            registry=self.registry,
        )
        # every HTTP request, by the route's template (HttpMetrics keeps raw paths out)
        http_labels = ["service", "method", "route", "status"]
        self.http_requests = Counter(
            "tokenmall_http_requests_total",
            "HTTP requests answered, by method, route template and status sent",
            http_labels,
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "tokenmall_http_request_duration_seconds",
            "HTTP request latency, from the request to the response's last byte handed over",
            http_labels,
            buckets=HTTP_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.service = service

    def published_events(self, types: list[str]) -> None:
        for t in types:
            self.published.labels(self.service, t).inc()


Handler = Callable[[Event, UnitOfWork], Awaitable[None]]
# Many consecutive messages of one poll at once (Subscription.bulk): what the handler
# would do to each, in order, with the database work done in bulk.  One outcome per
# message taken, in order: None (applied, or nothing to do) or the Missing it waits for
# (nothing of it applied).  It may stop early (fewer outcomes): the next message then
# goes through the handler alone (which rejects it, retries it...).  It sets
# ``uow.causation_id`` to a message's id before emitting for it.  Raising: nothing of
# the call is kept; a service keeping state in memory rebuilds it (memory_epoch) first.
# It stops after a message whose effect set ``uow.wanted_provided`` (it provided what a
# message parked in the run waits for): that one goes next, as it would one by one.  A
# message it finds missing something adds that to ``uow.wanted`` (it is parked in the run
# too).
BulkHandler = Callable[[list[Event], UnitOfWork], Awaitable[list[Missing | None]]]

# what one event makes, for rows_per_event: (its rows, the dependencies they provide);
# None instead: the event needs its handler alone (it refuses it, say)
RowsOf = Callable[[Event], tuple[list[dict[str, Any]], list[str]] | None]


def rows_per_event(
    rows_of: RowsOf, write: Callable[[UnitOfWork, list[dict[str, Any]]], Awaitable[None]]
) -> BulkHandler:
    """A bulk handler for events whose whole effect is rows of one table (e.g. a read
    model of members, one row per member registered): the rows of the events taken,
    written by one ``write`` call."""

    async def bulk(events: list[Event], uow: UnitOfWork) -> list[Missing | None]:
        rows: list[dict[str, Any]] = []
        taken = 0
        for event in events:
            made = rows_of(event)
            if made is None:
                break
            made_rows, provides = made
            rows.extend(made_rows)
            taken += 1
            for dependency in provides:
                uow.provide(dependency)
            if provides and uow.wanted_provided:
                break  # a message parked in the run waits for this one: it goes next
        if rows:
            await write(uow, rows)
        return [None] * taken

    return bulk


def _failure(exc: BaseException, attempt: int) -> str:
    return f"handler failed after {attempt} attempt(s): {type(exc).__name__}: {exc}"


def parse_raise_on(spec: str) -> tuple[str, str] | None:
    """``"<consumer>:<event type>"`` (TOKENMALL_FAULT_RAISE_ON) → the pair; "" → None."""
    if not spec:
        return None
    consumer, _, event_type = spec.rpartition(":")
    if not consumer or not event_type:
        raise ValueError(f"fault_raise_on must be '<consumer>:<event type>': {spec!r}")
    return consumer, event_type


def parse_fault(spec: str) -> tuple[str, int] | None:
    """``"<consumer>:<n>"`` (TOKENMALL_FAULT_EXIT_AFTER_COMMIT) → (consumer, n); "" → None."""
    if not spec:
        return None
    consumer, _, count = spec.rpartition(":")
    if not consumer or not count.isdigit() or int(count) < 1:
        raise ValueError(f"fault_exit_after_commit must be '<consumer>:<n>', n ≥ 1: {spec!r}")
    return consumer, int(count)


@dataclass
class Subscription:
    topic: str
    handler: Handler
    consumer: str  # inbox consumer name and Kafka group id suffix
    # what one poll returns is applied in one transaction (Service.handle_batch); False:
    # message by message (Service.handle).  A handler keeping state in memory bumps
    # Service.memory_epoch when it rebuilds it, so a rolled-back run can start over.
    batched: bool = True
    # the same effects for many messages at once, inside a batched run (BulkHandler);
    # None: the handler, one message at a time (each in a savepoint)
    bulk: BulkHandler | None = None
    # after the commit of each message applied (never one rolled back, parked or seen
    # twice): a service's own counters of what the events carried
    on_applied: Callable[[Event], None] | None = None


@dataclass
class Service:
    """The running pieces of one service, available to routes as ``request.app.state.svc``."""

    name: str
    settings: ServiceSettings
    metadata: MetaData
    tables: MessagingTables
    engine: AsyncEngine | None = None
    sessions: async_sessionmaker[AsyncSession] | None = None
    broker: Any = None
    relay: OutboxRelay | None = None
    metrics: ServiceMetrics = field(init=False)
    state: dict[str, Any] = field(default_factory=dict)  # service-specific singletons
    # Taken around a consumed message's whole transaction, before its inbox row is
    # written: a service whose commands also take it (dividends: the engine's lock) then
    # always locks in one order — this lock, then the database — and never deadlocks.
    exclusive: asyncio.Lock | None = None

    # by consumer name: where a parked event goes when it is applied
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    # one active process at a time (dividends: the engine's single writer); the others
    # are hot standbys that take over when its lease expires
    singleton: bool = False
    active: bool = False
    lease: Lease | None = None
    relay_lease: Lease | None = None
    # the webhooks it hosts (tokenmall.webhooks.Webhooks): its unit of work queues
    # deliveries of the events it emits, the app runs their dispatcher and routes
    webhooks: Any = None
    # closed when the app stops (HTTP clients of other services, …)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # the business day a parked event counts in (parked.day; dividends: a day's
    # settlement waits for its parked inputs); by default the day the event carries
    park_day: Callable[[Event], int | None] = field(
        default=lambda event: getattr(event, "day", None)
    )

    def __post_init__(self) -> None:
        self.metrics = ServiceMetrics(self.name)
        self.parking = ParkingLot(self.tables)
        self._unparking = asyncio.Lock()
        self._fault = parse_fault(self.settings.fault_exit_after_commit)
        self._commits: dict[str, int] = {}  # per consumer, for the fault point
        self._raise_on = parse_raise_on(self.settings.fault_raise_on)
        # +1 for every message handled (applied, skipped, parked, dead-lettered), parked
        # event applied and outbox row published: a quiescence check that sees the same
        # number twice knows nothing moved in between (GET /v1/sync)
        self.progress = 0
        # dependencies provided in this process, and when (a count): whether an event
        # may pass its key's parked ones (Service._apply)
        self._provisions = 0
        # +1 whenever the service rebuilds its in-memory state from the database (dividends
        # reloads its engine after a failed input): a batched run then starts over
        self.memory_epoch = 0
        # how such a service rebuilds that state from the database (it bumps
        # memory_epoch): called when a transaction fails after its handlers ran — the
        # claim, a parked row, the outbox insert or the commit — since the handlers moved
        # the state for effects the database then does not have; a rebuild that fails
        # leaves the state stale: rebuilt first, before the next message is applied
        self.rebuild_memory: Callable[[], Awaitable[None]] | None = None
        self._memory_stale = False
        self._partition_counts: dict[str, tuple[int, float]] = {}  # topic -> (count, when)
        self._recent_provisions: OrderedDict[str, int] = OrderedDict()
        self._forgotten_up_to = 0
        self._swept_since_active = False  # see unpark
        # told the types of what the relay published (a service's own metrics)
        self.on_published: Callable[[list[str]], None] | None = None

    @property
    def role(self) -> str:
        return "active" if self.active else "standby"

    async def lead_forever(
        self, broker: Any, on_active: Callable[[Service], Awaitable[None]] | None
    ) -> None:
        """Wait for the lease, become active (load, consume), keep renewing it; a lost
        lease ends the process (``on_lease_lost``) before it can commit anything more."""
        assert self.lease is not None
        interval = self.settings.lease_seconds / 3
        if self.active:
            await self.keep_lease()
            return
        while not await self._hold(self.lease):
            await asyncio.sleep(interval)
        # renewed while loading and joining the consumer groups, which can take longer
        # than the lease: else a standby would take over from a process still starting
        keeper = asyncio.create_task(self.keep_lease(), name=f"{self.name}-lease-keeper")
        try:
            await self.become_active(broker, on_active)
            await keeper
        finally:
            keeper.cancel()

    async def keep_lease(self) -> None:
        """Renew the lease every ttl/3 while it is held; a lost lease ends the process."""
        assert self.lease is not None
        interval = self.settings.lease_seconds / 3
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self.lease.acquire()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database did not answer: the lease may still be ours
                log.exception("%s: renewing lease %s failed", self.name, self.lease.name)
                if time.monotonic() - renewed < self.settings.lease_seconds - interval:
                    continue  # still valid: try again (the commits are fenced anyway)
                held = False
            if not held:
                self.on_lease_lost(self.lease.name)
            renewed = time.monotonic()

    async def become_active(
        self, broker: Any, on_active: Callable[[Service], Awaitable[None]] | None
    ) -> None:
        """Holding the lease: load (``on_active``), then start consuming."""
        if on_active is not None:
            await on_active(self)
        await broker.start()
        self.active = True
        assert self.lease is not None
        log.info("%s: active (lease %s, fence %s)", self.name, self.lease.name, self.lease.fence)

    async def _hold(self, lease: Lease) -> bool:
        try:
            return await lease.acquire()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: renewing lease %s failed", self.name, lease.name)
            return False

    def on_lease_lost(self, name: str) -> None:
        """Fail fast: another process is active now; whatever this one holds in memory is
        stale.  Its supervisor (docker, systemd, ``tokenmall dev``) starts it again as a
        standby."""
        log.critical("%s: lease %s lost; exiting", self.name, name)
        logging.shutdown()
        os._exit(75)

    async def check_lease(self, session: AsyncSession) -> None:
        """Fencing, in a transaction of the single writer: commit only while still active."""
        if self.lease is None:
            return
        try:
            await self.lease.check(session)
        except LeaseLost:
            self.on_lease_lost(self.lease.name)
            raise

    def _fault_point(self, consumer: str) -> None:
        if self._fault is None or self._fault[0] != consumer:
            return
        self._commits[consumer] = self._commits.get(consumer, 0) + 1
        if self._commits[consumer] == self._fault[1]:
            log.error("fault injection: exiting after commit %d of %s", self._fault[1], consumer)
            logging.shutdown()
            os._exit(70)

    def uow(self) -> UnitOfWork:
        assert self.sessions is not None, "service not started"
        outbox = self.webhooks.outbox if self.webhooks is not None else None
        return UnitOfWork(self.sessions, self.tables, self.name, webhooks=outbox)

    async def partition_count(self, topic: str) -> int:
        """Partitions of the logical ``topic`` (where markers go: one on each).  Cached
        for a minute and asked with a short timeout: a handler asks it inside its
        transaction (on SQLite: holding the write lock), which must not wait long for
        a broker that does not answer (it is retried as an outage)."""
        assert self.relay is not None, "service not started"
        now = time.monotonic()
        cached = self._partition_counts.get(topic)
        if cached is not None and now - cached[1] < PARTITIONS_CACHE_SECONDS:
            return cached[0]
        async with asyncio.timeout(PARTITIONS_TIMEOUT_SECONDS):
            count = await self.relay.publisher.partitions(topic)
        self._partition_counts[topic] = (count, now)
        return count

    def published(self, types: list[str]) -> None:
        """The relay published (and marked) outbox rows of these event types."""
        self.metrics.published_events(types)
        self.progress += len(types)
        if self.on_published is not None:
            self.on_published(types)

    def committed(self) -> None:
        """Call after a transaction that emitted events: the relay publishes at once."""
        if self.relay is not None:
            self.relay.wake()

    # ------------------------------------------------------------ consuming

    async def handle(self, sub: Subscription, body: bytes) -> None:
        """Decode and apply once (inbox); park what waits for a dependency; retry a failing
        handler with backoff and dead-letter it in the end — the partition always moves on."""
        try:
            await self._handle(sub, body)
        finally:
            self.progress += 1

    async def _handle(self, sub: Subscription, body: bytes) -> None:
        try:
            event = decode(body)
        except ContractError as exc:
            await self.dead_letter(sub.topic, body, f"unparseable: {exc}")
            return
        await self._handle_event(sub, event, body)

    async def handle_batch(self, sub: Subscription, bodies: list[bytes]) -> None:
        """What one poll returned, in order: applied in as few transactions as possible —
        one, unless a message needs more care (see :meth:`_apply_run`)."""
        started = time.perf_counter()
        try:
            decoded: list[tuple[Event, bytes]] = []
            for body in bodies:
                try:
                    decoded.append((decode(body), body))
                except ContractError as exc:  # poison: it alone goes, the rest go on
                    await self.dead_letter(sub.topic, body, f"unparseable: {exc}")
            start = 0
            while start < len(decoded):
                try:
                    start += await self._apply_run(sub, decoded[start:])
                except Exception:
                    # the run's commit failed (another process claimed one of its
                    # messages, the database went away): the one-by-one way decides
                    log.warning("%s: a batch failed; one by one", sub.consumer, exc_info=True)
                    await self._after_failed_transaction()
                if start < len(decoded):
                    event, body = decoded[start]
                    await self._handle_event(sub, event, body)
                    start += 1
        finally:
            self.progress += len(bodies)
            self.metrics.batch_size.labels(self.name, sub.consumer).observe(len(bodies))
            self.metrics.batch_seconds.labels(self.name, sub.consumer).observe(
                time.perf_counter() - started
            )

    async def _apply_run(
        self, sub: Subscription, run: list[tuple[Event, bytes]], bulk: bool = True
    ) -> int:
        """Apply the messages of ``run`` from the first on, in one transaction: the inbox
        looked up and written in one statement each, each handler in a savepoint, one
        commit.  A message missing a dependency is parked in the same transaction and
        applied right there when a later message of the run provides what it waits for
        (it does not hold up the later messages of its key, as in the table).  Stops
        before the first message that needs the one-by-one way — its key has parked
        events in the database, or its handler failed (rejected, raising): its savepoint
        is rolled back, the messages before it commit, and it goes alone (retries, dead
        letter).  Should the
        service's in-memory state have been rebuilt from the database meanwhile (a
        handler failed after changing it: ``memory_epoch``), the whole transaction is
        rolled back and the messages before the failing one are applied again.
        A subscription with a bulk handler has the consecutive messages that need no
        special care applied by it at once (``bulk`` False: by the handler, one each).
        Returns how many messages of ``run`` are done (committed, parked or skipped as
        duplicates); the next one goes one by one."""
        started = time.perf_counter()
        epoch = self.memory_epoch
        done = len(run)
        emitted, parked = False, []
        async with self.exclusive or contextlib.nullcontext(), self.uow() as uow:
            await self._fresh_memory()
            await uow.begin_write()
            seen = await uow.claimed(sub.consumer, [event.event_id for event, _ in run])
            held = await self.parking.keys_with_parked(
                uow.session, sub.consumer, {event.key for event, _ in run}
            )
            uow.handlers_may_commit = False  # their commit would leave the inbox rows out
            state = _RunState(epoch=epoch)
            rebuilt = redo_alone = False
            # the next message goes through the handler alone (not the bulk handler)
            alone = sub.bulk is None or not bulk
            i = 0
            while i < len(run):
                event, body = run[i]
                if event.event_id in seen:
                    self.metrics.duplicates.labels(self.name, sub.consumer).inc()
                    i += 1
                    continue  # delivered twice: applied once
                if event.key in held or self._raise_on == (sub.consumer, event.type):
                    done = i
                    break
                if not alone:
                    stretch = self._bulk_stretch(sub, run, i, seen, held)
                    taken = await self._try_bulk(sub, uow, stretch, state)
                    if self.memory_epoch != epoch:
                        # the bulk call failed after moving the service's memory: all of
                        # the run again, message by message, on the rebuilt state
                        rebuilt, done, redo_alone = True, len(run), True
                        break
                    if taken is None:  # it failed, nothing moved: one by one from here
                        bulk = False
                        taken = 0
                    seen.update(e.event_id for e, _ in stretch[:taken])
                    i += taken
                    # it stopped early: the message it left goes alone, then bulk again
                    # (unless it stopped for messages of the run waiting on it: bulk on)
                    alone = (taken < len(stretch) and not uow.wanted_provided) or not bulk
                    await self._resolve_in_run(sub, uow, state)
                    if self.memory_epoch != epoch:
                        rebuilt, done = True, i
                        break
                    continue
                alone = sub.bulk is None or not bulk
                seen.add(event.event_id)
                # the run's parked ones of its key cannot go (what they wait for has not
                # come, or they would have gone): like those in the table, they do not
                # hold it up
                outcome = await self._try_in_run(sub, uow, event, state)
                if outcome is _FAILED or self.memory_epoch != epoch:
                    rebuilt = self.memory_epoch != epoch
                    seen.discard(event.event_id)
                    done = i
                    break
                state.claimed.append(event.event_id)
                i += 1
                if isinstance(outcome, str):  # missing: parked here, woken in this run
                    state.park(event, body, outcome)
                    continue
                await self._resolve_in_run(sub, uow, state)
                if self.memory_epoch != epoch:
                    rebuilt, done = True, i - 1
                    break
            if not rebuilt and state.provided:
                # this consumer's events parked by earlier polls on what the run provided
                await self._unpark_in_run(sub, uow, state)
                rebuilt = self.memory_epoch != epoch
            if rebuilt:
                await uow.session.rollback()
            else:
                uow.handlers_may_commit = True
                await uow.claim_many(sub.consumer, state.claimed)
                parked = state.parked_rows(sub, self.park_day)
                await self.parking.park_many(uow.session, parked)
                emitted = bool(uow.events)
                await self._commit(uow)
        if redo_alone:
            return await self._apply_run(sub, run, bulk=False)
        if rebuilt:
            # what came before the failing one, again, on the rebuilt state
            return await self._apply_run(sub, run[:done], bulk=bulk) if done else 0
        for event in state.applied:
            self._fault_point(sub.consumer)
            if sub.on_applied is not None:
                sub.on_applied(event)
            self.metrics.consumed.labels(self.name, event.type).inc()
            self.metrics.latency.labels(self.name, event.type).observe(
                time.perf_counter() - started
            )
        if state.parks:  # every wait counts, also one the run itself ended
            self.metrics.parked_total.labels(self.name, sub.consumer).inc(state.parks)
            self.metrics.unparked.labels(self.name, sub.consumer).inc(state.parks - len(parked))
        if emitted:
            self.committed()
        if uow.provided:
            await self.unpark(uow.provided)
        return done

    def _bulk_stretch(
        self,
        sub: Subscription,
        run: list[tuple[Event, bytes]],
        start: int,
        seen: set[str],
        held: set[str],
    ) -> list[tuple[Event, bytes]]:
        """The messages from ``start`` on that a bulk call may take: up to the first one
        applied already (or twice in the stretch), of a key with parked events in the
        table, or marked for fault injection."""
        ids: set[str] = set()
        end = start
        while end < len(run):
            event = run[end][0]
            if (
                event.event_id in seen
                or event.event_id in ids
                or event.key in held
                or self._raise_on == (sub.consumer, event.type)
            ):
                break
            ids.add(event.event_id)
            end += 1
        return run[start:end]

    async def _try_bulk(
        self,
        sub: Subscription,
        uow: UnitOfWork,
        stretch: list[tuple[Event, bytes]],
        state: _RunState,
    ) -> int | None:
        """The bulk handler on ``stretch`` in a savepoint: how many messages it took (those
        missing a dependency parked in the run), or None if it raised (rolled back)."""
        assert sub.bulk is not None
        mark, provided = len(uow.events), set(uow.provided)
        savepoint = await uow.session.begin_nested()
        uow.wanted, uow.wanted_provided = set(state.by_dependency), False
        try:
            outcomes = await sub.bulk([event for event, _ in stretch], uow)
        except Exception:
            log.warning("%s: a bulk call failed; one by one", sub.consumer, exc_info=True)
            await savepoint.rollback()
            del uow.events[mark:]
            uow.provided = provided
            return None
        finally:
            uow.wanted = set()
        await savepoint.commit()
        if len(outcomes) > len(stretch):  # pragma: no cover - a handler's bug
            raise RuntimeError(f"{sub.consumer}: more outcomes than messages")
        for (event, body), outcome in zip(stretch, outcomes, strict=False):
            state.claimed.append(event.event_id)
            if outcome is None:
                state.applied.append(event)
            else:  # missing: parked here, woken in this run
                state.park(event, body, outcome.dependency)
        state.newly_provided(uow.provided - provided)
        return len(outcomes)

    async def _try_in_run(
        self,
        sub: Subscription,
        uow: UnitOfWork,
        event: Event,
        state: _RunState,
        take: int | None = None,
    ) -> object:
        """The handler in a savepoint: None (applied), the dependency it misses, or
        _FAILED (rolled back to the savepoint either way but applied); ``take``: the
        parked row it comes from, deleted in the same savepoint (gone already: _TAKEN,
        another process applied it)."""
        mark, provided = len(uow.events), set(uow.provided)
        uow.causation_id = event.event_id
        savepoint = await uow.session.begin_nested()
        if take is not None and not await self.parking.take(uow.session, take):
            await savepoint.rollback()
            return _TAKEN
        try:
            await sub.handler(event, uow)
        except Exception as exc:
            await savepoint.rollback()
            del uow.events[mark:]
            uow.provided = provided
            return exc.dependency if isinstance(exc, Missing) else _FAILED
        await savepoint.commit()
        state.applied.append(event)
        state.newly_provided(uow.provided - provided)
        return None

    async def _unpark_in_run(self, sub: Subscription, uow: UnitOfWork, state: _RunState) -> None:
        """Apply, in the run's transaction, this consumer's parked events (from the table)
        waiting for what the run provided — per key in arrival order, skipping those
        still waiting, and what they provide in turn — instead of a transaction each
        after the commit.  Each goes in a savepoint with the deletion of its row (a row
        another process took first is skipped); one still missing something gets its
        new dependency, one that fails stays for the unparking after the commit."""
        looked: set[str] = set()
        while True:
            dependencies = state.provided - looked
            if not dependencies:
                return
            looked |= dependencies
            for key in await self.parking.keys_waiting_for(uow.session, sub.consumer, dependencies):
                still_missing: set[str] = set()
                for parked in await self.parking.of_group(uow.session, sub.consumer, key):
                    waits = parked.waiting_for
                    if waits in still_missing or waits not in state.provided:
                        still_missing.add(waits)
                        continue
                    event = decode(parked.body.encode())
                    outcome = await self._try_in_run(sub, uow, event, state, take=parked.id)
                    if isinstance(outcome, str):
                        await self.parking.still_waiting(uow.session, parked, outcome, None)
                        still_missing.add(outcome)
                    elif outcome is _FAILED:
                        still_missing.add(waits)
                    elif outcome is None:
                        self.metrics.unparked.labels(self.name, sub.consumer).inc()
                    if self.memory_epoch != state.epoch:
                        return  # the run starts over

    async def _resolve_in_run(self, sub: Subscription, uow: UnitOfWork, state: _RunState) -> None:
        """Apply the run's parked messages whose dependency the run provided, per key in
        arrival order (skipping, like the unparking, those still waiting), and what those
        provide in turn."""
        while state.fresh:
            dependency = next(iter(state.fresh))
            del state.fresh[dependency]
            for key in sorted(state.by_dependency.pop(dependency, ())):
                queue = state.waiting.get(key, [])
                still_missing: set[str] = set()
                for entry in list(queue):
                    event, _, waits = entry
                    if waits in still_missing or waits not in state.provided:
                        still_missing.add(waits)
                        continue
                    outcome = await self._try_in_run(sub, uow, event, state)
                    if outcome is None:
                        queue.remove(entry)
                        continue
                    # still missing (maybe something else now), or failing: it stays
                    # parked (a failing one is retried by the unparking after the commit)
                    if isinstance(outcome, str):
                        entry[2] = outcome
                        state.by_dependency.setdefault(outcome, set()).add(key)
                    still_missing.add(entry[2])
                if not queue:
                    state.waiting.pop(key, None)

    async def _handle_event(self, sub: Subscription, event: Event, body: bytes) -> None:
        started = time.perf_counter()
        tried_parked: int | None = None  # the provisions seen when the key's were tried
        attempt = 0
        while True:
            try:
                provided = await self._apply(sub, event, body, tried_parked)
                break
            except _KeyHasParked:
                # earlier events of this key wait: those that can go now go first
                tried_parked = self._provisions
                await self.unpark(set(), [(sub.consumer, event.key)])
                continue
            except Rejected as exc:
                await self.dead_letter(sub.topic, body, str(exc), event.key)
                return
            except Exception as exc:
                attempt += 1
                await self._after_failed_transaction()
                if not is_outage(exc) and attempt >= self.settings.handler_attempts:
                    await self.dead_letter(sub.topic, body, _failure(exc, attempt), event.key)
                    return
                self.metrics.retries.labels(self.name, sub.consumer).inc()
                log.warning(
                    "%s: %s failed (attempt %d), retrying: %s",
                    sub.consumer,
                    event.type,
                    attempt,
                    _failure(exc, attempt),
                )
                await asyncio.sleep(self._backoff(attempt))  # never under a lock
        self.metrics.consumed.labels(self.name, event.type).inc()
        self.metrics.latency.labels(self.name, event.type).observe(time.perf_counter() - started)
        if provided:
            await self.unpark(provided)

    def _backoff(self, attempt: int) -> float:
        return min(30.0, float(self.settings.handler_backoff_seconds) * 2.0 ** (attempt - 1))

    async def _apply(
        self, sub: Subscription, event: Event, body: bytes, tried_parked: int | None
    ) -> set[str]:
        """One transaction: the inbox claim and either the effect or the parked row.
        Returns the dependencies the effect provided.

        Per-key order: while earlier events of the key are parked, the caller first
        applies those that can go (:class:`_KeyHasParked`; ``tried_parked``: the
        provision count when it did).  Those still parked then do not hold this one up —
        unless what the oldest waits for was provided since (a member registered, a day
        settled): then they are tried again first.  Decided here, in the transaction
        and under the service's lock, so a dependency provided a moment before never
        lets this event overtake an earlier one that could go."""
        async with self.exclusive or contextlib.nullcontext(), self.uow() as uow:
            await self._fresh_memory()
            if not await uow.claim(sub.consumer, event.event_id):
                self.metrics.duplicates.labels(self.name, sub.consumer).inc()
                return set()  # delivered twice: applied once
            held_by = await self.parking.dependencies_of(uow.session, sub.consumer, event.key)
            if self._try_parked_first(held_by, tried_parked):
                raise _KeyHasParked  # rolled back: claimed again on the next try
            waiting_for: str | None = None
            if self._raise_on == (sub.consumer, event.type):
                raise RuntimeError(f"fault injection: {sub.consumer} raises on {event.type}")
            try:
                await sub.handler(event, uow)
            except Missing as missing:
                waiting_for = missing.dependency
                # whatever the handler wrote goes; the claim and the parked row stay
                await uow.session.rollback()
                uow.events, uow.provided = [], set()
                await uow.claim(sub.consumer, event.event_id)
            if waiting_for is not None:
                await self.parking.park(
                    uow.session,
                    consumer=sub.consumer,
                    key=event.key,
                    waiting_for=waiting_for,
                    topic=sub.topic,
                    event_id=event.event_id,
                    event_type=event.type,
                    body=body,
                    day=self.park_day(event),
                )
                self.metrics.parked_total.labels(self.name, sub.consumer).inc()
                log.info("%s: parked %s (%s)", sub.consumer, event.type, waiting_for)
            elif self.exclusive is None and self._try_parked_first(held_by, tried_parked):
                # without the service's lock a dependency may have been provided while the
                # handler ran (its reads may have seen it): decide again, before committing.
                # (With the lock — dividends, whose handler has moved the engine — nothing
                # can be provided meanwhile.)
                raise _KeyHasParked
            emitted = bool(uow.events) or uow.committed
            await self._commit(uow)
        self._fault_point(sub.consumer)
        if waiting_for is None and sub.on_applied is not None:
            sub.on_applied(event)
        if emitted:
            self.committed()
        return uow.provided

    async def _after_failed_transaction(self) -> None:
        """A consumed message's (or a run's) transaction failed — its handlers may have
        moved the in-memory state for effects the database then does not have: it is
        rebuilt (rebuild_memory) before the retry, which then starts from what the
        database holds (else, say, dividends' engine would hold a batch of orders its
        input log does not, and refuse them on the retry as known).  A rebuild that
        fails (the database is away) is tried again before the next message."""
        if self.rebuild_memory is None:
            return
        self._memory_stale = True
        async with self.exclusive or contextlib.nullcontext():
            with contextlib.suppress(Exception):
                await self._fresh_memory()

    async def _fresh_memory(self) -> None:
        """Rebuild the in-memory state if a failed transaction left it stale (under the
        service's lock, before anything is applied)."""
        if self._memory_stale and self.rebuild_memory is not None:
            log.warning("%s: rebuilding the in-memory state after a failed transaction", self.name)
            await self.rebuild_memory()
            self._memory_stale = False

    async def _commit(self, uow: UnitOfWork) -> None:
        """The commit of a consumed message's (or a poll's) transaction: what it provides
        noted first (Service._apply decides by it), then the fencing check — only the
        active process commits."""
        self.providing(uow.provided)
        await self.check_lease(uow.session)
        await uow.commit()

    def providing(self, dependencies: set[str]) -> None:
        """A transaction about to commit provides ``dependencies`` (noted before the
        commit: an event that sees the count unchanged decided before it)."""
        for dependency in dependencies:
            self._provisions += 1
            self._recent_provisions[dependency] = self._provisions
            self._recent_provisions.move_to_end(dependency)
        while len(self._recent_provisions) > RECENT_PROVISIONS:
            _, self._forgotten_up_to = self._recent_provisions.popitem(last=False)

    def _try_parked_first(self, held_by: set[str], tried_parked: int | None) -> bool:
        """The key has parked events (waiting for ``held_by``) that might go now: not
        tried yet, or what one of them waits for was provided since."""
        if not held_by:
            return False
        if tried_parked is None:
            return True
        return any(self._provided_since(dependency, tried_parked) for dependency in held_by)

    def _provided_since(self, dependency: str, count: int) -> bool:
        if count < self._forgotten_up_to:
            return True  # too long ago to tell: try the parked ones again
        return self._recent_provisions.get(dependency, 0) > count

    async def unpark(
        self, dependencies: set[str], groups: list[tuple[str, str]] | None = None
    ) -> None:
        """Apply the events parked on ``dependencies`` (and every event of ``groups``:
        (consumer, key)), with everything their effects provide in turn; per key in
        arrival order.  Without dependencies (the sweeper): those due for a retry.  Only
        then: after a commit, retrying every due event would cost each commit a
        transaction per parked event, while a dependency this process provides wakes
        its waiters at once (one another process provided: the next sweep)."""
        pending = set(dependencies)
        due = not dependencies
        # a single writer provides every dependency itself (and wakes the waiters then):
        # its sweeps retry only failed handlers — but the first after it became active
        # all that is due (what a process before it provided and died before waking)
        failed_only = self.singleton and self._swept_since_active
        async with self._unparking:  # one pass at a time in this process
            provided: set[str] = set()
            after = 0  # a pass goes through the groups in pages of GROUPS_PER_PAGE
            while True:
                more = False
                if groups is None:
                    async with self.uow() as uow:
                        page = await self.parking.groups(
                            uow.session,
                            pending,
                            limit=GROUPS_PER_PAGE,
                            after=after,
                            due=due,
                            failed_only=failed_only,
                        )
                    groups = [(consumer, key) for consumer, key, _ in page]
                    more = len(page) == GROUPS_PER_PAGE
                    after = page[-1][2] if more else 0
                for consumer, key in groups:
                    provided |= await self._unpark_group(consumer, key)
                groups = None
                if more:
                    continue  # the next page of this pass
                if not provided:
                    return
                pending, provided = provided, set()  # what the pass provided, in turn
                due = False

    async def _unpark_group(self, consumer: str, key: str) -> set[str]:
        sub = self.subscriptions.get(consumer)
        provided: set[str] = set()
        if sub is None:  # a consumer this version no longer has
            return provided
        async with self.uow() as uow:
            waiting = await self.parking.of_group(uow.session, consumer, key)
        still_missing: set[str] = set()
        for parked in waiting:
            if parked.waiting_for in still_missing:
                continue  # what an earlier one of its key still lacks: it waits too
            outcome = await self._apply_parked(sub, parked)
            if isinstance(outcome, str):
                # it still waits, maybe for something else now: the later ones waiting
                # for that wait too, those waiting for anything else may go (an event is
                # not held up by one that cannot be applied)
                still_missing.add(outcome)
                continue
            if outcome is None:  # it failed and is retried later: none passes it
                still_missing.add(parked.waiting_for)
                continue
            provided |= outcome
        return provided

    async def discard_parked(self, parked_id: int) -> ParkedEvent | None:
        """Operator: dead-letter a parked event that will never be applicable (its
        dependency will not come), so that the later events of its key go on."""
        async with self.uow() as uow:
            parked = await self.parking.get(uow.session, parked_id)
        if parked is None:
            return None
        await self._drop_parked(
            parked, "discarded by an operator while parked: " + parked.waiting_for
        )
        await self.unpark(set(), [(parked.consumer, parked.key)])
        return parked

    async def _apply_parked(self, sub: Subscription, parked: ParkedEvent) -> set[str] | str | None:
        """Apply one parked event in a transaction that also deletes its row: what it
        provided; the dependency it still waits for (the same or another); None when it
        failed and has tries left."""
        event = decode(parked.body.encode())
        try:
            async with self.exclusive or contextlib.nullcontext(), self.uow() as uow:
                uow.causation_id = event.event_id
                if not await self.parking.take(uow.session, parked.id):
                    return set()  # another process applied it
                await sub.handler(event, uow)
                emitted = bool(uow.events) or uow.committed
                await self._commit(uow)
        except Missing as missing:
            await self._still_parked(parked, missing.dependency, None)
            return missing.dependency
        except Rejected as exc:
            await self._drop_parked(parked, str(exc))
            return set()
        except Exception as exc:
            if not is_outage(exc) and parked.attempts + 1 >= self.settings.handler_attempts:
                await self._drop_parked(parked, _failure(exc, parked.attempts + 1))
                return set()
            self.metrics.retries.labels(self.name, sub.consumer).inc()
            await self._still_parked(parked, parked.waiting_for, _failure(exc, parked.attempts + 1))
            return None
        self.metrics.unparked.labels(self.name, sub.consumer).inc()
        self.progress += 1
        if sub.on_applied is not None:
            sub.on_applied(event)
        if emitted:
            self.committed()
        return uow.provided

    async def _still_parked(self, parked: ParkedEvent, waiting_for: str, error: str | None) -> None:
        async with self.uow() as uow:
            await self.parking.still_waiting(uow.session, parked, waiting_for, error)
            await uow.commit()

    async def _drop_parked(self, parked: ParkedEvent, reason: str) -> None:
        """Dead-letter first, then delete: a crash in between dead-letters it twice, never
        loses it."""
        await self.dead_letter(parked.topic, parked.body.encode(), reason, parked.key)
        async with self.uow() as uow:
            await self.parking.take(uow.session, parked.id)
            await uow.commit()

    async def sweep_parked_forever(self) -> None:
        """Retry parked events that are due (a dependency another process provided)."""
        while True:
            await asyncio.sleep(self.settings.parked_sweep_seconds)
            if not self.active:
                continue  # a standby applies nothing
            try:
                await self.unpark(set())
                self._swept_since_active = True
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retrying parked events failed; trying again later")

    async def parked_stats(self) -> dict[str, tuple[int, float]]:
        """Per consumer: (parked events, seconds since the oldest was parked)."""
        async with self.uow() as uow:
            stats = await self.parking.stats(uow.session)
        now = datetime.now(UTC)
        return {c: (n, (now - oldest).total_seconds()) for c, (n, oldest) in stats.items()}

    async def dead_letter(
        self, topic: str, body: bytes, reason: str, key: str | None = None
    ) -> None:
        """To ``<topic>.dlq`` with the reason, keyed like the original when it could be
        read (a member's dead letters stay together); raises if the broker does not take
        it (the message is then delivered again: dead letters are at least once too)."""
        log.warning("dead-lettering a message from %s: %s", topic, reason)
        self.metrics.dead_lettered.labels(self.name, topic).inc()
        await self.broker.publish(
            body,
            self.settings.topic_prefix + dead_letter_topic(topic),
            key=None if key is None else key.encode(),
            headers={"reason": reason[:1000], "consumer": self.name},
        )


class StandbyGate:
    """A standby (not holding the engine's lease) serves no API: 503 with Retry-After —
    the active process answers, or this one once it has taken over.  A plain ASGI
    middleware: Starlette's ``BaseHTTPMiddleware`` runs every request through an extra
    task and stream, which a concurrent load does not need."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.service.active or scope["path"] in STANDBY_PATHS:
            await self.app(scope, receive, send)
            return
        response = http_errors.error_response(
            503,
            f"this {self.service.name} process is a standby; the active one answers",
            code="standby",
            headers={"Retry-After": "1"},
        )
        await response(scope, receive, send)


# the route label of a request no route took (an unknown path, a standby's 503): one
# value whatever the path, or each random path a client asks for would be a new series
UNMATCHED_ROUTE = "unmatched"
# labelled as themselves; a client may send any token as a method, the rest is "other"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """Counts and times every HTTP request (``tokenmall_http_requests_total``,
    ``tokenmall_http_request_duration_seconds``) by method, route template and status.

    A plain ASGI middleware, for the reason StandbyGate is one: it sits on every request
    of the throughput benchmark.  The router puts the route it chose in
    ``scope["route"]`` (also for a 405, and for a 404 the endpoint raised); its ``path``
    is the template.  On FastAPI's included routers that is the route's own path: the
    APIRouter's prefix, without a prefix given to ``include_router`` or the prefix of a
    router it is included in — create_app includes each service's routers as they are,
    so the two are the same.  FastAPI's own pages (/docs, /openapi.json) are plain
    Starlette routes the router leaves out of ``scope["route"]``: found by their endpoint.
    /metrics is counted too: it reads the database (backlog, parked events), and a scrape
    that slows down or fails shows there."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's, read once the first unrouted request comes
        self._by_endpoint: dict[Any, str] | None = None
        # (method, template, status) -> the labelled counter and histogram: bounded by
        # the routes, never by what a client sends
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # what ServerErrorMiddleware, outside this one, answers an app that raised
        # before it started a response
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        began = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            self._observe(scope, status, time.perf_counter() - began)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) if route is not None else None
        if not isinstance(template, str):
            template = self._plain_route(scope.get("endpoint"))
        if template == UNMATCHED_ROUTE:
            template = self._mount(scope.get("path", ""))
        method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
        key = (method, template, status)
        series = self._series.get(key)
        if series is None:
            labels = (self.metrics.service, method, template, str(status))
            series = (
                self.metrics.http_requests.labels(*labels),
                self.metrics.http_seconds.labels(*labels),
            )
            self._series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def _mount(self, path: str) -> str:
        """A mounted app's path (the docs pages' assets): one series for all it serves."""
        for route in self.routes:
            if isinstance(route, Mount) and path.startswith(route.path + "/"):
                return route.path
        return UNMATCHED_ROUTE

    def _plain_route(self, endpoint: Any) -> str:
        if endpoint is None:
            return UNMATCHED_ROUTE
        if self._by_endpoint is None:
            self._by_endpoint = {
                r.endpoint: r.path for r in self.routes if isinstance(r, StarletteRoute)
            }
        try:
            return self._by_endpoint.get(endpoint, UNMATCHED_ROUTE)
        except TypeError:  # an unhashable endpoint: no route of ours
            return UNMATCHED_ROUTE


# uvicorn's keep-alive (its default is 5 s, the same as httpx's pool expiry): a client
# that reuses an idle connection just as the server closes it gets a reset.  The server
# keeps idle connections longer than common clients do, so the client closes first.
HTTP_KEEP_ALIVE_SECONDS = 75
# what a standby still answers: who it is, its metrics, and that it is not the one to ask
STANDBY_PATHS = frozenset({"/health", "/metrics", "/v1/sync"})


class ParkedItem(BaseModel):
    id: int
    service: str
    consumer: str
    key: str = Field(description="the Kafka key (per-key order is kept)")
    waiting_for: str = Field(description='what it waits for, e.g. "member:A"')
    topic: str
    event_id: str
    event_type: str
    parked_at: datetime
    attempts: int = Field(
        description="tries that failed (a retry still missing something is not one)"
    )
    last_error: str | None
    day: int | None = Field(description="the business day the event counts in, if it has one")

    @classmethod
    def of(cls, service: str, row: ParkedEvent) -> ParkedItem:
        fields = dataclasses.asdict(row)
        del fields["body"]  # the operator sees what it is and why it waits
        return cls(service=service, **fields)


ParkedList = Page[ParkedItem]


class SyncStatus(BaseModel):
    """``GET /v1/sync``: how far this process is from quiet (see the route)."""

    service: str
    pid: int = Field(description="the process answering on this port")
    outbox_backlog: int = Field(description="outbox rows not published yet")
    consumer_lag: int | None = Field(description="messages not consumed yet; null: unknown")
    parked: int = Field(description="events parked until what they depend on arrives")
    ready: bool
    role: str
    progress: int = Field(description="messages handled and published by this process")


def consumers_ready(broker: Any) -> bool:
    """Every subscriber has partitions assigned (false during start-up and rebalances)."""
    for subscriber in getattr(broker, "subscribers", []):
        consumer = getattr(subscriber, "consumer", None)
        if consumer is None or not consumer.assignment():
            return False
    return True


async def ensure_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    """Create the topics with the platform's partition count (auto-creation would not)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another service was quicker
                await admin.create_topics(missing)
    finally:
        await admin.close()


class LagProbe:
    """Consumer lag of this service's groups, measured from outside the consumers.

    Its own admin client (committed offsets per group) and group-less consumer (log
    end offsets) never wait behind the subscribers' long-poll fetches.
    """

    def __init__(self, bootstrap: str, groups: dict[str, str]) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self.groups = groups  # group id -> topic
        self._known: dict[str, list[Any]] | None = None
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.ends = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def start(self) -> None:
        await self.admin.start()
        await self.ends.start()

    async def stop(self) -> None:
        await self.ends.stop()
        await self.admin.close()

    async def _partitions(self) -> dict[str, list[Any]]:
        """The partitions of each watched topic (topics never shrink: fetched once)."""
        from aiokafka import TopicPartition

        if self._known is None:
            topics = sorted(set(self.groups.values()))
            described = await self.admin.describe_topics(topics)
            known = {
                d["topic"]: [TopicPartition(d["topic"], p["partition"]) for p in d["partitions"]]
                for d in described
                if d["error_code"] == 0 and d["partitions"]
            }
            if set(known) != set(topics):
                return known  # a topic is still being created: ask again next time
            self._known = known
        return self._known

    async def lag(self) -> int:
        return sum((await self.lag_by_group()).values())

    async def lag_by_group(self) -> dict[str, int]:
        partitions = await self._partitions()
        everything = [tp for tps in partitions.values() for tp in tps]
        ends_call = self.ends.end_offsets(everything) if everything else asyncio.sleep(0, {})
        ends, *commits = await asyncio.gather(
            ends_call, *(self.admin.list_consumer_group_offsets(g) for g in self.groups)
        )
        lags: dict[str, int] = {}
        for (group, topic), committed in zip(self.groups.items(), commits, strict=True):
            lags[group] = 0
            for tp in partitions.get(topic, []):
                done = committed[tp].offset if tp in committed else 0
                lags[group] += max(0, ends[tp] - max(done, 0))
        return lags


LAG_WATCH_SECONDS = 10.0


async def watch_lag(service: Service, probe: LagProbe) -> None:
    """The consumer-lag gauge, per group, every LAG_WATCH_SECONDS."""
    gauge = service.metrics.consumer_lag
    while True:
        try:
            for group, lag in (await probe.lag_by_group()).items():
                gauge.labels(service.name, group).set(lag)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker is away: the gauge keeps its last values
            log.info("%s: consumer lag unknown: %r", service.name, exc)
        await asyncio.sleep(LAG_WATCH_SECONDS)


class PrefixedPublisher:
    def __init__(self, inner: Any, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    async def publish_many(self, messages: list[Outgoing]) -> None:
        await self.inner.publish_many([m._replace(topic=self.prefix + m.topic) for m in messages])

    async def partitions(self, topic: str) -> int:
        count: int = await self.inner.partitions(self.prefix + topic)
        return count


def default_database_url(service: str) -> str:
    return f"sqlite:///data/{service}.db"


def start_webhooks(service: Service) -> asyncio.Task[None] | None:
    """The dispatcher of the service's webhooks, in every process (a delivery is claimed
    by one of them); None when it hosts none."""
    if service.webhooks is None:
        return None
    from tokenmall.webhooks import RetryPolicy

    settings, metrics = service.settings, service.metrics

    def attempted(outcome: str, seconds: float) -> None:
        metrics.webhook_attempts.labels(service.name, outcome).inc()
        metrics.webhook_seconds.labels(service.name).observe(seconds)

    assert service.sessions is not None
    dispatcher = service.webhooks.start(
        service.sessions,
        policy=RetryPolicy(
            base_seconds=settings.webhook_retry_base_seconds,
            max_delay_seconds=settings.webhook_retry_max_delay_seconds,
            window_seconds=settings.webhook_retry_window_seconds,
        ),
        timeout=settings.webhook_timeout_seconds,
        concurrency=settings.webhook_concurrency,
        poll_seconds=settings.webhook_poll_seconds,
        transport=service.webhooks.transport,
        on_attempt=attempted,
        allow_private=settings.webhook_allow_private_targets,
    )
    return asyncio.create_task(dispatcher.run_forever(), name=f"{service.name}-webhooks")


def create_app(
    service: Service,
    routers: list[APIRouter],
    subscriptions: list[Subscription],
    on_startup: Callable[[Service], Awaitable[None]] | None = None,
    publisher_factory: Callable[[Service], Publisher] | None = None,
    broker_factory: Callable[[Service], Any] | None = None,
) -> FastAPI:
    """A FastAPI app whose lifespan starts the database, the broker and the relay."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from faststream.kafka import KafkaBroker
        from faststream.kafka.annotations import KafkaMessage
        from faststream.middlewares import AckPolicy

        settings = service.settings
        url = settings.database_url or default_database_url(service.name)
        if url.startswith("sqlite:///") and "/" in url.removeprefix("sqlite:///"):
            import pathlib

            pathlib.Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # tables change only through migrations: at head, or upgraded first when asked
        try:
            await migrations.prepare(service.name, url, migrate=settings.migrate_on_start)
        except migrations.NotMigrated as exc:
            log.error("%s refuses to start: %s", service.name, exc)
            raise
        service.engine = make_engine(url)
        service.sessions = make_sessions(service.engine)
        broker = (
            broker_factory(service)
            if broker_factory
            else KafkaBroker(settings.kafka_bootstrap, client_id=service.name)
        )
        service.broker = broker
        prefix = settings.topic_prefix
        real_kafka = broker_factory is None
        if real_kafka:
            logical = list(contracts.TOPICS)
            await ensure_topics(
                settings.kafka_bootstrap,
                [prefix + t for t in logical] + [prefix + dead_letter_topic(t) for t in logical],
                contracts.PARTITIONS,
            )
        service.subscriptions = {sub.consumer: sub for sub in subscriptions}
        for sub in subscriptions:

            def make(sub: Subscription) -> Callable[..., Awaitable[None]]:
                # the raw record: FastStream would otherwise decode JSON into a dict first
                async def on_message(msg: KafkaMessage) -> None:
                    if isinstance(msg.body, list):  # a batch subscriber: one poll
                        await service.handle_batch(sub, msg.body)
                    else:
                        await service.handle(sub, msg.body)

                # the annotation as the class, not the name: FastStream resolves names
                # when the broker starts, from the frames then on the stack, and a
                # standby starts it from its lease task, outside this function (every
                # message then failed to decode, redelivered forever)
                on_message.__annotations__["msg"] = KafkaMessage
                return on_message

            subscribe: Any = broker.subscriber  # typed per literal ``batch`` value
            subscribe(
                prefix + sub.topic,
                group_id=f"{prefix}tokenmall-{sub.consumer}",
                ack_policy=AckPolicy.NACK_ON_ERROR,
                auto_offset_reset="earliest",
                # a batch subscriber hands over what one poll returned (handle_batch)
                batch=sub.batched,
                batch_timeout_ms=settings.consumer_poll_ms,
                max_records=settings.consumer_batch,
                # the broker's minimum: a killed process's partitions (and a dead active
                # dividends' groups) go to the others after 6 s instead of aiokafka's 10 s
                session_timeout_ms=6000,
                heartbeat_interval_ms=2000,
            )(make(sub))
        service.relay_lease = Lease(
            service.sessions, service.tables, "relay", settings.lease_seconds
        )
        # the producer before the consumers: a handler may ask it (the partitions a day's
        # markers go to) from the first message on
        producer: Any = (
            publisher_factory(service)
            if publisher_factory
            else KafkaPublisher(
                settings.kafka_bootstrap, service.name, compression=settings.kafka_compression
            )
        )
        if hasattr(producer, "start"):
            await producer.start()
        publisher = PrefixedPublisher(producer, prefix) if prefix else producer
        service.relay = OutboxRelay(
            service.sessions,
            service.tables,
            publisher,
            batch_size=settings.relay_batch,
            on_published=service.published,
            lease=service.relay_lease,
        )
        leading: asyncio.Task[None] | None = None
        try:
            if service.singleton:
                # a single writer: active only while it holds the lease, a hot standby until then
                service.lease = Lease(
                    service.sessions, service.tables, "engine", settings.lease_seconds
                )
                if await service._hold(service.lease):  # the usual case: nobody else is running
                    # renewed meanwhile: loading and joining the groups can outlast the lease
                    leading = asyncio.create_task(
                        service.keep_lease(), name=f"{service.name}-lease"
                    )
                    await service.become_active(broker, on_startup)
                else:
                    leading = asyncio.create_task(
                        service.lead_forever(broker, on_startup), name=f"{service.name}-lease"
                    )
            else:
                if on_startup is not None:
                    await on_startup(service)
                await broker.start()
                service.active = True
        except BaseException:  # a start that failed: the producer started above goes too
            if leading is not None:
                leading.cancel()
            if hasattr(producer, "stop"):
                with contextlib.suppress(Exception):
                    await producer.stop()
            raise
        relay_task = asyncio.create_task(service.relay.run_forever(), name=f"{service.name}-relay")
        sweeper = asyncio.create_task(service.sweep_parked_forever(), name=f"{service.name}-parked")
        dispatching = start_webhooks(service)
        probe = None
        watching: asyncio.Task[None] | None = None
        if real_kafka and subscriptions:
            groups = {f"{prefix}tokenmall-{s.consumer}": prefix + s.topic for s in subscriptions}
            probe = LagProbe(settings.kafka_bootstrap, groups)
            await probe.start()
            service.state["lag_probe"] = probe
            watching = asyncio.create_task(
                watch_lag(service, probe), name=f"{service.name}-consumer-lag"
            )
        try:
            yield
        finally:
            for task in (relay_task, sweeper, leading, watching, dispatching):
                if task is None:
                    continue
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # a clean stop hands over at once instead of after the lease's expiry
            for lease in (service.lease, service.relay_lease):
                if lease is not None:
                    with contextlib.suppress(Exception):
                        await lease.release()
            if service.webhooks is not None and service.webhooks.dispatcher is not None:
                await service.webhooks.dispatcher.close()
            if probe is not None:
                await probe.stop()
            if hasattr(producer, "stop"):
                await producer.stop()
            await broker.stop()
            for close in service.closers:
                with contextlib.suppress(Exception):
                    await close()
            await service.engine.dispose()

    # the docs pages from local assets (api_docs), not FastAPI's CDN-loading ones
    app = FastAPI(
        title=f"tokenmall {service.name}", lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.svc = service
    api_docs.install(app, f"tokenmall {service.name}")

    http_errors.install(app, text_paths=("/metrics",))  # one error body, documented

    app.add_middleware(StandbyGate, service=service)
    app.add_middleware(BodyLimit, max_bytes=service.settings.max_body_bytes)
    # added last, so outermost of ours: a standby's refusals are counted too
    app.add_middleware(HttpMetrics, metrics=service.metrics, routes=app.router.routes)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """``role``: "active", or "standby" (a hot standby waiting for the lease)."""
        return {"status": "ok", "service": service.name, "role": service.role}

    @app.get("/metrics")
    async def metrics() -> Response:
        if service.relay is not None:
            service.metrics.outbox_backlog.labels(service.name).set(await service.relay.backlog())
        stats = await service.parked_stats()
        for consumer in service.subscriptions:
            count, age = stats.get(consumer, (0, 0.0))
            service.metrics.parked.labels(service.name, consumer).set(count)
            service.metrics.parked_oldest.labels(service.name, consumer).set(age)
        return Response(
            generate_latest(service.metrics.registry), media_type="text/plain; version=0.0.4"
        )

    @app.get("/v1/sync", response_model=SyncStatus)
    async def sync() -> dict[str, Any]:
        """Quiescence: nothing left to publish and nothing left to consume.

        ``outbox_backlog`` counts unpublished outbox rows; ``consumer_lag`` is the sum
        over this service's subscriptions of (log end offset − committed offset), null
        while it cannot be measured (no group coordinator yet, just after start-up);
        ``ready`` is false while a consumer has no partitions assigned yet; ``progress``
        counts what this process handled and published (the same value twice: nothing
        moved in between).
        """
        backlog = await service.relay.backlog() if service.relay else 0
        probe = service.state.get("lag_probe")
        ready = consumers_ready(service.broker)
        try:
            lag = await probe.lag() if probe is not None else 0
        except Exception as exc:  # e.g. no group coordinator yet, just after start-up
            log.info("consumer lag unknown: %r", exc)
            lag, ready = None, False
        parked = sum(n for n, _ in (await service.parked_stats()).values())
        return {
            "service": service.name,
            "pid": os.getpid(),  # who answers on this port (dev up checks it is its process)
            "outbox_backlog": backlog,
            "consumer_lag": lag,
            "parked": parked,
            "ready": ready and service.active,
            "role": service.role,
            "progress": service.progress,
        }

    @app.delete(
        "/v1/parked/{parked_id}",
        response_model=ParkedItem,
        tags=["operations"],
        responses={404: {"description": "no such parked event"}},
    )
    async def discard_parked(parked_id: Annotated[int, Path(ge=1, le=2**63 - 1)]) -> ParkedItem:
        """Operator: dead-letter one parked event (reason "discarded by an operator");
        the later events of its key are then applied."""
        gone = await service.discard_parked(parked_id)
        if gone is None:
            raise HTTPException(404, f"no parked event {parked_id}")
        return ParkedItem.of(service.name, gone)

    @app.get("/v1/parked", response_model=ParkedList, tags=["operations"])
    async def parked(
        offset: Offset = 0,
        limit: Limit = DEFAULT_LIMIT,
    ) -> ParkedList:
        """Operator view: events parked until what they depend on arrives, oldest first."""
        async with service.uow() as uow:
            rows, total = await service.parking.listing(uow.session, offset, limit)
        return ParkedList(
            items=[ParkedItem.of(service.name, row) for row in rows],
            total=total,
            offset=offset,
            limit=limit,
        )

    for router in routers:
        app.include_router(router)
    if service.webhooks is not None:
        from tokenmall.webhooks.routes import build_router

        allow_private = service.settings.webhook_allow_private_targets
        app.include_router(build_router(service.webhooks.kinds, allow_private=allow_private))
    return app
