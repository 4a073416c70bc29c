"""initial schema: members (the sponsor tree), member orders, plan; outbox, inbox, parked

The tables, and the sequence ``member_registration_seq`` on PostgreSQL, as
``metadata.create_all`` made them before migrations existed.

Revision ID: 0001
Revises: None
Create Date: 2026-12-02 05:06:10.046823
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# registration order on PostgreSQL (SQLite has no sequences: max(seq) + 1 there)
MEMBER_SEQ = sa.Sequence("member_registration_seq", start=1)


def upgrade() -> None:
    if op.get_bind().dialect.supports_sequences:
        op.execute(sa.schema.CreateSequence(MEMBER_SEQ))
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(length=100), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id"),
    )
    op.create_table(
        "members",
        sa.Column("member", sa.String(length=65), nullable=False),
        sa.Column("sponsor", sa.String(length=65), nullable=True),
        sa.Column("merchant", sa.Boolean(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("spend_cents", sa.BigInteger(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["sponsor"],
            ["members.member"],
        ),
        sa.PrimaryKeyConstraint("member"),
        sa.UniqueConstraint("seq"),
    )
    op.create_index("members_sponsor", "members", ["sponsor", "seq"], unique=False)
    op.create_table(
        "outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("topic", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("outbox_unpublished", "outbox", ["published_at", "id"], unique=False)
    op.create_table(
        "parked",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("consumer", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("waiting_for", sa.String(length=300), nullable=False),
        sa.Column("topic", sa.String(length=200), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("parked_due", "parked", ["next_try_at"], unique=False)
    op.create_index("parked_key", "parked", ["consumer", "key", "id"], unique=False)
    op.create_index("parked_waiting", "parked", ["waiting_for"], unique=False)
    op.create_table(
        "plan_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("plan", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "member_orders",
        sa.Column("order_id", sa.String(length=200), nullable=False),
        sa.Column("member", sa.String(length=65), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("refunded", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["member"],
            ["members.member"],
        ),
        sa.PrimaryKeyConstraint("order_id"),
    )


def downgrade() -> None:
    op.drop_table("member_orders")
    op.drop_table("plan_state")
    op.drop_index("parked_waiting", table_name="parked")
    op.drop_index("parked_key", table_name="parked")
    op.drop_index("parked_due", table_name="parked")
    op.drop_table("parked")
    op.drop_index("outbox_unpublished", table_name="outbox")
    op.drop_table("outbox")
    op.drop_index("members_sponsor", table_name="members")
    op.drop_table("members")
    op.drop_table("inbox")
    if op.get_bind().dialect.supports_sequences:
        op.execute(sa.schema.DropSequence(MEMBER_SEQ))
