"""``db.insert_ignoring_conflicts`` on PostgreSQL: one ``unnest`` statement inserts every
row exactly (text, booleans, big integers), skips the keys present — also keys twice in
one call — and an empty call does nothing; SQLite gives the same rows."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import select

from tests.integration.test_migrations_postgres import fresh_database
from tokenmall import migrations
from tokenmall.db import insert_ignoring_conflicts, make_engine, make_sessions
from tokenmall_wallet.adapters.tables import members


@pytest.mark.parametrize("database", ["postgres", "sqlite"])
def test_rows_are_inserted_once_in_one_statement(
    database: str, postgres_data: Path, tmp_path: Path
) -> None:
    if database == "postgres":
        url = fresh_database(postgres_data, "bulk_insert")
    else:
        url = f"sqlite:///{tmp_path}/wallet.db"
    migrations.upgrade("wallet", url)

    async def go() -> list[Any]:
        engine = make_engine(url)
        statements: list[str] = []
        sa_event.listen(
            engine.sync_engine,
            "before_cursor_execute",
            lambda _c, _cur, statement, *_: statements.append(statement),
        )
        sessions = make_sessions(engine)
        rows = [
            {"member": f"+8613800{i:06d}", "merchant": i % 3 == 0, "seq": 2**40 + i}
            for i in range(1500)
        ]
        try:
            async with sessions() as session, session.begin():
                await insert_ignoring_conflicts(session, members, rows[:1000])
                await insert_ignoring_conflicts(session, members, [])
                statements.clear()
                # 500 known, 500 new, one new key twice (the first wins)
                x = {"member": "x", "merchant": True, "seq": 1}
                new = await insert_ignoring_conflicts(
                    session, members, [*rows[500:], x, x], returning="member"
                )
                assert sorted(new) == sorted([r["member"] for r in rows[1000:]] + ["x"])
                if database == "postgres":
                    assert len(statements) == 1
            async with sessions() as session:
                found = (
                    await session.execute(
                        select(members.c.member, members.c.merchant, members.c.seq).order_by(
                            members.c.seq
                        )
                    )
                ).all()
            return [tuple(row) for row in found]
        finally:
            await engine.dispose()

    found = asyncio.run(go())
    expected = [("x", True, 1)] + [(f"+8613800{i:06d}", i % 3 == 0, 2**40 + i) for i in range(1500)]
    assert found == expected
