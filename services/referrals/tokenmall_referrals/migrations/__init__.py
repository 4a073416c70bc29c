"""The referrals service's schema migrations (Alembic).

``tokenmall migrate referrals`` applies them; ``tokenmall migrate --new "what changes" referrals``
writes the next revision into ``versions/`` (see tokenmall.migrations)."""
