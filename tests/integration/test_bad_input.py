"""Bad input against the running platform: every request below is answered 4xx with a
message, and nothing changes anywhere (the result document, every outbox, every topic)."""

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
    ("wallet", "POST", "/v1/members/A/requests", {"json": {"kind": "sell", "points": "1e9"}}, 409),
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
                detail = response.json().get("detail") if response.content else None
                if response.status_code != status or not detail:
                    wrong.append(f"{method} {path} {kwargs}: {response.status_code} {detail}")
            assert wrong == []
            await platform.wait_quiet()
            assert await read_document(platform) == before
            assert await topic_sizes(platforms.bootstrap, run["run"]["prefix"]) == sizes
        finally:
            await platform.close()

    asyncio.run(go())
