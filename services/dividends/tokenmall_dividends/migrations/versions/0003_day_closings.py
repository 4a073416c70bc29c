"""day boundaries: settlement waits for the producers' day markers

``day_closings`` (requested settlements), ``day_markers`` (DayClosed per topic and
partition), the rest of a settlement's report, and ``outbox.partition``.

Revision ID: 0003
Revises: '0002'
Create Date: 2026-12-02 11:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # the day markers go to one named partition each
    op.add_column("outbox", sa.Column("partition", sa.Integer(), nullable=True))
    op.add_column("settlements", sa.Column("retained_cents", sa.BigInteger(), nullable=True))
    op.add_column("settlements", sa.Column("rounding_cents", sa.BigInteger(), nullable=True))
    op.add_column("settlements", sa.Column("forced_exits", sa.Integer(), nullable=True))
    op.create_table(
        "day_closings",
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("day"),
    )
    op.create_table(
        "day_markers",
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(length=200), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("partitions", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", "topic", "partition"),
    )


def downgrade() -> None:
    op.drop_table("day_markers")
    op.drop_table("day_closings")
    op.drop_column("settlements", "forced_exits")
    op.drop_column("settlements", "rounding_cents")
    op.drop_column("settlements", "retained_cents")
    op.drop_column("outbox", "partition")
