"""The dividends service's schema migrations (Alembic).

``tokenmall migrate dividends`` applies them; ``tokenmall migrate --new "what changes" dividends``
writes the next revision into ``versions/`` (see tokenmall.migrations)."""
