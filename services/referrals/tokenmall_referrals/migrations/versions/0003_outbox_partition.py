"""outbox.partition: day markers on a named partition

The outbox of every service can address one partition (tokenmall.business_day).

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


def downgrade() -> None:
    op.drop_column("outbox", "partition")
