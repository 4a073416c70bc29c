"""Revisions of the wallet schema, oldest first: ``NNNN_<slug>.py`` (Alembic skips this file)."""
