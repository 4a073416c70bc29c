"""Revisions of the referrals schema, oldest first: ``NNNN_<slug>.py`` (Alembic skips this file)."""
