"""``tokenmall events --asyncapi``: the AsyncAPI 3.0 document generated from the event
models validates against the official AsyncAPI 3.0.0 JSON Schema (vendored in
tests/data, never fetched), names every topic and event, its ``$ref``s resolve inside
it, the events on the wire match their payload schemas, and ``contracts.ROUTES`` (its
operations) agrees with the services' subscriptions and emits."""

from __future__ import annotations

import copy
import importlib
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from jsonschema import Draft7Validator, ValidationError
from jsonschema.validators import validator_for
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT7
from typer.testing import CliRunner

from tokenmall import asyncapi, contracts
from tokenmall.cli import app
from tokenmall.servicekit import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json"
SERVICES = ("referrals", "orders", "wallet", "dividends")


def asyncapi_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return schema


def validator(schema: dict[str, Any]) -> Any:
    """The validator the schema's ``$schema`` names (draft-07), with an empty registry:
    a ``$ref`` outside the file cannot be retrieved, it raises (nothing is fetched)."""
    cls = validator_for(schema, default=None)
    assert cls is not None, f"unknown $schema {schema.get('$schema')!r}"
    cls.check_schema(schema)
    return cls(schema, registry=Registry())


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def pointer(doc: Any, ref: str) -> Any:
    """What a local ``#/a/b`` reference points to in ``doc`` (KeyError: nothing)."""
    assert ref.startswith("#/"), f"not a local reference: {ref}"
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return asyncapi.document()


def test_the_vendored_schema_is_asyncapi_3_0_0_and_self_contained() -> None:
    schema = asyncapi_schema()
    assert schema["properties"]["asyncapi"]["const"] == "3.0.0"
    assert "$id" not in schema  # the "without $id" bundle: every definition inside
    # every $ref of the schema itself (not its examples) points into the file
    external = [
        r
        for r in refs({k: v for k, v in schema.items() if k != "examples"})
        if not r.startswith("#")
    ]
    assert set(external) <= {
        # inside examples of the bindings and operations, never followed
        "path/to/user-create.avsc#/UserCreate",
        "/components/messages/userSignedUp",
        "/components/messages/userSignedUpReply",
    }


def test_the_document_validates_against_the_asyncapi_3_schema(doc: dict[str, Any]) -> None:
    errors = sorted(validator(asyncapi_schema()).iter_errors(doc), key=lambda e: e.path)
    assert [f"{list(e.absolute_path)}: {e.message}" for e in errors] == []


@pytest.mark.parametrize(
    "breakage",
    [
        "wrong asyncapi version",
        "channel address not a string",
        "operation action unknown",
        "partitions zero",
        "server without protocol",
        "message with an unknown field",
    ],
)
def test_a_broken_document_fails_validation(doc: dict[str, Any], breakage: str) -> None:
    broken = copy.deepcopy(doc)
    if breakage == "wrong asyncapi version":
        broken["asyncapi"] = "2.6.0"
    elif breakage == "channel address not a string":
        broken["channels"]["orders"]["address"] = 42
    elif breakage == "operation action unknown":
        broken["operations"]["orders-send-orders"]["action"] = "publish"
    elif breakage == "partitions zero":
        broken["channels"]["members"]["bindings"]["kafka"]["partitions"] = 0
    elif breakage == "server without protocol":
        del broken["servers"]["kafka"]["protocol"]
    else:
        broken["components"]["messages"]["OrderPaid"]["topic"] = "tokenmall.orders"
    with pytest.raises(ValidationError):
        validator(asyncapi_schema()).validate(broken)


def test_an_unresolvable_ref_in_the_schema_raises_instead_of_passing() -> None:
    schema = asyncapi_schema()
    schema["properties"]["info"] = {"$ref": "https://asyncapi.com/definitions/3.0.0/info.json"}
    with pytest.raises(Unresolvable):
        validator(schema).validate(asyncapi.document())


def test_every_topic_is_a_channel_and_every_event_a_message(doc: dict[str, Any]) -> None:
    assert list(contracts.ROUTES) == list(contracts.TOPICS)
    channels = doc["channels"]
    assert [c["address"] for c in channels.values()] == list(contracts.TOPICS)
    for topic, channel in zip(contracts.TOPICS, channels.values(), strict=True):
        assert contracts.TOPICS[topic] in channel["description"]
        assert channel["bindings"]["kafka"]["partitions"] == contracts.PARTITIONS
    names = [m.__name__ for m in contracts.EVENT_TYPES]
    messages = doc["components"]["messages"]
    assert list(messages) == names
    for name in names:
        assert messages[name]["payload"] == {"$ref": f"#/components/schemas/{name}"}
    on_channels = {name for c in channels.values() for name in c["messages"]}
    assert on_channels == set(names)  # every event travels on some topic, no other
    day_closed = [t for t, r in contracts.ROUTES.items() if "DayClosed" in r.events]
    assert day_closed == list(contracts.DAY_STAMPED_TOPICS)


def test_operations_send_and_receive_every_topic(doc: dict[str, Any]) -> None:
    operations = doc["operations"]
    for topic, route in contracts.ROUTES.items():
        ref = {"$ref": f"#/channels/{asyncapi.channel_id(topic)}"}
        on = [o for o in operations.values() if o["channel"] == ref]
        senders = [o for o in on if o["action"] == "send"]
        assert len(senders) == 1 and route.producer in senders[0]["summary"]
        receivers = sorted(o["summary"].split()[0] for o in on if o["action"] == "receive")
        assert receivers == sorted(route.consumers)
        for operation in on:  # every message of the channel, as references into it
            assert len(operation["messages"]) == len(route.events)
    assert len(operations) == sum(1 + len(r.consumers) for r in contracts.ROUTES.values())


def test_every_ref_resolves_inside_the_document(doc: dict[str, Any]) -> None:
    found = list(refs(doc))
    assert len(found) > 50
    unresolved = []
    for ref in found:
        try:
            pointer(doc, ref)
        except (KeyError, IndexError, ValueError, AssertionError):
            unresolved.append(ref)
    assert unresolved == []
    assert not any("$defs" in r for r in found)
    # an operation's messages are the messages of its own channel
    for operation in doc["operations"].values():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/")


def test_payloads_are_the_models_json_schemas(doc: dict[str, Any]) -> None:
    """The same schemas ``tokenmall events --json`` prints, only their references moved
    from ``#/$defs/`` to ``#/components/schemas/``."""
    schemas = doc["components"]["schemas"]

    def inline(node: Any, defs: dict[str, Any], prefix: str) -> Any:
        if isinstance(node, dict):
            if set(node) == {"$ref"}:
                return inline(defs[node["$ref"].removeprefix(prefix)], defs, prefix)
            return {k: inline(v, defs, prefix) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [inline(v, defs, prefix) for v in node]
        return node

    for name, schema in contracts.catalogue()["events"].items():
        expected = inline(schema, schema.get("$defs", {}), "#/$defs/")
        assert inline(schemas[name], schemas, "#/components/schemas/") == expected, name


def samples() -> list[contracts.Event]:
    line = contracts.PostingLine(
        asset="cny", debit="external", credit="m:m1", amount=Decimal("1.50"), kind="order"
    )
    return [
        contracts.MemberRegistered(member="m2", sponsor="m1", seq=2),
        contracts.MembersRegistered(members=[contracts.Registration(member="m3", seq=3)]),
        contracts.OrderPaid(order_id="o1", member="m1", amount=Decimal("100.00"), day=1),
        contracts.OrdersPaid(
            orders=[contracts.PaidOrder(order_id="o2", member="m1", amount=Decimal(5))], day=1
        ),
        contracts.OrderRefunded(order_id="o1", member="m1", amount=Decimal("100.00")),
        contracts.WalletRequest(request_id="r1", member="m1", kind="sell", points=Decimal(1)),
        contracts.InputApplied(
            input_id="order:o1",
            member="m1",
            accepted=True,
            postings=[line],
            facts=[{"type": "QuotaGranted", "cents": 300}],
        ),
        contracts.InputsApplied(
            inputs=[contracts.AppliedInput(input_id="order:o2", member="m1", accepted=False)],
            day=1,
        ),
        contracts.ReleaseComputed(
            day=1,
            bucket=0,
            buckets=6,
            asset="cny",
            sources={"base": "pool:base"},
            members=["m1"],
            amounts={"base": [12]},
            partition_key="m1",
        ),
        contracts.DaySettled(
            day=1, released={"base": Decimal("0.12")}, members_released=1, batches=1
        ),
        contracts.DayClosing(day=1),
        contracts.DayClosed(day=1, topic=contracts.ORDERS, partition=0, partitions=6),
        contracts.PlanScheduled(effective_day=2, plan={"preset": "base"}),
        contracts.PlanActivated(day=1, plan={"preset": "base"}),
    ]


def test_events_on_the_wire_match_their_payload_and_key(doc: dict[str, Any]) -> None:
    events = samples()
    assert {type(e) for e in events} == set(contracts.EVENT_TYPES)
    uri = "urn:tokenmall:asyncapi"
    registry: Registry[Any] = Registry().with_resource(uri, DRAFT7.create_resource(doc))
    for event in events:
        name = type(event).__name__
        message = doc["components"]["messages"][name]
        wire = json.loads(contracts.encode(event))
        check = Draft7Validator  # AsyncAPI's Schema Object: a superset of draft-07
        check({"$ref": f"{uri}{message['payload']['$ref']}"}, registry=registry).validate(wire)
        with pytest.raises(ValidationError):  # the payload schema does constrain
            check({"$ref": f"{uri}{message['payload']['$ref']}"}, registry=registry).validate(
                {**wire, "type": "Nonsense"}
            )
        key = message["bindings"]["kafka"]["key"]
        check(key).validate(event.key)
        if "const" not in key:  # a member id: the event's own member (or partition key)
            assert event.key in (
                getattr(event, "member", None),
                getattr(event, "partition_key", None),
            )
    platform = contracts.InputApplied(input_id="plan:1", accepted=True)
    assert platform.key == "platform"
    assert (
        "platform"
        in doc["components"]["messages"]["InputApplied"]["bindings"]["kafka"]["key"]["description"]
    )


def test_the_server_is_the_deployments_bootstrap(doc: dict[str, Any]) -> None:
    server = doc["servers"]["kafka"]
    assert server["protocol"] == "kafka"
    assert server["host"] == "{bootstrap}"
    default = ServiceSettings.model_fields["kafka_bootstrap"].default
    assert server["variables"]["bootstrap"]["default"] == default
    assert "TOKENMALL_TOPIC_PREFIX" in server["description"]
    assert "topic_prefix" in ServiceSettings.model_fields
    assert doc["defaultContentType"] == "application/json"
    assert doc["info"]["version"] == importlib.import_module("tokenmall").__version__


def subscriptions_of(service: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The topics ``service`` subscribes to: its build_app's subscriptions, captured at
    create_app (nothing is started)."""
    module = importlib.import_module(f"tokenmall_{service}.app")
    topics: list[str] = []

    def capture(svc: Any, routers: Any, subscriptions: Any, *args: Any, **kwargs: Any) -> Any:
        topics.extend(s.topic for s in subscriptions)
        return FastAPI()

    monkeypatch.setattr(module, "create_app", capture)
    module.build_app()
    return topics


@pytest.mark.parametrize("service", SERVICES)
def test_routes_are_the_services_subscriptions_and_emits(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumes = {t for t, r in contracts.ROUTES.items() if service in r.consumers}
    assert set(subscriptions_of(service, monkeypatch)) == consumes
    names = {"MEMBERS", "ORDERS", "WALLET_REQUESTS", "DIVIDENDS"}
    emit = re.compile(r"\bemit(?:_many)?\(\s*(?:contracts\.)?([A-Z_]+)\b")
    package = ROOT / "services" / service / f"tokenmall_{service}"
    emitted = {
        getattr(contracts, name)
        for path in package.rglob("*.py")
        for name in emit.findall(path.read_text(encoding="utf-8"))
        if name in names
    }
    assert emitted == {t for t, r in contracts.ROUTES.items() if r.producer == service}


def test_tokenmall_events_asyncapi_prints_the_document() -> None:
    result = CliRunner().invoke(app, ["events", "--asyncapi"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == asyncapi.document()
