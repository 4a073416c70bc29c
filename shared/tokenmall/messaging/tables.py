"""Outbox and inbox row shapes (../shared/notes/kafka-and-postgres.md)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

# A monotonically increasing id: bigserial on PostgreSQL, INTEGER PRIMARY KEY
# (the rowid) on SQLite, so the relay publishes in commit order per service.
SEQUENCE_ID = BigInteger().with_variant(Integer(), "sqlite")


@dataclass(frozen=True)
class MessagingTables:
    outbox: Table
    inbox: Table
    parked: Table
    leases: Table


def define(metadata: MetaData) -> MessagingTables:
    outbox = Table(
        "outbox",
        metadata,
        Column("id", SEQUENCE_ID, primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("topic", String(200), nullable=False),
        Column("key", String(200), nullable=False),
        Column("event_type", String(100), nullable=False),
        Column("payload", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("published_at", DateTime(timezone=True), nullable=True),
        # null: the key picks the partition; set: this partition (the day markers, one
        # on each partition of a topic)
        Column("partition", Integer, nullable=True),
    )
    Index("outbox_unpublished", outbox.c.published_at, outbox.c.id)
    inbox = Table(
        "inbox",
        metadata,
        Column("consumer", String(100), primary_key=True),
        Column("event_id", String(64), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False),
    )
    # Events that arrived before what they depend on (a referral before its sponsor, an
    # order before its member): kept here, in the same transaction as their inbox row,
    # and applied the moment the dependency arrives (tokenmall.messaging.parking).
    parked = Table(
        "parked",
        metadata,
        Column("id", SEQUENCE_ID, primary_key=True, autoincrement=True),
        Column("consumer", String(100), nullable=False),
        Column("key", String(200), nullable=False),  # the Kafka key: per-key order is kept
        Column("waiting_for", String(300), nullable=False),  # e.g. "member:A", "order:o-1"
        Column("topic", String(200), nullable=False),
        Column("event_id", String(64), nullable=False),
        Column("event_type", String(100), nullable=False),
        Column("body", Text, nullable=False),  # the message as received
        Column("parked_at", DateTime(timezone=True), nullable=False),
        Column("attempts", Integer, nullable=False, default=0),
        Column("next_try_at", DateTime(timezone=True), nullable=False),
        Column("last_error", Text, nullable=True),
        # the business day the event counts in, when it carries one: a settlement waits
        # for the parked inputs of its day (an indexed count, not a scan of the bodies)
        Column("day", Integer, nullable=True),
    )
    Index("parked_waiting", parked.c.waiting_for)
    Index("parked_day", parked.c.day, parked.c.consumer)
    Index("parked_key", parked.c.consumer, parked.c.key, parked.c.id)
    Index("parked_due", parked.c.next_try_at)
    # One row per lease (tokenmall.messaging.lease): who may act alone, until when.
    leases = Table(
        "leases",
        metadata,
        Column("name", String(100), primary_key=True),
        Column("holder", String(200), nullable=False),
        Column("fence", BigInteger, nullable=False),  # +1 at every takeover
        Column("expires_at", DateTime(timezone=True), nullable=False),
    )
    return MessagingTables(outbox, inbox, parked, leases)
