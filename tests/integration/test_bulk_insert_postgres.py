"""``db.insert_ignoring_conflicts`` on PostgreSQL: one ``unnest`` statement inserts every
row exactly (text, booleans, big integers), skips the keys present — also keys twice in
one call — and an empty call does nothing; SQLite gives the same rows.  ``insert_many``
draws serial keys in the rows' order and fails on a key present; ``among`` finds exactly
the values given (a value longer than the column is no prefix of another)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tests.integration.test_migrations_postgres import fresh_database
from tokenmall import migrations
from tokenmall.db import among, insert_ignoring_conflicts, insert_many, make_engine, make_sessions
from tokenmall_wallet.adapters.tables import members, messaging


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


@pytest.mark.parametrize("database", ["postgres", "sqlite"])
def test_insert_many_keeps_the_order_and_among_matches_exactly(
    database: str, postgres_data: Path, tmp_path: Path
) -> None:
    if database == "postgres":
        url = fresh_database(postgres_data, "bulk_order")
    else:
        url = f"sqlite:///{tmp_path}/wallet.db"
    migrations.upgrade("wallet", url)
    outbox = messaging.outbox

    async def go() -> tuple[list[str], list[str], list[str], bool, list[str]]:
        engine = make_engine(url)
        sessions = make_sessions(engine)
        now = datetime.now(UTC)
        rows = [
            {"member": f"m{(i * 7919) % 1200:05d}", "merchant": False, "seq": i}
            for i in range(1200)
        ]
        try:
            async with sessions() as session, session.begin():
                await insert_many(session, members, rows)
                await insert_many(
                    session,
                    outbox,
                    [
                        {
                            "event_id": row["member"],
                            "topic": "t",
                            "key": "k",
                            "event_type": "E",
                            "payload": "{}",
                            "created_at": now,
                            "partition": None,
                        }
                        for row in rows
                    ],
                )
            async with sessions() as session:
                by_id = list(
                    (
                        await session.execute(select(outbox.c.event_id).order_by(outbox.c.id))
                    ).scalars()
                )
                by_seq = list(
                    (
                        await session.execute(select(members.c.member).order_by(members.c.seq))
                    ).scalars()
                )
                wanted = ["m00001", "m00002", "nobody", "m00001" + "x" * 300, "m0000"]
                matched = sorted(
                    (
                        await session.execute(
                            select(members.c.member).where(among(session, members.c.member, wanted))
                        )
                    ).scalars()
                )
                nothing = list(
                    (
                        await session.execute(
                            select(members.c.member).where(among(session, members.c.member, []))
                        )
                    ).scalars()
                )
            refused = False
            try:
                async with sessions() as session, session.begin():
                    await insert_many(
                        session,
                        members,
                        [{"member": "fresh", "merchant": False, "seq": 5000}, rows[3]],
                    )
            except IntegrityError:
                refused = True
            return by_seq, matched, nothing, refused, by_id
        finally:
            await engine.dispose()

    by_seq, matched, nothing, refused, by_id = asyncio.run(go())
    assert by_seq == [f"m{(i * 7919) % 1200:05d}" for i in range(1200)]
    assert by_id == by_seq  # the serial id is drawn in the rows' order
    assert matched == ["m00001", "m00002"]
    assert nothing == []
    assert refused
