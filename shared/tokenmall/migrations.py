"""Schema migrations: Alembic, one ``migrations/`` folder per service.

Tables change only through a revision in ``services/<name>/tokenmall_<name>/migrations/
versions/`` (never ``metadata.create_all``).  A service checks its database's revision
when it starts (``check``) and refuses to run on an empty or older one — unless
``TOKENMALL_MIGRATE_ON_START`` is set, then it upgrades first (``upgrade``) —;
``tokenmall migrate`` upgrades explicitly, ``tokenmall migrate --new`` writes a revision.

Every upgrade runs in one transaction that first takes a lock — a transaction-scoped
advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite — so that processes starting
at once on one database migrate it once, one after the other.  A database created by
``create_all`` before migrations existed (tables, no ``alembic_version``) is *adopted*:
when its tables and columns are exactly those of the first revision it is stamped with
that revision and upgraded from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import re
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, create_engine, inspect, make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from tokenmall.db import normalise_url

SERVICES = ("orders", "wallet", "dividends", "referrals")
VERSION_TABLE = "alembic_version"
# pg_advisory_xact_lock key of a migration (any constant: one database per service)
ADVISORY_LOCK = 0x746F6B656E6D67  # "tokenmg"

T = TypeVar("T")


class MigrationError(RuntimeError):
    """A database that cannot be migrated, or a service without migrations."""


class NotMigrated(MigrationError):
    """The database is not at the revision the code needs: the service refuses to start."""


@dataclass(frozen=True)
class Status:
    service: str
    url: str  # shown: the password hidden
    current: tuple[str, ...]  # () for an empty database
    heads: tuple[str, ...]
    legacy: bool = False  # tables but no revision (created by create_all)

    @property
    def at_head(self) -> bool:
        return set(self.current) == set(self.heads)

    def describe(self) -> str:
        if self.current:
            at = f"at {', '.join(self.current)}"
        else:
            at = "tables without a revision (create_all)" if self.legacy else "empty"
        return f"{at}, code needs {', '.join(self.heads)}"


@dataclass
class Outcome:
    """What ``upgrade`` did: ``applied`` revisions in order (empty: already at head)."""

    service: str
    url: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    applied: list[str] = field(default_factory=list)
    adopted: bool = False  # a create_all database stamped with the first revision

    def describe(self) -> str:
        if self.adopted:
            first = f"adopted (create_all tables stamped {self.applied[0]})"
            rest = self.applied[1:]
            return first + (f", then applied {', '.join(rest)}" if rest else "")
        if not self.applied:
            return f"at head {', '.join(self.after)}, nothing to do"
        before = ", ".join(self.before) or "empty"
        return f"{before} → {', '.join(self.after)} (applied {', '.join(self.applied)})"


# ------------------------------------------------------------------ where revisions live


def script_location(service: str) -> Path:
    """``tokenmall_<service>/migrations`` (inside the service's package: it ships with it)."""
    spec = importlib.util.find_spec(f"tokenmall_{service}")
    if spec is None or not spec.submodule_search_locations:
        raise MigrationError(f"no such service: {service} (one of {', '.join(SERVICES)})")
    folder = Path(next(iter(spec.submodule_search_locations))) / "migrations"
    if not (folder / "env.py").exists():
        raise MigrationError(f"{service} has no migrations folder ({folder})")
    return folder


def metadata(service: str) -> MetaData:
    """The service's tables as its code declares them (``adapters/tables.py``)."""
    module = importlib.import_module(f"tokenmall_{service}.adapters.tables")
    found = module.metadata
    assert isinstance(found, MetaData)
    return found


def config(service: str, connection: Connection | None = None) -> Config:
    """An Alembic configuration for ``service`` (no alembic.ini: everything is here).
    ``connection`` is the connection ``env.py`` migrates on."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location(service)))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.set_main_option("truncate_slug_length", "60")
    cfg.attributes["service"] = service
    cfg.attributes["connection"] = connection
    return cfg


def scripts(service: str) -> ScriptDirectory:
    return ScriptDirectory.from_config(config(service))


def heads(service: str) -> tuple[str, ...]:
    """The revisions the code needs (one, unless two revisions branched: merge them)."""
    return tuple(sorted(scripts(service).get_heads()))


def shown(url: str) -> str:
    """The URL as messages show it: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def run_env() -> None:
    """The body of every service's ``migrations/env.py``: migrate on the connection the
    caller put into the config (``config(service, connection)``) — Alembic's own CLI is
    not used, ``tokenmall migrate`` is."""
    from alembic import context

    cfg = context.config
    connection = cfg.attributes.get("connection")
    if context.is_offline_mode() or connection is None:
        raise MigrationError("run migrations with `tokenmall migrate` (online, on a connection)")
    context.configure(
        connection=connection,
        target_metadata=metadata(cfg.attributes["service"]),
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER by copying on SQLite
        compare_type=True,
        on_version_apply=cfg.attributes.get("on_version_apply"),
    )
    with context.begin_transaction():
        context.run_migrations()


# ------------------------------------------------------------------ running


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code, even inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="tokenmall-migrate")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


async def _on_connection(url: str, work: Callable[[Connection], T], *, write: bool) -> T:
    """``work`` on a sync connection to ``url``, in one transaction committed at the end
    (``write``: taking the migration lock first).  Its own engine, without the service
    engine's ``PRAGMA foreign_keys=ON`` (SQLite cannot rebuild a referenced table with it)."""
    normal = normalise_url(url)
    if normal.startswith("sqlite") and "/" in normal.split(":///", 1)[-1]:
        Path(normal.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"timeout": 30} if normal.startswith("sqlite") else {}
    engine = create_async_engine(normal, connect_args=connect_args)
    try:
        async with engine.connect() as conn:
            if write:
                if conn.dialect.name == "sqlite":
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")  # DDL inside, atomic
                else:
                    await conn.execute(text(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})"))
            try:
                result = await conn.run_sync(work)
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()
            return result
    finally:
        await engine.dispose()


def _current(conn: Connection) -> tuple[str, ...]:
    return tuple(sorted(MigrationContext.configure(conn).get_current_heads()))


def _user_tables(conn: Connection) -> dict[str, set[str]]:
    found = inspect(conn)
    return {
        name: {c["name"] for c in found.get_columns(name)}
        for name in found.get_table_names()
        if name != VERSION_TABLE
    }


def _status(service: str, url: str, conn: Connection) -> Status:
    current = _current(conn)
    legacy = not current and bool(_user_tables(conn))
    return Status(service, shown(url), current, heads(service), legacy)


def _base(service: str) -> str:
    bases = scripts(service).get_bases()
    if len(bases) != 1:
        raise MigrationError(f"{service}: {len(bases)} first revisions, expected one")
    return str(bases[0])


def _baseline_tables(service: str) -> dict[str, set[str]]:
    """Tables and columns after the first revision alone (run on an in-memory SQLite)."""
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn, _ALEMBIC:
            command.upgrade(config(service, conn), _base(service))
            return _user_tables(conn)
    finally:
        engine.dispose()


def _upgrade(service: str, url: str, conn: Connection) -> Outcome:
    before = _current(conn)
    outcome = Outcome(service, shown(url), before, before)
    cfg = config(service, conn)

    def applied(*, step: Any, **_: Any) -> None:
        if step.is_upgrade and not step.is_stamp:
            outcome.applied.append(str(step.up_revision_id))

    cfg.attributes["on_version_apply"] = applied
    known = {s.revision for s in scripts(service).walk_revisions()}
    unknown = [rev for rev in before if rev not in known]
    if unknown:
        raise MigrationError(
            f"database at {shown(url)} is at revision {', '.join(unknown)}, which this code "
            f"of {service} does not know (did a newer version migrate it?)"
        )
    if not before:
        tables = _user_tables(conn)
        if tables:
            baseline = _baseline_tables(service)
            if tables != baseline:
                extra = sorted(set(tables) ^ set(baseline)) or sorted(
                    t for t in tables if tables[t] != baseline.get(t)
                )
                raise MigrationError(
                    f"database at {shown(url)} has tables but no migration history, and they "
                    f"are not the first revision's schema of {service} (differ: "
                    f"{', '.join(extra)}): migrate a fresh database instead"
                )
            with _ALEMBIC:
                command.stamp(cfg, _base(service))
            outcome.adopted = True
            outcome.applied.append(_base(service))
    with _ALEMBIC:
        command.upgrade(cfg, "heads")
    outcome.after = _current(conn)
    return outcome


# Alembic's ``context`` (what env.py reads) is one global of the process: migrations run
# from several threads at once (dev launching platforms in parallel, three at once in the
# replay tests) would see each other's and hang.  One at a time per process; each is
# a few milliseconds, and processes still run theirs in parallel.
_ALEMBIC = threading.RLock()


async def upgrade_async(service: str, url: str) -> Outcome:
    """Upgrade the database at ``url`` to the service's head (idempotent)."""
    return await _on_connection(url, lambda conn: _upgrade(service, url, conn), write=True)


def upgrade(service: str, url: str) -> Outcome:
    return _run(upgrade_async(service, url))


async def status_async(service: str, url: str) -> Status:
    """Where the database at ``url`` stands (a SQLite file that does not exist: empty, and
    not created)."""
    normal = normalise_url(url)
    if normal.startswith("sqlite") and ":memory:" not in normal:
        path = normal.split(":///", 1)[-1].split("?", 1)[0]
        if path and not Path(path).exists():
            return Status(service, shown(url), (), heads(service))
    return await _on_connection(url, lambda conn: _status(service, url, conn), write=False)


def status(service: str, url: str) -> Status:
    return _run(status_async(service, url))


def refusal(state: Status) -> str:
    """Why a service does not start on a database in this state."""
    known = {s.revision for s in scripts(state.service).walk_revisions()}
    unknown = [rev for rev in state.current if rev not in known]
    if unknown:
        return (
            f"database at {state.url} is at revision {', '.join(unknown)}, which this code "
            f"of {state.service} does not know (did a newer version migrate it?)"
        )
    return (
        f"database at {state.url} is not migrated ({state.describe()}): run "
        f"`tokenmall migrate {state.service} --database-url '{state.url}'` "
        f"(or set TOKENMALL_MIGRATE_ON_START=true)"
    )


async def prepare(service: str, url: str, *, migrate: bool) -> Status | Outcome:
    """At a service's start: upgrade (``migrate``) or check that the database is at head;
    raises ``NotMigrated`` with the reason otherwise."""
    if migrate:
        try:
            return await upgrade_async(service, url)
        except MigrationError as exc:
            raise NotMigrated(str(exc)) from None
    state = await status_async(service, url)
    if not state.at_head:
        raise NotMigrated(refusal(state))
    return state


# ------------------------------------------------------------------ writing revisions


def _next_id(service: str) -> str | None:
    """``0001``, ``0002``, … (one more than the largest numeric revision); Alembic's own
    kind of id when some revision is not numbered."""
    revisions = [s.revision for s in scripts(service).walk_revisions()]
    if not all(rev.isdigit() for rev in revisions):
        return None
    return f"{max(map(int, revisions), default=0) + 1:04d}"


@contextlib.contextmanager
def _scratch_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="tokenmall-migrate-") as folder:
        yield f"sqlite:///{folder}/head.db"


def new_revision(service: str, message: str, url: str | None = None) -> Path:
    """Write a revision of the difference between the service's tables (its metadata) and
    its head, autogenerated against a scratch SQLite database migrated to head (or the
    database at ``url``, which must be at head).  Returns the new file: read it and edit
    what autogenerate cannot see (sequences, data, server defaults)."""
    if not re.search(r"[A-Za-z0-9]", message):
        raise MigrationError("a revision needs a message (what it changes)")

    def write(conn: Connection) -> Path:
        state = _status(service, url or "scratch", conn)
        if not state.at_head:
            raise MigrationError(f"the database must be at head to compare ({state.describe()})")
        with _ALEMBIC:
            script = command.revision(
                config(service, conn),
                message=message,
                autogenerate=True,
                rev_id=_next_id(service),
            )
        assert script is not None and not isinstance(script, list)
        return Path(script.path)

    if url is not None:
        return _run(_on_connection(url, write, write=False))
    with _scratch_url() as scratch:
        upgrade(service, scratch)
        return _run(_on_connection(scratch, write, write=False))
