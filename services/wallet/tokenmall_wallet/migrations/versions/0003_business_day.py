"""day boundaries: the business day requests are stamped with

``business_day`` (one row, locked while a request is stamped), ``requests.day`` and
``outbox.partition`` (the DayClosed markers, one per partition).

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
    business_day = op.create_table(
        "business_day",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # the row the stamps lock (a platform upgraded mid-run stamps day 1 until the next
    # DayClosing or DaySettled moves it to the engine's day; until then its inputs count
    # in the engine's current day, as before, and as late inputs)
    op.bulk_insert(business_day, [{"id": 1, "day": 1, "closed_at": None}])
    op.add_column("requests", sa.Column("day", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("requests", "day")
    op.drop_table("business_day")
    op.drop_column("outbox", "partition")
