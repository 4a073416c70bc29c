"""Large values: refused cleanly or computed exactly, never a traceback or a wrapped int64."""

from __future__ import annotations

from typing import Any

import pytest

from tokenmall.engine import Engine, Plan, PlanError, Refused
from tokenmall.scenario import ScenarioError, StepFailed, parse_scenario, simulate


def test_largest_orders_settle_without_overflow() -> None:
    # one order at the limit and many tiny ones: the totals are far inside int64
    doc: dict[str, Any] = {
        "plan": {"grants": {"tiers": [{"threshold": 0, "multiple": 2}]}},
        "steps": [
            {"join": {"member": "A"}},
            {"order": {"member": "A", "amount": "1000000000000"}},
            {"order": {"member": "A", "amount": "1"}, "repeat": 3000},
            {"settle": {}},
        ],
    }
    doc_result = simulate(parse_scenario(doc)).document
    assert doc_result["members"]["A"]["quota_remaining"] == "2000000006000.00"


def test_wide_tree_with_a_huge_order_reports_team_performance() -> None:
    engine = Engine(Plan.from_mapping({}))
    engine.join("R")
    for i in range(5000):
        engine.join(f"M{i}", "R")
    engine.order("M1", 10**14)
    from tokenmall.scenario import result_document

    assert result_document(engine)["members"]["R"]["team_performance"] == "1000000000000.00"


def test_amount_over_the_limit_is_refused() -> None:
    engine = Engine(Plan.from_mapping({}))
    engine.join("A")
    with pytest.raises(Refused, match="limit"):
        engine.order("A", 10**14 + 1)


def test_lifetime_sales_beyond_the_supported_range_are_refused() -> None:
    engine = Engine(Plan.from_mapping({}))
    engine.join("A")
    for _ in range(100):
        engine.order("A", 10**14)
    with pytest.raises(Refused, match="supported range"):
        engine.order("A", 1)
    assert engine.sales_total == 10**16


def test_multiple_beyond_the_limit_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="multiple"):
        Plan.from_mapping({"grants": {"tiers": [{"threshold": 0, "multiple": 100000}]}})


@pytest.mark.parametrize("amount", ["1e1000000", "1e-1000000", "1" * 60])
def test_absurd_numbers_are_file_errors(amount: str) -> None:
    doc = {"steps": [{"join": {"member": "A"}}, {"order": {"member": "A", "amount": amount}}]}
    with pytest.raises(ScenarioError, match=r"step 2 \(order\)"):
        parse_scenario(doc)


def test_absurd_rate_is_a_plan_error() -> None:
    with pytest.raises(ScenarioError, match="out of range"):
        parse_scenario({"plan": {"preset": "points", "grants": {"daily_rate": "1.0e999999999"}}})


def test_refused_huge_amount_flagged_refused_is_fine() -> None:
    doc = {
        "steps": [
            {"join": {"member": "A"}},
            {"order": {"member": "A", "amount": "1000000000000000"}, "refused": True},
        ]
    }
    assert simulate(parse_scenario(doc)).document["platform"]["sales"] == "0.00"
    doc["steps"][1].pop("refused")
    with pytest.raises(StepFailed, match="limit"):
        simulate(parse_scenario(doc))


def test_a_member_cannot_sponsor_themselves() -> None:
    engine = Engine(Plan.from_mapping({}))
    with pytest.raises(Refused, match="cannot sponsor themselves"):
        engine.join("A", "A")
    assert engine.names == []


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../etc/passwd"])
def test_unknown_timezone_is_a_plan_error(zone: str) -> None:
    with pytest.raises(PlanError, match="timezone"):
        Plan.from_mapping({"timezone": zone})
