"""The orders service's schema migrations (Alembic).

``tokenmall migrate orders`` applies them; ``tokenmall migrate --new "what changes" orders``
writes the next revision into ``versions/`` (see tokenmall.migrations)."""
