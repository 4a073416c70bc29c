"""The service apps here run on a fresh SQLite file each: they migrate it when they start
(``TOKENMALL_MIGRATE_ON_START``; a service's default is to refuse an unmigrated database)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def migrate_on_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENMALL_MIGRATE_ON_START", "true")
