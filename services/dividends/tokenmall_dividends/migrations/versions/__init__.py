"""Revisions of the dividends schema, oldest first: ``NNNN_<slug>.py`` (Alembic skips this file)."""
