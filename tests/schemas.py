"""What the schema tests compare (tests/unit/test_migrations.py on SQLite,
tests/integration/test_migrations_postgres.py on PostgreSQL): a database migrated to head
against one made by ``metadata.create_all`` — the only place tests still call it."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData, inspect

from tokenmall import migrations


def schema_of(conn: Connection) -> dict[str, Any]:
    """Tables (columns with type, nullability, default and autoincrement; primary key,
    foreign keys, indexes, unique constraints) and sequences, as the database reports them."""
    found = inspect(conn)
    tables: dict[str, Any] = {}
    for name in sorted(found.get_table_names()):
        if name == migrations.VERSION_TABLE:
            continue
        tables[name] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in found.get_columns(name)
            ],
            "primary_key": found.get_pk_constraint(name)["constrained_columns"],
            "foreign_keys": sorted(
                (
                    tuple(fk["constrained_columns"]),
                    fk["referred_table"],
                    tuple(fk["referred_columns"]),
                )
                for fk in found.get_foreign_keys(name)
            ),
            "indexes": sorted(
                (ix["name"], tuple(str(c) for c in ix["column_names"]), bool(ix["unique"]))
                for ix in found.get_indexes(name)
            ),
            "unique": sorted(
                (str(uc["name"]), tuple(uc["column_names"]))
                for uc in found.get_unique_constraints(name)
            ),
        }
    sequences = sorted(found.get_sequence_names()) if conn.dialect.supports_sequences else []
    return {"tables": tables, "sequences": sequences}


def differences(conn: Connection, metadata: MetaData) -> list[Any]:
    """Alembic's autogenerate diff between the database and ``metadata`` ([] when equal)."""
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def metadata_sequences(metadata: MetaData) -> list[str]:
    return sorted(metadata._sequences)


def revisions(service: str) -> list[str]:
    """The service's revisions, oldest first."""
    return [s.revision for s in migrations.scripts(service).walk_revisions()][::-1]
