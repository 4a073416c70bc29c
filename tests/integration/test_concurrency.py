"""Concurrency on the real platform (SQLite and PostgreSQL), one platform per backend.

Every endpoint of every service is hammered with concurrent calls — 64 at once, one
burst of 256 for registration and reads: registrations (distinct members, and one member
64 times at once: 201 once, 409 the rest), orders created, paid, refunded and deleted
(distinct ones, and one order 64 times at once: one success, 409 the rest), wallet
adjustments, holds and trade requests, settlements of one day 64 times at once, plan
versions, and every read API meanwhile.  No call may answer 5xx or lose its connection.
Then the platform is quiescent and consistent: the result document read from the
services equals ``simulate`` of dividends' input log (the accepted steps in the order
the engine applied them), the books balance (every asset sums to zero over the wallet's
accounts), and every member registered with 201 is a member of every service.

Double spend: members holding S stable points each pay two orders of S stable at once;
exactly one of each pair ends ``paid`` — in orders, in the engine's input log, in the
wallet (stable balance 0, no hold left) and in ``/v1/sales``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.integration.kafka_tools import RunningPlatform, module_platform
from tokenmall.inputlog import scenario_from_inputs
from tokenmall.replay import SERVICES, Platform, read_document, replay
from tokenmall.scenario import parse_scenario, simulate
from tokenmall.testing import by_member

WIDE = 64  # concurrent calls of one kind
BURST = 256  # the registration and read burst
ROOTS = 32
PLAN = {"preset": "points", "equity": {}}
SETUP = parse_scenario({"name": "concurrency", "plan": PLAN, "steps": []})
ADMIN = {"reason": "load test", "operator": "ops"}
READS: dict[str, tuple[str, ...]] = {
    "referrals": ("/v1/members?limit=50", "/v1/members/c-0"),
    "orders": ("/v1/sales", "/v1/orders/o-0", "/v1/members/c-0/orders"),
    "wallet": (
        "/v1/balances?limit=50",
        "/v1/accounts/platform",
        "/v1/members/c-0/balances",
        "/v1/members/c-0/statement",
        "/v1/requests/adj-0",
    ),
    "dividends": (
        "/v1/state",
        "/v1/members?limit=50",
        "/v1/members/c-0",
        "/v1/inputs?limit=100",
        "/v1/inputs/join:c-0",
        "/v1/plan",
        "/v1/settlements/1",
    ),
}
COMMON_READS = ("/v1/parked", "/v1/sync", "/health", "/metrics")
# 404: what a read names does not exist yet; 202: a settlement requested, still waiting
# for its day's inputs (GET /v1/settlements/{day})
READ_OK = {200, 202, 404}


class Hammer:
    """An HTTP client for the platform that records every answer; a 5xx or a transport
    error (connection reset, refused, timeout) is a failure of the test."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.client = httpx.AsyncClient(
            timeout=120,
            limits=httpx.Limits(max_connections=BURST * 2, max_keepalive_connections=BURST),
        )
        self.failures: list[str] = []
        self.calls = 0
        self.resets = 0  # transport errors seen (repeated reads included)
        self.last: dict[int, str] = {}  # the last answer of each status code
        self.refusals: Counter[str] = Counter()  # every 4xx answer (for a failure's message)

    async def close(self) -> None:
        await self.client.aclose()

    async def call(
        self, service: str, method: str, path: str, json: Any = None, key: str | None = None
    ) -> httpx.Response | None:
        self.calls += 1
        headers = {} if key is None else {"Idempotency-Key": key}
        # Known open problem (issue 11's note): under this load a service very rarely
        # resets a kept-alive connection (no error on the server side).  A call that is
        # safe to repeat — a read, or one with an Idempotency-Key — is repeated once, as
        # any client would; every reset is counted, and any other one fails the test.
        # A settlement names its day: settling it again answers already_settled, so it
        # is as safe to repeat as a keyed call.
        retryable = method == "GET" or key is not None or path.startswith("/v1/settlements/")
        for attempt in (1, 2):
            try:
                response = await self.client.request(
                    method, self.urls[service] + path, json=json, headers=headers
                )
                break
            except httpx.TransportError as exc:
                self.resets += 1
                if not (retryable and attempt == 1):
                    self.failures.append(f"{service} {method} {path}: {type(exc).__name__}: {exc}")
                    return None
        self.last[response.status_code] = f"{service} {method} {path}: {response.text[:200]}"
        if response.status_code >= 400:
            self.refusals[f"{service} {method} {path}: {response.text[:160]}"] += 1
        if response.status_code >= 500:
            self.failures.append(
                f"{service} {method} {path}: {response.status_code} {response.text[:300]}"
            )
        return response

    async def status(
        self, service: str, method: str, path: str, json: Any = None, key: str | None = None
    ) -> int:
        response = await self.call(service, method, path, json, key)
        return 0 if response is None else response.status_code

    async def statuses(self, calls: Sequence[Awaitable[int]]) -> Counter[int]:
        return Counter(await asyncio.gather(*calls))

    def reads(self, n: int) -> list[Awaitable[int]]:
        """``n`` reads spread over every read route of every service."""
        routes = [(s, p) for s, paths in READS.items() for p in paths]
        routes += [(s, p) for s in SERVICES for p in COMMON_READS]
        picked = [routes[i % len(routes)] for i in range(n)]
        return [self.status(service, "GET", path) for service, path in picked]

    def check(self) -> None:
        print(f"{self.calls} calls, {self.resets} transport errors")
        assert self.resets <= max(2, self.calls // 500), f"{self.resets} resets"
        assert not self.failures, f"{len(self.failures)} failures:\n" + "\n".join(
            self.failures[:20]
        )


async def until(probe: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPlatform]:
    with module_platform(request, tmp_path_factory, request.param) as running:
        asyncio.run(_install_plan(running.urls))
        yield running


async def _install_plan(urls: dict[str, str]) -> None:
    driver = Platform(urls, timeout=120)
    try:
        await replay(SETUP, driver)  # a fresh platform with the plan, nothing else
    finally:
        await driver.close()


async def quiet(urls: dict[str, str]) -> None:
    driver = Platform(urls, timeout=120)
    try:
        await driver.wait_quiet()
    finally:
        await driver.close()


def member(i: int) -> str:
    return f"c-{i}"


async def hammer_everything(h: Hammer) -> dict[str, Any]:
    """The load, phase by phase; returns what the checks need."""
    urls = h.urls
    got: dict[str, Any] = {}
    outcome: Any  # each phase's answers, gathered

    # --- registration: roots, then a burst of 256 with a member 64 times and 256 reads
    roots = await h.statuses(
        [h.status("referrals", "POST", "/v1/members", {"member": member(i)}) for i in range(ROOTS)]
    )
    assert roots == {201: ROOTS}, roots
    referrals = [
        h.status(
            "referrals",
            "POST",
            "/v1/members",
            {"member": member(i), "sponsor": member(i % ROOTS), "merchant": i % 50 == 0},
        )
        for i in range(ROOTS, BURST)
    ]
    same = [h.status("referrals", "POST", "/v1/members", {"member": "dup"}) for _ in range(WIDE)]
    outcome = await asyncio.gather(
        h.statuses(referrals), h.statuses(same), h.statuses(h.reads(BURST))
    )
    h.check()
    assert outcome[0] == {201: BURST - ROOTS}, outcome[0]
    assert outcome[1] == {201: 1, 409: WIDE - 1}, outcome[1]
    assert set(outcome[2]) <= READ_OK, outcome[2]
    registered = {member(i) for i in range(BURST)} | {"dup"}
    got["registered"] = registered
    h.check()
    await quiet(urls)

    # --- wallet: adjustments (distinct, one request 64 times, one id for several members)
    adjust = [
        h.status(
            "wallet",
            "POST",
            "/v1/admin/adjustments",
            {"request_id": f"adj-{i}", "member": member(i), "asset": "stable", "amount": "100"}
            | ADMIN,
        )
        for i in range(WIDE)
    ]
    same_adjust = [
        h.status(
            "wallet",
            "POST",
            "/v1/admin/adjustments",
            {"request_id": "adj-same", "member": member(WIDE), "asset": "cny", "amount": "7"}
            | ADMIN,
        )
        for _ in range(WIDE)
    ]
    clash = [
        h.status(
            "wallet",
            "POST",
            "/v1/admin/adjustments",
            {"request_id": "adj-clash", "member": member(WIDE + 1 + i), "asset": "cny"}
            | {"amount": "3"}
            | ADMIN,
        )
        for i in range(8)
    ]
    outcome = await asyncio.gather(
        h.statuses(adjust), h.statuses(same_adjust), h.statuses(clash), h.statuses(h.reads(WIDE))
    )
    h.check()
    assert outcome[0] == {202: WIDE}, outcome[0]
    assert outcome[1] == {202: 1, 200: WIDE - 1}, outcome[1]
    assert outcome[2] == {202: 1, 409: 7}, outcome[2]
    h.check()
    await quiet(urls)

    # --- orders: distinct creates, one order id 64 times, unpaid ones to delete
    def order_body(i: int, order_id: str, stable: str = "0") -> dict[str, Any]:
        return {
            "order_id": order_id,
            "member": member(i),
            "amount": f"{3000 + i}",
            "stable": stable,
        }

    creates = [
        h.status("orders", "POST", "/v1/orders", order_body(i, f"o-{i}", "50" if i < 32 else "0"))
        for i in range(WIDE)
    ]
    unpaid = [
        h.status("orders", "POST", "/v1/orders", order_body(WIDE + i, f"u-{i}"))
        for i in range(WIDE)
    ]
    same_create = [
        h.status("orders", "POST", "/v1/orders", order_body(WIDE, "o-same", "0"))
        for _ in range(WIDE)
    ]
    same_unpaid = [
        h.status("orders", "POST", "/v1/orders", order_body(WIDE, "u-same", "0"))
        for _ in range(WIDE)
    ]
    keyed_create = [
        h.status("orders", "POST", "/v1/orders", order_body(WIDE + 1, "k-1"), key="k-create")
        for _ in range(WIDE)
    ]
    racing = [  # paid and deleted at once below
        h.status("orders", "POST", "/v1/orders", order_body(32 + i, f"r-{i}", "10"))
        for i in range(16)
    ]
    outcome = await asyncio.gather(
        h.statuses(creates),
        h.statuses(unpaid),
        h.statuses(same_create),
        h.statuses(same_unpaid),
        h.statuses(h.reads(WIDE)),
        h.statuses(keyed_create),
        h.statuses(racing),
    )
    h.check()
    assert outcome[5] == {201: WIDE}, outcome[5]  # one created, the rest its stored answer
    assert outcome[6] == {201: 16}, outcome[6]
    assert outcome[0] == {201: WIDE}, outcome[0]
    assert outcome[1] == {201: WIDE}, outcome[1]
    assert outcome[2] == {201: 1, 409: WIDE - 1}, outcome[2]
    assert outcome[3] == {201: 1, 409: WIDE - 1}, outcome[3]
    h.check()

    # --- pays (distinct, one order 64 times), deletes (distinct, one 64 times), holds
    pays = [h.status("orders", "POST", f"/v1/orders/o-{i}/pay") for i in range(WIDE)]
    same_pay = [h.status("orders", "POST", "/v1/orders/o-same/pay") for _ in range(WIDE)]
    deletes = [h.status("orders", "DELETE", f"/v1/orders/u-{i}") for i in range(WIDE)]
    same_delete = [h.status("orders", "DELETE", "/v1/orders/u-same") for _ in range(WIDE)]
    holds = [
        h.status(
            "wallet",
            "POST",
            "/v1/holds",
            {"hold_id": f"h-{i}", "member": member(i), "asset": "stable", "amount": "30"},
        )
        for i in range(32, WIDE)
    ]
    same_hold = [
        h.status(
            "wallet",
            "POST",
            "/v1/holds",
            {"hold_id": "h-same", "member": member(40), "asset": "stable", "amount": "20"},
        )
        for _ in range(WIDE)
    ]
    clash_hold = [  # one hold id for several members at once
        h.status(
            "wallet",
            "POST",
            "/v1/holds",
            {"hold_id": "h-clash", "member": member(48 + i), "asset": "stable", "amount": "5"},
        )
        for i in range(8)
    ]
    keyed_pay = [h.status("orders", "POST", "/v1/orders/k-1/pay", key="k-pay") for _ in range(WIDE)]
    race = [
        h.status("orders", method, f"/v1/orders/r-{i}{suffix}")
        for i in range(16)
        for method, suffix in (("POST", "/pay"), ("DELETE", ""))
    ]
    outcome = await asyncio.gather(
        h.statuses(pays),
        h.statuses(same_pay),
        h.statuses(deletes),
        h.statuses(same_delete),
        h.statuses(holds),
        h.statuses(same_hold),
        h.statuses(h.reads(WIDE)),
        h.statuses(clash_hold),
        h.statuses(keyed_pay),
        asyncio.gather(*race),
    )
    h.check()
    assert outcome[7] == {201: 1, 409: 7}, outcome[7]
    assert outcome[8] == {202: WIDE}, outcome[8]
    for i in range(16):  # paid (the delete refused) or deleted (the pay finds nothing)
        pay, deleted = outcome[9][2 * i], outcome[9][2 * i + 1]
        assert (pay, deleted) in ((202, 409), (404, 204), (409, 204)), (i, pay, deleted)
    assert outcome[0] == {202: WIDE}, outcome[0]
    assert outcome[1] == {202: 1, 409: WIDE - 1}, outcome[1]
    assert outcome[2] == {204: WIDE}, outcome[2]
    assert outcome[3][204] == 1 and set(outcome[3]) <= {204, 404, 409}, outcome[3]
    assert outcome[4] == {201: WIDE - 32}, outcome[4]
    assert outcome[5] == {201: 1, 200: WIDE - 1}, outcome[5]
    h.check()
    releases = [h.status("wallet", "POST", f"/v1/holds/h-{i}/release") for i in range(32, WIDE)]
    same_release = [h.status("wallet", "POST", "/v1/holds/h-same/release") for _ in range(WIDE)]
    clash_release = h.status("wallet", "POST", "/v1/holds/h-clash/release")
    outcome = await asyncio.gather(
        h.statuses(releases), h.statuses(same_release), h.statuses([clash_release])
    )
    assert outcome[0] == {200: WIDE - 32}, outcome[0]
    assert outcome[2] == {200: 1}, outcome[2]
    assert outcome[1] == {200: WIDE}, outcome[1]
    h.check()
    await quiet(urls)

    # --- refunds (distinct, one order 64 times) and trade requests, with a mixed wave:
    # 64 workers each registering a member, ordering, paying, polling and refunding
    refunds = [h.status("orders", "POST", f"/v1/orders/o-{i}/refund") for i in range(32, WIDE)]
    same_refund = [h.status("orders", "POST", "/v1/orders/o-same/refund") for _ in range(WIDE)]
    sells = [
        h.status(
            "wallet",
            "POST",
            f"/v1/members/{member(i)}/requests",
            {"request_id": f"sell-{i}", "kind": "sell", "points": "1"},
        )
        for i in range(16)
    ]
    exchanges = [
        h.status(
            "wallet",
            "POST",
            f"/v1/members/{member(i)}/requests",
            {"request_id": f"ex-{i}", "kind": "exchange", "points": "1"},
        )
        for i in range(16, 32)
    ]
    same_sell = [
        h.status(
            "wallet",
            "POST",
            f"/v1/members/{member(0)}/requests",
            {"request_id": "sell-same", "kind": "sell", "points": "2"},
        )
        for _ in range(WIDE)
    ]
    merchant = [
        h.status(
            "wallet",
            "POST",
            f"/v1/members/{member(50)}/requests",
            {"request_id": f"mx-{i}", "kind": "merchant_exchange", "stable": "1"},
        )
        for i in range(16)
    ]

    clash_sell = [  # one request id for several members at once
        h.status(
            "wallet",
            "POST",
            f"/v1/members/{member(i)}/requests",
            {"request_id": "sell-clash", "kind": "sell", "points": "1"},
        )
        for i in range(2, 10)
    ]

    async def worker(i: int) -> list[int]:
        name = f"w-{i}"
        codes = [
            await h.status(
                "referrals", "POST", "/v1/members", {"member": name, "sponsor": member(i)}
            )
        ]
        order = {"order_id": f"wo-{i}", "member": name, "amount": f"{500 + i}"}
        deadline = time.monotonic() + 60
        while True:  # orders may hear of the member from Kafka first (404 until then)
            code = await h.status("orders", "POST", "/v1/orders", order)
            if code != 404 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        codes.append(code)
        codes.append(await h.status("orders", "POST", f"/v1/orders/wo-{i}/pay"))
        if i % 2:
            while True:  # 409 while the rules' verdict is pending
                code = await h.status("orders", "POST", f"/v1/orders/wo-{i}/refund")
                if code != 409 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            codes.append(code)
        return codes

    outcome = await asyncio.gather(
        h.statuses(refunds),
        h.statuses(same_refund),
        h.statuses(sells + exchanges),
        h.statuses(same_sell),
        h.statuses(merchant),
        asyncio.gather(*(worker(i) for i in range(WIDE))),
        h.statuses(h.reads(WIDE)),
        h.statuses(clash_sell),
    )
    h.check()
    assert outcome[7] == {202: 1, 409: 7}, outcome[7]
    assert outcome[0] == {200: WIDE - 32}, outcome[0]
    assert outcome[1] == {200: 1, 409: WIDE - 1}, outcome[1]
    assert outcome[2] == {202: 32}, outcome[2]
    assert outcome[3] == {202: 1, 200: WIDE - 1}, outcome[3]
    assert set(outcome[4]) <= {202, 409}, outcome[4]
    for i, codes in enumerate(outcome[5]):
        assert codes[:3] == [201, 201, 202], (i, codes)
        assert codes[3:] == ([200] if i % 2 else []), (i, codes)
    got["workers"] = {f"w-{i}" for i in range(WIDE)}
    h.check()
    await quiet(urls)

    # --- settlements of one day 64 times at once, plan versions 64 times, reads
    state = (await h.client.get(urls["dividends"] + "/v1/state")).json()
    day = state["day"]
    settles = [h.call("dividends", "POST", f"/v1/settlements/{day}") for _ in range(WIDE)]
    plans = [
        h.status("dividends", "POST", "/v1/plan", {"plan": {"grants": {"daily_rate": "0.012"}}})
        for _ in range(WIDE)
    ]
    answers, plan_codes, read_codes = await asyncio.gather(
        asyncio.gather(*settles), h.statuses(plans), h.statuses(h.reads(WIDE))
    )
    h.check()
    fresh = [a for a in answers if a is not None and a.status_code == 200]
    assert sum(1 for a in fresh if not a.json()["already_settled"]) == 1, [
        (a.status_code, a.text) for a in answers if a is not None
    ]
    assert all(a is not None and a.status_code in (200, 409) for a in answers)
    assert plan_codes == {202: WIDE}, plan_codes
    assert set(read_codes) <= READ_OK, read_codes
    await quiet(urls)
    # the next day too, with orders paid meanwhile
    day += 1
    late = [
        h.status("orders", "POST", "/v1/orders", order_body(i, f"late-{i}")) for i in range(WIDE)
    ]
    assert await h.statuses(late) == {201: WIDE}
    settles = [h.call("dividends", "POST", f"/v1/settlements/{day}") for _ in range(WIDE)]
    pays = [h.status("orders", "POST", f"/v1/orders/late-{i}/pay") for i in range(WIDE)]
    answers, pay_codes = await asyncio.gather(asyncio.gather(*settles), h.statuses(pays))
    h.check()
    assert pay_codes == {202: WIDE}, pay_codes
    assert all(a is not None and a.status_code in (200, 409) for a in answers)
    await quiet(urls)
    return got


async def input_log(driver: Platform) -> list[dict[str, Any]]:
    """Dividends' whole input log, page by page."""
    rows: list[dict[str, Any]] = []
    while True:
        page = await driver.json("dividends", f"/v1/inputs?offset={len(rows)}&limit=10000")
        rows.extend(page["items"])
        if len(rows) >= page["total"] or not page["items"]:
            return rows


async def final_state(urls: dict[str, str], registered: set[str]) -> dict[str, Any]:
    driver = Platform(urls, timeout=120)
    try:
        await driver.wait_quiet()
        document = await read_document(driver)
        log = await input_log(driver)
        accounts = await driver.json("wallet", "/v1/accounts/platform")
        balances = (await driver.json("wallet", "/v1/balances?limit=10000"))["items"]
        engine = by_member(await driver.json("dividends", "/v1/members?limit=10000"))
        tree = (await driver.json("referrals", "/v1/members?limit=10000"))["items"]
        ordering = {
            m: (await driver.call("orders", "GET", f"/v1/members/{m}/orders")).status_code
            for m in sorted(registered)
        }
        parked = {s: (await driver.json(s, "/v1/parked"))["total"] for s in SERVICES}
        held = {
            m: (await driver.json("wallet", f"/v1/members/{m}/balances"))["held"]
            for m in sorted(registered)
        }
    finally:
        await driver.close()
    return {
        "document": document,
        "log": log,
        "accounts": accounts,
        "balances": balances,
        "engine": set(engine),
        "tree": {row["member"] for row in tree},
        "orders": ordering,
        "parked": parked,
        "held": {m: v for m, v in held.items() if any(Decimal(x) for x in v.values())},
    }


def books_balance(accounts: dict[str, dict[str, str]], balances: list[dict[str, str]]) -> None:
    for asset in ("cny", "stable", "equity"):
        total = sum((Decimal(v) for v in accounts.get(asset, {}).values()), Decimal(0))
        total += sum((Decimal(row[asset]) for row in balances), Decimal(0))
        assert total == 0, f"{asset}: the wallet's accounts sum to {total}"


def test_every_endpoint_under_concurrency_no_5xx_and_the_platform_equals_simulate(
    platform: RunningPlatform,
) -> None:
    started = time.monotonic()

    h = Hammer(platform.urls)

    async def run() -> dict[str, Any]:
        try:
            return await hammer_everything(h)
        finally:
            await h.close()

    try:
        got = asyncio.run(run())
    except AssertionError as exc:
        refusals = "\n".join(f"{n} × {r}" for r, n in sorted(h.refusals.items()))
        raise AssertionError(f"{exc}\n{refusals}\n{platform.log_tail(1500)}") from None
    registered = got["registered"] | got["workers"]
    final = asyncio.run(final_state(platform.urls, registered))
    assert final["parked"] == dict.fromkeys(SERVICES, 0)
    # every member registered with 201 is a member of every service
    assert final["tree"] == registered
    assert final["engine"] == registered
    assert {row["member"] for row in final["balances"]} == registered
    assert set(final["orders"].values()) == {200}, final["orders"]
    books_balance(final["accounts"], final["balances"])
    assert final["held"] == {}, final["held"]  # every hold captured or released
    # the platform equals simulate of the accepted steps, in the engine's order
    scenario = parse_scenario(scenario_from_inputs(final["log"]))
    expected = simulate(scenario).document
    assert final["document"] == expected, _difference(expected, final["document"])
    print(f"concurrency: {time.monotonic() - started:.1f} s")


def _difference(expected: Any, actual: Any, path: str = "") -> str:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual), key=str):
            if expected.get(key) != actual.get(key):
                return _difference(expected.get(key), actual.get(key), f"{path}.{key}")
    return f"{path.lstrip('.')}: simulate {expected!r} / platform {actual!r}"


PAIRS = 8
S = "250"


def test_double_spend_two_orders_over_one_stable_balance_exactly_one_paid_everywhere(
    platform: RunningPlatform,
) -> None:
    urls = platform.urls

    async def run() -> dict[str, Any]:
        h = Hammer(urls)
        driver = Platform(urls, timeout=120)
        try:
            names = [f"ds-{i}" for i in range(PAIRS)]
            codes = await h.statuses(
                [h.status("referrals", "POST", "/v1/members", {"member": n}) for n in names]
            )
            assert codes == {201: PAIRS}, codes
            await driver.wait_quiet()
            codes = await h.statuses(
                [
                    h.status(
                        "wallet",
                        "POST",
                        "/v1/admin/adjustments",
                        {"request_id": f"ds-credit-{n}", "member": n, "asset": "stable"}
                        | {"amount": S}
                        | ADMIN,
                    )
                    for n in names
                ]
            )
            assert codes == {202: PAIRS}, codes
            await driver.wait_quiet()
            sales_before = Decimal((await driver.json("orders", "/v1/sales"))["sales"])
            creates = [
                h.status(
                    "orders",
                    "POST",
                    "/v1/orders",
                    {"order_id": f"{n}-{k}", "member": n, "amount": S, "stable": S},
                )
                for n in names
                for k in (1, 2)
            ]
            assert await h.statuses(creates) == {201: 2 * PAIRS}
            pay_codes = await asyncio.gather(
                *(
                    h.status("orders", "POST", f"/v1/orders/{n}-{k}/pay")
                    for n in names
                    for k in (1, 2)
                )
            )
            h.check()
            await driver.wait_quiet()
            orders = {
                f"{n}-{k}": await driver.json("orders", f"/v1/orders/{n}-{k}")
                for n in names
                for k in (1, 2)
            }
            balances = {n: await driver.json("wallet", f"/v1/members/{n}/balances") for n in names}
            log = await input_log(driver)
            engine = {n: await driver.json("dividends", f"/v1/members/{n}") for n in names}
            sales_after = Decimal((await driver.json("orders", "/v1/sales"))["sales"])
            h.check()
            return {
                "pay": dict(zip(orders, pay_codes, strict=True)),
                "orders": orders,
                "balances": balances,
                "log": log,
                "engine": engine,
                "sales": sales_after - sales_before,
            }
        finally:
            await h.close()
            await driver.close()

    got = asyncio.run(run())
    accepted = {
        row["input_id"].removeprefix("order:")
        for row in got["log"]
        if row["kind"] == "order" and row["accepted"]
    }
    for i in range(PAIRS):
        pair = [f"ds-{i}-1", f"ds-{i}-2"]
        statuses = sorted(got["orders"][o]["status"] for o in pair)
        # one paid; the other refused at pay by the wallet's hold (409, still created)
        # or refused by the engine
        assert statuses in (["created", "paid"], ["paid", "refused"]), (pair, statuses, got["pay"])
        paid = next(o for o in pair if got["orders"][o]["status"] == "paid")
        other = next(o for o in pair if o != paid)
        assert got["pay"][paid] == 202
        assert got["pay"][other] in (202, 409), got["pay"]
        if got["orders"][other]["status"] == "created":
            assert got["pay"][other] == 409
        # the engine accepted exactly that one
        assert paid in accepted and other not in accepted, (pair, accepted & set(pair))
        assert got["engine"][f"ds-{i}"]["spend"] == f"{Decimal(S):.2f}"
        # the wallet: the stable balance spent once, no hold left
        balance = got["balances"][f"ds-{i}"]
        assert Decimal(balance["stable"]) == 0, balance
        assert Decimal(balance["available"]["stable"]) == 0, balance
        assert all(Decimal(v) == 0 for v in balance["held"].values()), balance
    assert got["sales"] == PAIRS * Decimal(S)
