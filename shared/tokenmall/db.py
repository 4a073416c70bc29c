"""Database engines from a URL: SQLite (a file per service, the default) or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import String, Table, Text, any_, bindparam, event, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql.elements import ColumnElement


def normalise_url(url: str) -> str:
    """Accept plain ``sqlite:///`` / ``postgresql://`` URLs and pick the async drivers."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> AsyncEngine:
    url = normalise_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    else:
        # connections kept open, not opened per burst: a connection beyond pool_size is
        # closed when returned, and a new one costs PostgreSQL a backend (fork, auth) and
        # asyncpg its prepared statements and type introspection again — at 32 requests
        # at a time a 10 + 10 pool spent more on that than on the queries.  The overflow
        # stays for a path that briefly holds two; at most 20 per process, as before
        # (four services: 80 of PostgreSQL's default max_connections of 100).
        kwargs.update(pool_size=16, max_overflow=4)
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def make_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


SQLITE_PARAMETERS = 999  # per statement: SQLite's limit before 3.32


def among(session: AsyncSession, column: ColumnElement[Any], values: Iterable[Any]) -> Any:
    """``column IN values``.  On PostgreSQL one array parameter (``= ANY(:values)``): the
    statement is the same whatever the count, so SQLAlchemy compiles it once and caches it,
    where an IN list is re-rendered with a parameter per value on every call (a 1,000-id
    list cost more to build than to run).  Strings compare as TEXT (a cast to VARCHAR(n)
    would truncate a longer id into another one).  SQLite: a plain IN list (callers keep
    it under SQLITE_PARAMETERS)."""
    values = list(values)
    if session.get_bind().dialect.name != "postgresql":
        return column.in_(values)
    kind: Any = Text() if isinstance(column.type, String) else column.type
    return column == any_(bindparam(None, values, type_=ARRAY(kind)))


async def insert_ignoring_conflicts(
    session: AsyncSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    returning: str | None = None,
) -> list[Any]:
    """Insert ``rows`` (dicts of the same columns) into ``table``, skipping those whose key
    exists already (see :func:`insert_many`).  ``returning``: a column whose values of the
    rows inserted are returned."""
    return await insert_many(session, table, rows, ignore_conflicts=True, returning=returning)


async def insert_many(
    session: AsyncSession,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    ignore_conflicts: bool = False,
    returning: str | None = None,
) -> list[Any]:
    """Insert ``rows`` (dicts of the same columns) into ``table``; a row whose key exists
    fails the statement, or with ``ignore_conflicts`` is skipped.  PostgreSQL: one
    statement whatever the count — a column array each, ``unnest``-ed — so neither
    SQLAlchemy nor the server handles a parameter per value (building a 300-row VALUES
    list cost more than writing it); SQLite: multi-row inserts.  ``returning``: a column
    whose values of the rows inserted are returned."""
    if not rows:
        return []
    columns = list(rows[0])
    assert all(name in table.c for name in columns), "rows name the table's columns"
    assert "position" not in columns, "position numbers the rows"
    assert returning is None or returning in table.c, "returning names a column"
    if session.get_bind().dialect.name == "postgresql":
        dialect = session.get_bind().dialect
        quote = dialect.identifier_preparer.quote

        def array_type(name: str) -> str:
            kind = table.c[name].type
            # TEXT, not VARCHAR(n): a cast to VARCHAR(n) truncates, the INSERT refuses
            return "TEXT" if isinstance(kind, String) else str(kind.compile(dialect=dialect))

        arrays = ", ".join(f"CAST(:{name} AS {array_type(name)}[])" for name in columns)
        names = ", ".join(quote(name) for name in columns)
        # in the rows' order (WITH ORDINALITY): a serial key (the outbox's id) is drawn in
        # that order, and the relay publishes by it
        statement = text(
            f"INSERT INTO {dialect.identifier_preparer.format_table(table)} ({names}) "
            f"SELECT {names} FROM unnest({arrays}) WITH ORDINALITY "
            f"AS given_rows({names}, position) ORDER BY position"
            + (" ON CONFLICT DO NOTHING" if ignore_conflicts else "")
            + (f" RETURNING {quote(returning)}" if returning else "")
        )
        result = await session.execute(
            statement, {name: [row[name] for row in rows] for name in columns}
        )
        return list(result.scalars()) if returning else []
    per_insert = max(1, SQLITE_PARAMETERS // len(columns))
    inserted: list[Any] = []
    for start in range(0, len(rows), per_insert):
        chunk = rows[start : start + per_insert]
        stmt: Any = sqlite.insert(table).values(chunk)
        if ignore_conflicts:
            stmt = stmt.on_conflict_do_nothing()
        if returning:
            inserted += (await session.execute(stmt.returning(table.c[returning]))).scalars()
        else:
            await session.execute(stmt)
    return inserted
