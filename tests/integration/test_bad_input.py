"""Bad input against the running platform (SQLite and PostgreSQL): every request below is
answered 4xx with the one error body ``{"code", "message", "field"}``, and nothing changes
anywhere (the result document, every outbox, every topic).  Issue 11's bad-input list is
here too: NUL bytes and control characters in ids (bodies and paths), integers beyond
int64 in paths and queries, JSON floats in plans, ``sell`` without ``points``."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.integration.conftest import Platforms
from tests.integration.test_delivery import read_topic
from tokenmall import contracts
from tokenmall.replay import Platform, read_document, replay
from tokenmall.scenario import parse_scenario

SETUP = {
    "plan": {"preset": "equity"},
    "steps": [
        {"join": {"member": "A"}},
        {"join": {"member": "M", "merchant": True}},
        {"order": {"member": "A", "amount": 100, "id": "paid-1"}},
    ],
}
JSON = {"content-type": "application/json"}
BIG = "9223372036854775808"  # one past int64
FLOATS = {"grants": {"daily_rate": 0.01}}
ANY_4XX = 0

# (service, method, path, request keywords, expected status)
BAD: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("referrals", "POST", "/v1/members", {"content": b"{not json", "headers": JSON}, 422),
    ("referrals", "POST", "/v1/members", {"json": {"member": "A"}}, 409),
    ("referrals", "POST", "/v1/members", {"json": {"member": "X", "sponsor": "nobody"}}, 422),
    ("referrals", "POST", "/v1/members", {"json": {"member": "X", "sponsor": "X"}}, 422),
    ("orders", "POST", "/v1/orders", {"content": b'{"member": "A", ', "headers": JSON}, 422),
    ("orders", "POST", "/v1/orders", {"json": {"member": "nobody", "amount": "10"}}, 404),
    ("orders", "POST", "/v1/orders", {"json": {"member": "A", "amount": "-5"}}, 422),
    ("orders", "POST", "/v1/orders", {"json": {"member": "A", "amount": "0"}}, 422),
    ("orders", "POST", "/v1/orders", {"json": {"member": "A", "amount": "1e30"}}, 422),
    ("orders", "POST", "/v1/orders", {"json": {"member": "A", "amount": "ten"}}, 422),
    ("orders", "POST", "/v1/orders", {"json": {"member": "A", "amount": "1.005"}}, 422),
    ("orders", "POST", "/v1/orders/unpaid-1/pay", {}, 409),  # 5 stable points not held
    ("orders", "POST", "/v1/orders/unpaid-1/refund", {}, 409),
    ("orders", "POST", "/v1/orders/paid-1/pay", {}, 409),
    ("orders", "POST", "/v1/orders/nothing/pay", {}, 404),
    ("orders", "POST", "/v1/orders/nothing/refund", {}, 404),
    (
        "wallet",
        "POST",
        "/v1/members/A/requests",
        {"json": {"kind": "sell", "points": "1000000000"}},
        409,
    ),
    ("wallet", "POST", "/v1/members/A/requests", {"json": {"kind": "sell", "points": "0"}}, 422),
    ("wallet", "POST", "/v1/members/A/requests", {"json": {"kind": "sell", "points": "x"}}, 422),
    ("wallet", "POST", "/v1/members/Z/requests", {"json": {"kind": "sell", "points": "1"}}, 404),
    (
        "wallet",
        "POST",
        "/v1/members/A/requests",
        {"json": {"kind": "merchant_exchange", "stable": "1"}},
        409,
    ),
    (
        "wallet",
        "POST",
        "/v1/admin/adjustments",
        {
            "json": {
                "member": "A",
                "asset": "cny",
                "amount": "-1",
                "reason": "too much",
                "operator": "ops",
            }
        },
        409,
    ),
    ("dividends", "POST", "/v1/plan", {"json": {"plan": {"pools": "many"}}}, 422),
    ("dividends", "POST", "/v1/settlements/7", {}, 409),
    # NUL bytes and control characters in ids
    ("referrals", "POST", "/v1/members", {"json": {"member": "a\u0000"}}, 422),
    ("referrals", "POST", "/v1/members", {"json": {"member": "b", "sponsor": "A\u0000"}}, 422),
    ("referrals", "POST", "/v1/members", {"json": {"member": "a/b"}}, 422),
    ("referrals", "GET", "/v1/members/A%00", {}, 422),
    ("orders", "POST", "/v1/orders", {"json": {"member": "A\u0000", "amount": "10"}}, 422),
    (
        "orders",
        "POST",
        "/v1/orders",
        {"json": {"member": "A", "amount": "10", "order_id": "o\u0000"}},
        422,
    ),
    ("orders", "GET", "/v1/orders/paid-1%00", {}, 422),
    ("orders", "POST", "/v1/orders/paid-1%00/refund", {}, 422),
    ("orders", "GET", "/v1/members/A%00/orders", {}, 422),
    ("wallet", "GET", "/v1/members/A%00/balances", {}, 422),
    ("wallet", "GET", "/v1/members/A%1f/statement", {}, 422),
    ("wallet", "GET", "/v1/requests/r%00", {}, 422),
    ("wallet", "POST", "/v1/holds/h%00/release", {}, 422),
    (
        "wallet",
        "POST",
        "/v1/holds",
        {"json": {"hold_id": "h\u0000", "member": "A", "asset": "cny", "amount": "1"}},
        422,
    ),
    (
        "wallet",
        "POST",
        "/v1/members/A/requests",
        {"json": {"request_id": "r\u0000", "kind": "sell", "points": "1"}},
        422,
    ),
    (
        "wallet",
        "POST",
        "/v1/admin/adjustments",
        {
            "json": {
                "member": "A",
                "asset": "cny",
                "amount": "1",
                "reason": "a\u0000",
                "operator": "ops",
            }
        },
        422,
    ),
    ("dividends", "GET", "/v1/members/A%00", {}, 422),
    ("dividends", "GET", "/v1/inputs/order:paid-1%00", {}, 422),
    # integers beyond int64
    ("referrals", "GET", f"/v1/members?offset={BIG}", {}, 422),
    ("orders", "GET", f"/v1/members/A/orders?offset={BIG}", {}, 422),
    ("wallet", "GET", f"/v1/balances?offset={BIG}", {}, 422),
    ("wallet", "GET", f"/v1/members/A/statement?limit={BIG}", {}, 422),
    ("dividends", "GET", f"/v1/members?offset={BIG}", {}, 422),
    ("dividends", "POST", f"/v1/settlements/{BIG}", {}, 422),
    ("dividends", "GET", f"/v1/settlements/{BIG}", {}, 422),
    # floats in plans (activate_now: refused anyway once members exist)
    ("dividends", "POST", "/v1/plan", {"json": {"plan": FLOATS}}, 422),
    ("dividends", "POST", "/v1/plan", {"json": {"plan": FLOATS, "activate_now": True}}, ANY_4XX),
    # sell without points is refused like exchange
    ("wallet", "POST", "/v1/members/A/requests", {"json": {"kind": "sell"}}, 422),
    ("wallet", "POST", "/v1/members/A/requests", {"json": {"kind": "exchange"}}, 422),
]


async def topic_sizes(bootstrap: str, prefix: str) -> dict[str, int]:
    sizes = {}
    for topic in contracts.TOPICS:
        sizes[topic] = len(await read_topic(bootstrap, prefix + topic))
    return sizes


def test_bad_requests_are_4xx_with_a_message_and_change_nothing(platforms: Platforms) -> None:
    async def go() -> None:
        run = platforms.launch()
        platform = Platform(platforms.urls(run))
        try:
            await replay(parse_scenario(SETUP), platform)
            unpaid = {"member": "A", "amount": "10", "stable": "5", "order_id": "unpaid-1"}
            created = await platform.call("orders", "POST", "/v1/orders", json=unpaid)
            assert created.status_code == 201, created.text
            before = await read_document(platform)
            sizes = await topic_sizes(platforms.bootstrap, run["run"]["prefix"])
            wrong = []
            for service, method, path, kwargs, status in BAD:
                response = await platform.call(service, method, path, **kwargs)
                body = response.json() if response.content else None
                good_status = (
                    400 <= response.status_code < 500
                    if status == ANY_4XX
                    else response.status_code == status
                )
                good_body = (
                    isinstance(body, dict)
                    and set(body) == {"code", "message", "field"}
                    and bool(body["message"])
                    and "Decimal(" not in body["message"]
                )
                if not (good_status and good_body):
                    wrong.append(f"{method} {path} {kwargs}: {response.status_code} {body}")
            assert wrong == []
            await platform.wait_quiet()
            assert await read_document(platform) == before
            assert await topic_sizes(platforms.bootstrap, run["run"]["prefix"]) == sizes
        finally:
            await platform.close()

    asyncio.run(go())
