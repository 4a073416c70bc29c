"""``tokenmall bench platform``: a mall's traffic through a running dev platform, end to end.

Against a fresh ``tokenmall dev up [--postgres]`` (it starts one when none runs, and
stops it again): a population of phone-number members (a random forest to depth 50)
imported from a CSV, paid orders one by one (create + pay, 32 at a time) and through
``POST /v1/orders:batch``, one settlement — each phase timed until every service has
applied its effects (``/v1/sync``: nothing to publish, nothing to consume, nothing
parked).  CPU is read from /proc for each kind of process (the four services, Kafka,
PostgreSQL; not this load generator).  The raw floors are measured in the same run on
the same machine: plain aiokafka producing and consuming the messages the import
published (the same count and bytes) and the settlement's release messages (read back
from its topic: the same keys and bytes), and PostgreSQL COPY of as many rows as the
settlement's release lines.  In the end the platform's result document must equal
``simulate`` of the input log dividends applied (``equal_to_simulate``).
"""

from __future__ import annotations

import asyncio
import csv
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tokenmall import contracts, devenv
from tokenmall.bench import random_forest
from tokenmall.client import ApiError, PaidOrder, Settlement
from tokenmall.imports import import_members
from tokenmall.inputlog import scenario_from_inputs
from tokenmall.replay import Platform, read_document
from tokenmall.scenario import parse_scenario, simulate

SINGLE_CONCURRENCY = 32
BATCH = 1000
BATCH_CONCURRENCY = 2
INPUT_PAGE = 10_000  # the input log's page limit
IMPORT_BATCH = 5000  # members per POST /v1/members:batch


def phone(i: int) -> str:
    return f"+86138{i:08d}"


def population(members: int, seed: int) -> list[tuple[str, str | None]]:
    """(member, sponsor) in registration order: sponsors first, depth ≤ 50."""
    parent = random_forest(members, 50, np.random.default_rng(seed))
    return [(phone(i), phone(p) if p >= 0 else None) for i, p in enumerate(parent)]


def order_amounts(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 1)
    cents = rng.integers(100_00, 5000_00, size=count)
    return [f"{c // 100}.{c % 100:02d}" for c in cents.tolist()]


# ------------------------------------------------------------------ processes and CPU


@dataclass
class ProcessKinds:
    services: dict[str, list[int]]  # service name → its processes
    kafka: list[int]
    postgres: list[int]

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each kind (PostgreSQL: the server and its backends),
        and by each service (``service:<name>``) to show where the services' share goes."""
        import psutil

        def seconds(pids: list[int], children: bool) -> float:
            total = 0.0
            for pid in pids:
                try:
                    process = psutil.Process(pid)
                    own = process.cpu_times()
                    total += own.user + own.system
                    if not children:
                        continue
                    # children that ended (a closed connection's backend) count through
                    # the parent, which reaped them; the live ones by themselves
                    total += own.children_user + own.children_system
                    for child in process.children(recursive=True):
                        try:
                            times = child.cpu_times()
                        except psutil.Error:
                            continue  # ended just now: counted at the next reading
                        total += times.user + times.system
                except psutil.Error:
                    continue
            return total

        by_service = {
            f"service:{name}": seconds(pids, children=False)
            for name, pids in sorted(self.services.items())
        }
        return {
            "services": sum(by_service.values()),
            "kafka": seconds(self.kafka, children=False),
            "postgres": seconds(self.postgres, children=True),
            **by_service,
        }


def process_kinds(state: dict[str, Any]) -> ProcessKinds:
    import psutil

    services: dict[str, list[int]] = {}
    for name, _, process in devenv.processes(state):
        if process.get("pid"):
            services.setdefault(name, []).append(int(process["pid"]))
    kafka_dir = (state.get("kafka") or {}).get("dir")
    kafka = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if kafka_dir
        and any(kafka_dir in part for part in (p.info["cmdline"] or []))
        and "java" in " ".join(p.info["cmdline"] or [])
    ]
    postgres: list[int] = []
    if state.get("run", {}).get("postgres") and state.get("postgres"):
        pid = devenv._postmaster(Path(state["postgres"]["dir"]))
        postgres = [pid] if pid else []
    return ProcessKinds(services, kafka, postgres)


def per_order(before: dict[str, float], after: dict[str, float], orders: int) -> dict[str, float]:
    return {k: round((after[k] - before[k]) * 1000 / max(orders, 1), 3) for k in before}


# ------------------------------------------------------------------ phases


QUIET_POLL_SECONDS = 0.1  # the resolution of the end-to-end times


async def timed_until_quiet(platform: Platform, work: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await work()
    await platform.wait_quiet(QUIET_POLL_SECONDS)
    return time.perf_counter() - started


async def single_orders(
    platform: Platform, orders: list[tuple[str, str, str]], errors: list[str]
) -> list[float]:
    """Create + pay each order, SINGLE_CONCURRENCY at a time; the pay latencies (s)."""
    queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
    for order in orders:
        queue.put_nowait(order)
    latencies: list[float] = []

    orders_api = platform.api.orders

    async def worker() -> None:
        while not queue.empty():
            order_id, member, amount = queue.get_nowait()
            try:
                await orders_api.create_order(member, amount, order_id=order_id)
            except ApiError as exc:
                errors.append(f"create {order_id}: {exc.status} {exc.text[:200]}")
                continue
            started = time.perf_counter()
            try:
                await orders_api.pay_order(order_id)
            except ApiError as exc:
                errors.append(f"pay {order_id}: {exc.status} {exc.text[:200]}")
            finally:
                latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(SINGLE_CONCURRENCY)))
    return latencies


async def batch_orders(
    platform: Platform, orders: list[tuple[str, str, str]], errors: list[str]
) -> None:
    batches = [orders[i : i + BATCH] for i in range(0, len(orders), BATCH)]
    gate = asyncio.Semaphore(BATCH_CONCURRENCY)

    async def send(batch: list[tuple[str, str, str]]) -> None:
        items = [PaidOrder(o, m, a) for o, m, a in batch]
        try:
            async with gate:
                answer = await platform.api.orders.create_orders_batch(items)
        except ApiError as exc:
            errors.append(f"batch: {exc.status} {exc.text[:200]}")
            return
        if answer.refused:
            errors.append(f"batch: {answer.refused} refused")

    await asyncio.gather(*(send(b) for b in batches))


async def settle(platform: Platform, errors: list[str]) -> tuple[int, int]:
    """Settle the current day; (the day, the members it released)."""
    dividends = platform.api.dividends
    day = (await dividends.state()).day
    try:
        await dividends.settle(day)
    except ApiError as exc:
        errors.append(f"settle: {exc.status} {exc.text[:200]}")
        return day, 0
    while True:
        try:
            status = await dividends.settlement(day)
        except ApiError as exc:
            errors.append(f"settlement: {exc.status} {exc.text[:200]}")
            return day, 0
        if isinstance(status, Settlement):
            return day, status.members_released
        await asyncio.sleep(0.02)


async def input_log(platform: Platform) -> list[dict[str, Any]]:
    """The whole input log, page after page by seq (keyset: 2,000,000 inputs by offset
    re-read a billion rows)."""
    log = await platform.api.dividends.inputs(page_size=INPUT_PAGE).all()
    return [entry.model_dump() for entry in log]


# ------------------------------------------------------------------ raw floors


def import_messages(people: list[tuple[str, str | None]], batch: int) -> list[bytes]:
    """The MembersRegistered messages importing ``people`` in HTTP batches of ``batch``
    publishes (their bytes but for the ids and times each event gets)."""
    messages: list[bytes] = []
    for start in range(0, len(people), batch):
        chunk = [
            contracts.Registration(member=m, sponsor=s, seq=start + i + 1)
            for i, (m, s) in enumerate(people[start : start + batch])
        ]
        messages += [contracts.encode(e) for e in contracts.registration_batches(chunk)]
    return messages


async def published_releases(bootstrap: str, topic: str, day: int) -> list[tuple[bytes, bytes]]:
    """(key, bytes) of every ReleaseComputed message of ``day`` on ``topic``, as the
    platform published them (read once after the settlement: not timed)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        partitions = consumer.assignment()
        while not partitions:
            await asyncio.sleep(0.05)
            partitions = consumer.assignment()
        ends = await consumer.end_offsets(list(partitions))
        wanted = b'"type":"ReleaseComputed"'
        day_field = f'"day":{day},'.encode()
        found: list[tuple[bytes, bytes]] = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for record in records:
                    value = record.value or b""
                    if wanted in value and day_field in value:
                        found.append((record.key or b"", value))
        return found
    finally:
        await consumer.stop()


async def kafka_floor(bootstrap: str, messages: list[bytes] | list[tuple[bytes, bytes]]) -> float:
    """Plain aiokafka: produce ``messages`` (bytes on the registrations key, or (key,
    bytes) pairs) to a new topic and consume them all (seconds) — the least any path
    through Kafka can take here."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"bench-floor-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, contracts.PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=5,
        max_batch_size=1 << 20,
        max_request_size=2 << 20,
    )
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await producer.start()
    await consumer.start()
    # a new topic's partitions may still be electing leaders: not part of the floor
    await asyncio.gather(
        *[await producer.send(topic, b"", partition=p) for p in range(contracts.PARTITIONS)]
    )
    started = time.perf_counter()
    try:
        for start in range(0, len(messages), 5000):
            sends = [
                # on the keys (partitions) the platform publishes them on
                await producer.send(topic, value, key=key)
                for key, value in map(_keyed, messages[start : start + 5000])
            ]
            await asyncio.gather(*sends)
        seen = -contracts.PARTITIONS  # the warm-up messages
        while seen < len(messages):
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            seen += sum(len(b) for b in batches.values())
        return time.perf_counter() - started
    finally:
        await producer.stop()
        await consumer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()


def _keyed(message: bytes | tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    if isinstance(message, tuple):
        return message
    return contracts.REGISTRATIONS_KEY.encode(), message  # an import's: one key, as published


async def copy_floor(uri: str, rows: int) -> float:
    """PostgreSQL COPY of ``rows`` release-line-like rows into a scratch table (seconds)."""
    import asyncpg

    connection = await asyncpg.connect(uri.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute(
            "CREATE TEMP TABLE floor_lines (day int, member text, asset text, amounts text, "
            "total bigint)"
        )
        records = [(1, phone(i), "cny", '{"base":123}', 123) for i in range(rows)]
        started = time.perf_counter()
        await connection.copy_records_to_table("floor_lines", records=records)
        return time.perf_counter() - started
    finally:
        await connection.close()


# ------------------------------------------------------------------ the run


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_bench(
    members: int,
    single: int,
    batched: int,
    seed: int,
    workdir: Path,
    state: dict[str, Any],
    preset: str | None = "points",
    on_phase: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    urls = devenv.service_urls(state)
    platform = Platform(urls, timeout=600.0)
    errors: list[str] = []
    kinds = process_kinds(state)
    try:
        await platform.wait_quiet()
        if not await platform.is_fresh():
            raise RuntimeError("the platform is not fresh: run `tokenmall dev reset` first")
        if preset:  # the base plan releases nothing: a settlement would fan out to no one
            try:
                await platform.api.dividends.schedule_plan({"preset": preset}, activate_now=True)
            except ApiError as exc:
                raise RuntimeError(f"plan {preset!r}: {exc.status} {exc.text[:200]}") from None
        people = population(members, seed)
        path = workdir / "members.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["member", "sponsor", "merchant"])
            writer.writerows([(m, s or "", "") for m, s in people])

        on_phase(f"importing {members:,} members")
        cpu0 = kinds.cpu()

        async def import_all() -> None:
            with httpx.Client(base_url=urls["referrals"], timeout=600) as client:
                await asyncio.to_thread(import_members, path, client, IMPORT_BATCH)

        import_seconds = await timed_until_quiet(platform, import_all)
        cpu1 = kinds.cpu()

        amounts = order_amounts(single + batched, seed)
        rng = np.random.default_rng(seed + 2)
        buyers = rng.integers(0, members, size=single + batched).tolist()
        orders = [(f"b{i}", phone(buyers[i]), amounts[i]) for i in range(single + batched)]

        on_phase(f"{single:,} orders one by one (create + pay, {SINGLE_CONCURRENCY} at a time)")
        latencies: list[float] = []

        async def pay_singles() -> None:
            latencies.extend(await single_orders(platform, orders[:single], errors))

        single_seconds = await timed_until_quiet(platform, pay_singles)
        cpu2 = kinds.cpu()

        on_phase(f"{batched:,} orders through orders:batch")
        batch_seconds = await timed_until_quiet(
            platform, lambda: batch_orders(platform, orders[single:], errors)
        )
        cpu3 = kinds.cpu()

        on_phase("settling the day")
        released: list[int] = []
        settled_day: list[int] = []

        async def settle_day() -> None:
            day, members_released = await settle(platform, errors)
            settled_day.append(day)
            released.append(members_released)

        settle_seconds = await timed_until_quiet(platform, settle_day)

        on_phase("raw floors")
        bootstrap = state["kafka"]["bootstrap"]
        floor_messages = import_messages(people, IMPORT_BATCH)
        kafka_seconds = await kafka_floor(bootstrap, floor_messages)
        # the settlement's own release messages, produced and consumed once more
        release_topic = state["run"]["prefix"] + contracts.DIVIDENDS
        releases = await published_releases(bootstrap, release_topic, settled_day[0])
        release_kafka_seconds = await kafka_floor(bootstrap, releases) if releases else 0.0
        copy_seconds = None
        wallet_database = str(state["services"]["wallet"]["database"])
        if wallet_database.startswith("postgresql"):  # the wallet's own database
            copy_seconds = await copy_floor(wallet_database, max(released[0], 1))

        on_phase("comparing with simulate")
        log = await input_log(platform)
        expected = simulate(parse_scenario(scenario_from_inputs(log))).document
        document = await read_document(platform)
    finally:
        await platform.close()

    def ms(seconds: float) -> float:
        return round(seconds * 1000, 1)

    result: dict[str, Any] = {
        "members": members,
        "plan_preset": preset,
        "database": "postgres" if state.get("run", {}).get("postgres") else "sqlite",
        "import_members_per_second": round(members / import_seconds, 1),
        "orders_single": single,
        "orders_single_per_second": round(single / single_seconds, 1),
        "order_single_p50_ms": ms(statistics.median(latencies)) if latencies else None,
        "order_single_p99_ms": ms(_percentile(latencies, 0.99)),
        "orders_batch": batched,
        "orders_batch_per_second": round(batched / batch_seconds, 1),
        "members_released": released[0] if released else 0,
        "settle_end_to_end_seconds": round(settle_seconds, 3),
        "fanout_members_per_second": round((released[0] if released else 0) / settle_seconds, 1),
        "cpu_ms_per_member_import": per_order(cpu0, cpu1, members),
        "cpu_ms_per_order_single": per_order(cpu1, cpu2, single),
        "cpu_ms_per_order_batch": per_order(cpu2, cpu3, batched),
        "floor_kafka_messages": len(floor_messages),
        "floor_kafka_produce_consume_seconds": round(kafka_seconds, 3),
        "import_vs_kafka_floor": round(import_seconds / kafka_seconds, 2),
        "floor_postgres_copy_seconds": None if copy_seconds is None else round(copy_seconds, 3),
        "settle_vs_copy_floor": None
        if copy_seconds is None
        else round(settle_seconds / max(copy_seconds, 1e-6), 2),
        "floor_settle_kafka_messages": len(releases),
        "floor_settle_kafka_bytes": sum(len(v) for _, v in releases),
        "floor_settle_kafka_produce_consume_seconds": round(release_kafka_seconds, 3),
        # the settlement's floor: its release messages through Kafka, its lines by COPY
        "settle_vs_floor": round(
            settle_seconds / max(release_kafka_seconds + (copy_seconds or 0.0), 1e-6), 2
        ),
        "errors": errors[:20],
        "error_count": len(errors),
        "equal_to_simulate": expected == document,
    }
    return result


def bench_platform(
    members: int,
    single: int,
    batched: int,
    seed: int = 7,
    postgres: bool = True,
    preset: str | None = "points",
    on_phase: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the bench against the dev platform, starting (and then stopping) a fresh one
    when none runs."""
    import tempfile

    state = devenv.load_state()
    started_here = not any(
        devenv._service_alive(name, p.get("pid")) for name, _, p in devenv.processes(state)
    )
    if started_here:
        on_phase("starting the dev platform" + (" on PostgreSQL" if postgres else ""))
        state = devenv.up(postgres=postgres)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return asyncio.run(
                run_bench(members, single, batched, seed, Path(tmp), state, preset, on_phase)
            )
    finally:
        if started_here:
            devenv.down()
