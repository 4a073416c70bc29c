"""The orders service's schema: its own tables plus the shared outbox and inbox.

Money is stored as integer cents (``BigInteger``), never as SQLite ``NUMERIC``.
"""

from __future__ import annotations

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

from tokenmall import business_day, messaging
from tokenmall.ids import ID_MAX_LENGTH

metadata = MetaData()

# Read model of the registered members, filled from MemberRegistered (tokenmall.members).
members = Table(
    "members",
    metadata,
    Column("member", String(200), primary_key=True),
)

orders = Table(
    "orders",
    metadata,
    Column("order_id", String(ID_MAX_LENGTH), primary_key=True),
    Column("member", String(200), nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("stable_cents", BigInteger, nullable=False),
    # created → pending (paid, OrderPaid published) → paid | refused (the engine's verdict,
    # InputApplied) ; paid → refunded
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("paid_at", DateTime(timezone=True), nullable=True),
    Column("refunded_at", DateTime(timezone=True), nullable=True),
    Column("decided_at", DateTime(timezone=True), nullable=True),  # the engine's verdict
    Column("reason", Text, nullable=True),  # why the engine refused it
    # the business day it counts in: stamped when paid (tokenmall.business_day), moved on
    # by the verdict only if it reached the engine after its day was settled by force
    Column("day", Integer, nullable=True),
)
Index("orders_member", orders.c.member, orders.c.created_at)
Index("orders_status", orders.c.status, orders.c.amount_cents)

# Responses to requests that carried an Idempotency-Key header (successful ones only:
# a refused request changed nothing, so repeating it runs it again).
idempotency = Table(
    "idempotency",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("method", String(10), nullable=False),
    Column("path", String(500), nullable=False),
    Column("fingerprint", String(64), nullable=False),  # sha256 of the request's content
    Column("status_code", Integer, nullable=False),
    Column("response", Text, nullable=False),  # the JSON body answered
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# The business day orders are stamped with (closed by DayClosing, see tokenmall.business_day).
business_days = business_day.define(metadata)

messaging_tables = messaging.define(metadata)
