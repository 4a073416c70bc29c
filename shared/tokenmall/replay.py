"""``tokenmall replay``: a scenario through the running services' public HTTP APIs.

Each step becomes HTTP calls; after each step replay waits until the platform is
quiescent (every outbox published, every consumer caught up: ``GET /v1/sync`` on
each service), so results never depend on timing.  The final state is read back
from the services' APIs (never their databases) into the same result document as
``tokenmall simulate``.  It talks to the services through ``tokenmall.client``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, TypeVar

import httpx

from tokenmall.client import SERVICES as SERVICES  # the platform's four, for replay's users
from tokenmall.client import (
    ApiError,
    AsyncClient,
    Settlement,
    UnexpectedResponse,
    decimal_text,
)
from tokenmall.contracts import plain
from tokenmall.money import format_cents
from tokenmall.scenario import Scenario, Step, StepFailed, evaluate_checks

T = TypeVar("T")
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
    """The running platform as replay (and the bench, and tests) use it: ``api``, the
    platform's client (``tokenmall.client.AsyncClient``), and the quiescence barrier."""

    def __init__(
        self,
        urls: dict[str, str],
        timeout: float = 60.0,
        *,
        transport: httpx.AsyncBaseTransport | Mapping[str, httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        self.urls = urls
        self.api = AsyncClient(urls, timeout=timeout, transport=transport)
        self.client = self.api.http  # plain httpx, for what the API has no method for
        self.quiet_timeout = timeout

    async def close(self) -> None:
        await self.api.aclose()

    async def call(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.api.request(service, method, path, **kwargs)

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
        state = await _read(self.api.dividends.state())
        return state.member_count == 0 and state.day == 1 and state.order_count == 0


async def _read(answer: Awaitable[T]) -> T:
    """What a read answers; the platform failing to answer it is a PlatformError."""
    try:
        return await answer
    except ApiError as exc:
        raise PlatformError(f"{exc.method} {exc.url}: {exc.status} {exc.text}") from None


async def replay(scenario: Scenario, platform: Platform) -> ReplayResult:
    started = time.perf_counter()
    await platform.wait_quiet()
    if not await platform.is_fresh():
        raise PlatformError(
            "the platform is not fresh (members or orders exist): "
            "replay needs a new platform (tokenmall dev reset)"
        )
    try:
        await platform.api.dividends.schedule_plan(plain(scenario.plan.raw), activate_now=True)
    except ApiError as exc:
        raise PlatformError(f"installing the plan failed: {exc.message}") from None
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
        self.api = platform.api
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

    async def _answer(self, call: Awaitable[Any], quiet: bool = True) -> tuple[bool, str | None]:
        """Accepted or refused (4xx, with the reason); ``quiet``: wait for its effects."""
        try:
            await call
        except ApiError as exc:
            return _refused(exc)
        if quiet:
            await self.p.wait_quiet()
        return True, None

    async def _join(self, step: Step) -> tuple[bool, str | None]:
        f = step.fields
        sponsor = str(f["sponsor"]) if f.get("sponsor") is not None else None
        return await self._answer(
            self.api.referrals.register_member(
                str(f["member"]), sponsor, bool(f.get("merchant", False))
            )
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
        orders = self.api.orders
        created = orders.create_order(
            str(f["member"]),
            _text(f["amount"]),
            stable=_text(f.get("stable", 0)),
            order_id=order_id,
        )
        # creating an unpaid order publishes nothing: no effects to wait for
        accepted, reason = await self._answer(created, quiet=False)
        if not accepted:
            return accepted, reason
        accepted, reason = await self._answer(orders.pay_order(order_id))
        if not accepted:  # a refused step leaves nothing behind, its order id included
            try:
                await orders.delete_order(order_id)
            except ApiError as exc:
                raise PlatformError(
                    f"could not withdraw unpaid order {order_id}: {exc.text}"
                ) from None
            return accepted, reason
        # quiet: the rules' verdict has reached the order
        order = await _read(orders.order(order_id))
        if order.status == "refused":
            self.burned.add(order_id)
            return False, order.reason
        if order.status != "paid":
            raise PlatformError(f"order {order_id} is still {order.status} after quiet")
        self.platform_ids[scenario_id] = order_id
        self.accepted_orders += 1
        return accepted, reason

    async def _refund(self, step: Step) -> tuple[bool, str | None]:
        order_id = str(step.fields["order"])
        order_id = self.platform_ids.get(order_id, order_id)
        return await self._answer(self.api.orders.refund_order(order_id))

    async def _settle(self, step: Step) -> tuple[bool, str | None]:
        """Settle the engine's day: the settlement waits for the producers' day markers
        (the barrier before it made sure every input of the day is in); a 202 (still
        waiting, e.g. a slow machine) is followed until the day is settled."""
        dividends = self.api.dividends
        day = (await _read(dividends.state())).day

        async def settled() -> None:
            answer = await dividends.settle(day)
            deadline = time.monotonic() + self.p.quiet_timeout
            while not isinstance(answer, Settlement):
                if time.monotonic() > deadline:
                    raise PlatformError(
                        f"day {day} was not settled: {answer.model_dump_json(exclude_none=True)}"
                    )
                await asyncio.sleep(0.05)
                answer = await dividends.settlement(day)

        return await self._answer(settled())

    async def _plan(self, step: Step) -> tuple[bool, str | None]:
        return await self._answer(self.api.dividends.schedule_plan(plain(step.fields)))

    async def _request(self, submitted: Awaitable[Any], request_id: str) -> tuple[bool, str | None]:
        accepted, reason = await self._answer(submitted)
        if not accepted:
            return accepted, reason
        status = await _read(self.api.wallet.request(request_id))
        if status.status == "done":
            return True, None
        if status.status == "refused":
            return False, status.refusal
        raise PlatformError(f"request {request_id} still {status.status} after quiet")

    def _trade(
        self,
        step: Step,
        kind: Literal["sell", "exchange", "merchant_exchange"],
        points: str | None = None,
        stable: str | None = None,
    ) -> tuple[Awaitable[Any], str]:
        request_id = f"replay-{step.number}"
        member = str(step.fields["member"])
        submitted = self.api.wallet.submit_request(
            member, kind, points=points, stable=stable, request_id=request_id
        )
        return submitted, request_id

    async def _sell(self, step: Step) -> tuple[bool, str | None]:
        f = step.fields
        points = "all" if f.get("all") is True or f.get("points") == "all" else _text(f["points"])
        return await self._request(*self._trade(step, "sell", points=points))

    async def _exchange(self, step: Step) -> tuple[bool, str | None]:
        return await self._request(
            *self._trade(step, "exchange", points=_text(step.fields["points"]))
        )

    async def _merchant_exchange(self, step: Step) -> tuple[bool, str | None]:
        stable = _text(step.fields["stable"])
        return await self._request(*self._trade(step, "merchant_exchange", stable=stable))

    async def _adjust(self, step: Step) -> tuple[bool, str | None]:
        f = step.fields
        request_id = f"replay-{step.number}"
        asset: Any = str(f["asset"])  # the scenario's: the API checks it
        submitted = self.api.wallet.adjust(
            str(f["member"]),
            asset,
            _text(f["amount"]),
            reason=str(f["reason"]),
            operator="replay",
            request_id=request_id,
        )
        return await self._request(submitted, request_id)


def _text(value: Any) -> str:
    """A scenario's number as the decimal string replay has always sent (``str``)."""
    return str(value)


def _refused(exc: ApiError) -> tuple[bool, str | None]:
    """A 4xx is the rules' (or the API's) refusal, with its reason; anything else is the
    platform failing."""
    if 400 <= exc.status < 500 and not isinstance(exc, UnexpectedResponse):
        return False, exc.message
    raise PlatformError(f"{exc.method} {exc.url}: {exc.status} {exc.text}") from None


async def read_document(platform: Platform) -> dict[str, Any]:
    """The result document, assembled from the services' read APIs (the services' decimal
    strings as they are: ``decimal_text`` gives a parsed one back unchanged)."""
    api = platform.api
    state, accounts, sales, engine_rows, balance_rows, tree_rows = await asyncio.gather(
        _read(api.dividends.state()),
        _read(api.wallet.platform_accounts()),
        _read(api.orders.sales()),
        _read(api.dividends.members(page_size=PAGE).all()),
        _read(api.wallet.all_balances(page_size=PAGE).all()),
        _read(api.referrals.members(page_size=PAGE).all()),
    )
    balances = {row.member: row for row in balance_rows}
    tree = {row.member: row for row in tree_rows}

    def platform_total(account: str) -> str:
        total = sum(
            (accounts.get(a, {}).get(account, Decimal(0)) for a in ("cny", "stable")),
            Decimal(0),
        )
        return format_cents(int(total * 100))

    def text(value: Decimal | None) -> str | None:
        return None if value is None else decimal_text(value)

    members: dict[str, Any] = {}
    for view in engine_rows:
        name = view.member
        wallet_row = balances.get(name)
        tree_row = tree.get(name)
        members[name] = {
            "cny": text(wallet_row.cny) if wallet_row else None,
            "stable": text(wallet_row.stable) if wallet_row else None,
            "equity": text(wallet_row.equity) if wallet_row else None,
            "quota_remaining": text(view.quota_remaining),
            "spend": text(tree_row.spend) if tree_row else None,
            "shares": view.shares,
            "contribution": view.contribution,
            "star": tree_row.star if tree_row else None,
            "team_performance": text(tree_row.team_performance) if tree_row else None,
            "released": {kind: text(amount) for kind, amount in view.released.items()},
        }
    return {
        "day": state.day,
        "equity": {name: text(value) for name, value in state.equity},
        "platform": {
            "retained": platform_total("retained"),
            "rounding": platform_total("rounding"),
            "sales": text(sales.sales),
        },
        "members": members,
    }
