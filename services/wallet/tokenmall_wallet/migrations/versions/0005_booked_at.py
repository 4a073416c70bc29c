"""journal.booked_at, journal.day, release_lines.booked_at, requests.decided_at: when
and on which business day each entry was booked (the statement shows both), and when a
request was decided.

The database's clock fills ``booked_at`` (a server default), so the bulk paths (COPY,
``unnest``) need not carry it.  Rows booked before this revision keep it null: when
they were booked is not known.  ``journal.day`` is the day of the event that moved it.

SQLite cannot add a column whose default is ``CURRENT_TIMESTAMP``: it copies the
table instead (batch mode, ``recreate="always"``).

Revision ID: 0005
Revises: '0004'
Create Date: 2026-12-04 18:20:00.000000
"""

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("CURRENT_TIMESTAMP")


def _recreate() -> Literal["auto", "always"]:
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    with op.batch_alter_table("journal", recreate=_recreate()) as journal:
        journal.add_column(sa.Column("day", sa.Integer(), nullable=True))
        journal.add_column(sa.Column("booked_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("release_lines", recreate=_recreate()) as lines:
        lines.add_column(sa.Column("booked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("requests", sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True))
    # the default only from now on: the rows above stay null
    for table in ("journal", "release_lines"):
        with op.batch_alter_table(table, recreate=_recreate()) as batch:
            batch.alter_column("booked_at", server_default=NOW)


def downgrade() -> None:
    op.drop_column("requests", "decided_at")
    with op.batch_alter_table("release_lines", recreate=_recreate()) as lines:
        lines.drop_column("booked_at")
    with op.batch_alter_table("journal", recreate=_recreate()) as journal:
        journal.drop_column("booked_at")
        journal.drop_column("day")
