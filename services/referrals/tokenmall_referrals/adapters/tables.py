"""The referrals schema: SQLAlchemy Core tables on one MetaData, plus the outbox/inbox.

Money is stored as integer cents (``BigInteger``), never as SQLite NUMERIC.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Sequence,
    String,
    Table,
    Text,
    text,
)

from tokenmall import messaging
from tokenmall.ids import MEMBER_ID_MAX_LENGTH

MEMBER_ID_LENGTH = MEMBER_ID_MAX_LENGTH  # "+" and 64 characters (tokenmall.ids)
PLAN_ROW_ID = 1  # plan_state holds a single row

metadata = MetaData()

# Registration order on PostgreSQL: a sequence never hands one number out twice, whatever
# the concurrency (a rolled-back registration leaves a gap, which is allowed).  SQLite has
# no sequences, but it runs one writer at a time, so ``max(seq) + 1`` inside the INSERT is
# atomic there.
member_seq = Sequence("member_registration_seq", metadata=metadata, start=1)

members = Table(
    "members",
    metadata,
    Column("member", String(MEMBER_ID_LENGTH), primary_key=True),  # phone number / account id
    Column("sponsor", String(MEMBER_ID_LENGTH), ForeignKey("members.member"), nullable=True),
    Column("merchant", Boolean, nullable=False, default=False),
    Column("seq", BigInteger, nullable=False, unique=True),  # registration order, from 1
    Column("depth", Integer, nullable=False),  # 0 for a member without a sponsor
    Column("spend_cents", BigInteger, nullable=False, default=0),  # net of refunds
    Column("registered_at", DateTime(timezone=True), nullable=False),
    # team performance (RULES §1): the spend of everyone below, at any depth, excluding the
    # member; kept current by the order handlers, so that reading one member reads one
    # row.  Last, with a server default, as revision 0005 added it to existing rows.
    Column("team_cents", BigInteger, nullable=False, default=0, server_default=text("0")),
)
Index("members_sponsor", members.c.sponsor, members.c.seq)

member_orders = Table(
    "member_orders",
    metadata,
    Column("order_id", String(200), primary_key=True),
    Column("member", String(MEMBER_ID_LENGTH), ForeignKey("members.member"), nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("refunded", Boolean, nullable=False, default=False),
)

plan_state = Table(
    "plan_state",
    metadata,
    Column("id", Integer, primary_key=True),  # always PLAN_ROW_ID
    Column("day", Integer, nullable=False),
    Column("plan", Text, nullable=False),  # JSON of the plan in force (merged mapping)
)

messaging_tables = messaging.define(metadata)
