"""The reference implementation (oracle) must satisfy every public scenario's checks."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from .reference import run_scenario

SCENARIO_DIR = Path("/work/shared/scenarios")
SCENARIOS = sorted(SCENARIO_DIR.glob("*.yaml")) if SCENARIO_DIR.is_dir() else []


def _lookup(result: dict[str, Any], path: str) -> Any:
    node: Any = result
    parts = path.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif i == len(parts) - 1 and i > 0 and parts[i - 1] == "released":
            return "0"  # a release kind never released reads as 0
        else:
            raise KeyError(f"{path}: no {part!r} in the result")
    return node


def _dec(x: Any) -> Decimal:
    return Decimal(str(x))


@pytest.mark.skipif(not SCENARIOS, reason="no public scenarios folder")
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_public_scenario(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    result = run_scenario(doc)
    failures = []
    for check in doc.get("checks") or []:
        actual = _lookup(result, check["path"])
        if "equals" in check:
            expected = check["equals"]
            if expected is None or actual is None:
                ok = expected is None and actual is None
            else:
                ok = _dec(actual) == _dec(expected)
        else:
            expected = check["approx"]
            ok = actual is not None and abs(_dec(actual) - _dec(expected)) <= _dec(check["tol"])
        if not ok:
            failures.append(f"{check['path']}: got {actual}, expected {check}")
    assert not failures, "\n".join(failures)
