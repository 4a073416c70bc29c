"""Alembic's environment for the dividends service: ``tokenmall.migrations`` supplies the
connection and the service's tables (``tokenmall_dividends.adapters.tables.metadata``)."""

from tokenmall.migrations import run_env

run_env()
