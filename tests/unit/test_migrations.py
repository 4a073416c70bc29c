"""Schema migrations on SQLite (tokenmall.migrations, ``tokenmall migrate``): each
service's migrations build exactly the tables its ``adapters/tables.py`` declares; a
service refuses an unmigrated database; ``migrate`` upgrades, checks, adopts a database
``create_all`` made before migrations, and writes new revisions.  PostgreSQL:
tests/integration/test_migrations_postgres.py."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, inspect, text
from typer.testing import CliRunner

from tests.schemas import differences, revisions, schema_of
from tokenmall import migrations
from tokenmall.cli import app
from tokenmall.testing import running
from tokenmall_orders.app import OrdersSettings, build_app

SERVICES = migrations.SERVICES
HEAD = migrations.heads("orders")[0]  # the head of orders (each service numbers its own)
runner = CliRunner()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def reflect(url: str) -> dict[str, object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return schema_of(conn)
    finally:
        engine.dispose()


# ------------------------------------------------------------------ the schema itself


@pytest.mark.parametrize("service", SERVICES)
def test_migrated_schema_is_exactly_what_the_tables_declare(service: str, tmp_path: Path) -> None:
    migrated = sqlite_url(tmp_path / "migrated.db")
    outcome = migrations.upgrade(service, migrated)
    assert outcome.applied == revisions(service)
    engine = create_engine(migrated)
    with engine.connect() as conn:
        diff = differences(conn, migrations.metadata(service))
    engine.dispose()
    assert diff == [], (
        f"{service}: its tables.py and its migrations differ; write the revision with "
        f'`tokenmall migrate --new "what changed" {service}` (README: Schema migrations)'
    )
    # and what the database reports is what create_all makes (the only create_all left)
    created = sqlite_url(tmp_path / "created.db")
    engine = create_engine(created)
    migrations.metadata(service).create_all(engine)
    engine.dispose()
    assert reflect(migrated) == reflect(created)


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_one_line_of_numbered_revisions(service: str) -> None:
    scripts = migrations.scripts(service)
    assert len(scripts.get_heads()) == 1, "two revisions branched: merge them"
    assert len(scripts.get_bases()) == 1
    revisions = list(reversed(list(scripts.walk_revisions())))
    assert [r.revision for r in revisions] == [f"{i:04d}" for i in range(1, len(revisions) + 1)]
    for revision in revisions:
        assert Path(str(revision.path)).name.startswith(revision.revision + "_")


def test_the_service_name_must_have_migrations() -> None:
    with pytest.raises(migrations.MigrationError, match="no such service"):
        migrations.heads("nosuch")


# ------------------------------------------------------------------ start-up


def orders_app(url: str, migrate_on_start: bool) -> object:
    from tokenmall.testing import FakeBroker, MemoryPublisher

    settings = OrdersSettings(database_url=url, migrate_on_start=migrate_on_start)
    return build_app(
        settings,
        broker_factory=lambda svc: FakeBroker(),
        publisher_factory=lambda svc: MemoryPublisher(),
        wallet=object(),  # type: ignore[arg-type]
    )


def start(url: str, migrate_on_start: bool) -> None:
    async def go() -> None:
        async with running(orders_app(url, migrate_on_start)) as client:  # type: ignore[arg-type]
            assert (await client.get("/health")).status_code == 200

    asyncio.run(go())


def test_a_service_refuses_an_empty_database_and_says_what_to_run(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "orders.db")
    with pytest.raises(migrations.NotMigrated) as refused:
        start(url, migrate_on_start=False)
    message = str(refused.value)
    assert f"database at {url} is not migrated (empty, code needs {HEAD})" in message
    assert f"tokenmall migrate orders --database-url '{url}'" in message
    assert inspect(create_engine(url)).get_table_names() == []  # it created nothing

    migrations.upgrade("orders", url)
    start(url, migrate_on_start=False)  # at head: starts


def test_migrate_on_start_upgrades_first(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "orders.db")
    start(url, migrate_on_start=True)
    assert migrations.status("orders", url).at_head


def test_a_database_from_newer_code_is_refused(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "orders.db")
    migrations.upgrade("orders", url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(migrations.NotMigrated, match="at revision 0099, which this code"):
        start(url, migrate_on_start=False)
    with pytest.raises(migrations.MigrationError, match="does not know"):
        migrations.upgrade("orders", url)


# ------------------------------------------------------------------ upgrading


def test_upgrade_is_idempotent_and_concurrent_upgrades_apply_once(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "wallet.db")
    outcomes: list[migrations.Outcome] = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(migrations.upgrade("wallet", url)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 4
    assert sorted(len(o.applied) for o in outcomes) == [0, 0, 0, len(revisions("wallet"))]
    assert (
        migrations.upgrade("wallet", url).describe()
        == f"at head {migrations.heads('wallet')[0]}, nothing to do"
    )


def test_a_create_all_database_is_adopted(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "referrals.db")
    engine = create_engine(url)
    # the tables as create_all made them before migrations (revision 0001's schema),
    # without a migration history
    with engine.begin() as conn:
        command.upgrade(migrations.config("referrals", conn), migrations._base("referrals"))
        conn.execute(text("DROP TABLE alembic_version"))
    assert set(inspect(engine).get_table_names()) == set(migrations._baseline_tables("referrals"))
    engine.dispose()
    state = migrations.status("referrals", url)
    assert state.legacy and not state.at_head
    assert "tables without a revision (create_all)" in migrations.refusal(state)
    outcome = migrations.upgrade("referrals", url)
    assert outcome.adopted and outcome.applied == revisions("referrals")
    assert outcome.describe().startswith("adopted (create_all tables stamped 0001)")
    assert migrations.status("referrals", url).at_head


def test_tables_that_are_not_the_first_revision_are_not_adopted(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "orders.db")
    engine = create_engine(url)
    other = MetaData()
    Table("orders", other, Column("order_id", String(10), primary_key=True))
    other.create_all(engine)
    engine.dispose()
    with pytest.raises(migrations.MigrationError, match="not the first revision's schema"):
        migrations.upgrade("orders", url)


# ------------------------------------------------------------------ new revisions


@pytest.fixture
def scratch_dividends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MetaData]:
    """The dividends migrations copied aside, and a copy of its tables with one more —
    as an engineer adding a lease table would have them."""
    folder = tmp_path / "migrations"
    shutil.copytree(migrations.script_location("dividends"), folder)
    monkeypatch.setattr(migrations, "script_location", lambda service: folder)
    declared = MetaData()
    for table in migrations.metadata("dividends").tables.values():
        table.to_metadata(declared)
    Table(
        "engine_lease",
        declared,
        Column("name", String(40), primary_key=True),
        Column("holder", String(100), nullable=False),
        Column("token", Integer, nullable=False),
    )
    monkeypatch.setattr(migrations, "metadata", lambda service: declared)
    yield declared


def test_new_revision_autogenerates_the_change_and_older_databases_are_refused(
    scratch_dividends: MetaData, tmp_path: Path
) -> None:
    head = migrations.heads("dividends")[0]
    old = sqlite_url(tmp_path / "old.db")
    migrations.upgrade("dividends", old)  # at head
    new = f"{int(head) + 1:04d}"

    result = runner.invoke(app, ["migrate", "dividends", "--new", "lease table"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "migrations" / "versions" / f"{new}_lease_table.py"
    assert f"wrote {written}" in result.output.replace("\n", "")
    source = written.read_text()
    assert f'down_revision: str | Sequence[str] | None = "{head}"' in source
    assert 'op.create_table(\n        "engine_lease"' in source

    state = migrations.status("dividends", old)
    assert (state.current, state.heads) == ((head,), (new,))
    assert migrations.refusal(state).startswith(
        f"database at {old} is not migrated (at {head}, code needs {new})"
    )
    outcome = migrations.upgrade("dividends", old)
    assert outcome.describe() == f"{head} → {new} (applied {new})"
    engine = create_engine(old)
    with engine.connect() as conn:
        assert differences(conn, scratch_dividends) == []
    engine.dispose()

    again = runner.invoke(app, ["migrate", "dividends", "--new", "nothing"])
    assert again.exit_code == 0  # an empty revision (nothing changed) is allowed
    assert (tmp_path / "migrations" / "versions" / f"{int(new) + 1:04d}_nothing.py").exists()


def test_new_needs_one_service_and_a_message(scratch_dividends: MetaData) -> None:
    assert runner.invoke(app, ["migrate", "--new", "x"]).exit_code == 2
    assert runner.invoke(app, ["migrate", "orders", "wallet", "--new", "x"]).exit_code == 2
    assert runner.invoke(app, ["migrate", "dividends", "--new", " "]).exit_code == 1


# ------------------------------------------------------------------ the command


def test_migrate_one_database_by_url_and_check(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "orders.db")
    checked = runner.invoke(app, ["migrate", "orders", "--database-url", url, "--check"])
    assert checked.exit_code == 1
    assert f"empty, code needs {HEAD}: not at head" in checked.output
    assert not (tmp_path / "orders.db").exists()  # --check changes nothing

    done = runner.invoke(app, ["migrate", "orders", "--database-url", url])
    assert done.exit_code == 0, done.output
    assert f"empty → {HEAD} (applied {', '.join(revisions('orders'))})" in done.output
    again = runner.invoke(app, ["migrate", "orders", "--database-url", url])
    assert f"at head {HEAD}, nothing to do" in again.output

    checked = runner.invoke(app, ["migrate", "orders", "--database-url", url, "--check"])
    assert checked.exit_code == 0
    assert f"at {HEAD}, code needs {HEAD}: ok" in checked.output


def test_migrate_defaults_to_every_database_of_the_dev_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENMALL_DEV_DIR", str(tmp_path / "dev"))
    monkeypatch.delenv("TOKENMALL_DATABASE_URL", raising=False)
    assert runner.invoke(app, ["migrate"]).exit_code == 2  # no platform: say so
    databases = {name: sqlite_url(tmp_path / f"{name}.db") for name in SERVICES}
    services = {name: {"database": url} for name, url in databases.items()}
    state = {"stopped": {"run": {"id": "r1"}, "services": services}}  # as dev down keeps it
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "state.json").write_text(json.dumps(state))

    assert runner.invoke(app, ["migrate", "--check"]).exit_code == 1
    done = runner.invoke(app, ["migrate"])
    assert done.exit_code == 0, done.output
    assert [line.split()[0] for line in done.output.splitlines()] == list(SERVICES)
    assert runner.invoke(app, ["migrate", "--check"]).exit_code == 0
    only = runner.invoke(app, ["migrate", "wallet", "--check"])
    assert only.exit_code == 0 and only.output.split()[0] == "wallet"

    # a database that cannot be migrated: the others still are, exit 1
    Path(databases["orders"].removeprefix("sqlite:///")).write_text("not a database")
    failed = runner.invoke(app, ["migrate"])
    assert failed.exit_code == 1


def test_migrate_takes_the_service_environment_for_one_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path / "referrals.db")
    monkeypatch.setenv("TOKENMALL_DATABASE_URL", url)  # as docker compose passes it
    assert runner.invoke(app, ["migrate", "referrals"]).exit_code == 0
    assert migrations.status("referrals", url).at_head
    assert runner.invoke(app, ["migrate", "orders", "wallet"]).exit_code == 2
    assert runner.invoke(app, ["migrate", "nosuch"]).exit_code == 2


def test_a_database_whose_0001_made_the_leases_table_gets_0002_as_a_number(tmp_path: Path) -> None:
    """For a few minutes revision 0001 created ``leases`` itself (7514e8f): such a database
    upgrades to head without creating it twice."""
    from alembic import command

    url = sqlite_url(tmp_path / "orders.db")
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(migrations.config("orders", conn), "0001")
        migrations.metadata("orders").tables["leases"].create(conn)
    engine.dispose()
    assert migrations.upgrade("orders", url).applied[0] == "0002"
    engine = create_engine(url)
    with engine.connect() as conn:
        assert differences(conn, migrations.metadata("orders")) == []
    engine.dispose()


def test_migrations_from_several_threads_at_once_all_finish(tmp_path: Path) -> None:
    """Alembic's context is one global of the process: platforms launched in parallel
    (the replay tests start three at once) used to hang or fail here."""
    errors: list[str] = []

    def platform(i: int) -> None:
        try:
            for name in ("orders", "wallet", "dividends", "referrals"):
                migrations.upgrade(name, f"sqlite:///{tmp_path}/{i}-{name}.db")
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=platform, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads) and errors == []
    for i in range(6):
        assert migrations.status("orders", f"sqlite:///{tmp_path}/{i}-orders.db").at_head


@pytest.mark.parametrize("service", migrations.SERVICES)
def test_0004_gives_rows_parked_before_it_the_day_their_body_carries(
    service: str, tmp_path: Path
) -> None:
    url = sqlite_url(tmp_path / f"{service}.db")
    engine = create_engine(url)
    parked = {
        "consumer": "c",
        "key": "k",
        "waiting_for": "member:k",
        "topic": "t",
        "event_id": "e",
        "event_type": "OrderPaid",
        "parked_at": "2026-12-01 00:00:00",
        "attempts": 0,
        "next_try_at": "2026-12-01 00:00:00",
    }
    bodies = ['{"type": "OrderPaid", "day": 4}', '{"type": "MemberRegistered"}', "{not json"]
    with engine.begin() as conn:
        command.upgrade(migrations.config(service, conn), "0003")
        for i, body in enumerate(bodies):
            conn.execute(
                text(
                    "INSERT INTO parked (consumer, key, waiting_for, topic, event_id, "
                    "event_type, body, parked_at, attempts, next_try_at) VALUES (:consumer, "
                    ":key, :waiting_for, :topic, :event_id, :event_type, :body, :parked_at, "
                    ":attempts, :next_try_at)"
                ),
                parked | {"event_id": f"e{i}", "body": body},
            )
    engine.dispose()
    assert migrations.upgrade(service, url).applied[0] == "0004"  # and any later ones
    engine = create_engine(url)
    with engine.connect() as conn:
        days = conn.execute(text("SELECT event_id, day FROM parked ORDER BY id")).all()
    engine.dispose()
    assert [tuple(row) for row in days] == [("e0", 4), ("e1", None), ("e2", None)]


def test_wallet_0005_keeps_the_journal_and_stamps_only_what_is_booked_after_it(
    tmp_path: Path,
) -> None:
    url = sqlite_url(tmp_path / "wallet.db")
    engine = create_engine(url)
    insert_entry = text(
        "INSERT INTO journal (event_id, asset, debit, credit, amount, kind, ref) "
        "VALUES (:event_id, 'cny', 'pool', 'm:a', 100, 'sell', 'r')"
    )
    with engine.begin() as conn:
        command.upgrade(migrations.config("wallet", conn), "0004")
        conn.execute(insert_entry, {"event_id": "before"})
    engine.dispose()
    assert migrations.upgrade("wallet", url).applied[0] == "0005"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(insert_entry, {"event_id": "after"})
        rows = conn.execute(text("SELECT event_id, amount, booked_at FROM journal ORDER BY id"))
        booked = [(r.event_id, r.amount, r.booked_at is not None) for r in rows]
    engine.dispose()
    assert booked == [("before", 100, False), ("after", 100, True)]
