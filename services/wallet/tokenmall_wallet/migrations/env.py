"""Alembic's environment for the wallet service: ``tokenmall.migrations`` supplies the
connection and the service's tables (``tokenmall_wallet.adapters.tables.metadata``)."""

from tokenmall.migrations import run_env

run_env()
