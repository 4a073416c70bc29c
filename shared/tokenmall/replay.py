"""``tokenmall replay``: a scenario through the running services' public HTTP APIs.

Each step becomes HTTP calls; after each step replay waits until the platform is
quiescent (every outbox published, every consumer caught up: ``GET /v1/sync`` on
each service), so results never depend on timing.  The final state is read back
from the services' APIs (never their databases) into the same result document as
``tokenmall simulate``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tokenmall.contracts import plain
from tokenmall.money import format_cents
from tokenmall.scenario import Scenario, Step, StepFailed, evaluate_checks

SERVICES = ("orders", "wallet", "dividends", "referrals")
DEFAULT_PORTS = {"orders": 8101, "wallet": 8102, "dividends": 8103, "referrals": 8104}
PAGE = 5000


def default_urls() -> dict[str, str]:
    return {name: f"http://127.0.0.1:{port}" for name, port in DEFAULT_PORTS.items()}


class PlatformError(RuntimeError):
    """The platform answered something replay cannot interpret (not a rules refusal)."""


@dataclass
class ReplayResult:
    scenario: Scenario
    document: dict[str, Any]
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


class Platform:
    def __init__(self, urls: dict[str, str], timeout: float = 60.0) -> None:
        self.urls = urls
        self.client = httpx.AsyncClient(timeout=timeout)
        self.quiet_timeout = timeout

    async def close(self) -> None:
        await self.client.aclose()

    async def call(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, self.urls[service] + path, **kwargs)

    async def json(self, service: str, path: str) -> Any:
        response = await self.call(service, "GET", path)
        if response.status_code != 200:
            raise PlatformError(f"{service} GET {path}: {response.status_code} {response.text}")
        return response.json()

    async def wait_quiet(self, poll_seconds: float = 0.01) -> None:
        """Until every service reports nothing to publish and nothing to consume, twice in
        a row with nothing handled or published in between.

        The services are asked at once but answer at slightly different moments: an event
        moving from one to the next can hide between two answers of one round.  Whatever
        moved in between changed some service's ``progress``, so two quiet rounds with the
        same progress everywhere mean the second one saw the platform as it is."""
        deadline = time.monotonic() + self.quiet_timeout
        quiet_rounds = 0
        last: list[tuple[Any, Any]] | None = None
        while quiet_rounds < 2:
            states = await asyncio.gather(*(self.json(s, "/v1/sync") for s in SERVICES))
            quiet = all(
                s["outbox_backlog"] == 0
                and s.get("consumer_lag", 0) == 0
                and s.get("parked", 0) == 0  # a step's effects wait for nothing
                and s.get("ready", True)
                for s in states
            )
            moved = [(s.get("pid"), s.get("progress")) for s in states]
            if not quiet:
                quiet_rounds = 0
            elif quiet_rounds == 0 or moved == last:
                quiet_rounds += 1
            else:
                quiet_rounds = 1  # quiet again, but something moved since: look once more
            last = moved
            if time.monotonic() > deadline:
                raise PlatformError(f"the platform did not settle down: {states}")
            if not quiet:  # the second quiet round follows at once
                # (every /v1/sync asks the broker for the lag: a long wait polls slower)
                await asyncio.sleep(poll_seconds)

    async def is_fresh(self) -> bool:
        state = await self.json("dividends", "/v1/state")
        return bool(state["member_count"] == 0 and state["day"] == 1 and state["order_count"] == 0)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    # the error body of every service: {"code", "message", "field"} (tokenmall.http_errors)
    return str(body.get("message", body)) if isinstance(body, dict) else str(body)


async def replay(scenario: Scenario, platform: Platform) -> ReplayResult:
    started = time.perf_counter()
    await platform.wait_quiet()
    if not await platform.is_fresh():
        raise PlatformError(
            "the platform is not fresh (members or orders exist): "
            "replay needs a new platform (tokenmall dev reset)"
        )
    response = await platform.call(
        "dividends",
        "POST",
        "/v1/plan",
        json={"plan": plain(scenario.plan.raw), "activate_now": True},
    )
    if response.status_code != 202:
        raise PlatformError(f"installing the plan failed: {_detail(response)}")
    await platform.wait_quiet()
    driver = _Driver(platform)
    for step in scenario.steps:
        accepted, reason = await driver.apply(step)
        if not accepted and not step.refused:
            raise StepFailed(step.number, step.kind, f"refused: {reason}")
        if accepted and step.refused:
            raise StepFailed(step.number, step.kind, "expected to be refused, but it was accepted")
    document = await read_document(platform)
    return ReplayResult(
        scenario,
        document,
        evaluate_checks(scenario.checks, document),
        time.perf_counter() - started,
    )


class _Driver:
    def __init__(self, platform: Platform) -> None:
        self.p = platform
        self.accepted_orders = 0
        # An order the rules refused keeps its id on the platform (its verdict is on
        # record), while simulate forgets it: a later order of the scenario with that id
        # gets a fresh platform id, and refunds follow the map.
        self.platform_ids: dict[str, str] = {}
        self.burned: set[str] = set()

    async def apply(self, step: Step) -> tuple[bool, str | None]:
        handler = getattr(self, f"_{step.kind}")
        accepted, reason = await handler(step)
        return accepted, reason

    async def _answer(
        self, response: httpx.Response, ok: tuple[int, ...], quiet: bool = True
    ) -> tuple[bool, str | None]:
        """Accepted or refused (4xx, with the reason); ``quiet``: wait for its effects."""
        if response.status_code in ok:
            if quiet:
                await self.p.wait_quiet()
            return True, None
        if 400 <= response.status_code < 500:
            return False, _detail(response)
        raise PlatformError(
            f"{response.request.method} {response.request.url}: "
            f"{response.status_code} {response.text}"
        )

    async def _join(self, step: Step) -> tuple[bool, str | None]:
        f = step.fields
        body = {"member": str(f["member"]), "merchant": bool(f.get("merchant", False))}
        if f.get("sponsor") is not None:
            body["sponsor"] = str(f["sponsor"])
        return await self._answer(
            await self.p.call("referrals", "POST", "/v1/members", json=body), (200, 201)
        )

    async def _order(self, step: Step) -> tuple[bool, str | None]:
        f = step.fields
        scenario_id = (
            str(f["id"]) if f.get("id") is not None else f"order-{self.accepted_orders + 1}"
        )
        order_id, n = scenario_id, 0
        while order_id in self.burned:
            n += 1
            order_id = f"{scenario_id}.r{n}"
        body = {
            "order_id": order_id,
            "member": str(f["member"]),
            "amount": str(f["amount"]),
            "stable": str(f.get("stable", 0)),
        }
        created = await self.p.call("orders", "POST", "/v1/orders", json=body)
        # creating an unpaid order publishes nothing: no effects to wait for
        accepted, reason = await self._answer(created, (200, 201), quiet=False)
        if not accepted:
            return accepted, reason
        paid = await self.p.call("orders", "POST", f"/v1/orders/{order_id}/pay")
        accepted, reason = await self._answer(paid, (200, 202))
        if not accepted:  # a refused step leaves nothing behind, its order id included
            deleted = await self.p.call("orders", "DELETE", f"/v1/orders/{order_id}")
            if deleted.status_code != 204:
                raise PlatformError(f"could not withdraw unpaid order {order_id}: {deleted.text}")
            return accepted, reason
        # quiet: the rules' verdict has reached the order
        order = await self.p.json("orders", f"/v1/orders/{order_id}")
        if order["status"] == "refused":
            self.burned.add(order_id)
            return False, order["reason"]
        if order["status"] != "paid":
            raise PlatformError(f"order {order_id} is still {order['status']} after quiet")
        self.platform_ids[scenario_id] = order_id
        self.accepted_orders += 1
        return accepted, reason

    async def _refund(self, step: Step) -> tuple[bool, str | None]:
        order_id = str(step.fields["order"])
        order_id = self.platform_ids.get(order_id, order_id)
        return await self._answer(
            await self.p.call("orders", "POST", f"/v1/orders/{order_id}/refund"), (200,)
        )

    async def _settle(self, step: Step) -> tuple[bool, str | None]:
        """Settle the engine's day: the settlement waits for the producers' day markers
        (the barrier before it made sure every input of the day is in); a 202 (still
        waiting, e.g. a slow machine) is followed until the day is settled."""
        day = (await self.p.json("dividends", "/v1/state"))["day"]
        response = await self.p.call("dividends", "POST", f"/v1/settlements/{day}")
        deadline = time.monotonic() + self.p.quiet_timeout
        while response.status_code == 202:
            if time.monotonic() > deadline:
                raise PlatformError(f"day {day} was not settled: {response.text}")
            await asyncio.sleep(0.05)
            response = await self.p.call("dividends", "GET", f"/v1/settlements/{day}")
        return await self._answer(response, (200,))

    async def _plan(self, step: Step) -> tuple[bool, str | None]:
        return await self._answer(
            await self.p.call("dividends", "POST", "/v1/plan", json={"plan": plain(step.fields)}),
            (200, 202),
        )

    async def _request(self, path: str, body: dict[str, Any]) -> tuple[bool, str | None]:
        accepted, reason = await self._answer(
            await self.p.call("wallet", "POST", path, json=body), (200, 201, 202)
        )
        if not accepted:
            return accepted, reason
        status = await self.p.json("wallet", f"/v1/requests/{body['request_id']}")
        if status["status"] == "done":
            return True, None
        if status["status"] == "refused":
            return False, status.get("reason")
        raise PlatformError(f"request {body['request_id']} still {status['status']} after quiet")

    async def _sell(self, step: Step) -> tuple[bool, str | None]:
        f = step.fields
        points = "all" if f.get("all") is True or f.get("points") == "all" else str(f["points"])
        member = str(f["member"])
        return await self._request(
            f"/v1/members/{member}/requests",
            {"request_id": f"replay-{step.number}", "kind": "sell", "points": points},
        )

    async def _exchange(self, step: Step) -> tuple[bool, str | None]:
        f = step.fields
        return await self._request(
            f"/v1/members/{f['member']}/requests",
            {"request_id": f"replay-{step.number}", "kind": "exchange", "points": str(f["points"])},
        )

    async def _merchant_exchange(self, step: Step) -> tuple[bool, str | None]:
        f = step.fields
        return await self._request(
            f"/v1/members/{f['member']}/requests",
            {
                "request_id": f"replay-{step.number}",
                "kind": "merchant_exchange",
                "stable": str(f["stable"]),
            },
        )

    async def _adjust(self, step: Step) -> tuple[bool, str | None]:
        f = step.fields
        return await self._request(
            "/v1/admin/adjustments",
            {
                "request_id": f"replay-{step.number}",
                "member": str(f["member"]),
                "asset": str(f["asset"]),
                "amount": str(f["amount"]),
                "reason": str(f["reason"]),
                "operator": "replay",
            },
        )


async def _pages(platform: Platform, service: str, path: str) -> list[Any]:
    """Every item of a list, a page at a time (the API style's Page)."""
    rows: list[Any] = []
    while True:
        page = await platform.json(service, f"{path}?offset={len(rows)}&limit={PAGE}")
        rows.extend(page["items"])
        if len(rows) >= page["total"] or not page["items"]:
            return rows


async def read_document(platform: Platform) -> dict[str, Any]:
    """The result document, assembled from the services' read APIs."""
    state, accounts, sales, engine_rows, balance_rows, tree_rows = await asyncio.gather(
        platform.json("dividends", "/v1/state"),
        platform.json("wallet", "/v1/accounts/platform"),
        platform.json("orders", "/v1/sales"),
        _pages(platform, "dividends", "/v1/members"),
        _pages(platform, "wallet", "/v1/balances"),
        _pages(platform, "referrals", "/v1/members"),
    )
    balances = {row["member"]: row for row in balance_rows}
    tree = {row["member"]: row for row in tree_rows}

    def platform_total(account: str) -> str:
        from decimal import Decimal

        total = sum(
            (Decimal(str(accounts.get(a, {}).get(account, "0"))) for a in ("cny", "stable")),
            Decimal(0),
        )
        return format_cents(int(total * 100))

    members: dict[str, Any] = {}
    for view in engine_rows:
        name = view["member"]
        wallet_row = balances.get(name, {})
        tree_row = tree.get(name, {})
        members[name] = {
            "cny": wallet_row.get("cny"),
            "stable": wallet_row.get("stable"),
            "equity": wallet_row.get("equity"),
            "quota_remaining": view["quota_remaining"],
            "spend": tree_row.get("spend"),
            "shares": view["shares"],
            "contribution": view["contribution"],
            "star": tree_row.get("star"),
            "team_performance": tree_row.get("team_performance"),
            "released": view["released"],
        }
    return {
        "day": state["day"],
        "equity": state["equity"],
        "platform": {
            "retained": platform_total("retained"),
            "rounding": platform_total("rounding"),
            "sales": sales["sales"],
        },
        "members": members,
    }
