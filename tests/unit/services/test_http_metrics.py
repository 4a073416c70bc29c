"""HTTP metrics on every service (issue 13, item 5): ``tokenmall_http_requests_total`` and
``tokenmall_http_request_duration_seconds`` by method, route template and status — the
template, never the raw path; one ``unmatched`` route for every path no route took."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.services.test_bad_input import build, serve
from tokenmall.testing import MemoryPublisher, running

REQUESTS = "tokenmall_http_requests"
SECONDS = "tokenmall_http_request_duration_seconds"

Labels = tuple[str, str, str]  # method, route, status


class Call(NamedTuple):
    method: str
    url: str
    status: int
    route: str
    body: Any = None


# per service: a 2xx, and 4xx on a templated route with two different raw ids (one
# series between them); orders and wallet know member A (serve() registers it)
CALLS: dict[str, list[Call]] = {
    "orders": [
        Call("GET", "/v1/members/A/orders", 200, "/v1/members/{member}/orders"),
        Call("GET", "/v1/orders/nope-1", 404, "/v1/orders/{order_id}"),
        Call("GET", "/v1/orders/nope-2", 404, "/v1/orders/{order_id}"),
        Call("POST", "/v1/orders/nope-3", 405, "/v1/orders/{order_id}"),
    ],
    "wallet": [
        Call("GET", "/v1/members/A/balances", 200, "/v1/members/{member}/balances"),
        Call("GET", "/v1/requests/nope-1", 404, "/v1/requests/{request_id}"),
        Call("GET", "/v1/requests/nope-2", 404, "/v1/requests/{request_id}"),
    ],
    "referrals": [
        Call("POST", "/v1/members", 201, "/v1/members", {"member": "m1"}),
        Call("GET", "/v1/members/m1", 200, "/v1/members/{member}"),
        Call("GET", "/v1/members/nope-1", 404, "/v1/members/{member}"),
        Call("GET", "/v1/members/nope-2", 404, "/v1/members/{member}"),
    ],
    "dividends": [
        Call("GET", "/v1/state", 200, "/v1/state"),
        Call("GET", "/v1/members/nope-1", 404, "/v1/members/{member}"),
        Call("GET", "/v1/members/nope-2", 404, "/v1/members/{member}"),
        Call("GET", "/v1/settlements/7", 404, "/v1/settlements/{day}"),
    ],
}
# FastAPI's own pages are plain Starlette routes: labelled by their path all the same
PAGES = [
    Call("GET", "/openapi.json", 200, "/openapi.json"),
    Call("GET", "/docs", 200, "/docs"),
    Call("GET", "/redoc", 200, "/redoc"),
    # the docs pages' local assets: one series for the mount, whatever the file
    Call("GET", "/docs-assets/swagger-ui.css", 200, "/docs-assets"),
    Call("GET", "/docs-assets/redoc.standalone.js", 200, "/docs-assets"),
]
# nothing takes these: one series, whatever the path
UNMATCHED = ["/no/such/path-1", "/v1/nope-2", "/v1/orders/nope-1/nothing/here"]


def series(text: str, service: str, name: str, suffix: str = "") -> dict[Labels, float]:
    """(method, route, status) -> value of ``name + suffix``'s samples of the exposition;
    every one carries the service's label."""
    out: dict[Labels, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name != name + suffix:
                continue
            labels = sample.labels
            if suffix == "_bucket" and labels.get("le") != "+Inf":
                continue
            assert labels["service"] == service, sample
            key = (labels["method"], labels["route"], labels["status"])
            out[key] = out.get(key, 0.0) + sample.value
    return out


def expected(calls: list[Call]) -> dict[Labels, float]:
    counts: dict[Labels, float] = {}
    for call in calls:
        key = (call.method, call.route, str(call.status))
        counts[key] = counts.get(key, 0.0) + 1
    return counts


@pytest.mark.parametrize("service", sorted(CALLS))
def test_requests_are_counted_and_timed_by_route_template_and_status(
    tmp_path: Path, service: str
) -> None:
    calls = CALLS[service] + PAGES

    async def scenario(app: FastAPI, client: httpx.AsyncClient, _: MemoryPublisher) -> None:
        for call in calls:
            resp = await client.request(call.method, call.url, json=call.body)
            assert resp.status_code == call.status, (call, resp.text)
        for path in UNMATCHED:
            assert (await client.get(path)).status_code == 404
        # any token is a method to a client: not one series per token
        assert (await client.request("BREW", "/no/such/pot")).status_code == 404

        text = (await client.get("/metrics")).text
        want = expected(calls)
        want[("GET", "unmatched", "404")] = len(UNMATCHED)
        want[("other", "unmatched", "404")] = 1
        # exactly these series: no raw id, no raw path, no raw method became a label
        assert series(text, service, REQUESTS, "_total") == want
        assert series(text, service, SECONDS, "_count") == want
        assert series(text, service, SECONDS, "_bucket") == want  # le="+Inf"
        assert all(v > 0 for v in series(text, service, SECONDS, "_sum").values())
        for raw in ("nope-1", "nope-2", "/no/such", "BREW"):
            assert raw not in text

        # the scrape itself is counted once it has been answered
        text = (await client.get("/metrics")).text
        assert series(text, service, REQUESTS, "_total")[("GET", "/metrics", "200")] == 1

    serve(service, tmp_path, scenario)


def test_a_request_whose_app_raised_is_a_500_and_latency_covers_the_handler(
    tmp_path: Path,
) -> None:
    app = build("referrals", tmp_path, MemoryPublisher())

    @app.get("/v1/boom/{n}")
    async def boom(n: int) -> None:
        raise RuntimeError(f"boom {n}")

    @app.get("/v1/slow/{n}")
    async def slow(n: int) -> dict[str, int]:
        await asyncio.sleep(0.03)
        return {"n": n}

    async def main() -> str:
        async with app.router.lifespan_context(app):
            # the server's view: an exception becomes a 500, it is not raised to the client
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                for n in (1, 2):
                    assert (await client.get(f"/v1/boom/{n}")).status_code == 500
                assert (await client.get("/v1/slow/3")).status_code == 200
                return (await client.get("/metrics")).text

    text = asyncio.run(main())
    counted = series(text, "referrals", REQUESTS, "_total")
    assert counted == {("GET", "/v1/boom/{n}", "500"): 2, ("GET", "/v1/slow/{n}", "200"): 1}
    assert series(text, "referrals", SECONDS, "_count") == counted
    took = series(text, "referrals", SECONDS, "_sum")[("GET", "/v1/slow/{n}", "200")]
    assert 0.03 <= took < 5


def test_a_standbys_refusals_are_counted_as_unmatched_503s(tmp_path: Path) -> None:
    """The standby gate answers before any route is chosen: counted all the same."""
    first = build("dividends", tmp_path, MemoryPublisher())
    second = build("dividends", tmp_path, MemoryPublisher())  # the same database

    async def main() -> str:
        async with running(first), running(second) as standby:
            assert (await standby.get("/health")).json()["role"] == "standby"
            assert (await standby.get("/v1/members/nope-1")).status_code == 503
            assert (await standby.post("/v1/settlements/1")).status_code == 503
            return (await standby.get("/metrics")).text

    counted = series(asyncio.run(main()), "dividends", REQUESTS, "_total")
    assert counted == {
        ("GET", "/health", "200"): 1,
        ("GET", "unmatched", "503"): 1,
        ("POST", "unmatched", "503"): 1,
    }
