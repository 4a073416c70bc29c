"""Fakes for fast service tests (unit level): no broker, no network.

Integration tests use the real Kafka broker instead (tests/integration).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from fastapi import FastAPI

from tokenmall.contracts import PARTITIONS, Event, MemberRegistered, decode
from tokenmall.messaging import OutboxRelay, Outgoing
from tokenmall.registry import RegisteredMember

_registrations = itertools.count(1)


def member_registered(
    member: str, sponsor: str | None = None, merchant: bool = False, seq: int | None = None
) -> MemberRegistered:
    """A registration as referrals publishes it; ``seq`` defaults to the next number."""
    return MemberRegistered(
        member=member,
        sponsor=sponsor,
        merchant=merchant,
        seq=next(_registrations) if seq is None else seq,
    )


class MemoryRegistry:
    """The member registry (referrals) for unit tests: a dict instead of HTTP."""

    def __init__(self, *members: RegisteredMember) -> None:
        self.members = {m.member: m for m in members}
        self.lookups: list[str] = []

    def register(self, member: str, merchant: bool = False, seq: int | None = None) -> None:
        self.members[member] = RegisteredMember(
            member, None, merchant, next(_registrations) if seq is None else seq
        )

    async def lookup(self, member: str) -> RegisteredMember | None:
        self.lookups.append(member)
        return self.members.get(member)


class MemoryPublisher:
    """Collects what the outbox relay publishes (topics of ``PARTITIONS`` partitions)."""

    def __init__(self, partitions: int = PARTITIONS) -> None:
        self.messages: list[Outgoing] = []
        self.partition_count = partitions

    async def publish_many(self, messages: list[Outgoing]) -> None:
        self.messages.extend(messages)

    async def partitions(self, topic: str) -> int:
        return self.partition_count

    def events(self, topic: str | None = None) -> list[Event]:
        return [decode(m.value) for m in self.messages if topic is None or m.topic == topic]


class _Record:
    """What a subscriber receives from FastStream: the record, with its raw ``body``."""

    def __init__(self, body: bytes | list[bytes]) -> None:
        self.body = body  # a list: one poll of a batch subscriber


class FakeBroker:
    """Stands in for faststream's KafkaBroker: records subscribers and dead letters."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Callable[[Any], Awaitable[None]]]] = {}
        self.batched: set[Callable[[Any], Awaitable[None]]] = set()  # batch subscribers
        self.dead_letters: list[tuple[str, bytes, dict[str, str]]] = []

    def subscriber(self, topic: str, batch: bool = False, **_: Any) -> Callable[[Any], Any]:
        def register(fn: Callable[[Any], Awaitable[None]]) -> Any:
            self.handlers.setdefault(topic, []).append(fn)
            if batch:
                self.batched.add(fn)
            return fn

        return register

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def publish(
        self, body: bytes, topic: str, headers: dict[str, str] | None = None, **_: Any
    ) -> None:
        self.dead_letters.append((topic, body, headers or {}))

    async def deliver_batch(self, topic: str, bodies: list[bytes | Event]) -> None:
        """Hand several messages at once, as one poll returns them (to a subscriber that
        is not a batch subscriber: one by one)."""
        raw = [b.model_dump_json().encode() if isinstance(b, Event) else b for b in bodies]
        for handler in self.handlers.get(topic, []):
            if handler in self.batched:
                await handler(_Record(raw))
            else:
                for one in raw:
                    await handler(_Record(one))

    async def deliver(self, topic: str, body: bytes | Event) -> None:
        """Hand a message to this service's subscribers of ``topic``, as Kafka would."""
        raw = body.model_dump_json().encode() if isinstance(body, Event) else body
        for handler in self.handlers.get(topic, []):
            # a batch subscriber gets a poll of one, as from Kafka
            await handler(_Record([raw] if handler in self.batched else raw))


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give an HTTP client bound to it (no sockets)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def drain(app: FastAPI) -> int:
    """Run the outbox relay until nothing is left; returns how many rows it published."""
    relay: OutboxRelay = app.state.svc.relay
    total = 0
    while True:
        published = await relay.run_once()
        total += published
        if published == 0:
            return total


def by_member(page: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A page of member rows (``items``, each with ``member``) as ``{member: row}`` — the
    shape of the result document's ``members`` that tests compare with ``simulate``."""
    return {row["member"]: {k: v for k, v in row.items() if k != "member"} for row in page["items"]}
