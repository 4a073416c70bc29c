"""N-version check: the vectorised engine and the independent pure-Python oracle
(tests/oracle/reference.py, written from RULES.md without reading the engine) must
refuse the same steps and produce the same result document on random scenarios."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings

from tests.oracle import reference
from tests.strategies import scenarios
from tokenmall.engine import Engine, Refused
from tokenmall.scenario import apply_step, parse_scenario, result_document

REQUIRED_MEMBER_KEYS = (
    "cny",
    "stable",
    "equity",
    "quota_remaining",
    "spend",
    "shares",
    "contribution",
    "star",
    "team_performance",
)


def normalise(document: dict[str, Any]) -> dict[str, Any]:
    """The SCENARIOS.md keys only, numbers as Decimals (strings compare as numbers)."""

    def num(value: Any) -> Any:
        return None if value is None else Decimal(str(value))

    return {
        "day": document["day"],
        "equity": {k: num(v) for k, v in document["equity"].items()},
        "platform": {k: num(v) for k, v in document["platform"].items()},
        "members": {
            name: {
                **{k: num(m[k]) for k in REQUIRED_MEMBER_KEYS},
                "released": {k: num(v) for k, v in m["released"].items() if num(v) != 0},
            }
            for name, m in document["members"].items()
        },
    }


def run_engine_marking_refusals(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run on the engine; mark each step it refuses with ``refused: true`` for the oracle."""
    scenario = parse_scenario(doc)
    engine = Engine(scenario.plan)
    marked = copy.deepcopy(doc)
    for step in scenario.steps:  # generated scenarios have no `repeat`: step n = raw step n-1
        try:
            apply_step(engine, step)
        except Refused:
            marked["steps"][step.number - 1]["refused"] = True
    return result_document(engine), marked


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_engine_agrees_with_oracle(doc: dict[str, Any]) -> None:
    ours, marked = run_engine_marking_refusals(doc)
    theirs = reference.run_scenario(marked)  # raises if it refuses/accepts differently
    assert normalise(ours) == normalise(theirs)
