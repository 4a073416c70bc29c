"""Alembic's environment for the referrals service: ``tokenmall.migrations`` supplies the
connection and the service's tables (``tokenmall_referrals.adapters.tables.metadata``)."""

from tokenmall.migrations import run_env

run_env()
