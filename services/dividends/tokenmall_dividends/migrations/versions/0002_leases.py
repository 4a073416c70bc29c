"""leases: the shared ``leases`` table of tokenmall.messaging (who may act alone, until when)

One process at a time holds a lease: the outbox relay of every service, the dividends
engine.  For a few minutes (7514e8f) revision 0001 created this table itself; a database
migrated then already has it and only gets the revision number here.

Revision ID: 0002
Revises: '0001'
Create Date: 2026-12-02 05:32:48.583613
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("leases"):
        return
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("fence", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("leases")
