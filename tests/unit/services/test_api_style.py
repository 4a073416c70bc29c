"""The platform's API style (tokenmall.api_style, README "API style"), checked over every
service's OpenAPI document: money as decimal strings, one page shape for every list,
ISO-8601 timestamps, a typed response on every route.

The checker is tested on small documents too, so that it can fail."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.services.test_bad_input import build
from tokenmall.api_style import MAX_LIMIT
from tokenmall.testing import MemoryPublisher

SERVICES = ("orders", "wallet", "dividends", "referrals")

# integers are counts: days, positions, sizes, weights — never an amount
COUNT = re.compile(
    r"^(day|days|total|offset|limit|seq|id|attempts|shares|contribution|star|code|depth|"
    r"members_released|forced_exits|accepted|existing|refused|created|parked_inputs|"
    r"batches|bucket|buckets|chunk|chunks|partition|partitions|after_seq|attempt|delivery_id|"
    r"parked_id|pid|parked|progress|outbox_backlog|consumer_lag|[a-z_]+_count|[a-z_]+_code|[a-z_]+_ms|[a-z_]+_day)$"
)
# what a field holding money, points or a rate is called
MONEY = re.compile(
    r"(amount|balance|quota|stable|cny|equity|points|units|price|rate|pool|spend|"
    r"performance|released|retained|rounding|sales|paid|refunded|cash|minted|"
    r"circulating|treasury|total_value|available|held)"
)
PAGE_KEYS = {"items", "total", "offset", "limit"}
# free-form objects a response may hold, and why they are not modelled field by field
FREE_FORM = {
    "plan": "the plan document (RULES.md): validated on input by the engine's plan parser",
    "current": "the plan document in force",
    "pending": "the plan document taking effect next",
    "payload": "an input as applied: its kind's event fields (tokenmall events)",
}


def documents(tmp_path: Path) -> dict[str, dict[str, Any]]:
    docs = {}
    for name in SERVICES:
        folder = tmp_path / name
        folder.mkdir()
        docs[name] = build(name, folder, MemoryPublisher()).openapi()
    return docs


class Checker:
    """Walks one OpenAPI document; ``problems`` lists every break of the style."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.schemas: dict[str, Any] = doc.get("components", {}).get("schemas", {})
        self.problems: list[str] = []

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.schemas[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def variants(self, schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The schema, or each member of its anyOf/oneOf, resolved (null dropped)."""
        schema = self.resolve(schema)
        members = schema.get("anyOf") or schema.get("oneOf")
        if members:
            for member in members:
                yield from self.variants(member)
        elif schema.get("type") != "null":
            yield schema

    def field(self, where: str, name: str, schema: dict[str, Any], seen: set[str]) -> None:
        for variant in self.variants(schema):
            kind = variant.get("type")
            if kind == "number":
                self.problems.append(f"{where}.{name}: a JSON number (use a decimal string)")
            if kind == "integer" and not COUNT.match(name):
                self.problems.append(f"{where}.{name}: an integer that is not a count")
            if (
                MONEY.search(name)
                and not COUNT.match(name)
                and kind not in ("string", "object", "array", "boolean")
            ):
                self.problems.append(f"{where}.{name}: money as {kind} (a decimal string)")
            if name.endswith("_at") and (kind, variant.get("format")) != ("string", "date-time"):
                self.problems.append(f"{where}.{name}: a timestamp that is not date-time")
            self.walk(f"{where}.{name}", variant, seen, name)

    def walk(self, where: str, schema: dict[str, Any], seen: set[str], name: str = "") -> None:
        ref = schema.get("$ref")
        if ref:
            if ref in seen:
                return
            seen = seen | {ref}
        for variant in self.variants(schema):
            kind = variant.get("type")
            props = variant.get("properties")
            if kind == "object" or props is not None:
                extra = variant.get("additionalProperties")
                if props is None and not isinstance(extra, dict) and name not in FREE_FORM:
                    self.problems.append(f"{where}: an untyped object")
                for prop, sub in (props or {}).items():
                    self.field(where, prop, sub, seen)
                if isinstance(extra, dict) and extra:
                    self.field(where, f"{name or '*'}[*]", extra, seen)
            elif kind == "array":
                self.walk(f"{where}[]", variant.get("items", {}), seen, name)
            elif kind is None and name not in FREE_FORM:
                self.problems.append(f"{where}: an untyped value")

    def lists(self, where: str, schema: dict[str, Any], seen: set[str]) -> None:
        """Every array in a read is a page's items or bounded (maxItems)."""
        ref = schema.get("$ref")
        if ref in seen:
            return
        seen = seen | ({ref} if ref else set())
        for variant in self.variants(schema):
            if variant.get("type") == "array":
                if "maxItems" not in variant:
                    self.problems.append(f"{where}: an unbounded list outside a page")
                self.lists(f"{where}[]", variant.get("items", {}), seen)
                continue
            props = variant.get("properties") or {}
            page = set(props) == PAGE_KEYS
            for prop, sub in props.items():
                if page and prop == "items":
                    for items in self.variants(sub):
                        self.lists(f"{where}.items[]", items.get("items", {}), seen)
                    continue
                self.lists(f"{where}.{prop}", sub, seen)
            extra = variant.get("additionalProperties")
            if isinstance(extra, dict):
                self.lists(f"{where}[*]", extra, seen)

    def check(self) -> list[str]:
        for path, operations in self.doc["paths"].items():
            for method, op in operations.items():
                where = f"{method.upper()} {path}"
                self.operation(where, method, path, op)
        return self.problems

    def operation(self, where: str, method: str, path: str, op: dict[str, Any]) -> None:
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        if body:
            self.walk(f"{where} body", body["schema"], set())
        for param in op.get("parameters", []):
            self.field(f"{where} {param['in']}", param["name"], param["schema"], set())
        responses = op.get("responses", {})
        for status, response in responses.items():
            content = response.get("content", {})
            if status.startswith(("4", "5")):
                ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
                if not ref.endswith("/ErrorBody"):
                    self.problems.append(f"{where} {status}: not the error body")
                continue
            if status == "204" or "text/plain" in content:
                continue
            schema = content.get("application/json", {}).get("schema")
            if not schema:
                self.problems.append(f"{where} {status}: no response model")
                continue
            self.walk(f"{where} {status}", schema, set())
            if method == "get":
                self.lists(f"{where} {status}", schema, set())
                if self.is_page(schema):
                    self.paged(where, op)

    def is_page(self, schema: dict[str, Any]) -> bool:
        return set(self.resolve(schema).get("properties", {})) == PAGE_KEYS

    def paged(self, where: str, op: dict[str, Any]) -> None:
        params = {p["name"]: p["schema"] for p in op.get("parameters", []) if p["in"] == "query"}
        for name in ("offset", "limit"):
            if name not in params:
                self.problems.append(f"{where}: a page without ?{name}=")
        if params.get("limit", {}).get("maximum") != MAX_LIMIT:
            self.problems.append(f"{where}: limit not capped at {MAX_LIMIT}")


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return documents(tmp_path_factory.mktemp("openapi"))


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_speaks_the_api_style(docs: dict[str, dict[str, Any]], service: str) -> None:
    problems = Checker(docs[service]).check()
    assert problems == [], "\n".join(problems)


def _doc(schemas: dict[str, Any], response: dict[str, Any], **op: Any) -> dict[str, Any]:
    content = {"application/json": {"schema": response}}
    return {
        "paths": {"/v1/x": {"get": {"responses": {"200": {"content": content}}, **op}}},
        "components": {"schemas": schemas},
    }


def _page(items: dict[str, Any]) -> dict[str, Any]:
    count = {"type": "integer"}
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": items},
            "total": count,
            "offset": count,
            "limit": count,
        },
    }


PAGED = {
    "parameters": [
        {"name": "offset", "in": "query", "schema": {"type": "integer"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": MAX_LIMIT}},
    ]
}


@pytest.mark.parametrize(
    ("schemas", "response", "op", "problem"),
    [
        (
            {"O": {"properties": {"amount": {"type": "number"}}}},
            {"$ref": "#/components/schemas/O"},
            {},
            "JSON number",
        ),
        (
            {"O": {"properties": {"quota": {"type": "integer"}}}},
            {"$ref": "#/components/schemas/O"},
            {},
            "not a count",
        ),
        ({}, {"type": "array", "items": {"type": "string"}}, {}, "unbounded list"),
        (
            {},
            {
                "type": "object",
                "properties": {"members": {"type": "array", "items": {"type": "string"}}},
            },
            {},
            "unbounded list",
        ),
        ({}, _page({"type": "string"}), {}, "without ?offset="),
        ({}, {"type": "object"}, {}, "untyped object"),
        ({}, {}, {}, "no response model"),
        ({}, {"type": "object", "properties": {"paid_at": {"type": "string"}}}, {}, "timestamp"),
        ({}, {"type": "object", "additionalProperties": {"type": "integer"}}, {}, "not a count"),
    ],
)
def test_the_checker_finds_each_break_of_the_style(
    schemas: dict[str, Any], response: dict[str, Any], op: dict[str, Any], problem: str
) -> None:
    problems = Checker(_doc(schemas, response, **op)).check()
    assert any(problem in p for p in problems), problems


def test_the_checker_passes_a_page_of_decimal_strings() -> None:
    item = {
        "type": "object",
        "properties": {
            "amount": {"type": "string", "pattern": "^[0-9]+$"},
            "day": {"type": "integer"},
            "paid_at": {"type": "string", "format": "date-time"},
        },
    }
    assert Checker(_doc({}, _page(item), **PAGED)).check() == []
