"""Webhook endpoints, their subscriptions, deliveries and every attempt (one schema for
any service that hosts webhooks: ``define(metadata)``, as the messaging tables)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from tokenmall.messaging.tables import SEQUENCE_ID


@dataclass(frozen=True)
class WebhookTables:
    endpoints: Table
    subscriptions: Table
    deliveries: Table
    attempts: Table


def define(metadata: MetaData) -> WebhookTables:
    endpoints = Table(
        "webhook_endpoints",
        metadata,
        Column("id", String(40), primary_key=True),  # "wh_" + 24 hex
        Column("url", Text, nullable=False),
        Column("description", Text, nullable=True),
        # the signing key: shown once, when the endpoint is registered; kept to sign
        Column("secret", String(100), nullable=False),
        Column("active", Boolean, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("deleted_at", DateTime(timezone=True), nullable=True),
    )
    subscriptions = Table(
        "webhook_subscriptions",
        metadata,
        Column("endpoint_id", String(40), nullable=False),
        Column("kind", String(64), nullable=False),
        PrimaryKeyConstraint("endpoint_id", "kind", name="webhook_subscriptions_pk"),
    )
    Index("webhook_subscriptions_kind", subscriptions.c.kind)
    deliveries = Table(
        "webhook_deliveries",
        metadata,
        Column("id", SEQUENCE_ID, primary_key=True, autoincrement=True),
        Column("endpoint_id", String(40), nullable=False),
        Column("event_id", String(64), nullable=False),  # the receiver dedups by it
        Column("kind", String(64), nullable=False),
        Column("payload", Text, nullable=False),  # the exact body every attempt sends
        # pending (due at next_try_at) | delivered | failed (gave up) | cancelled
        Column("status", String(16), nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("next_try_at", DateTime(timezone=True), nullable=False),
        # retries go on until retry_from + the retry window (a redelivery restarts it)
        Column("retry_from", DateTime(timezone=True), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("delivered_at", DateTime(timezone=True), nullable=True),
        Column("last_status_code", Integer, nullable=True),
        Column("last_error", Text, nullable=True),
        # the dispatcher that took it (a second process takes only what nobody holds)
        Column("claim", String(40), nullable=True),
        UniqueConstraint("endpoint_id", "event_id", name="webhook_deliveries_once"),
    )
    Index("webhook_deliveries_due", deliveries.c.status, deliveries.c.next_try_at)
    Index("webhook_deliveries_endpoint", deliveries.c.endpoint_id, deliveries.c.id)
    attempts = Table(
        "webhook_attempts",
        metadata,
        Column("id", SEQUENCE_ID, primary_key=True, autoincrement=True),
        Column("delivery_id", SEQUENCE_ID, nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("status_code", Integer, nullable=True),  # null: no answer (refused, timeout)
        Column("error", Text, nullable=True),
        Column("duration_ms", Integer, nullable=False),
    )
    Index("webhook_attempts_delivery", attempts.c.delivery_id, attempts.c.id)
    return WebhookTables(endpoints, subscriptions, deliveries, attempts)
