"""The wallet service's schema migrations (Alembic).

``tokenmall migrate wallet`` applies them; ``tokenmall migrate --new "what changes" wallet``
writes the next revision into ``versions/`` (see tokenmall.migrations)."""
