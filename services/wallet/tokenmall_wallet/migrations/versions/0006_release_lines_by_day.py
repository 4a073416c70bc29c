"""release_lines_day: an index on release_lines (day, member, asset)

A business day's release lines for all members (``GET /v1/days/{day}/releases``, the
page a "day settled" webhook links to), by member then asset, are an index range
scan; the primary key starts with the member and serves one member's statement.

Revision ID: 0006
Revises: '0005'
Create Date: 2026-12-06 10:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("release_lines_day", "release_lines", ["day", "member", "asset"])


def downgrade() -> None:
    op.drop_index("release_lines_day", table_name="release_lines")
