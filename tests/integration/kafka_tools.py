"""Helpers for the tests that talk to the real broker and platform directly: one platform
per test module (per backend), raw records produced straight to a platform's topics,
dead letters read back with their headers, metrics and the services' APIs polled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tokenmall import contracts, devenv

T = TypeVar("T")


@dataclass
class DeadLetter:
    topic: str
    partition: int
    key: bytes | None
    value: bytes
    reason: str
    consumer: str


@dataclass
class RunningPlatform:
    """One platform of the four services (processes) on a fresh prefix and databases."""

    run: dict[str, Any]
    bootstrap: str

    @property
    def prefix(self) -> str:
        return str(self.run["run"]["prefix"])

    @property
    def urls(self) -> dict[str, str]:
        return {name: info["url"] for name, info in self.run["services"].items()}

    def topic(self, logical: str) -> str:
        return self.prefix + logical

    def log_tail(self, chars: int = 2000) -> str:
        parts = []
        for name, info in self.run["services"].items():
            text = Path(info["log"]).read_text(errors="replace") if info.get("log") else ""
            parts.append(f"--- {name} ---\n{text[-chars:]}")
        return "\n".join(parts)


@contextlib.contextmanager
def module_platform(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    backend: str,
    extra_env: dict[str, dict[str, str]] | None = None,
) -> Iterator[RunningPlatform]:
    """A platform for a whole test module on ``backend`` ("sqlite" or "postgres")."""
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    pgdata = request.getfixturevalue("postgres_data") if backend == "postgres" else None
    runs_dir = tmp_path_factory.mktemp(f"runs-{backend}")
    run = devenv.launch_run(
        bootstrap, runs_dir, pgdata, preferred_ports=False, extra_env=extra_env or {}
    )
    try:
        yield RunningPlatform(run, bootstrap)
    finally:
        devenv.stop_services(run)


async def produce(bootstrap: str, records: list[tuple[str, bytes, bytes]]) -> None:
    """``(topic, key, value)`` records, sent in order (one key: one partition, in order)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for topic, key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def read_dead_letters(
    bootstrap: str,
    topic: str,
    until: Callable[[list[DeadLetter]], bool] = lambda _: True,
    timeout: float = 10.0,
) -> list[DeadLetter]:
    """Every record on ``topic`` (a ``.dlq`` topic) from the start, read until ``until``
    holds for what was read so far and the topic's end is reached (or ``timeout``)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(contracts.PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[DeadLetter] = []
        deadline = time.monotonic() + timeout
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, batch in batches.items():
                for r in batch:
                    headers = {k: v.decode(errors="replace") for k, v in r.headers}
                    found.append(
                        DeadLetter(
                            tp.topic,
                            tp.partition,
                            r.key,
                            r.value or b"",
                            headers.get("reason", ""),
                            headers.get("consumer", ""),
                        )
                    )
            if not batches:
                ends = await consumer.end_offsets(partitions)
                at_end = all([await consumer.position(tp) >= ends[tp] for tp in partitions])
                if at_end and (until(found) or time.monotonic() > deadline):
                    return found
    finally:
        await consumer.stop()


async def metric(client: httpx.AsyncClient, url: str, name: str, **labels: str) -> float:
    """The sum of one Prometheus metric over the series whose labels include ``labels``."""
    text = (await client.get(url + "/metrics")).text
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        series, value = line.rsplit(" ", 1)
        if all(w in series for w in wanted):
            total += float(value)
    return total


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout: float, what: str, pause: float = 0.05
) -> T:
    """``await probe()`` until it returns something other than None (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        got = await probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(pause)
