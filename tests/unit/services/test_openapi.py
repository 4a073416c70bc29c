"""The platform's one OpenAPI document (tokenmall openapi) and the gateway that serves
the platform at one origin (tokenmall gateway), with the docs pages' local assets."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from typer.testing import CliRunner

from tests.unit.services.test_api_style import Checker, documents
from tests.unit.services.test_bad_input import build
from tokenmall import openapi
from tokenmall.cli import app as cli
from tokenmall.gateway import build_gateway
from tokenmall.testing import MemoryPublisher, running


@pytest.fixture(scope="module")
def service_docs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return documents(tmp_path_factory.mktemp("docs"))


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for v in node.values() for r in refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_the_merged_document_is_valid_openapi_31_with_every_route_of_every_service(
    service_docs: dict[str, dict[str, Any]],
) -> None:
    merged = openapi.merge(service_docs)
    validate(merged)  # the OpenAPI 3.1 schema (openapi-spec-validator)
    assert merged["openapi"] == "3.1.0"
    expected = {
        (f"/{service}{path}", method)
        for service, doc in service_docs.items()
        for path, item in doc["paths"].items()
        for method in item
    }
    assert {(p, m) for p, item in merged["paths"].items() for m in item} == expected
    ids = [op["operationId"] for item in merged["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    schemas = merged["components"]["schemas"]
    for ref in refs(merged):
        assert ref.rsplit("/", 1)[-1] in schemas, ref
    # the same style as every service's own document
    assert Checker(merged).check() == []


def test_a_name_two_services_use_for_different_schemas_is_kept_apart() -> None:
    def doc(schemas: dict[str, Any]) -> dict[str, Any]:
        ok = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}}
        return {
            "openapi": "3.1.0",
            "info": {"title": "x", "version": "1"},
            "paths": {"/v1/thing": {"get": {"operationId": "thing", "responses": {"200": ok}}}},
            "components": {"schemas": schemas},
        }

    same = {"type": "object", "properties": {"id": {"type": "integer"}}}
    merged = openapi.merge(
        {
            "a": doc({"Thing": {"type": "string"}, "Shared": same}),
            "b": doc({"Thing": {"type": "integer"}, "Shared": same}),
        }
    )
    schemas = merged["components"]["schemas"]
    assert set(schemas) == {"a.Thing", "b.Thing", "Shared"}
    assert (schemas["a.Thing"]["type"], schemas["b.Thing"]["type"]) == ("string", "integer")
    for service in ("a", "b"):
        op = merged["paths"][f"/{service}/v1/thing"]["get"]
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{service}.Thing"}
        assert op["operationId"] == f"{service}.thing"


def test_the_cli_prints_the_merged_document_and_one_service_s() -> None:
    runner = CliRunner()
    merged = json.loads(runner.invoke(cli, ["openapi", "--server", "http://mall:8100"]).output)
    assert merged["servers"][0]["url"] == "http://mall:8100"
    assert "/wallet/v1/members/{member}/statement" in merged["paths"]
    one = json.loads(runner.invoke(cli, ["openapi", "--service", "orders"]).output)
    assert "/v1/orders/{order_id}" in one["paths"]
    assert runner.invoke(cli, ["openapi", "--service", "nope"]).exit_code != 0


class Services(httpx.AsyncBaseTransport):
    """Requests to http://<service>/... answered by that service's app in process; a
    service in ``down`` refuses connections."""

    def __init__(self, apps: dict[str, Any]) -> None:
        self.transports = {name: httpx.ASGITransport(app=app) for name, app in apps.items()}
        self.down: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return await self.transports[host].handle_async_request(request)


@contextlib.asynccontextmanager
async def platform(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    apps = {}
    for name in openapi.SERVICES:
        folder = tmp_path / name
        folder.mkdir()
        apps[name] = build(name, folder, MemoryPublisher())
    async with contextlib.AsyncExitStack() as stack:
        for app in apps.values():
            await stack.enter_async_context(running(app))
        services = Services(apps)
        gateway = build_gateway({name: f"http://{name}" for name in apps}, transport=services)
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client, services


def test_the_gateway_forwards_each_prefix_to_its_service(tmp_path: Path) -> None:
    async def go() -> None:
        async with platform(tmp_path) as (gw, services):
            created = await gw.post("/referrals/v1/members", json={"member": "m-1"})
            assert created.status_code == 201, created.text
            listed = (await gw.get("/referrals/v1/members?limit=5")).json()
            assert ([m["member"] for m in listed["items"]], listed["limit"]) == (["m-1"], 5)
            # the same path on another service is that service's
            # (no broker between them here: the engine has not heard of m-1)
            engine = (await gw.get("/dividends/v1/members")).json()
            assert (engine["total"], engine["items"]) == (0, [])
            refused = await gw.post("/wallet/v1/admin/adjustments", json={"amount": 1})
            assert refused.status_code == 422 and refused.json()["code"] == "invalid"
            unknown = await gw.get("/nowhere/v1/x")
            assert (unknown.status_code, unknown.json()["field"]) == (404, "path")
            assert (await gw.get("/health")).json()["status"] == "ok"

            services.down.add("orders")
            down = await gw.get("/orders/v1/sales")
            assert (down.status_code, down.json()["code"]) == (502, "bad_gateway")
            health = await gw.get("/health")
            assert health.status_code == 503
            assert health.json()["services"]["orders"] == "unreachable"

    asyncio.run(go())


def test_the_gateway_serves_the_merged_document_and_docs_pages_from_local_assets(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        async with platform(tmp_path) as (gw, _):
            doc = (await gw.get("/openapi.json")).json()
            validate(doc)
            assert "/orders/v1/orders" in doc["paths"] and doc["servers"][0]["url"] == "http://gw"
            for page, asset in (
                ("/docs", "swagger-ui-bundle.js"),
                ("/redoc", "redoc.standalone.js"),
            ):
                html = (await gw.get(page)).text
                assert f"/docs-assets/{asset}" in html
                assert "cdn" not in html.lower() and "googleapis" not in html
                loaded = await gw.get(f"/docs-assets/{asset}")
                assert loaded.status_code == 200 and len(loaded.content) > 100_000
                assert "javascript" in loaded.headers["content-type"]

    asyncio.run(go())


@pytest.mark.parametrize("service", openapi.SERVICES)
def test_every_service_s_docs_pages_load_nothing_from_elsewhere(
    service: str, tmp_path: Path
) -> None:
    async def go() -> None:
        async with running(build(service, tmp_path, MemoryPublisher())) as client:
            for page in ("/docs", "/redoc"):
                html = (await client.get(page)).text
                assert "/docs-assets/" in html and "/openapi.json" in html
                sources = [part.split('"')[1] for part in html.split("src=")[1:]]
                sources += [part.split('"')[1] for part in html.split("href=")[1:]]
                assert sources and all(s.startswith("/") for s in sources), sources
            css = await client.get("/docs-assets/swagger-ui.css")
            assert css.status_code == 200 and "text/css" in css.headers["content-type"]

    asyncio.run(go())
