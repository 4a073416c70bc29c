"""Database engines from a URL: SQLite (a file per service, the default) or PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import String, Table, event, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


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
        kwargs.update(pool_size=10, max_overflow=10)
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


async def insert_ignoring_conflicts(
    session: AsyncSession,
    table: Table,
    rows: Sequence[dict[str, Any]],
    returning: str | None = None,
) -> list[Any]:
    """Insert ``rows`` (dicts of the same columns) into ``table``, skipping those whose key
    exists already.  PostgreSQL: one statement whatever the count — a column array each,
    ``unnest``-ed — so neither SQLAlchemy nor the server handles a parameter per value
    (building a 300-row VALUES list cost more than writing it); SQLite: multi-row
    inserts.  ``returning``: a column whose values of the rows inserted are returned."""
    if not rows:
        return []
    columns = list(rows[0])
    assert all(name in table.c for name in columns), "rows name the table's columns"
    assert returning is None or returning in table.c, "returning names a column"
    if session.get_bind().dialect.name == "postgresql":
        dialect = session.get_bind().dialect
        quote = dialect.identifier_preparer.quote

        def array_type(name: str) -> str:
            kind = table.c[name].type
            # TEXT, not VARCHAR(n): a cast to VARCHAR(n) truncates, the INSERT refuses
            return "TEXT" if isinstance(kind, String) else str(kind.compile(dialect=dialect))

        arrays = ", ".join(f"CAST(:{name} AS {array_type(name)}[])" for name in columns)
        statement = text(
            f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
            f"({', '.join(quote(name) for name in columns)}) SELECT * FROM unnest({arrays}) "
            "ON CONFLICT DO NOTHING" + (f" RETURNING {quote(returning)}" if returning else "")
        )
        result = await session.execute(
            statement, {name: [row[name] for row in rows] for name in columns}
        )
        return list(result.scalars()) if returning else []
    per_insert = max(1, SQLITE_PARAMETERS // len(columns))
    inserted: list[Any] = []
    for start in range(0, len(rows), per_insert):
        chunk = rows[start : start + per_insert]
        stmt = sqlite.insert(table).values(chunk).on_conflict_do_nothing()
        if returning:
            inserted += (await session.execute(stmt.returning(table.c[returning]))).scalars()
        else:
            await session.execute(stmt)
    return inserted
