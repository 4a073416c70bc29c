"""members.team_cents: team performance kept on each member's row

Reading one member used to sum the spend of the whole forest; the order handlers now
keep each member's team performance (the spend of everyone below, excluding the
member) current as spends move.  Rows from before this revision get theirs computed
here, once.

Revision ID: 0005
Revises: '0004'
Create Date: 2026-12-03 10:00:00.000000
"""

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPDATE_CHUNK = 10_000  # rows per executemany: bounded memory on the driver's side


def upgrade() -> None:
    op.add_column(
        "members",
        sa.Column("team_cents", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    _backfill_team_cents()


def _backfill_team_cents() -> None:
    """Each member's subtree sum, bottom-up in one pass over the rows, deepest first (a
    member is one level below their sponsor): linear in the number of members whatever
    the shape of the tree — a recursive CTE walking every spender's upline would cost
    the sum of their depths, quadratic on a long chain.  Exact Python integers; only the
    rows with someone spending below them are written."""
    members = sa.table(
        "members",
        sa.column("member", sa.String),
        sa.column("sponsor", sa.String),
        sa.column("depth", sa.Integer),
        sa.column("spend_cents", sa.BigInteger),
        sa.column("team_cents", sa.BigInteger),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(members.c.member, members.c.sponsor, members.c.spend_cents).order_by(
            members.c.depth.desc()
        )
    ).all()
    below: defaultdict[str, int] = defaultdict(int)  # spend below a member, so far
    team: list[dict[str, object]] = []
    for member, sponsor, spend in rows:
        # everyone deeper came first: what is below this member is complete
        team_cents = below.pop(member, 0)
        if team_cents:
            team.append({"row": member, "team": team_cents})
        if sponsor is not None and (team_cents or spend):
            below[sponsor] += team_cents + int(spend)
    by_row = (
        members.update()
        .where(members.c.member == sa.bindparam("row"))
        .values(team_cents=sa.bindparam("team"))
    )
    for start in range(0, len(team), UPDATE_CHUNK):
        connection.execute(by_row, team[start : start + UPDATE_CHUNK])


def downgrade() -> None:
    op.drop_column("members", "team_cents")
