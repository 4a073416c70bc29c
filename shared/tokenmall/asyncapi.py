"""The AsyncAPI 3.0 document of every topic and event, generated from the pydantic models
in :mod:`tokenmall.contracts` (printed by ``tokenmall events --asyncapi``).

One channel per topic (its logical name, as ``TOPICS`` has it), one message per event
type whose payload is the model's JSON Schema (serialisation mode: what goes on the wire,
the envelope included), the schemas under ``components.schemas``, and per topic a
``send`` operation of the service publishing it and a ``receive`` operation of each
service consuming it (``contracts.ROUTES``).
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from tokenmall import __version__, contracts
from tokenmall.contracts import Event

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
SERVER = "kafka"
# ServiceSettings.kafka_bootstrap's default (the test holds them equal)
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
SCHEMAS = "#/components/schemas/"

# the batch events: every one on one constant key, so batches keep their order
_BATCH_KEYS: dict[type[Event], tuple[str, str]] = {
    contracts.MembersRegistered: (contracts.REGISTRATIONS_KEY, "registered"),
    contracts.OrdersPaid: (contracts.ORDER_BATCHES_KEY, "paid"),
    contracts.InputsApplied: (contracts.INPUT_BATCHES_KEY, "applied"),
}


def channel_id(topic: str) -> str:
    """``tokenmall.wallet-requests`` -> ``wallet-requests``."""
    return topic.removeprefix("tokenmall.")


def key_schema(model: type[Event]) -> dict[str, Any]:
    """The Kafka key of ``model``'s messages (what ``Event.key`` gives), as a schema."""
    if model in _BATCH_KEYS:
        key, done = _BATCH_KEYS[model]
        return {
            "type": "string",
            "const": key,
            "description": f"`{key}` for every batch: batches arrive in the order they were "
            f"{done} in",
        }
    if model is contracts.ReleaseComputed:
        return {
            "type": "string",
            "description": "`partition_key`: a member of the partition bucket, so the batch "
            "lands on that bucket's partition",
        }
    member = model.model_fields.get("member")
    if member is not None and member.is_required():
        return {
            "type": "string",
            "description": "the member id (`member`): one member's events stay ordered",
        }
    if member is not None:
        return {
            "type": "string",
            "description": "the member id (`member`), or `platform` when it concerns no member",
        }
    pinned = (
        "; published to its `partition` explicitly (one marker on every partition)"
        if model is contracts.DayClosed
        else ""
    )
    return {"type": "string", "const": "platform", "description": f"`platform`{pinned}"}


def _schemas() -> dict[str, Any]:
    """Every event's JSON Schema and the models they use, their ``$ref``s pointing into
    ``components.schemas`` (one generation: shared models have one name and schema)."""
    _, top = models_json_schema(
        [(model, "serialization") for model in contracts.EVENT_TYPES],
        ref_template=SCHEMAS + "{model}",
    )
    schemas: dict[str, Any] = top["$defs"]
    return schemas


def _message(model: type[Event], schema: dict[str, Any]) -> dict[str, Any]:
    name = model.__name__
    message: dict[str, Any] = {
        "name": name,
        "title": name,
        "payload": {"$ref": SCHEMAS + name},
        "bindings": {"kafka": {"key": key_schema(model), "bindingVersion": KAFKA_BINDING_VERSION}},
    }
    if "description" in schema:
        message["summary"] = schema["description"].split("\n\n")[0].replace("\n", " ")
    return message


def _channel(topic: str, flow: str, route: contracts.Route) -> dict[str, Any]:
    dlq = contracts.dead_letter_topic(topic)
    return {
        "address": topic,
        "title": topic,
        "description": f"{flow}.  Dead letters go to `{dlq}` (the original bytes, headers "
        "`reason` and `consumer`).",
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in route.events},
        "bindings": {
            "kafka": {"partitions": contracts.PARTITIONS, "bindingVersion": KAFKA_BINDING_VERSION}
        },
    }


def _operations(topic: str, route: contracts.Route) -> dict[str, Any]:
    channel = channel_id(topic)
    messages = [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in route.events]
    operations: dict[str, Any] = {
        f"{route.producer}-send-{channel}": {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"{route.producer} publishes on {topic} (its outbox relay)",
            "messages": messages,
        }
    }
    for consumer in route.consumers:
        operations[f"{consumer}-receive-{channel}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"{consumer} consumes {topic}",
            "messages": messages,
        }
    return operations


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the platform's topics and events."""
    schemas = _schemas()
    by_name = {model.__name__: model for model in contracts.EVENT_TYPES}
    operations: dict[str, Any] = {}
    for topic, route in contracts.ROUTES.items():
        operations.update(_operations(topic, route))
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "tokenmall events",
            "version": __version__,
            "description": "The events between tokenmall's services (referrals, orders, "
            "wallet, dividends) on Apache Kafka, generated from the pydantic models in "
            "`tokenmall.contracts` (event `schema_version` "
            f"{contracts.SCHEMA_VERSION}).  Every event is a JSON object with the "
            "envelope `type`, `event_id`, `causation_id`, `producer`, `schema_version` and "
            "`occurred_at`; amounts are exact decimal strings.  Each service publishes "
            "through its transactional outbox and consumes with an inbox of processed "
            "event ids (at-least-once delivery, applied once).",
        },
        "servers": {
            SERVER: {
                "host": "{bootstrap}",
                "protocol": "kafka",
                "description": "The deployment's Kafka cluster (`TOKENMALL_KAFKA_BOOTSTRAP`). "
                "The channel addresses are the logical topic names: on the broker every "
                "topic and consumer group name is prefixed with the deployment's "
                "`TOKENMALL_TOPIC_PREFIX` (empty by default); consumer groups are "
                "`<prefix>tokenmall-<consumer>`.",
                "variables": {
                    "bootstrap": {
                        "default": DEFAULT_BOOTSTRAP,
                        "description": "bootstrap servers (`TOKENMALL_KAFKA_BOOTSTRAP`)",
                    }
                },
            }
        },
        "defaultContentType": "application/json",
        "channels": {
            channel_id(topic): _channel(topic, contracts.TOPICS[topic], route)
            for topic, route in contracts.ROUTES.items()
        },
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": {name: _message(model, schemas[name]) for name, model in by_name.items()},
        },
    }
