"""Bad input to each service in process (fake broker, SQLite): every item of issue 11's
bad-input list is a 4xx with the one error body, and nothing is written or published.

The same requests run against the real platform on PostgreSQL in
tests/integration/test_bad_input.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tokenmall import contracts
from tokenmall.contracts import MemberRegistered
from tokenmall.ids import MAX_OFFSET
from tokenmall.servicekit import ServiceSettings
from tokenmall.testing import FakeBroker, MemoryPublisher, MemoryRegistry, drain, running

Client = httpx.AsyncClient
BIG = "9223372036854775808"  # 2**63: one past int64
NUL_IDS = ["a\u0000", "a\u0001b", "a\u007f", "a\nb", "a/b", "a?b", "a#b", "a%b", "a b", "-a", ""]


def registered(member: str) -> MemberRegistered:
    """MemberRegistered, with the registration order where the contract carries one."""
    extra: dict[str, Any] = {"seq": 1} if "seq" in MemberRegistered.model_fields else {}
    return MemberRegistered(member=member, **extra)


def build(name: str, tmp_path: Path, publisher: MemoryPublisher) -> FastAPI:
    kw: dict[str, Any] = {
        "broker_factory": lambda svc: FakeBroker(),
        "publisher_factory": lambda svc: publisher,
    }
    url = f"sqlite:///{tmp_path}/{name}.db"
    if name == "orders":
        from tests.unit.services.test_orders import FakeWallet
        from tokenmall_orders.app import OrdersSettings
        from tokenmall_orders.app import build_app as orders_app

        return orders_app(
            OrdersSettings(database_url=url),
            wallet=FakeWallet(A=10_000),
            registry=MemoryRegistry(),
            **kw,
        )
    if name == "wallet":
        from tokenmall_wallet.app import build_app as wallet_app

        return wallet_app(ServiceSettings(database_url=url), registry=MemoryRegistry(), **kw)
    if name == "referrals":
        from tokenmall_referrals.app import build_app as referrals_app

        return referrals_app(ServiceSettings(database_url=url), **kw)
    from tokenmall_dividends.app import DividendsSettings
    from tokenmall_dividends.app import build_app as dividends_app

    return dividends_app(DividendsSettings(database_url=url, day_watermarks=[]), **kw)


def serve(
    name: str,
    tmp_path: Path,
    scenario: Callable[[FastAPI, Client, MemoryPublisher], Awaitable[None]],
) -> None:
    async def main() -> None:
        publisher = MemoryPublisher()
        app = build(name, tmp_path, publisher)
        async with running(app) as client:
            if name in ("orders", "wallet"):
                await app.state.svc.broker.deliver(contracts.MEMBERS, registered("A"))
            await drain(app)
            publisher.messages.clear()  # what start-up published (dividends: the first plan)
            await scenario(app, client, publisher)
            await drain(app)

    asyncio.run(main())


def assert_error(response: httpx.Response, status: int | None = None, field: Any = ...) -> None:
    """A 4xx (``status`` if given) with exactly the error body, no Python repr in it."""
    where = f"{response.request.method} {response.request.url}: {response.text}"
    assert 400 <= response.status_code < 500, where
    if status is not None:
        assert response.status_code == status, where
    body = response.json()
    assert set(body) == {"code", "message", "field"}, where
    assert isinstance(body["code"], str) and body["code"], where
    assert isinstance(body["message"], str) and body["message"], where
    assert "Decimal(" not in body["message"] and "loc" not in body, where
    if field is not ...:
        assert body["field"] == field, where


async def nothing_published(app: FastAPI, publisher: MemoryPublisher) -> None:
    await drain(app)
    assert publisher.messages == []


# ------------------------------------------------------------------ ids


@pytest.mark.parametrize("bad", NUL_IDS)
def test_referrals_refuses_bad_member_ids(tmp_path: Path, bad: str) -> None:
    async def scenario(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        assert_error(await client.post("/v1/members", json={"member": bad}), 422, "body.member")
        resp = await client.post("/v1/members", json={"member": "ok", "sponsor": bad})
        assert_error(resp, 422, "body.sponsor")
        listed = (await client.get("/v1/members")).json()
        assert listed["total"] == 0
        await nothing_published(app, publisher)

    serve("referrals", tmp_path, scenario)


def test_member_ids_that_fit(tmp_path: Path) -> None:
    """Phone numbers with '+', scenario names, 64 characters (65 with '+'), all reachable."""
    longest = "+" + "9" * 64

    async def scenario(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        for member in ("+8613800000000", "A", "m.1_x-2", longest):
            assert (await client.post("/v1/members", json={"member": member})).status_code == 201
            assert (await client.get(f"/v1/members/{member}")).json()["member"] == member
        too_long = "9" * 65
        assert_error(await client.post("/v1/members", json={"member": too_long}), 422)
        assert_error(await client.post("/v1/members", json={"member": "++1"}), 422)

    serve("referrals", tmp_path, scenario)


PATHS_WITH_NUL = {
    "referrals": [("GET", "/v1/members/a%00", "member"), ("GET", "/v1/members/a%01", "member")],
    "orders": [
        ("GET", "/v1/orders/a%00", "order_id"),
        ("POST", "/v1/orders/a%00/pay", "order_id"),
        ("POST", "/v1/orders/a%00/refund", "order_id"),
        ("DELETE", "/v1/orders/a%00", "order_id"),
        ("GET", "/v1/members/a%00/orders", "member"),
        ("GET", "/v1/orders/a%20b", "order_id"),
    ],
    "wallet": [
        ("POST", "/v1/holds/a%00/release", "hold_id"),
        ("GET", "/v1/requests/a%00", "request_id"),
        ("GET", "/v1/members/a%00/balances", "member"),
        ("GET", "/v1/members/a%00/statement", "member"),
        ("POST", "/v1/members/a%00/requests", "member"),
    ],
    "dividends": [
        ("GET", "/v1/members/a%00", "member"),
        ("GET", "/v1/inputs/order:a%00", "input_id"),
        ("GET", "/v1/inputs/a%00", "input_id"),
    ],
}


@pytest.mark.parametrize("service", sorted(PATHS_WITH_NUL))
def test_nul_and_control_characters_in_paths_are_422(tmp_path: Path, service: str) -> None:
    async def scenario(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        for method, path, field in PATHS_WITH_NUL[service]:
            body = {"kind": "sell", "points": "1"} if path.endswith("/requests") else None
            resp = await client.request(method, path, json=body)
            assert_error(resp, 422, field)
        await nothing_published(app, publisher)

    serve(service, tmp_path, scenario)


def test_orders_refuses_bad_ids_in_bodies(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        for bad in NUL_IDS:
            resp = await client.post("/v1/orders", json={"member": bad, "amount": "10"})
            assert_error(resp, 422, "body.member")
            resp = await client.post(
                "/v1/orders", json={"member": "A", "amount": "10", "order_id": bad}
            )
            assert_error(resp, 422, "body.order_id")
        resp = await client.post(
            "/v1/orders", json={"member": "A", "amount": "10", "order_id": "o" * 129}
        )
        assert_error(resp, 422, "body.order_id")
        longest = "o" * 128
        resp = await client.post(
            "/v1/orders", json={"member": "A", "amount": "10", "order_id": longest}
        )
        assert resp.status_code == 201, resp.text
        assert (await client.post(f"/v1/orders/{longest}/pay")).status_code == 202
        resp = await client.post(
            "/v1/orders",
            json={"member": "A", "amount": "10"},
            headers={"Idempotency-Key": b"k\x01y"},
        )
        assert_error(resp, 422, "Idempotency-Key")

    serve("orders", tmp_path, scenario)


def test_wallet_refuses_bad_ids_and_text_in_bodies(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        for bad in NUL_IDS:
            hold = {"hold_id": bad, "member": "A", "asset": "cny", "amount": "1"}
            assert_error(await client.post("/v1/holds", json=hold), 422, "body.hold_id")
            hold = {"hold_id": "h1", "member": bad, "asset": "cny", "amount": "1"}
            assert_error(await client.post("/v1/holds", json=hold), 422, "body.member")
            trade = {"request_id": bad, "kind": "sell", "points": "1"}
            resp = await client.post("/v1/members/A/requests", json=trade)
            assert_error(resp, 422, "body.request_id")
        adjustment = {"member": "A", "asset": "cny", "amount": "1", "reason": "r", "operator": "o"}
        for key in ("member", "reason", "operator", "request_id"):
            resp = await client.post("/v1/admin/adjustments", json={**adjustment, key: "x\u0000"})
            assert_error(resp, 422, f"body.{key}")
        await nothing_published(app, publisher)

    serve("wallet", tmp_path, scenario)


# ------------------------------------------------------------------ integers


LISTS = {
    "referrals": ["/v1/members"],
    "orders": ["/v1/members/A/orders"],
    "wallet": ["/v1/balances"],
    "dividends": ["/v1/members"],
}


@pytest.mark.parametrize("service", sorted(LISTS))
def test_offsets_beyond_int64_are_422(tmp_path: Path, service: str) -> None:
    async def scenario(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        for path in LISTS[service]:
            for bad in (BIG, "-1", str(MAX_OFFSET + 1), "1e3", "x"):
                assert_error(await client.get(f"{path}?offset={bad}"), 422, "offset")
            for bad in (BIG, "0", "-1"):
                assert_error(await client.get(f"{path}?limit={bad}"), 422, "limit")
            assert (await client.get(f"{path}?offset={MAX_OFFSET}")).status_code == 200

    serve(service, tmp_path, scenario)


def test_days_beyond_int64_are_422(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        for method in ("POST", "GET"):
            for bad in (BIG, "-" + BIG, "0", "-1", str(2**31), "1.5", "x"):
                resp = await client.request(method, f"/v1/settlements/{bad}")
                assert_error(resp, 422, "day")
        assert_error(await client.post(f"/v1/settlements/{2**31 - 1}"), 409, "day")
        assert_error(await client.get("/v1/settlements/5"), 404, "day")
        assert (await client.get("/v1/state")).json()["day"] == 1

    serve("dividends", tmp_path, scenario)


# ------------------------------------------------------------------ plans


FLOAT_PLAN = {"grants": {"daily_rate": 0.01, "tiers": [{"threshold": 100, "multiple": 2.5}]}}


@pytest.mark.parametrize("activate_now", [False, True])
def test_a_plan_with_json_floats_is_422(tmp_path: Path, activate_now: bool) -> None:
    async def scenario(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        before = (await client.get("/v1/plan")).json()
        await drain(app)
        published = len(publisher.messages)  # the initial plan
        resp = await client.post(
            "/v1/plan", json={"plan": FLOAT_PLAN, "activate_now": activate_now}
        )
        assert_error(resp, 422, "body.plan")
        assert "float" in resp.json()["message"]
        for bad in ({"pools": "many"}, {"nonsense": 1}, {"grants": {"daily_rate": "2"}}):
            resp = await client.post("/v1/plan", json={"plan": bad, "activate_now": activate_now})
            assert_error(resp, 422, "body.plan")
        resp = await client.post("/v1/plan", json={"plan": {}, "activate_now": 1})
        assert_error(resp, 422, "body.activate_now")
        assert (await client.get("/v1/plan")).json() == before
        await drain(app)
        assert len(publisher.messages) == published

    serve("dividends", tmp_path, scenario)


def test_activate_now_merges_into_the_plan_like_any_version(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        resp = await client.post(
            "/v1/plan", json={"plan": {"preset": "points"}, "activate_now": True}
        )
        assert resp.status_code == 202, resp.text
        second = {"grants": {"daily_rate": "0.002"}}
        resp = await client.post("/v1/plan", json={"plan": second, "activate_now": True})
        assert resp.status_code == 202, resp.text
        current = (await client.get("/v1/plan")).json()["current"]
        assert current["grants"]["daily_rate"] == "0.002"
        assert len(current["grants"]["tiers"]) == 4  # the points preset's tiers stay
        assert current["referral"] is not None and current["team"] is not None
        # once a member joined, activate_now is refused (409) and changes nothing
        broker: FakeBroker = app.state.svc.broker
        await broker.deliver(contracts.MEMBERS, registered("A"))
        resp = await client.post("/v1/plan", json={"plan": second, "activate_now": True})
        assert_error(resp, 409)
        assert (await client.get("/v1/plan")).json()["current"] == current

    serve("dividends", tmp_path, scenario)


# ------------------------------------------------------------------ sell


def test_sell_without_points_is_refused_like_exchange(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        for kind in ("sell", "exchange"):
            resp = await client.post("/v1/members/A/requests", json={"kind": kind})
            assert_error(resp, 422, "body.points")
            assert "points" in resp.json()["message"]
        resp = await client.post("/v1/members/A/requests", json={"kind": "sell", "points": "0"})
        assert_error(resp, 422, "body.points")
        resp = await client.post(
            "/v1/members/A/requests", json={"kind": "sell", "points": "1.000000001"}
        )
        assert_error(resp, 422, "body.points")
        assert "'1.000000001'" in resp.json()["message"]
        await nothing_published(app, publisher)

    serve("wallet", tmp_path, scenario)


# ------------------------------------------------------------------ the error body


@pytest.mark.parametrize("service", ["referrals", "orders", "wallet", "dividends"])
def test_one_error_body_everywhere_and_in_the_openapi(tmp_path: Path, service: str) -> None:
    async def scenario(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        assert_error(await client.get("/v1/nowhere"), 404, None)
        resp = await client.put("/v1/sync")
        assert_error(resp, 405, None)
        assert "GET" in resp.headers["allow"]
        schema = (await client.get("/openapi.json")).json()
        components = schema["components"]["schemas"]
        assert "HTTPValidationError" not in components
        assert set(components["ErrorBody"]["properties"]) == {"code", "message", "field"}
        ref = {"$ref": "#/components/schemas/ErrorBody"}
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                responses = operation["responses"]
                assert "4XX" in responses, (method, path)
                for status, response in responses.items():
                    if status[0] in "45":
                        content = response["content"]["application/json"]["schema"]
                        assert content == ref, (method, path, status)
        text = await client.post(
            "/v1/plan"
            if service == "dividends"
            else "/v1/members"
            if service == "referrals"
            else "/v1/orders"
            if service == "orders"
            else "/v1/holds",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert_error(text, 422, "body")

    serve(service, tmp_path, scenario)
