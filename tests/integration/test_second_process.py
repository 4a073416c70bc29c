"""Two processes of every service on one database and one set of topics, under load, one
of each killed with SIGKILL — the active dividends included, and once in the middle of a
settlement — lose nothing, double nothing, keep the books balanced and equal
``simulate`` of the engine's input log (SQLite and PostgreSQL).

The mall's client is a load balancer: it spreads calls over both processes of each
service and tries the next process, after a short backoff, on a connection error or a
503 (a dividends standby, or orders while the wallet is away).  Orders and the wallet
reach the wallet and referrals through a failover proxy too (``TOKENMALL_WALLET_URL``,
``TOKENMALL_REFERRALS_URL``), as behind a load balancer in production, so any process
may die.  Every create, pay and refund carries an ``Idempotency-Key`` and every request
an id, so a call retried on the other process after the first one died is applied once.

The run: rounds of load (registrations with sponsors, orders — some paying a stable
part — refunds, admin adjustments, equity sells, a settlement per round).  During round
2 one process of each service is SIGKILLed, the active dividends last; its standby takes
over (the time is printed: ``takeover``).  A supervisor then starts the killed processes
again (the dividends one comes back as a standby).  Later the active dividends is killed
right after a ``POST /v1/settlements/{day}`` reached it; after the takeover that day is
settled again: exactly one settlement.  At the end, once every process reports no
backlog, no lag and nothing parked: every registered member is in every service, every
order that answered 202 is paid, refused or refunded (never pending), the wallet has one
release line per member and day (as many as the engine released), sales are the paid
orders, every asset's books sum to zero, nothing was dead-lettered, and the result
document equals ``simulate`` of the input log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import Platforms
from tests.integration.kafka_tools import read_dead_letters
from tests.integration.test_replay_equals_simulate import first_difference
from tokenmall import contracts, devenv
from tokenmall.inputlog import scenario_from_inputs
from tokenmall.replay import SERVICES, Platform, read_document
from tokenmall.scenario import parse_scenario, simulate

PROCESSES = 2
CONCURRENCY = 8
ROUNDS = 5  # the kills happen in round 2 (KILL_ROUND), the settlement kill after round 3
KILL_ROUND = 2
MEMBERS_PER_ROUND = 14
ORDERS_PER_ROUND = 18
DEADLINE = 90.0  # seconds a client keeps retrying one call
# the points preset (quota, daily release to stable, referral and team) with equity on
PLAN = {"preset": "points", "equity": {}}
AMOUNTS = (3000, 4200, 9000, 12500, 27000)


# ------------------------------------------------------------------ a failover proxy


class FailoverProxy:
    """A TCP proxy on 127.0.0.1 in front of the processes of one service: each new
    connection goes to the next backend that accepts it (round robin), as a load
    balancer would send it."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.next = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, sock=self.sock)
        )
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.ports)):
            port = self.ports[self.next % len(self.ports)]
            self.next += 1
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                upstream = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
                break
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.call_soon(self.loop.stop)

        asyncio.run_coroutine_threadsafe(stop(), self.loop)
        self.thread.join(5)


# ------------------------------------------------------------------ the platform


def sigkill(pid: int) -> float:
    """SIGKILL to a service process (its group); the monotonic time it was sent."""
    sent = time.monotonic()
    os.killpg(pid, signal.SIGKILL)
    deadline = sent + 10
    while devenv._alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} survived SIGKILL"
        time.sleep(0.01)
    return sent


def launch(platforms: Platforms) -> tuple[dict[str, Any], list[FailoverProxy]]:
    """Two processes of every service (fresh databases and topics), orders and wallet
    reaching the wallet and referrals through failover proxies."""
    ports = {name: [devenv.free_port(0) for _ in range(PROCESSES)] for name in SERVICES}
    wallet, referrals = FailoverProxy(ports["wallet"]), FailoverProxy(ports["referrals"])
    through = {"TOKENMALL_WALLET_URL": wallet.url, "TOKENMALL_REFERRALS_URL": referrals.url}
    extra = {"orders": through, "wallet": {"TOKENMALL_REFERRALS_URL": referrals.url}}
    run = devenv._new_run(platforms.bootstrap, platforms.runs_dir, platforms.pgdata, ports, extra)
    platforms.started.append(run)  # stopped at the end of the test, whatever happens
    devenv.wait_healthy(run)
    return run, [wallet, referrals]


def process_list(run: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for _, _, p in devenv.processes(run, name)]


def respawn(run: dict[str, Any], name: str, index: int) -> None:
    """What a supervisor does with a dead process: start it again (same port)."""
    (process,) = devenv._respawn(run, name, [index])
    devenv.wait_healthy(run, only=[process["pid"]])


# ------------------------------------------------------------------ the mall's client


class Balancer:
    """Calls spread over a service's processes; a connection error or a 503 tries the
    next one after a short backoff (0.02 s doubling to 0.5 s), for up to DEADLINE."""

    def __init__(self, run: dict[str, Any], client: httpx.AsyncClient) -> None:
        self.run, self.client = run, client
        self.turn = 0
        self.retries: Counter[str] = Counter()

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[httpx.Response, int]:
        """The first answer that is not a 503, and how many tries it took."""
        urls = [p["url"] for p in process_list(self.run, service)]
        self.turn += 1
        start, attempt = self.turn, 0
        deadline = time.monotonic() + DEADLINE
        while True:
            url = urls[(start + attempt) % len(urls)]
            attempt += 1
            try:
                response = await self.client.request(method, url + path, json=json, headers=headers)
                if response.status_code != 503:
                    return response, attempt
                why = f"503 {response.text[:200]}"
            except httpx.TransportError as exc:
                why = repr(exc)
            self.retries[service] += 1
            assert time.monotonic() < deadline, f"{service} {method} {path}: {why}"
            await asyncio.sleep(min(0.5, 0.02 * 2 ** min(attempt, 5)))

    async def json(self, service: str, path: str) -> Any:
        response, _ = await self.call(service, "GET", path)
        assert response.status_code == 200, (service, path, response.status_code, response.text)
        return response.json()


@dataclass
class Mall:
    """What the mall was told: the calls that succeeded, and what they answered."""

    lb: Balancer
    rng: random.Random
    registered: dict[str, str | None] = field(default_factory=dict)  # member → sponsor
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # 202 on pay
    unpaid: set[str] = field(default_factory=set)  # created, pay refused (4xx): deleted
    refunded: set[str] = field(default_factory=set)
    requests: dict[str, str] = field(default_factory=dict)  # request id → kind
    settled: list[int] = field(default_factory=list)
    settle_seconds: list[float] = field(default_factory=list)
    ambiguous_registrations: int = 0  # 409 on a retry: the dead process had registered it
    counter: int = 0

    def next_id(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-{self.counter}"

    async def register(self, member: str) -> None:
        members = list(self.registered)
        sponsor = self.rng.choice(members) if members and self.rng.random() < 0.85 else None
        body = {"member": member, **({"sponsor": sponsor} if sponsor else {})}
        response, tries = await self.lb.call("referrals", "POST", "/v1/members", json=body)
        if response.status_code == 409 and tries > 1:
            # the first try reached a process that registered it and died before answering
            got = await self.lb.json("referrals", f"/v1/members/{member}")
            assert got["sponsor"] == sponsor, got
            self.ambiguous_registrations += 1
        else:
            assert response.status_code == 201, (body, response.status_code, response.text)
        self.registered[member] = sponsor

    async def order(self, member: str, with_stable: bool = False) -> str | None:
        amount = Decimal(self.rng.choice(AMOUNTS)) + Decimal(self.rng.randrange(100)) / 100
        stable = Decimal(0)
        if with_stable:
            balances = await self.lb.json("wallet", f"/v1/members/{member}/balances")
            stable = min(Decimal(balances["available"].get("stable", "0")) / 2, amount)
            stable = stable.quantize(Decimal("0.01"))
        order_id = self.next_id("o")
        body = {"order_id": order_id, "member": member, "amount": str(amount)}
        if stable > 0:
            body["stable"] = str(stable)
        deadline = time.monotonic() + 30
        while True:  # a member registered a moment ago: orders may not know it yet
            created, _ = await self.lb.call(
                "orders",
                "POST",
                "/v1/orders",
                json=body,
                headers={"Idempotency-Key": f"c-{order_id}"},
            )
            if created.status_code != 404 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert created.status_code == 201, (body, created.status_code, created.text)
        paid, _ = await self.lb.call(
            "orders",
            "POST",
            f"/v1/orders/{order_id}/pay",
            headers={"Idempotency-Key": f"p-{order_id}"},
        )
        if paid.status_code == 409 and stable > 0:  # the stable balance went elsewhere
            deleted, _ = await self.lb.call("orders", "DELETE", f"/v1/orders/{order_id}")
            assert deleted.status_code == 204, deleted.text
            self.unpaid.add(order_id)
            return None
        assert paid.status_code == 202, (order_id, paid.status_code, paid.text)
        assert paid.json()["status"] in ("pending", "paid", "refused"), paid.text
        self.orders[order_id] = {"member": member, "amount": amount, "stable": stable}
        return order_id

    async def verdict(self, order_id: str) -> str:
        deadline = time.monotonic() + DEADLINE
        while True:
            status = str((await self.lb.json("orders", f"/v1/orders/{order_id}"))["status"])
            if status != "pending":
                return status
            assert time.monotonic() < deadline, f"{order_id} still pending"
            await asyncio.sleep(0.1)

    async def refund(self, order_id: str) -> None:
        if await self.verdict(order_id) != "paid":
            return
        response, _ = await self.lb.call(
            "orders",
            "POST",
            f"/v1/orders/{order_id}/refund",
            headers={"Idempotency-Key": f"r-{order_id}"},
        )
        assert response.status_code == 200, (order_id, response.status_code, response.text)
        self.refunded.add(order_id)

    async def adjust(self, member: str) -> None:
        request_id = self.next_id("adj")
        body = {
            "request_id": request_id,
            "member": member,
            "asset": "cny",
            "amount": "25.00",
            "reason": "goodwill",
            "operator": "test",
        }
        response, _ = await self.lb.call("wallet", "POST", "/v1/admin/adjustments", json=body)
        assert response.status_code in (200, 202), response.text
        self.requests[request_id] = "adjust"

    async def sell(self, member: str) -> None:
        balances = await self.lb.json("wallet", f"/v1/members/{member}/balances")
        if Decimal(balances["available"].get("equity", "0")) < 1:
            return
        request_id = self.next_id("sell")
        body = {"request_id": request_id, "kind": "sell", "points": "1"}
        response, _ = await self.lb.call(
            "wallet", "POST", f"/v1/members/{member}/requests", json=body
        )
        if response.status_code == 409:  # held by another request meanwhile
            return
        assert response.status_code in (200, 202), response.text
        self.requests[request_id] = "sell"

    async def settle(self, day: int | None = None) -> dict[str, Any]:
        """Settle ``day`` (by default the current one)."""
        if day is None:
            day = int((await self.lb.json("dividends", "/v1/state"))["day"])
        started = time.monotonic()
        response, tries = await self.lb.call("dividends", "POST", f"/v1/settlements/{day}")
        assert response.status_code == 200, (day, response.status_code, response.text)
        if tries == 1:
            self.settle_seconds.append(time.monotonic() - started)
        self.settled.append(day)
        return dict(response.json())

    async def round(self, number: int | str, members: int, orders: int) -> None:
        """New members (half of them order at once), orders of earlier members (a third
        with a stable part), refunds, adjustments and sells, concurrently."""
        limit = asyncio.Semaphore(CONCURRENCY)
        earlier = list(self.registered)
        earlier_orders = list(self.orders)

        async def limited(work: Any) -> None:
            async with limit:
                await work

        async def newcomer(member: str) -> None:
            await self.register(member)
            if self.rng.random() < 0.5:
                await self.order(member)

        work: list[Any] = [newcomer(f"m{number}-{i}") for i in range(members)]
        if earlier:
            work += [
                self.order(self.rng.choice(earlier), with_stable=i % 3 == 0) for i in range(orders)
            ]
            work += [self.adjust(self.rng.choice(earlier)) for _ in range(2)]
            work += [self.sell(self.rng.choice(earlier)) for _ in range(2)]
        fresh = [o for o in earlier_orders if o not in self.refunded]
        work += [self.refund(o) for o in self.rng.sample(fresh, min(3, len(fresh)))]
        self.rng.shuffle(work)
        await asyncio.gather(*(limited(w) for w in work))


# ------------------------------------------------------------------ dividends


async def roles(client: httpx.AsyncClient, run: dict[str, Any]) -> list[str | None]:
    """The role (``GET /health``) of each dividends process, None when it does not answer."""
    found: list[str | None] = []
    for process in process_list(run, "dividends"):
        try:
            found.append(str((await client.get(process["url"] + "/health")).json()["role"]))
        except (httpx.HTTPError, ValueError, KeyError):
            found.append(None)
    return found


async def takeover(
    client: httpx.AsyncClient, run: dict[str, Any], standby: int, killed_at: float
) -> dict[str, float]:
    """Seconds from the SIGKILL until the standby says it is active, and until its API
    answers (``GET /v1/state``)."""
    url = process_list(run, "dividends")[standby]["url"]
    active = None
    deadline = killed_at + 60
    while True:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if active is None and (await client.get(url + "/health")).json()["role"] == "active":
                active = time.monotonic() - killed_at
            if active is not None and (await client.get(url + "/v1/state")).status_code == 200:
                return {"active": active, "answering": time.monotonic() - killed_at}
        assert time.monotonic() < deadline, "the standby did not take over within 60 s"
        await asyncio.sleep(0.02)


async def active_index(client: httpx.AsyncClient, run: dict[str, Any]) -> int:
    deadline = time.monotonic() + 60
    while True:
        found = await roles(client, run)
        if found.count("active") == 1 and found.count("standby") == len(found) - 1:
            return found.index("active")
        assert time.monotonic() < deadline, f"dividends roles: {found}\n" + silent(run, found)
        await asyncio.sleep(0.1)


def silent(run: dict[str, Any], found: list[str | None]) -> str:
    """Why a dividends process does not answer: alive or not, and the end of its log."""
    lines = []
    for process, role in zip(process_list(run, "dividends"), found, strict=True):
        if role is not None:
            continue
        pid = process.get("pid")
        alive = devenv._alive(pid) if pid else False
        tail = Path(process["log"]).read_text(errors="replace")[-4000:]
        lines.append(f"--- {process['url']} pid {pid} alive={alive}, log ends:\n{tail}")
    return "\n".join(lines)


def raw_post(url: str, path: str) -> socket.socket:
    """Send ``POST path`` and return at once, the answer left unread on the socket."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\n"
        "Connection: close\r\n\r\n"
    )
    sock.sendall(request.encode())
    return sock


def answered(sock: socket.socket) -> bool:
    """Whether the answer had come before the process died (it is then in the buffer)."""
    sock.settimeout(1)
    try:
        data = sock.recv(65536)
    except OSError:
        data = b""
    finally:
        sock.close()
    return data.startswith(b"HTTP/1.1 200")


# ------------------------------------------------------------------ the end


async def wait_quiet(client: httpx.AsyncClient, run: dict[str, Any]) -> None:
    """Until every process reports no outbox backlog, no consumer lag and nothing parked
    (and the active ones are ready), twice in a row."""
    deadline = time.monotonic() + 120
    quiet_rounds = 0
    while quiet_rounds < 2:
        states = []
        for name in SERVICES:
            for process in process_list(run, name):
                got = await client.get(process["url"] + "/v1/sync")
                states.append(got.json() if got.status_code == 200 else {"error": got.text})
        quiet = all(
            "error" not in s
            and s["outbox_backlog"] == 0
            and s["consumer_lag"] == 0
            and s["parked"] == 0
            and (s["ready"] or s.get("role") == "standby")
            for s in states
        )
        quiet_rounds = quiet_rounds + 1 if quiet else 0
        assert time.monotonic() < deadline, f"the platform did not settle down: {states}"
        await asyncio.sleep(0.05 if quiet else 0.2)


async def pages(lb: Balancer, service: str, path: str) -> list[Any]:
    rows: list[Any] = []
    while True:
        page = await lb.json(service, f"{path}?offset={len(rows)}&limit=1000")
        rows.extend(page["items"])
        if len(rows) >= page["total"] or not page["items"]:
            return rows


async def final_checks(
    client: httpx.AsyncClient, run: dict[str, Any], mall: Mall, bootstrap: str
) -> None:
    lb = mall.lb
    members = set(mall.registered)
    # nothing lost: every registered member in every service
    assert {r["member"] for r in await pages(lb, "referrals", "/v1/members")} == members
    assert {r["member"] for r in await pages(lb, "dividends", "/v1/members")} == members
    assert {r["member"] for r in await pages(lb, "wallet", "/v1/balances")} == members
    for member in members:  # the orders service knows each (200, not 404)
        await lb.json("orders", f"/v1/members/{member}/orders")
    # every order that answered 202 has its verdict, and the engine agrees with it
    log = await pages(lb, "dividends", "/v1/inputs")
    logged = Counter(row["input_id"] for row in log)
    assert [i for i, n in logged.items() if n > 1] == []  # each input applied once
    verdicts = {row["input_id"]: row["accepted"] for row in log}
    status = {o: str((await lb.json("orders", f"/v1/orders/{o}"))["status"]) for o in mall.orders}
    assert {o for o, s in status.items() if s not in ("paid", "refused", "refunded")} == set()
    for order_id, s in status.items():
        assert verdicts[f"order:{order_id}"] is (s != "refused"), (order_id, s)
        assert (s == "refunded") is (order_id in mall.refunded), (order_id, s)
        assert (f"refund:{order_id}" in verdicts) is (order_id in mall.refunded), order_id
    for order_id in mall.unpaid:
        assert f"order:{order_id}" not in verdicts
    for request_id in mall.requests:
        got = await lb.json("wallet", f"/v1/requests/{request_id}")
        assert got["status"] in ("done", "refused"), got
        assert verdicts[f"request:{request_id}"] is (got["status"] == "done"), got
    # nothing doubled: sales are the paid orders, one settlement per day, one release
    # line per member and day (as many members as the engine released)
    sales = await lb.json("orders", "/v1/sales")
    kept = sum((v["amount"] for o, v in mall.orders.items() if status[o] == "paid"), Decimal(0))
    back = sum((v["amount"] for o, v in mall.orders.items() if status[o] == "refunded"), Decimal(0))
    assert (Decimal(sales["sales"]), Decimal(sales["refunded"])) == (kept, back), sales
    settled = sorted(int(r["payload"]["day"]) for r in log if r["kind"] == "settle")
    assert settled == sorted(set(mall.settled)) == list(range(1, len(settled) + 1))
    lines: Counter[int] = Counter()
    for member in members:
        releases = await lb.json("wallet", f"/v1/members/{member}/releases?limit=10000")
        days = [(r["day"], r["asset"]) for r in releases["items"]]
        assert len(days) == len(set(days)), (member, days)
        lines.update(day for day, _ in days)
    for day in settled:
        report = await lb.json("dividends", f"/v1/settlements/{day}")
        assert lines[day] == report["members_released"], (day, lines[day], report)
    # books balance: for every asset the members and the platform accounts sum to zero
    balances = await pages(lb, "wallet", "/v1/balances")
    platform = await lb.json("wallet", "/v1/accounts/platform")
    for asset in ("cny", "stable", "equity"):
        total = sum((Decimal(r[asset]) for r in balances), Decimal(0))
        total += sum((Decimal(v) for v in platform.get(asset, {}).values()), Decimal(0))
        assert total == 0, (asset, total, platform.get(asset))
    # nothing dead-lettered anywhere
    prefix = run["run"]["prefix"]
    for topic in contracts.TOPICS:
        dead = await read_dead_letters(
            bootstrap, prefix + contracts.dead_letter_topic(topic), timeout=0
        )
        assert dead == [], (topic, dead)
    # and the platform's document equals simulate of the engine's input log
    urls = {}
    for name in SERVICES:
        index = await active_index(client, run) if name == "dividends" else 0
        urls[name] = process_list(run, name)[index]["url"]
    platform_client = Platform(urls, timeout=60)
    try:
        document = await read_document(platform_client)
    finally:
        await platform_client.close()
    expected = simulate(parse_scenario(scenario_from_inputs(log))).document
    assert document == expected, first_difference(expected, document)


# ------------------------------------------------------------------ the test


def test_two_processes_of_each_service_one_killed_under_load_lose_and_double_nothing(
    platforms: Platforms, backend: str
) -> None:
    started = time.monotonic()
    run, proxies = launch(platforms)
    report: dict[str, Any] = {"backend": backend}

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            lb = Balancer(run, client)
            mall = Mall(lb, random.Random(11))
            plan, _ = await lb.call(
                "dividends", "POST", "/v1/plan", json={"plan": PLAN, "activate_now": True}
            )
            assert plan.status_code == 202, plan.text
            for number in range(1, ROUNDS + 1):
                if number == KILL_ROUND:
                    await kill_one_of_each(client, mall, number)
                else:
                    await mall.round(number, MEMBERS_PER_ROUND, ORDERS_PER_ROUND)
                await mall.settle()
                if number == 3:
                    await kill_mid_settlement(client, mall)
            await wait_quiet(client, run)
            report["retries"] = dict(lb.retries)
            report["members"], report["orders"] = len(mall.registered), len(mall.orders)
            report["refunds"], report["requests"] = len(mall.refunded), len(mall.requests)
            report["days"] = len(mall.settled)
            report["ambiguous_registrations"] = mall.ambiguous_registrations
            await final_checks(client, run, mall, platforms.bootstrap)

    async def kill_one_of_each(client: httpx.AsyncClient, mall: Mall, number: int) -> None:
        """Round ``number`` under load while one process of each service is SIGKILLed,
        the active dividends last; the load goes on through the takeover."""
        kills_done = asyncio.Event()

        async def under_load() -> None:
            """Rounds one after the other until the kills and the takeover are over."""
            part = 0
            while part == 0 or not kills_done.is_set():
                await mall.round(f"{number}.{part}", MEMBERS_PER_ROUND, ORDERS_PER_ROUND)
                part += 1

        load = asyncio.create_task(under_load())
        killed: list[tuple[str, int]] = []
        for name, index in (("referrals", 0), ("orders", 1), ("wallet", 0)):
            await asyncio.sleep(0.3)
            await asyncio.to_thread(sigkill, process_list(run, name)[index]["pid"])
            killed.append((name, index))
        await asyncio.sleep(0.3)
        active = await active_index(client, run)
        if load.done():  # it failed (say how), or it was too short to be killed under
            raise AssertionError(
                f"the load ended before the kills: {load.exception()!r} "
                "(no exception: the load stops only once the kills are over)"
            )
        killed_at = await asyncio.to_thread(sigkill, process_list(run, "dividends")[active]["pid"])
        killed.append(("dividends", active))
        report["takeover"] = await takeover(client, run, 1 - active, killed_at)
        kills_done.set()
        await load
        # the supervisor starts the dead processes again; dividends' comes back a standby
        for name, index in killed:
            await asyncio.to_thread(respawn, run, name, index)
        assert sorted(await roles(client, run), key=str) == ["active", "standby"]

    async def kill_mid_settlement(client: httpx.AsyncClient, mall: Mall) -> None:
        """More load, then SIGKILL the active dividends right after a settlement request
        reached it; after the takeover, settling that day again settles it once."""
        await mall.round(0, MEMBERS_PER_ROUND, ORDERS_PER_ROUND)
        await wait_quiet(client, run)  # the day's inputs are in (nothing to wait for)
        active = await active_index(client, run)
        url = process_list(run, "dividends")[active]["url"]
        day = int((await client.get(url + "/v1/state")).json()["day"])
        # about half way through a settlement's round trip (measured on the earlier ones)
        delay = min(mall.settle_seconds or [0.02]) / 2
        sock = raw_post(url, f"/v1/settlements/{day}")
        await asyncio.sleep(delay)
        killed_at = await asyncio.to_thread(sigkill, process_list(run, "dividends")[active]["pid"])
        report["settlement_kill"] = {"day": day, "after_seconds": round(delay, 4)}
        report["settlement_kill"]["answered_before_kill"] = answered(sock)
        report["settlement_takeover"] = await takeover(client, run, 1 - active, killed_at)
        again = await mall.settle(day)  # that very day again, whatever the state says
        assert again["day"] == day, again
        report["settlement_kill"]["committed_before_kill"] = again["already_settled"]
        settle_rows = [
            r
            for r in await pages(mall.lb, "dividends", "/v1/inputs")
            if r["input_id"] == f"settle:{day}"
        ]
        assert len(settle_rows) == 1, settle_rows
        assert int((await mall.lb.json("dividends", "/v1/state"))["day"]) == day + 1
        await asyncio.to_thread(respawn, run, "dividends", active)
        assert sorted(await roles(client, run), key=str) == ["active", "standby"]

    try:
        asyncio.run(scenario())
    except BaseException:
        print(report)
        print(log_tails(run))
        raise
    finally:
        for proxy in proxies:
            proxy.close()
    report["seconds"] = round(time.monotonic() - started, 1)
    print(f"\nsecond process [{backend}]: {report}")


def log_tails(run: dict[str, Any], chars: int = 2500) -> str:
    parts = []
    for name, index, process in devenv.processes(run):
        with contextlib.suppress(OSError):
            text = open(process["log"], errors="replace").read()  # noqa: SIM115
            parts.append(f"--- {name} #{index} (pid {process.get('pid')}) ---\n{text[-chars:]}")
    return "\n".join(parts)
