"""parked.day: the business day a parked event counts in

A settlement waits for the parked inputs of its day; with the day in its own indexed
column that is a count, not a decoding of every parked body.  Rows parked before this
revision get the day their body carries.

Revision ID: 0004
Revises: '0003'
Create Date: 2026-12-02 14:40:00.000000
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("parked", sa.Column("day", sa.Integer(), nullable=True))
    op.create_index("parked_day", "parked", ["day", "consumer"])
    parked = sa.table("parked", sa.column("id"), sa.column("body"), sa.column("day"))
    connection = op.get_bind()
    for row in connection.execute(sa.select(parked.c.id, parked.c.body)).all():
        try:
            day = json.loads(row.body).get("day")
        except (ValueError, AttributeError):
            continue  # unreadable: it carries no day
        if isinstance(day, int):
            connection.execute(parked.update().where(parked.c.id == row.id).values(day=day))


def downgrade() -> None:
    op.drop_index("parked_day", table_name="parked")
    op.drop_column("parked", "day")
