"""Every scenario file passes `simulate`: the public ones (../shared/scenarios, when
present) and the repo's own copies and rule scenarios (tests/scenarios)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.oracle import reference
from tokenmall.scenario import load_scenario, load_yaml, simulate

REPO_SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
PUBLIC_SCENARIOS = Path(__file__).resolve().parents[3] / "shared" / "scenarios"

FILES = sorted(REPO_SCENARIOS.glob("*.yaml"))
PUBLIC = sorted(PUBLIC_SCENARIOS.glob("*.yaml")) if PUBLIC_SCENARIOS.is_dir() else []


def test_the_repo_has_its_scenarios() -> None:
    names = {p.name for p in FILES}
    assert {"seed-equity-wine.yaml", "seed-cycle-pools.yaml", "seed-points-release.yaml"} <= names
    assert len([n for n in names if n.startswith("rules-")]) >= 10


@pytest.mark.parametrize("path", FILES + PUBLIC, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_scenario_passes_its_checks(path: Path) -> None:
    result = simulate(load_scenario(path))
    assert result.scenario.checks, "a scenario file without checks proves nothing"
    assert result.failures == []


@pytest.mark.parametrize("path", PUBLIC, ids=lambda p: p.name)
def test_public_scenarios_are_copied_unchanged(path: Path) -> None:
    copy = REPO_SCENARIOS / path.name
    assert copy.exists(), f"copy {path.name} into tests/scenarios/"
    assert copy.read_text() == path.read_text()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_oracle_agrees_on_every_file(path: Path) -> None:
    doc = load_yaml(path.read_text())
    ours = simulate(load_scenario(path)).document
    theirs = reference.run_scenario(doc)
    from tests.unit.test_engine_vs_oracle import normalise

    assert normalise(ours) == normalise(theirs)
