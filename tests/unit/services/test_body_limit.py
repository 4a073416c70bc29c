"""A request body above TOKENMALL_MAX_BODY_BYTES is refused with 413 and the error body
on every service, before any route parses it — whether it declares its length or not."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.services.test_bad_input import build
from tokenmall.body_limit import DEFAULT_MAX_BODY_BYTES
from tokenmall.testing import MemoryPublisher, drain, running

SERVICES = ("orders", "wallet", "dividends", "referrals")
# a route of each service that takes a body: what a refused one must not reach
ROUTES = {
    "orders": "/v1/orders",
    "wallet": "/v1/admin/adjustments",
    "dividends": "/v1/plan",
    "referrals": "/v1/members",
}
LIMIT = 4096


async def chunks(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("service", SERVICES)
def test_a_body_over_the_limit_is_refused_with_413_and_nothing_changes(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENMALL_MAX_BODY_BYTES", str(LIMIT))
    publisher = MemoryPublisher()
    app = build(service, tmp_path, publisher)
    # valid JSON of a member that would register: only its size is wrong
    big = json.dumps({"member": "big", "padding": "x" * (2 * LIMIT)}).encode()

    async def go() -> None:
        async with running(app) as client:
            await drain(app)
            before = len(publisher.events())  # what a service sends as it starts
            declared = await client.post(
                ROUTES[service], content=big, headers={"content-type": "application/json"}
            )
            streamed = await client.post(
                ROUTES[service], content=chunks(big), headers={"content-type": "application/json"}
            )
            for response in (declared, streamed):
                assert response.status_code == 413, response.text
                body = response.json()
                assert (body["code"], body["field"]) == ("too_large", "body")
                assert f"larger than {LIMIT} bytes" in body["message"]
            # under the limit the same route parses it (and says what is wrong with it)
            small = await client.post(ROUTES[service], json={"x": 1})
            assert small.status_code == 422, small.text
            if service == "referrals":
                assert (await client.get("/v1/members")).json()["total"] == 0
            await drain(app)
            assert len(publisher.events()) == before  # nothing was sent

    asyncio.run(go())


def test_the_default_limit_takes_the_largest_batch_a_mall_sends() -> None:
    # 10,000 orders (POST /v1/orders:batch) of 128-character ids and member names
    order = {"order_id": "o" * 128, "member": "m" * 128, "amount": "99999.99", "stable": "0.00"}
    batch = json.dumps({"orders": [order] * 10_000}).encode()
    assert len(batch) < DEFAULT_MAX_BODY_BYTES
