"""Revisions of the orders schema, oldest first: ``NNNN_<slug>.py`` (Alembic skips this file)."""
