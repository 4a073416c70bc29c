"""The dividends database: the engine's input log, snapshots and settlement runs.

The engine's state lives in memory; it is durable as (latest snapshot + the inputs
logged after it), both written in the same transaction as the events they caused.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from tokenmall import webhooks
from tokenmall.messaging import define
from tokenmall.messaging.tables import SEQUENCE_ID

metadata = MetaData()
messaging = define(metadata)
# dividends hosts the platform's webhooks: the engine's verdicts, decisions and
# settlements are the events an exchange or a mall subscribes to
webhook_tables = webhooks.define(metadata)

inputs = Table(
    "inputs",
    metadata,
    Column("seq", SEQUENCE_ID, primary_key=True, autoincrement=True),
    Column("input_id", String(200), nullable=False, unique=True),
    Column("kind", String(40), nullable=False),
    Column("payload", Text, nullable=False),  # JSON: the arguments of the engine call
    Column("day", Integer, nullable=False),
    Column("accepted", Boolean, nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("seq", SEQUENCE_ID, primary_key=True),  # the last input the snapshot includes
    Column("day", Integer, nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

settlements = Table(
    "settlements",
    metadata,
    Column("day", Integer, primary_key=True),
    Column("members_released", Integer, nullable=False),
    Column("released", Text, nullable=False),  # JSON {kind: decimal}
    Column("seconds", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retained_cents", BigInteger, nullable=True),  # null: settled before 0003
    Column("rounding_cents", BigInteger, nullable=True),
    Column("forced_exits", Integer, nullable=True),
)

# Day boundaries (service_layer/closing.py): a requested settlement waits for the
# producers' DayClosed markers (one per partition of each day-stamped topic) and for
# every parked input of the day.
day_closings = Table(
    "day_closings",
    metadata,
    Column("day", Integer, primary_key=True),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    # settled without waiting for the watermark (an operator's choice): inputs of the day
    # still on their way count in the next day
    Column("forced", Boolean, nullable=False, default=False),
    Column("settled_at", DateTime(timezone=True), nullable=True),
)

day_markers = Table(
    "day_markers",
    metadata,
    Column("day", Integer, primary_key=True),
    Column("topic", String(200), primary_key=True),  # logical topic
    Column("partition", Integer, primary_key=True),
    Column("partitions", Integer, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)
