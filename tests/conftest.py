"""Tests under tests/integration and tests/e2e need the real broker and database server:
they carry the ``integration`` marker (``make unit`` leaves them out)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
REAL_PARTS = (HERE / "integration", HERE / "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(folder in item.path.parents for folder in REAL_PARTS):
            item.add_marker(pytest.mark.integration)
