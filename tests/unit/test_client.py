"""``tokenmall.client`` against the four services in process (SQLite, no broker: an
in-memory bus hands what each outbox relay publishes to the subscribers of its topic),
and against scripted answers (``httpx.MockTransport``) for tokens and errors.

The in-process platform is a whole one: orders asks the wallet and referrals over HTTP
(ASGI), day markers flow, settlements complete — so replay runs on it too, and its
result document must equal ``simulate``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tokenmall.client import (
    SERVICES,
    ApiError,
    AsyncClient,
    Client,
    NewMember,
    PaidOrder,
    Settlement,
    UnexpectedResponse,
    decimal_text,
)
from tokenmall.contracts import PARTITIONS
from tokenmall.messaging import Outgoing
from tokenmall.registry import HttpMemberRegistry
from tokenmall.replay import Platform, read_document, replay
from tokenmall.scenario import load_scenario, simulate
from tokenmall.servicekit import ServiceSettings
from tokenmall.testing import FakeBroker
from tokenmall.webhooks import SignatureError, verify

SCENARIOS = Path(__file__).parents[1] / "scenarios"
URLS = {name: f"http://{name}.test" for name in SERVICES}


@pytest.fixture(autouse=True)
def migrate_on_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENMALL_MIGRATE_ON_START", "true")


# ------------------------------------------------------------------ the platform in process


class Bus:
    """The broker of an in-process platform: a relay's ``publish_many`` hands each message
    to every subscriber of its topic before it returns, so the outbox backlog that
    ``/v1/sync`` reports covers every event still on its way.  One delivery at a time per
    subscriber (as a Kafka consumer), in publish order."""

    def __init__(self) -> None:
        self.brokers: list[FakeBroker] = []
        self.locks: dict[tuple[int, str], asyncio.Lock] = {}

    def broker(self, svc: Any) -> FakeBroker:
        broker = FakeBroker()
        self.brokers.append(broker)
        return broker

    def publisher(self, svc: Any) -> Bus:
        return self

    async def partitions(self, topic: str) -> int:
        return PARTITIONS

    async def publish_many(self, messages: list[Outgoing]) -> None:
        for message in messages:
            for broker in self.brokers:
                if message.topic not in broker.handlers:
                    continue
                lock = self.locks.setdefault((id(broker), message.topic), asyncio.Lock())
                async with lock:
                    await broker.deliver(message.topic, message.value)

    def dead_letters(self) -> list[Any]:
        return [d for b in self.brokers for d in b.dead_letters]


@dataclass
class InProcess:
    apps: dict[str, FastAPI]
    bus: Bus

    def transports(self) -> dict[str, httpx.AsyncBaseTransport]:
        return {name: httpx.ASGITransport(app=app) for name, app in self.apps.items()}


@contextlib.asynccontextmanager
async def platform_in_process(
    tmp_path: Path, webhooks: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[InProcess]:
    from tokenmall_dividends.app import DividendsSettings
    from tokenmall_dividends.app import build_app as dividends_app
    from tokenmall_orders.adapters.wallet import HttpWallet
    from tokenmall_orders.app import OrdersSettings
    from tokenmall_orders.app import build_app as orders_app
    from tokenmall_referrals.app import build_app as referrals_app
    from tokenmall_wallet.app import build_app as wallet_app

    bus = Bus()
    kw: dict[str, Any] = {"broker_factory": bus.broker, "publisher_factory": bus.publisher}

    def url(name: str) -> str:
        return f"sqlite:///{tmp_path}/{name}.db"

    referrals = referrals_app(ServiceSettings(database_url=url("referrals")), **kw)

    def registry() -> HttpMemberRegistry:
        return HttpMemberRegistry(URLS["referrals"], transport=httpx.ASGITransport(referrals))

    wallet = wallet_app(ServiceSettings(database_url=url("wallet")), registry=registry(), **kw)
    orders = orders_app(
        OrdersSettings(database_url=url("orders")),
        wallet=HttpWallet(URLS["wallet"], transport=httpx.ASGITransport(wallet)),
        registry=registry(),
        **kw,
    )
    dividends = dividends_app(
        DividendsSettings(database_url=url("dividends"), webhook_poll_seconds=0.05), **kw
    )
    dividends.state.svc.webhooks.transport = webhooks  # where deliveries go (None: network)
    apps = {"orders": orders, "wallet": wallet, "dividends": dividends, "referrals": referrals}
    async with contextlib.AsyncExitStack() as stack:
        for app in apps.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
        yield InProcess(apps, bus)
    assert bus.dead_letters() == []


@contextlib.asynccontextmanager
async def client_in_process(tmp_path: Path) -> AsyncIterator[tuple[AsyncClient, InProcess]]:
    async with (
        platform_in_process(tmp_path) as platform,
        AsyncClient(URLS, transport=platform.transports()) as api,
    ):
        yield api, platform


async def quiet(inproc: InProcess) -> None:
    """Until every service has published and handled everything (replay's barrier)."""
    platform = Platform(URLS, timeout=30, transport=inproc.transports())
    try:
        await platform.wait_quiet(0.005)
    finally:
        await platform.close()


class BlockingTransport(httpx.BaseTransport):
    """A sync transport over an async one running on ``loop`` (another thread's): the
    sync client reaches the in-process services through it."""

    def __init__(self, inner: httpx.AsyncBaseTransport, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = inner
        self.loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content)

        return asyncio.run_coroutine_threadsafe(send(), self.loop).result(timeout=60)


def run(main: Callable[[], Any]) -> Any:
    return asyncio.run(main())


# ------------------------------------------------------------------ referrals


def test_registers_members_and_pages_through_them(tmp_path: Path) -> None:
    async def main() -> None:
        async with client_in_process(tmp_path) as (api, _):
            root = await api.referrals.register_member("root")
            assert (root.member, root.sponsor, root.referral_count) == ("root", None, 0)
            assert root.spend == Decimal("0.00") and isinstance(root.spend, Decimal)
            batch = await api.referrals.register_members(
                [NewMember(f"m{i}", sponsor="root") for i in range(7)] + ["loner"]
            )
            assert (batch.created, batch.existing, batch.refused) == (8, 0, 0)
            again = await api.referrals.register_members([NewMember("m0", sponsor="root")])
            assert again.existing == 1 and again.items[0].status == "exists"

            members = api.referrals.members(page_size=3)
            pages = [page async for page in members.pages()]
            assert [len(p.items) for p in pages] == [3, 3, 3]
            assert [p.offset for p in pages] == [0, 3, 6] and pages[0].total == 9
            names = [m.member async for m in members]
            assert names == ["root", *(f"m{i}" for i in range(7)), "loner"]
            assert [m.seq for m in await members.all()] == sorted(m.seq for m in pages[0].items) + [
                m.seq for p in pages[1:] for m in p.items
            ]
            one = await members.page(offset=8, limit=5)
            assert ([m.member for m in one.items], one.total, one.limit) == (["loner"], 9, 5)

            downline = await api.referrals.referrals_of("root", page_size=2).all()
            assert [m.member for m in downline] == [f"m{i}" for i in range(7)]
            assert (await api.referrals.member("root")).referral_count == 7

            # the generic iterator: the same list as plain dicts
            raw = [p async for p in api.pages("referrals", "/v1/members", page_size=4)]
            assert [row["member"] for p in raw for row in p.items] == names
            assert raw[0].items[0]["spend"] == "0.00"

    run(main)


def test_an_error_raises_api_error_with_the_field(tmp_path: Path) -> None:
    async def main() -> None:
        async with client_in_process(tmp_path) as (api, _):
            await api.referrals.register_member("A")
            with pytest.raises(ApiError) as taken:
                await api.referrals.register_member("A")
            assert (taken.value.status, taken.value.code, taken.value.field) == (
                409,
                "conflict",
                "body.member",
            )
            with pytest.raises(ApiError) as unknown:
                await api.referrals.register_member("B", sponsor="nobody")
            assert (unknown.value.status, unknown.value.field) == (422, "body.sponsor")
            assert "nobody" in unknown.value.message
            with pytest.raises(ApiError) as amount:
                await api.orders.create_order("A", "10.123")  # 3 decimals
            assert (amount.value.status, amount.value.field) == (422, "body.amount")
            with pytest.raises(ApiError) as missing:
                await api.orders.order("no-such-order")
            assert missing.value.status == 404 and missing.value.code == "not_found"
            assert "GET http://orders.test/v1/orders/no-such-order: 404" in str(missing.value)
            with pytest.raises(ValueError, match="page_size"):
                api.referrals.members(page_size=10_001)
            with pytest.raises(TypeError, match="float"):
                await api.orders.create_order("A", 10.5)  # type: ignore[arg-type]

    run(main)


# ------------------------------------------------------------------ a mall's day


def test_a_mall_back_end_round_trip_with_decimals(tmp_path: Path) -> None:
    """Register, create + pay (Decimal in, decimal strings on the wire), the rules'
    verdict, balances, statement, settle, refund: Decimals out."""
    sent: list[httpx.Request] = []

    async def main() -> None:
        async with platform_in_process(tmp_path) as platform:
            transports = platform.transports()
            inner = transports["orders"]

            class Recording(httpx.AsyncBaseTransport):
                async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                    sent.append(request)
                    return await inner.handle_async_request(request)

            transports["orders"] = Recording()
            async with AsyncClient(URLS, transport=transports) as api:
                await api.dividends.schedule_plan({"preset": "points"}, activate_now=True)
                await api.referrals.register_member("shop-1", merchant=True)
                await api.referrals.register_member("alice", sponsor="shop-1")
                order = await api.orders.create_order(
                    "alice", Decimal("3000.50"), order_id="o-1", idempotency_key="create-o-1"
                )
                assert order.status == "created" and order.amount == Decimal("3000.50")
                assert isinstance(order.amount, Decimal) and order.stable == Decimal("0")
                body = json.loads(sent[-1].content)
                assert body == {"order_id": "o-1", "member": "alice", "amount": "3000.50"}
                assert sent[-1].headers["Idempotency-Key"] == "create-o-1"

                paid = await api.orders.pay_order("o-1", idempotency_key="pay-o-1")
                assert paid.status == "pending"
                again = await api.orders.pay_order("o-1", idempotency_key="pay-o-1")
                assert again.order_id == "o-1"  # the same answer again (idempotent)
                verdict = await api.orders.wait_verdict("o-1", timeout=10)
                assert verdict.status == "paid" and verdict.day == 1
                await quiet(platform)

                listed = await api.orders.member_orders("alice").all()
                assert [o.order_id for o in listed] == ["o-1"]
                assert (await api.orders.sales()).sales == Decimal("3000.50")
                rules = await api.dividends.member("alice")
                assert rules.spend == Decimal("3000.50") and rules.quota_remaining > 0
                grants = await api.dividends.grants("alice").all()
                assert grants and grants[0].quota == rules.quota_remaining
                assert (await api.referrals.member("shop-1")).team_performance == Decimal("3000.50")
                state = await api.dividends.state()
                assert (state.day, state.order_count, state.member_count) == (1, 1, 2)

                settled = await api.dividends.settle(1)
                assert isinstance(settled, Settlement) and settled.day == 1
                assert all(isinstance(v, Decimal) for v in settled.released.values())
                assert isinstance(await api.dividends.settlement(1), Settlement)
                await quiet(platform)
                balances = await api.wallet.balances("alice")
                assert balances.stable > 0 and isinstance(balances.stable, Decimal)
                assert balances.available["stable"] == balances.stable
                releases = await api.wallet.releases("alice").all()
                assert releases[0].day == 1 and releases[0].total > 0
                everyone = {b.member: b for b in await api.wallet.all_balances().all()}
                assert everyone["alice"].stable == balances.stable

                # adjustments (and trades): accepted, then decided by the rules
                adjusted = await api.wallet.adjust(
                    "alice",
                    "cny",
                    Decimal("5.00"),
                    reason="goodwill",
                    operator="ops",
                    request_id="adj-1",
                )
                assert adjusted.status == "pending"
                await api.wallet.adjust(
                    "alice", "stable", "-1.00", reason="fix", operator="ops", request_id="adj-2"
                )
                with pytest.raises(ApiError) as no_points:
                    await api.wallet.submit_request("alice", "sell", points=Decimal("1"))
                assert no_points.value.status == 409
                await quiet(platform)
                request = await api.wallet.request("adj-1")
                assert (request.status, request.amount, request.reason) == (
                    "done",
                    Decimal("5.00"),
                    "goodwill",
                )
                assert request.outcome is not None and request.outcome.amount == Decimal("5.00")
                assert (await api.wallet.request("adj-2")).amount == Decimal("-1.00")
                entries = await api.wallet.statement("alice", page_size=1).all()
                assert {e.change for e in entries} >= {Decimal("5.00"), Decimal("-1.00")}
                after = await api.wallet.balances("alice")
                assert after.cny == Decimal("5.00")
                assert after.stable == balances.stable - 1

                refunded = await api.orders.refund_order("o-1")
                assert refunded.status == "refunded"
                await quiet(platform)
                log = await api.dividends.inputs(page_size=2).all()
                assert [i.seq for i in log] == sorted(i.seq for i in log)
                assert "order:o-1" in {i.input_id for i in log}
                assert (await api.dividends.input("order:o-1")).accepted
                later = await api.dividends.inputs(after_seq=log[0].seq).all()
                assert later == log[1:]
                for service in SERVICES:
                    status = await getattr(api, service).sync()
                    assert status.service == service and status.outbox_backlog == 0
                    assert await getattr(api, service).parked().all() == []

    run(main)


def test_webhooks_and_a_days_releases_through_the_client(tmp_path: Path) -> None:
    """A mall registers an endpoint through the client, hears of its order's verdict
    and of the settled day (signed), pages through the day's release lines the
    notification links to, reads the delivery log, redelivers and deletes."""
    received: list[tuple[dict[str, Any], bool]] = []
    secret: dict[str, str] = {}

    async def receiver(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            verify(secret["value"], headers.get("tokenmall-signature"), body)
            signed = True
        except SignatureError:
            signed = False
        received.append((json.loads(body), signed))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def until(kinds: list[str]) -> None:
        for _ in range(500):
            if sorted(event["type"] for event, _ in received) == sorted(kinds):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"received {[e['type'] for e, _ in received]}, not {kinds}")

    async def main() -> None:
        hooks = httpx.ASGITransport(app=receiver)
        async with (
            platform_in_process(tmp_path, webhooks=hooks) as platform,
            AsyncClient(URLS, transport=platform.transports()) as api,
        ):
            await api.dividends.schedule_plan({"preset": "points"}, activate_now=True)
            created = await api.dividends.register_webhook(
                "https://mall.example/hooks", ["order.verdict", "day.settled"], description="erp"
            )
            secret["value"] = created.secret
            assert [w.id for w in await api.dividends.webhooks().all()] == [created.id]
            assert (await api.dividends.webhook(created.id)).events == [
                "day.settled",
                "order.verdict",
            ]
            await api.referrals.register_member("alice")
            await api.orders.create_order("alice", Decimal("3000"), order_id="o-1")
            await api.orders.pay_order("o-1")
            await api.orders.wait_verdict("o-1", timeout=10)
            await api.dividends.settle(1)
            await quiet(platform)
            await until(["order.verdict", "day.settled"])
            assert all(signed for _, signed in received)
            day = next(event for event, _ in received if event["type"] == "day.settled")
            releases = day["data"]["links"]["releases"]
            assert releases == "/wallet/v1/days/1/releases"
            lines = await api.wallet.day_releases(1).all()
            assert [(line.member, line.asset) for line in lines] == [("alice", "stable")]
            assert lines[0].total == Decimal(day["data"]["released"]["base"])

            log = await api.dividends.webhook_deliveries(created.id).all()
            assert [d.type for d in log] == ["day.settled", "order.verdict"]  # newest first
            assert {d.status for d in log} == {"delivered"}
            assert await api.dividends.webhook_deliveries(created.id, status="failed").all() == []
            again = await api.dividends.redeliver(created.id, log[1].id)
            assert again.status == "pending" and again.payload["type"] == "order.verdict"
            await until(["order.verdict", "day.settled", "order.verdict"])
            detail = await api.dividends.webhook_delivery(created.id, log[1].id)
            assert [a.status_code for a in detail.attempt_log] == [204, 204]
            ping = await api.dividends.ping_webhook(created.id)
            assert ping.type == "webhook.ping"
            await api.dividends.delete_webhook(created.id)
            with pytest.raises(ApiError) as gone:
                await api.dividends.webhook(created.id)
            assert gone.value.status == 404

    run(main)


def test_the_sync_client_does_what_the_async_one_does(tmp_path: Path) -> None:
    def mall(api: Client) -> dict[str, Any]:
        api.referrals.register_member("root")
        api.referrals.register_members([NewMember(f"m{i}", sponsor="root") for i in range(4)])
        with pytest.raises(ApiError) as taken:
            api.referrals.register_member("root")
        assert taken.value.field == "body.member"
        batch = api.orders.create_orders_batch(
            [PaidOrder(f"o-{i}", f"m{i}", Decimal("10.10")) for i in range(3)]
        )
        assert batch.accepted == 3
        names = [m.member for m in api.referrals.members(page_size=2)]
        pages = [len(p.items) for p in api.referrals.members(page_size=2).pages()]
        orders = [o.order_id for o in api.orders.member_orders("m1")]
        raw = [
            r["member"] for p in api.pages("referrals", "/v1/members", page_size=3) for r in p.items
        ]
        return {
            "names": names,
            "pages": pages,
            "orders": orders,
            "raw": raw,
            "amount": api.orders.order("o-1").amount,
            "one": api.referrals.members().page(offset=1, limit=1).items[0].member,
        }

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with platform_in_process(tmp_path / "sync") as platform:
            loop = asyncio.get_running_loop()
            transports: dict[str, httpx.BaseTransport] = {
                name: BlockingTransport(t, loop) for name, t in platform.transports().items()
            }

            def blocking() -> dict[str, Any]:
                with Client(URLS, transport=transports) as api:
                    return mall(api)

            got = await asyncio.to_thread(blocking)
        (tmp_path / "async").mkdir()
        async with client_in_process(tmp_path / "async") as (api, _):
            await api.referrals.register_member("root")
            await api.referrals.register_members(
                [NewMember(f"m{i}", sponsor="root") for i in range(4)]
            )
            await api.orders.create_orders_batch(
                [PaidOrder(f"o-{i}", f"m{i}", Decimal("10.10")) for i in range(3)]
            )
            expected = {
                "names": [m.member async for m in api.referrals.members(page_size=2)],
                "pages": [len(p.items) async for p in api.referrals.members(page_size=2).pages()],
                "orders": [o.order_id async for o in api.orders.member_orders("m1")],
                "raw": [
                    r["member"]
                    async for p in api.pages("referrals", "/v1/members", page_size=3)
                    for r in p.items
                ],
                "amount": (await api.orders.order("o-1")).amount,
                "one": (await api.referrals.members().page(offset=1, limit=1)).items[0].member,
            }
        return got, expected

    (tmp_path / "sync").mkdir()
    got, expected = run(main)
    assert got == expected
    assert got["names"] == ["root", "m0", "m1", "m2", "m3"] and got["pages"] == [2, 2, 1]
    assert got["amount"] == Decimal("10.10") and got["orders"] == ["o-1"]


# ------------------------------------------------------------------ replay on the client


@pytest.mark.parametrize(
    "name",
    [
        "rules-refunds-plan-refusals.yaml",  # join, order, refund, plan, adjust, settle, refusals
        "rules-exchange-merchant.yaml",  # exchange, merchant_exchange
        "rules-refund-equity-off.yaml",  # sell
    ],
)
def test_replay_through_the_client_equals_simulate(tmp_path: Path, name: str) -> None:
    """Replay (on the client) of a scenario on the platform in process: the document
    ``tokenmall replay --compare`` compares.  (Every scenario file passes; these three
    cover every kind of step and refusal.)"""
    scenario = load_scenario(SCENARIOS / name)

    async def main() -> tuple[Any, dict[str, Any]]:
        async with platform_in_process(tmp_path) as inproc:
            platform = Platform(URLS, timeout=60, transport=inproc.transports())
            try:
                result = await replay(scenario, platform)
                return result, await read_document(platform)
            finally:
                await platform.close()

    result, again = run(main)
    assert result.failures == []
    assert result.document == simulate(scenario).document
    assert json.dumps(again) == json.dumps(result.document)


# ------------------------------------------------------------------ tokens and wire details


def scripted(
    answer: Callable[[httpx.Request], httpx.Response], seen: list[httpx.Request]
) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    return httpx.MockTransport(handle)


MEMBER = {
    "member": "A",
    "sponsor": None,
    "merchant": False,
    "spend": "10.50",
    "team_performance": "0.00",
    "star": 0,
    "seq": 1,
    "registered_at": "2026-12-04T13:27:25.123456Z",
    "referral_count": 0,
}


def needs(token: str) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return httpx.Response(
                401, json={"code": "unauthorized", "message": "bad token", "field": None}
            )
        return httpx.Response(200, json=MEMBER)

    return answer


def test_the_token_is_sent_and_asked_again_on_a_401() -> None:
    seen: list[httpx.Request] = []
    tokens = iter(["old", "new", "newer"])
    asked: list[str] = []

    async def source() -> str:
        asked.append(token := next(tokens))
        return token

    async def main() -> None:
        async with AsyncClient(URLS, token=source, transport=scripted(needs("new"), seen)) as api:
            member = await api.referrals.member("A")
            assert member.spend == Decimal("10.50") and member.registered_at is not None
            await api.referrals.member("A")  # the new token is kept

    run(main)
    assert asked == ["old", "new"]
    assert [r.headers["Authorization"] for r in seen] == ["Bearer old", "Bearer new", "Bearer new"]

    # a plain string: sent as it is; a 401 is an ApiError (nothing to ask)
    seen.clear()

    async def fixed() -> None:
        async with AsyncClient(URLS, token="s3cret", transport=scripted(needs("x"), seen)) as api:
            with pytest.raises(ApiError) as refused:
                await api.referrals.member("A")
            assert (refused.value.status, refused.value.code) == (401, "unauthorized")

    run(fixed)
    assert [r.headers["Authorization"] for r in seen] == ["Bearer s3cret"]

    # sync: a plain callable, asked again once; still refused: the ApiError
    seen.clear()
    sync_tokens = iter(["a", "b", "c"])
    with Client(URLS, token=lambda: next(sync_tokens), transport=scripted(needs("z"), seen)) as api:
        with pytest.raises(ApiError) as still:
            api.referrals.member("A")
        assert still.value.status == 401
    assert [r.headers["Authorization"] for r in seen] == ["Bearer a", "Bearer b"]

    # no token: no header
    seen.clear()
    with Client(URLS, transport=scripted(lambda r: httpx.Response(200, json=MEMBER), seen)) as api:
        api.referrals.member("A")
    assert "Authorization" not in seen[0].headers


def test_decimals_go_out_as_strings_and_come_back_as_decimals() -> None:
    seen: list[httpx.Request] = []
    order = {
        "order_id": "o-1",
        "member": "A",
        "amount": "0.10",
        "stable": "0.00",
        "status": "created",
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/plan":
            return httpx.Response(202, json={"accepted": True, "effective_day": 2})
        return httpx.Response(201, json=order)

    with Client(URLS, transport=scripted(answer, seen)) as api:
        got = api.orders.create_order("A", Decimal("0.10"), stable=Decimal("0E-2"))
        assert got.amount == Decimal("0.10") and str(got.amount) == "0.10"
        api.dividends.schedule_plan(
            {"equity": {"issue_price": Decimal("1E-8")}, "tiers": [Decimal("1E+2"), 5]}
        )
        with pytest.raises(TypeError):
            api.dividends.schedule_plan({"rate": 0.1})
    assert json.loads(seen[0].content) == {"member": "A", "amount": "0.10", "stable": "0.00"}
    assert json.loads(seen[1].content) == {
        "plan": {"equity": {"issue_price": "0.00000001"}, "tiers": ["100", 5]}
    }
    assert len(seen) == 2  # the float was refused before anything was sent
    assert decimal_text(Decimal("-0.00")) == "-0.00" and decimal_text(7) == "7"


def test_an_answer_the_client_cannot_read_is_unexpected() -> None:
    seen: list[httpx.Request] = []
    answers = iter(
        [
            httpx.Response(200, text="<html>proxy</html>"),
            httpx.Response(204),
            httpx.Response(502, text="Bad Gateway"),
        ]
    )
    with Client(URLS, transport=scripted(lambda r: next(answers), seen)) as api:
        with pytest.raises(UnexpectedResponse) as html:
            api.referrals.member("A")
        assert html.value.status == 200 and "unreadable" in html.value.message
        with pytest.raises(UnexpectedResponse):
            api.referrals.member("A")
        with pytest.raises(ApiError) as gateway:
            api.referrals.member("A")
        assert (gateway.value.status, gateway.value.code, gateway.value.message) == (
            502,
            "http_502",
            "Bad Gateway",
        )
    with pytest.raises(ValueError, match="no URL for the wallet"):
        Client({"referrals": "http://r"}).wallet.balances("A")
