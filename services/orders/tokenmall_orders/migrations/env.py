"""Alembic's environment for the orders service: ``tokenmall.migrations`` supplies the
connection and the service's tables (``tokenmall_orders.adapters.tables.metadata``)."""

from tokenmall.migrations import run_env

run_env()
