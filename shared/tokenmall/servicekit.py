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
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tokenmall import contracts, http_errors
from tokenmall.contracts import ContractError, Event, dead_letter_topic, decode
from tokenmall.db import make_engine, make_sessions
from tokenmall.messaging import KafkaPublisher, MessagingTables, OutboxRelay, Publisher, UnitOfWork

log = logging.getLogger(__name__)


class ServiceSettings(BaseSettings):
    """Environment: TOKENMALL_DATABASE_URL, TOKENMALL_KAFKA_BOOTSTRAP, TOKENMALL_PORT, …"""

    model_config = SettingsConfigDict(env_prefix="TOKENMALL_", extra="ignore")

    database_url: str = ""  # empty: sqlite file data/<service>.db
    kafka_bootstrap: str = "127.0.0.1:9092"
    host: str = "127.0.0.1"
    port: int = 0
    relay_batch: int = 1000
    log_level: str = "INFO"
    # Physical topic = prefix + logical topic: separate platform instances (a fresh
    # replay, a test) share one broker without seeing each other's events.
    topic_prefix: str = ""
    # Fault injection for the delivery tests, "<consumer>:<n>": the process dies
    # (exit 70) right after the n-th message of that consumer committed its effect and
    # before its offset is acknowledged, so Kafka redelivers it on restart.  Empty: off.
    fault_exit_after_commit: str = ""


class Rejected(ValueError):
    """An event the rules cannot apply: dead-lettered with this reason, then acknowledged."""


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
        self.outbox_backlog = Gauge(
            "tokenmall_outbox_backlog",
            "Unpublished outbox rows",
            ["service"],
            registry=self.registry,
        )
        self.fanout = Gauge(
            "tokenmall_release_fanout_members_per_second",
            "Members released per second in the last settlement step",
            ["service"],
            registry=self.registry,
        )
        self.service = service

    def published_events(self, types: list[str]) -> None:
        for t in types:
            self.published.labels(self.service, t).inc()


Handler = Callable[[Event, UnitOfWork], Awaitable[None]]


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

    def __post_init__(self) -> None:
        self.metrics = ServiceMetrics(self.name)
        self._fault = parse_fault(self.settings.fault_exit_after_commit)
        self._commits: dict[str, int] = {}  # per consumer, for the fault point

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
        return UnitOfWork(self.sessions, self.tables, self.name)

    def committed(self) -> None:
        """Call after a transaction that emitted events: the relay publishes at once."""
        if self.relay is not None:
            self.relay.wake()

    async def handle(self, sub: Subscription, body: bytes) -> None:
        """Decode, apply once (inbox), dead-letter what cannot be parsed or applied."""
        try:
            event = decode(body)
        except ContractError as exc:
            await self.dead_letter(sub.topic, body, f"unparseable: {exc}")
            return
        started = time.perf_counter()
        try:
            async with self.exclusive or contextlib.nullcontext(), self.uow() as uow:
                if not await uow.claim(sub.consumer, event.event_id):
                    self.metrics.duplicates.labels(self.name, sub.consumer).inc()
                    return  # delivered twice: applied once
                await sub.handler(event, uow)
                emitted = bool(uow.events) or uow.committed
                await uow.commit()
            self._fault_point(sub.consumer)
        except Rejected as exc:
            await self.dead_letter(sub.topic, body, str(exc))
            return
        self.metrics.consumed.labels(self.name, event.type).inc()
        self.metrics.latency.labels(self.name, event.type).observe(time.perf_counter() - started)
        if emitted:
            self.committed()

    async def dead_letter(self, topic: str, body: bytes, reason: str) -> None:
        log.warning("dead-lettering a message from %s: %s", topic, reason)
        self.metrics.dead_lettered.labels(self.name, topic).inc()
        await self.broker.publish(
            body,
            self.settings.topic_prefix + dead_letter_topic(topic),
            headers={"reason": reason[:1000], "consumer": self.name},
        )


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
        partitions = await self._partitions()
        everything = [tp for tps in partitions.values() for tp in tps]
        ends_call = self.ends.end_offsets(everything) if everything else asyncio.sleep(0, {})
        ends, *commits = await asyncio.gather(
            ends_call, *(self.admin.list_consumer_group_offsets(g) for g in self.groups)
        )
        total = 0
        for (_group, topic), committed in zip(self.groups.items(), commits, strict=True):
            for tp in partitions.get(topic, []):
                done = committed[tp].offset if tp in committed else 0
                total += max(0, ends[tp] - max(done, 0))
        return total


class PrefixedPublisher:
    def __init__(self, inner: Any, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    async def publish_many(self, messages: list[tuple[str, str, bytes]]) -> None:
        await self.inner.publish_many([(self.prefix + t, k, v) for t, k, v in messages])


def default_database_url(service: str) -> str:
    return f"sqlite:///data/{service}.db"


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
        service.engine = make_engine(url)
        service.sessions = make_sessions(service.engine)
        async with service.engine.begin() as conn:
            await conn.run_sync(service.metadata.create_all)
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
        for sub in subscriptions:

            def make(sub: Subscription) -> Callable[..., Awaitable[None]]:
                # the raw record: FastStream would otherwise decode JSON into a dict first
                async def on_message(msg: KafkaMessage) -> None:
                    await service.handle(sub, msg.body)

                return on_message

            broker.subscriber(
                prefix + sub.topic,
                group_id=f"{prefix}tokenmall-{sub.consumer}",
                ack_policy=AckPolicy.NACK_ON_ERROR,
                auto_offset_reset="earliest",
                max_records=500,
            )(make(sub))
        if on_startup is not None:
            await on_startup(service)
        await broker.start()
        producer: Any = (
            publisher_factory(service)
            if publisher_factory
            else KafkaPublisher(settings.kafka_bootstrap, service.name)
        )
        if hasattr(producer, "start"):
            await producer.start()
        publisher = PrefixedPublisher(producer, prefix) if prefix else producer
        service.relay = OutboxRelay(
            service.sessions,
            service.tables,
            publisher,
            batch_size=settings.relay_batch,
            on_published=service.metrics.published_events,
        )
        relay_task = asyncio.create_task(service.relay.run_forever(), name=f"{service.name}-relay")
        probe = None
        if real_kafka and subscriptions:
            groups = {f"{prefix}tokenmall-{s.consumer}": prefix + s.topic for s in subscriptions}
            probe = LagProbe(settings.kafka_bootstrap, groups)
            await probe.start()
            service.state["lag_probe"] = probe
        try:
            yield
        finally:
            relay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay_task
            if probe is not None:
                await probe.stop()
            if hasattr(producer, "stop"):
                await producer.stop()
            await broker.stop()
            await service.engine.dispose()

    app = FastAPI(title=f"tokenmall {service.name}", lifespan=lifespan)
    app.state.svc = service

    http_errors.install(app, text_paths=("/metrics",))  # one error body, documented

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service.name}

    @app.get("/metrics")
    async def metrics() -> Response:
        if service.relay is not None:
            service.metrics.outbox_backlog.labels(service.name).set(await service.relay.backlog())
        return Response(
            generate_latest(service.metrics.registry), media_type="text/plain; version=0.0.4"
        )

    @app.get("/v1/sync")
    async def sync() -> dict[str, Any]:
        """Quiescence: nothing left to publish and nothing left to consume.

        ``outbox_backlog`` counts unpublished outbox rows; ``consumer_lag`` is the sum
        over this service's subscriptions of (log end offset − committed offset);
        ``ready`` is false while a consumer has no partitions assigned yet.
        """
        backlog = await service.relay.backlog() if service.relay else 0
        probe = service.state.get("lag_probe")
        lag = await probe.lag() if probe is not None else 0
        ready = consumers_ready(service.broker)
        return {
            "service": service.name,
            "pid": os.getpid(),  # who answers on this port (dev up checks it is its process)
            "outbox_backlog": backlog,
            "consumer_lag": lag,
            "ready": ready,
        }

    for router in routers:
        app.include_router(router)
    return app
