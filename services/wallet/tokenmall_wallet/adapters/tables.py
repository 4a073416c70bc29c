"""The wallet's schema and the bulk statements that book the ledger.

Amounts are integer minor units in ``BigInteger`` columns (cents; 1e-8 for equity
points), never SQLite ``NUMERIC``.  Names (members, accounts, references) are
``Text`` so that a long name from another service cannot fail an insert on
PostgreSQL and stall a topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable

from tokenmall import business_day
from tokenmall.db import insert_ignoring_conflicts, insert_many
from tokenmall.ids import ID_MAX_LENGTH
from tokenmall.messaging import define
from tokenmall.messaging.tables import SEQUENCE_ID

ASSETS = ("cny", "stable", "equity")

# the transaction's time on PostgreSQL, the statement's on SQLite (UTC on both)
NOW = text("CURRENT_TIMESTAMP")

metadata = MetaData()
messaging = define(metadata)

members = Table(
    "members",
    metadata,
    Column("member", Text, primary_key=True),
    Column("merchant", Boolean, nullable=False, default=False),
    Column("seq", BigInteger, nullable=False, unique=True),  # registration order
)

balances = Table(
    "balances",
    metadata,
    Column("account", Text, primary_key=True),  # "m:<member>" or a platform account
    Column("asset", String(16), primary_key=True),
    Column("balance", BigInteger, nullable=False),
)

journal = Table(
    "journal",
    metadata,
    Column("id", SEQUENCE_ID, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("asset", String(16), nullable=False),
    Column("debit", Text, nullable=False),
    Column("credit", Text, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("kind", Text, nullable=False),
    Column("ref", Text, nullable=False),
    # when the wallet booked it (the database's clock, so that COPY and bulk inserts
    # need not carry it) and the business day of the event that moved it
    Column("day", Integer, nullable=True),
    Column("booked_at", DateTime(timezone=True), nullable=True, server_default=NOW),
)
Index("journal_debit", journal.c.debit, journal.c.id)
Index("journal_credit", journal.c.credit, journal.c.id)

# One row per member, settlement day and asset: the release kinds are the JSON
# columns of that one posting.  The key starts with the member so that a member's
# statement is an index range scan; ``release_lines_day`` is the one second index, so
# that a day's lines for all members are a range scan too.
release_lines = Table(
    "release_lines",
    metadata,
    Column("day", Integer, nullable=False),
    Column("member", Text, nullable=False),
    Column("asset", String(16), nullable=False),
    Column("amounts", Text, nullable=False),  # {"kind": cents}
    Column("total", BigInteger, nullable=False),
    Column("booked_at", DateTime(timezone=True), nullable=True, server_default=NOW),
    PrimaryKeyConstraint("member", "day", "asset", name="release_lines_pk"),
)
# a day's lines by member and asset (GET /v1/days/{day}/releases)
Index("release_lines_day", release_lines.c.day, release_lines.c.member, release_lines.c.asset)

holds = Table(
    "holds",
    metadata,
    Column("hold_id", String(ID_MAX_LENGTH), primary_key=True),
    Column("member", Text, nullable=False),
    Column("asset", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # held | captured | released
)
Index("holds_member", holds.c.member, holds.c.asset, holds.c.status)

requests = Table(
    "requests",
    metadata,
    Column("request_id", String(ID_MAX_LENGTH), primary_key=True),
    Column("member", Text, nullable=False),
    Column("kind", String(32), nullable=False),  # sell | exchange | merchant_exchange | adjust
    Column("body", Text, nullable=False),  # JSON
    Column("status", String(16), nullable=False),  # pending | done | refused
    Column("reason", Text, nullable=True),
    Column("result", Text, nullable=True),  # JSON
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("day", Integer, nullable=True),  # the business day it was accepted on
    Column("decided_at", DateTime(timezone=True), nullable=True),  # done or refused
)

# The business day requests are stamped with (closed by DayClosing, see tokenmall.business_day).
business_days = business_day.define(metadata)


def member_account(member: str) -> str:
    return f"m:{member}"


async def execute(
    session: AsyncSession, stmt: Executable, params: Mapping[str, Any] | None = None
) -> CursorResult[Any]:
    """Run a DML statement and keep its rowcount visible to the type checker."""
    return cast(CursorResult[Any], await session.execute(stmt, params))


def _dialect_insert(session: AsyncSession, table: Table) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def add_member(session: AsyncSession, member: str, merchant: bool, seq: int) -> None:
    """Register a member once (a repeated registration changes nothing); ``seq`` is the
    registration order referrals assigned."""
    stmt = (
        _dialect_insert(session, members)
        .values(member=member, merchant=merchant, seq=seq)
        .on_conflict_do_nothing()
    )
    await session.execute(stmt)


async def add_members(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """:func:`add_member` for many (``member``, ``merchant``, ``seq``) rows, ignoring the
    members registered already."""
    await insert_ignoring_conflicts(session, members, rows)


class AlreadyBooked(Exception):
    """A release line for that member, day and asset exists already."""


BULK_ROWS = 2000  # from this many rows on, PostgreSQL takes the COPY path


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def _executemany(
    session: AsyncSession, stmt: Any, keys: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """executemany straight on the driver with the statement compiled once: on batches
    of 100k+ rows SQLAlchemy's per-row parameter processing costs more than the
    database itself (about 3× on SQLite)."""
    if not rows:
        return
    conn = await session.connection()
    compiled = stmt.compile(dialect=conn.dialect, column_keys=list(keys))
    if compiled.positiontup is None or list(compiled.positiontup) != list(keys):
        await session.execute(stmt, [dict(zip(keys, row, strict=True)) for row in rows])
        return
    await conn.exec_driver_sql(str(compiled), list(rows))


async def _asyncpg(session: AsyncSession) -> Any:
    """The asyncpg connection under the session, inside the session's transaction."""
    await session.execute(text("SELECT 1"))  # the driver-level transaction has begun
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def apply_deltas(session: AsyncSession, deltas: Mapping[tuple[str, str], int]) -> None:
    """Add each ``(account, asset) -> delta`` to its balance.

    An executemany UPSERT; on PostgreSQL a large batch is COPied into a temporary
    table and merged by one ``INSERT … SELECT … ON CONFLICT`` instead."""
    rows = [(account, asset, delta) for (account, asset), delta in deltas.items() if delta]
    if _is_postgres(session) and len(rows) >= BULK_ROWS:
        pg = await _asyncpg(session)
        await pg.execute(
            "CREATE TEMP TABLE IF NOT EXISTS wallet_deltas (account text NOT NULL, "
            "asset varchar(16) NOT NULL, delta bigint NOT NULL) ON COMMIT DELETE ROWS"
        )
        await pg.execute("TRUNCATE wallet_deltas")
        await pg.copy_records_to_table("wallet_deltas", records=rows)
        await pg.execute(
            "INSERT INTO balances (account, asset, balance) "
            "SELECT account, asset, delta FROM wallet_deltas "
            "ON CONFLICT (account, asset) "
            "DO UPDATE SET balance = balances.balance + excluded.balance"
        )
        return
    stmt = _dialect_insert(session, balances)
    stmt = stmt.on_conflict_do_update(
        index_elements=[balances.c.account, balances.c.asset],
        set_={"balance": balances.c.balance + stmt.excluded.balance},
    )
    await _executemany(session, stmt, ("account", "asset", "balance"), rows)


async def insert_journal(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    await insert_many(session, journal, rows)


RELEASE_LINE_KEYS = ("day", "member", "asset", "amounts", "total")


async def insert_release_lines(session: AsyncSession, rows: Sequence[tuple[Any, ...]]) -> None:
    """Rows of ``RELEASE_LINE_KEYS``: one executemany, or a COPY on PostgreSQL."""
    if not rows:
        return
    if _is_postgres(session) and len(rows) >= BULK_ROWS:
        from asyncpg.exceptions import UniqueViolationError

        pg = await _asyncpg(session)
        try:
            await pg.copy_records_to_table(
                "release_lines", records=rows, columns=list(RELEASE_LINE_KEYS)
            )
        except UniqueViolationError:
            raise AlreadyBooked from None
        return
    try:
        await _executemany(session, insert(release_lines), RELEASE_LINE_KEYS, rows)
    except IntegrityError:
        raise AlreadyBooked from None


async def balance_of(session: AsyncSession, account: str, asset: str) -> int:
    stmt = select(balances.c.balance).where(
        balances.c.account == account, balances.c.asset == asset
    )
    value = (await session.execute(stmt)).scalar_one_or_none()
    return int(value or 0)


async def held_amount(session: AsyncSession, member: str, asset: str) -> int:
    stmt = select(func.coalesce(func.sum(holds.c.amount), 0)).where(
        holds.c.member == member, holds.c.asset == asset, holds.c.status == "held"
    )
    return int((await session.execute(stmt)).scalar_one())
