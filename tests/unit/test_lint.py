"""``tokenmall lint``: each rule has a failing and a passing plan; presets; exit codes; JSON."""

from __future__ import annotations

import copy
import json
import textwrap
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tokenmall.cli import app
from tokenmall.lint import Finding, exit_code, lint_plan
from tokenmall.scenario import load_yaml

PLANS = Path(__file__).resolve().parents[1] / "plans"
runner = CliRunner()


def load(name: str) -> dict[str, Any]:
    doc = load_yaml((PLANS / name).read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


CLEAN = load("clean.yaml")


def plan(**sections: Any) -> dict[str, Any]:
    """The clean plan with whole top-level sections replaced."""
    result = copy.deepcopy(CLEAN)
    result.update(sections)
    return result


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def only(findings: list[Finding], code: str) -> list[Finding]:
    return [f for f in findings if f.code == code]


def invoke(*args: str | Path) -> Any:
    return runner.invoke(app, ["lint", *map(str, args)])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_the_clean_plan_is_clean() -> None:
    assert lint_plan(CLEAN) == []


# ------------------------------------------------------------------ levels (pyramid)

TEAM = CLEAN["team"]


@pytest.mark.parametrize(
    ("sections", "parameter"),
    [
        ({"team": {**TEAM, "max_depth": None}}, "team.max_depth"),
        ({"team": {**TEAM, "max_depth": 4}}, "team.max_depth"),
    ],
)
def test_more_than_three_levels_is_a_pyramid_warning(
    sections: dict[str, Any], parameter: str
) -> None:
    [finding] = only(lint_plan(plan(**sections)), "levels")
    assert finding.severity == "warning"
    assert finding.parameter == parameter
    assert "团队计酬" in finding.reason
    assert finding.rule is not None
    assert "禁止传销条例" in finding.rule and "2013" in finding.rule and "30+" in finding.rule


@pytest.mark.parametrize(
    "sections",
    [
        {"team": {**TEAM, "max_depth": 3}},
        {"team": None},  # referral gen2 = 2 levels
        # an unlimited walk that pays nobody (no positive level rate) earns no upline
        {"team": {"levels": [{"threshold": 100, "rate": 0}], "peer_rate": 0, "max_depth": None}},
        {"referral": {"gen1_rate": "0.5", "gen2_rate": "0.3"}, "team": None},
    ],
)
def test_three_levels_or_fewer_pass(sections: dict[str, Any]) -> None:
    assert "levels" not in codes(lint_plan(plan(**sections)))


def test_levels_count_gen2_equity_and_referral_weights() -> None:
    # all of these are at most 2 levels: never a pyramid warning on their own
    deep = plan(
        team=None,
        equity={"referral_grant_rate": "0.1", "grant_rate": "0.5"},
        weights={"share_unit": 1000, "referral_share_rate": "0.5"},
    )
    assert "levels" not in codes(lint_plan(deep))


# ------------------------------------------------------------------ funding at flat sales


def test_unfunded_quota_with_a_base_release_warns_per_tier() -> None:
    grants = {"tiers": [{"threshold": 100, "multiple": 2}], "daily_rate": Decimal("0.001")}
    [finding] = only(lint_plan(plan(grants=grants)), "funding")
    assert finding.parameter == "grants.tiers[0].multiple"
    assert finding.severity == "warning"
    assert "25%×S" in finding.reason  # the pools: 20% + 2% + 3%
    assert "from day 251" in finding.reason  # 250 days of base release at 0.1% = 25%


def test_funded_quota_passes() -> None:
    # the largest multiple (0.25x) equals the pools' 25% of sales
    assert "funding" not in codes(lint_plan(CLEAN))


def test_plan_without_pools_uses_the_funding_rate() -> None:
    grants = {"tiers": [{"threshold": 0, "multiple": "0.5"}], "daily_rate": "0.001"}
    no_pools = plan(grants=grants, pools=[])
    [finding] = only(lint_plan(no_pools), "funding")  # default 0.30 < 0.5
    assert "--funding-rate" in finding.reason
    assert only(lint_plan(no_pools, funding_rate=Fraction(1, 2)), "funding") == []
    # with an equity module the default funding rate is its pool_rate
    with_equity = {**no_pools, "equity": {"pool_rate": "0.6"}}
    assert only(lint_plan(with_equity), "funding") == []


def test_pools_only_plan_piles_up_quota() -> None:
    doc = {"preset": "cycle"}
    [finding] = only(lint_plan(doc), "funding")
    assert "40%×S" in finding.reason and "20%" in finding.reason
    funded = {"preset": "cycle", "grants": {"tiers": [{"threshold": 0, "multiple": "0.4"}]}}
    assert only(lint_plan(funded), "funding") == []


# ------------------------------------------------------------------ payback


def test_payback_beyond_n_days_warns() -> None:
    grants = {"tiers": [{"threshold": 100, "multiple": "0.25"}], "daily_rate": "0.0002"}
    [finding] = only(lint_plan(plan(grants=grants)), "payback")
    assert finding.parameter == "grants.tiers[0].multiple"
    assert "1250 days" in finding.reason  # 0.25 / 0.0002
    assert only(lint_plan(plan(grants=grants), payback_days=1250), "payback") == []


def test_payback_within_n_days_passes() -> None:
    # the points preset: 4x at 1.2%/day is the slowest, ceil(4 / 0.012) = 334 days
    assert only(lint_plan({"preset": "points"}, payback_days=334), "payback") == []
    assert only(lint_plan({"preset": "points"}), "payback") == []  # default N = 1000
    slow = only(lint_plan({"preset": "points"}, payback_days=208), "payback")
    # 2.5x: 7500 / 36 -> 209 days; the spend: ceil(1 / 0.012) = 84 days
    assert slow[0].parameter == "grants.tiers[0].multiple" and "209 days" in slow[0].reason
    assert "84 days" in slow[0].reason
    assert len(slow) == 4


def test_pools_only_payback_assumes_the_most_favourable_case() -> None:
    slow = {
        "grants": {"tiers": [{"threshold": 0, "multiple": 2}]},
        "pools": [{"name": "static", "rate": "0.001", "split": "pro_rata", "weight": "shares"}],
    }
    [finding] = only(lint_plan(slow), "payback")
    assert "2000 days" in finding.reason
    assert only(lint_plan({"preset": "cycle"}), "payback") == []  # 2 / 40% = 5 days


# ------------------------------------------------------------------ pools


def pools_with(static_rate: str) -> list[dict[str, Any]]:
    pools = copy.deepcopy(CLEAN["pools"])
    pools[0]["rate"] = static_rate
    return pools


def test_pool_rates_beyond_sales_warn() -> None:
    [finding] = only(lint_plan(plan(pools=pools_with("0.96"))), "pool-rates")
    assert finding.parameter == "pools" and "101%" in finding.reason


def test_pool_rates_up_to_sales_pass() -> None:
    assert only(lint_plan(plan(pools=pools_with("0.95"))), "pool-rates") == []  # exactly 100%


def test_equity_pool_rate_counts_towards_sales() -> None:
    findings = lint_plan(plan(pools=pools_with("0.75"), equity={"pool_rate": "0.30"}))
    assert "pool-rates" in codes(findings)


def test_rate_of_a_tiers_pool_is_ignored() -> None:
    pools = copy.deepcopy(CLEAN["pools"])
    pools[1]["rate"] = "0.5"
    [finding] = only(lint_plan(plan(pools=pools)), "ignored")
    assert finding.parameter == "pools[1].rate"


def tiers_pool(weight: str, *tiers: tuple[Any, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": "dynamic",
            "split": "tiers",
            "weight": weight,
            "tiers": [
                {"name": f"V{i + 1}", "min": lo, "max": hi, "rate": "0.01"}
                for i, (lo, hi) in enumerate(tiers)
            ],
        }
    ]


@pytest.mark.parametrize(
    ("pools", "code", "parameter"),
    [
        (tiers_pool("shares", (50, 100), (100, 200)), "tier-overlap", "pools[0].tiers[1]"),
        (tiers_pool("shares", (50, None), (101, 200)), "tier-overlap", "pools[0].tiers[1]"),
        (tiers_pool("shares", (50, 1000), (101, 200)), "tier-overlap", "pools[0].tiers[1]"),
        (tiers_pool("shares", (50, 100), (102, 200)), "tier-gap", "pools[0].tiers[1]"),
        (tiers_pool("equity_points", (50, 100), (101, 200)), "tier-gap", "pools[0].tiers[1]"),
        (
            tiers_pool("contribution", (Decimal("100.2"), Decimal("100.7"))),
            "tier-empty",
            "pools[0].tiers[0]",
        ),
    ],
)
def test_tiers_that_overlap_leave_gaps_or_hold_nothing_warn(
    pools: list[dict[str, Any]], code: str, parameter: str
) -> None:
    findings = lint_plan(plan(pools=pools))
    [finding] = only(findings, code)
    assert finding.parameter == parameter and finding.severity == "warning"


@pytest.mark.parametrize(
    "pools",
    [
        tiers_pool("shares", (50, 100), (101, 200), (201, None)),
        tiers_pool("contribution", (50, Decimal("100.5")), (101, 200)),
        tiers_pool("equity_points", (50, 100), (Decimal("100.00000001"), 200)),
        tiers_pool("shares", (50, 100)),  # below the first min is not a gap
    ],
)
def test_contiguous_tiers_pass(pools: list[dict[str, Any]]) -> None:
    found = codes(lint_plan(plan(pools=pools)))
    assert not {"tier-overlap", "tier-gap", "tier-empty"} & set(found)


def test_gap_message_names_the_missing_values() -> None:
    [finding] = only(lint_plan(plan(pools=tiers_pool("shares", (50, 100), (103, 200)))), "tier-gap")
    assert "101–102 shares" in finding.reason


# ------------------------------------------------------------------ ordering


def test_thresholds_not_ascending_warn() -> None:
    grants = {
        "tiers": [{"threshold": 1000, "multiple": "0.25"}, {"threshold": 100, "multiple": "0.2"}],
        "daily_rate": "0.001",
    }
    team = {**TEAM, "levels": list(reversed(TEAM["levels"]))}
    pools = tiers_pool("shares", (101, 200), (1, 100))
    findings = only(lint_plan(plan(grants=grants, team=team, pools=pools)), "order")
    assert {f.parameter for f in findings} == {
        "grants.tiers[1].threshold",
        "team.levels[1].threshold",
        "pools[0].tiers[1].min",
    }
    assert all(f.severity == "warning" for f in findings)


def test_duplicate_team_thresholds_and_falling_rates_warn() -> None:
    same = {
        **TEAM,
        "levels": [{"threshold": 100, "rate": "0.1"}, {"threshold": 100, "rate": "0.2"}],
    }
    [dup] = only(lint_plan(plan(team=same)), "order")
    assert dup.parameter == "team.levels[1].threshold"
    falling = {
        **TEAM,
        "levels": [{"threshold": 100, "rate": "0.2"}, {"threshold": 200, "rate": "0.1"}],
    }
    [fall] = only(lint_plan(plan(team=falling)), "order")
    assert fall.parameter == "team.levels[1].rate"


def test_ascending_thresholds_pass() -> None:
    assert only(lint_plan(CLEAN), "order") == []
    assert only(lint_plan({"preset": "points"}), "order") == []


def test_duplicate_grant_thresholds_are_an_engine_error() -> None:
    grants = {"tiers": [{"threshold": 100, "multiple": 1}, {"threshold": 100, "multiple": 2}]}
    [finding] = lint_plan(plan(grants=grants))
    assert finding.severity == "error" and finding.parameter == "grants.tiers"


# ------------------------------------------------------------------ out of range: engine errors


@pytest.mark.parametrize(
    ("sections", "parameter"),
    [
        ({"referral": {"gen1_rate": "1.5", "gen2_rate": 0}}, "referral.gen1_rate"),
        ({"team": {**TEAM, "max_depth": -1}}, "team.max_depth"),
        ({"grants": {"tiers": [{"threshold": 0, "multiple": 101}]}}, "grants.tiers[0].multiple"),
        ({"pools": tiers_pool("shares", (100, 50))}, "pools[0].tiers[0].max"),
        (
            {"pools": [{"name": "x", "rate": "0.1", "split": "pro_rata", "weight": "w"}]},
            "pools[0].weight",
        ),
        ({"equity": {"grant_rate": "0.8", "referral_grant_rate": "0.3"}}, "equity.grant_rate"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"grants": {"tiers": [{"threshold": "abc", "multiple": 1}]}}, "grants.tiers[0].threshold"),
        ({"bogus": 1}, "bogus"),
        ({"team": {"depth": 3}}, "team.depth"),
        ({"preset": "nope"}, "preset"),
    ],
)
def test_out_of_range_is_an_error_naming_the_key(sections: dict[str, Any], parameter: str) -> None:
    findings = lint_plan(plan(**sections))
    errors = [f for f in findings if f.severity == "error"]
    assert [f.parameter for f in errors] == [parameter], findings
    assert exit_code(findings) == 2


def test_every_broken_section_is_named_and_valid_sections_still_checked() -> None:
    findings = lint_plan(
        plan(
            referral={"gen1_rate": "-0.1", "gen2_rate": 0},
            grants={"tiers": [{"threshold": 0, "multiple": 1}], "daily_rate": "1.5"},
            team={**TEAM, "max_depth": None},
        )
    )
    errors = {f.parameter for f in findings if f.severity == "error"}
    assert errors == {"referral.gen1_rate", "grants.daily_rate"}
    assert "levels" in codes(findings)  # the team section is valid on its own
    assert "funding" not in codes(findings)  # needs an error-free plan


# ------------------------------------------------------------------ presets and file shapes


def test_presets() -> None:
    points = lint_plan({"preset": "points"})
    assert codes(points) == ["levels"] + ["funding"] * 4
    assert all(f.severity == "warning" for f in points)
    assert points[0].parameter == "team.max_depth" and "unlimited" in points[0].reason
    cycle = lint_plan({"preset": "cycle"})
    assert codes(cycle) == ["funding"]
    assert lint_plan({"preset": "equity"}) == []


def test_scenario_files_and_plan_files_both_work() -> None:
    scenario = load("scenario.yaml")
    assert codes(lint_plan(scenario)) == ["tier-gap", "funding"]
    assert codes(lint_plan(scenario["plan"])) == ["tier-gap", "funding"]
    bad = {**scenario, "grants": {}}
    assert [(f.severity, f.parameter) for f in lint_plan(bad)][:1] == [("error", "grants")]
    assert lint_plan(None) == []
    assert exit_code(lint_plan([1, 2])) == 2


# ------------------------------------------------------------------ CLI


def test_cli_exit_codes() -> None:
    assert invoke(PLANS / "clean.yaml").exit_code == 0
    assert invoke(PLANS / "pyramid-unfunded.yaml").exit_code == 1
    assert invoke(PLANS / "out-of-range.yaml").exit_code == 2
    assert invoke(PLANS / "scenario.yaml").exit_code == 1


def test_cli_unreadable_or_invalid_files_exit_2(tmp_path: Path) -> None:
    missing = invoke(tmp_path / "missing.yaml")
    assert missing.exit_code == 2 and "cannot read" in missing.output
    broken = invoke(write(tmp_path, "grants: [unclosed\n"), "--json")
    assert broken.exit_code == 2
    doc = json.loads(broken.output)
    assert doc["findings"][0]["parameter"] == "file" and doc["status"] == "errors"


def test_cli_json_shape() -> None:
    result = invoke(PLANS / "pyramid-unfunded.yaml", "--json")
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert set(doc) == {"file", "status", "exit_code", "findings"}
    assert doc["status"] == "warnings" and doc["exit_code"] == 1
    for finding in doc["findings"]:
        assert set(finding) == {"severity", "code", "parameter", "reason", "rule"}
    assert [f["code"] for f in doc["findings"]].count("payback") == 2  # 3.5x and 4x at 0.3%
    assert doc["findings"][0] == {
        "severity": "warning",
        "code": "levels",
        "parameter": "team.max_depth",
        "reason": doc["findings"][0]["reason"],
        "rule": doc["findings"][0]["rule"],
    }
    clean = json.loads(invoke(PLANS / "clean.yaml", "--json").output)
    assert clean == {
        "file": str(PLANS / "clean.yaml"),
        "status": "clean",
        "exit_code": 0,
        "findings": [],
    }


def test_cli_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        grants:
          tiers: [{threshold: 0, multiple: 0.5}]
          daily_rate: 0.0004
        """,
    )
    assert invoke(path).exit_code == 1  # 0.5 > 30% funding; 1250 days > 1000
    assert invoke(path, "--funding-rate", "0.5", "--payback-days", "1250").exit_code == 0
    bad = invoke(path, "--funding-rate", "2")
    assert bad.exit_code == 2 and "between 0 and 1" in bad.output
    assert invoke(path, "--payback-days", "0").exit_code == 2


def test_cli_table_output() -> None:
    result = invoke(PLANS / "pyramid-unfunded.yaml")
    text = " ".join(result.output.split())
    assert "team.max_depth" in text and "warning" in text and "7 warning(s)" in text
    clean = invoke(PLANS / "clean.yaml")
    assert "clean" in clean.output
