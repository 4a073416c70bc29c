"""``tokenmall project``: the projection runs the real engine over a synthetic population."""

from __future__ import annotations

import json
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tokenmall import projection as pj
from tokenmall.cli import app
from tokenmall.engine import Plan

POINTS_NO_REFERRALS = {"preset": "points", "referral": None, "team": None}


def one_buyer(plan: dict[str, object], amount: str, days: int) -> pj.ScenarioRun:
    pop = pj.Population(members=1, tree="none", order_sizes=pj.OrderSizes.parse(f"{amount}:1"))
    return pj.run_scenario(Plan.from_mapping(plan), pop, "one", [1] + [0] * (days - 1))


def test_one_buyer_of_3000_is_paid_back_as_the_issue_computes_by_hand() -> None:
    # points preset: 3000 → quota 2.5 × 3000 = 7500, base 1.2 % = 36 a day
    run = one_buyer(POINTS_NO_REFERRALS, "3000", 240)
    assert run.payback["50%"] == {"p50": 42, "p90": 42}  # ceil(1500 / 36)
    assert run.payback["100%"] == {"p50": 84, "p90": 84}  # ceil(3000 / 36)
    outstanding = dict(zip(run.day, run.outstanding, strict=True))
    assert outstanding[1] == 750000 - 3600
    assert outstanding[208] == 750000 - 208 * 3600 > 0
    assert outstanding[209] == 0  # the whole 7,500 after ceil(7500 / 36) = 209 days
    assert run.released_total == 750000 and run.paid_total == 750000
    assert run.top_share == {"top_1%": 1.0, "top_10%": 1.0}
    assert run.inflow_kind == "stated"
    assert run.inflow[-1] == 300000 * 3 // 10  # stated funding 30 % of the 3000 sold


def test_a_buyer_below_every_tier_is_never_paid_back_within_the_horizon() -> None:
    run = one_buyer(POINTS_NO_REFERRALS, "2999", 50)
    assert run.payback["50%"] == {"p50": None, "p90": None}
    doc = pj.scenario_document(run)
    assert doc["payback_days"]["50%"]["p50"] == "never within 50 days"
    assert run.top_share == {"top_1%": None, "top_10%": None}  # nothing released at all


def test_kaplan_meier_counts_late_buyers_as_censored_not_as_never() -> None:
    # times 2, 5, 5 reached; 3 and 8 observed without reaching (censored)
    duration = np.array([2, 3, 5, 5, 8])
    reached = np.array([True, False, True, True, False])
    # S(2) = 4/5; S(5) = 4/5 × (1 − 2/3) = 4/15 ≈ 0.27: median 5, 90 % never reached
    assert pj.kaplan_meier_percentiles(duration, reached, (0.5, 0.9)) == {"p50": 5, "p90": None}
    curve = pj.kaplan_meier_curve(duration, reached, 8)
    assert curve[1] == 0 and curve[2] == pytest.approx(0.2) and curve[5] == pytest.approx(11 / 15)
    # the same buyers counted as "never" (no censoring) would give no median at all
    assert pj.kaplan_meier_percentiles(duration[reached], reached[reached], (0.5,)) == {"p50": 5}


def test_sales_scenarios_follow_their_rates_with_fractions_carried_over() -> None:
    sales = pj.Sales(start_rate=0.01, growth=0.1, decline=0.5, max_rate=0.02)
    assert sales.schedule("flat", 1000, 5) == [10] * 5
    growing = sales.schedule("growing", 1000, 12)
    assert growing[:3] == [10, 11, 12] and growing[-1] == 20  # capped at 2 %
    assert sales.schedule("declining", 1000, 4) == [10, 5, 2, 1]  # 10, 5, 2.5, 1.25 carried
    assert sum(pj.Sales(start_rate=0.001).schedule("flat", 1500, 10)) == 15  # 1.5 a day
    with pytest.raises(pj.ProjectionError, match="max rate"):
        pj.Sales(start_rate=0.05, max_rate=0.01)


@pytest.mark.parametrize("tree", pj.TREES)
def test_referral_trees_register_sponsors_first(tree: str) -> None:
    pop = pj.Population(members=5000, tree=tree, sponsored=0.9)
    parent = pj.referral_tree(pop, np.random.default_rng(7))
    assert all(p < i for i, p in enumerate(parent))
    roots = sum(p < 0 for p in parent)
    if tree == "none":
        assert roots == 5000
    else:
        assert 400 < roots < 600  # about 10 % unsponsored


def test_preferential_attachment_grows_leaders_a_uniform_tree_does_not() -> None:
    def biggest(tree: str) -> int:
        pop = pj.Population(members=20000, tree=tree, sponsored=1.0)
        parent = np.array(pj.referral_tree(pop, np.random.default_rng(3)))
        return int(np.bincount(parent[parent >= 0]).max())

    assert biggest("preferential") > 3 * biggest("random")


def test_order_sizes_parse_and_draw() -> None:
    sizes = pj.OrderSizes.parse("3000:3, 9000.50:1")
    drawn = sizes.draw(np.random.default_rng(1), 4000)
    assert set(drawn.tolist()) == {300000, 900050}
    assert 0.7 < float(np.mean(drawn == 300000)) < 0.8
    spread = pj.OrderSizes.parse("lognormal:3000:0.8").draw(np.random.default_rng(1), 4000)
    assert spread.min() >= 100 and np.all(spread % 100 == 0)  # whole CNY, at least 1
    assert 2500 * 100 < np.median(spread) < 3500 * 100
    for bad in ("3000", "3000:0", "-5:1", "lognormal:0:1", "0:1"):
        with pytest.raises(pj.ProjectionError, match="order sizes"):
            pj.OrderSizes.parse(bad)


def test_equity_pool_inflow_price_and_books() -> None:
    pop = pj.Population(members=400, seed=5)
    schedule = pj.Sales(start_rate=0.05).schedule("flat", 400, 30)
    run = pj.run_scenario(Plan.from_mapping({"preset": "equity"}), pop, "flat", schedule)
    assert run.inflow_kind == "pools"
    assert run.inflow[-1] == sum(run.sales) * 3 // 10  # 30 % of every (whole-CNY) order
    prices = [Fraction(*p) for p in run.price if p is not None]
    assert len(prices) == 30 and all(b >= a for a, b in pairwise(prices))
    assert run.released_total == 0 and run.outstanding[-1] > 0
    # what forced exits paid is all that left the pool: pool = inflow − payouts
    assert run.pool[-1] == run.inflow[-1] - run.paid_total


def test_daily_pools_inflow_is_their_funding_of_each_days_sales() -> None:
    pop = pj.Population(members=300, seed=2)
    schedule = pj.Sales(start_rate=0.05).schedule("flat", 300, 20)
    run = pj.run_scenario(Plan.from_mapping({"preset": "cycle"}), pop, "flat", schedule)
    rates = (Fraction("0.30"), Fraction("0.01"), Fraction("0.03"), Fraction("0.06"))
    expected = sum(
        sale * r.numerator // r.denominator for sale in run.sales for r in rates
    )  # every pool and tier funded from the day's sales, floored per pool
    assert run.inflow[-1] == expected
    released = sum(run.released)
    assert released + run.retained[-1] + run.rounding[-1] == expected


def test_parallel_processes_give_the_serial_result() -> None:
    pop = pj.Population(members=300, seed=9)
    sales = pj.Sales(start_rate=0.02)
    serial = pj.project({"preset": "points"}, pop, sales, 25, workers=1)
    seen: list[tuple[str, int]] = []
    parallel = pj.project(
        {"preset": "points"},
        pop,
        sales,
        25,
        workers=2,
        on_progress=lambda name, day: seen.append((name, day)),
    )
    assert list(serial) == list(parallel) == list(pj.SCENARIOS)
    for name in pj.SCENARIOS:
        assert pj.scenario_document(serial[name]) == pj.scenario_document(parallel[name])
        assert (name, 25) in seen  # the progress reaches the last day


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_cli_json_table_and_plot(tmp_path: Path) -> None:
    plan = write(tmp_path, "preset: points\n")
    png = tmp_path / "p.png"
    runner = CliRunner()
    args = ["project", str(plan), "--members", "400", "--days", "40", "--start-rate", "0.02"]
    result = runner.invoke(app, [*args, "--json", "--plot", str(png), "--workers", "1"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc["scenarios"]) == set(pj.SCENARIOS)
    flat = doc["scenarios"]["flat"]
    assert len(flat["series"]["outstanding_quota"]) == 40
    assert flat["series"]["orders"] == [8] * 40
    assert doc["settings"]["members"] == 400 and doc["settings"]["tree"] == "preferential"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = runner.invoke(app, [*args, "--scenario", "flat", "--workers", "1"])
    assert table.exit_code == 0, table.output
    assert "outstanding" in table.stdout and "payback" in table.stdout
    assert "growing" not in table.stdout


def test_cli_one_buyer_hand_case(tmp_path: Path) -> None:
    plan = write(tmp_path, "preset: points\nreferral: null\nteam: null\n")
    args = ["project", str(plan), "--members", "1", "--days", "220", "--tree", "none"]
    args += ["--start-rate", "1", "--max-rate", "1", "--scenario", "declining"]
    args += ["--decline", "0.999", "--order-sizes", "3000:1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)["scenarios"]["declining"]
    assert doc["series"]["orders"][:3] == [1, 0, 0] and sum(doc["series"]["orders"]) == 1
    assert doc["payback_days"] == {"50%": {"p50": 42, "p90": 42}, "100%": {"p50": 84, "p90": 84}}
    assert doc["series"]["outstanding_quota"][207] == "12.00"
    assert doc["series"]["outstanding_quota"][208] == "0.00"


@pytest.mark.parametrize(
    ("text", "extra", "message"),
    [
        ("grants: {daily_rate: 2}\n", [], "daily_rate"),
        ("preset: nope\n", [], "preset"),
        ("preset: points\n", ["--scenario", "boom"], "scenario"),
        ("preset: points\n", ["--order-sizes", "x"], "order sizes"),
        ("preset: points\n", ["--tree", "ring"], "tree"),
        ("preset: points\n", ["--funding-rate", "lots"], "funding"),
        ("- a list\n", [], "plan"),
        ("preset: points\n", ["--seed", "-1"], "seed"),
        ("preset: points\n", ["--growth", "1.5"], "growth"),
        (
            "preset: points\n",
            ["--order-sizes", "999999999999:1", "--start-rate", "1", "--members", "100"],
            "refused",
        ),
    ],
)
def test_cli_refuses_bad_plans_and_settings(
    tmp_path: Path, text: str, extra: list[str], message: str
) -> None:
    plan = write(tmp_path, text)
    result = CliRunner().invoke(
        app, ["project", str(plan), "--members", "10", "--days", "3", *extra]
    )
    assert result.exit_code == 2
    assert message in result.output.lower()


def test_promised_against_inflow_and_retained_by_kind() -> None:
    # A sponsors B; both buy 3000 (points preset): B's base earns A gen-1 and gen-2-less
    # accelerations that A's own quota caps; what A cannot take is retained (burn rule)
    plan = Plan.from_mapping({"preset": "points", "team": None})
    pop = pj.Population(
        members=2, tree="random", sponsored=1.0, order_sizes=pj.OrderSizes.parse("3000:1")
    )
    run = pj.run_scenario(plan, pop, "two", [2] + [0] * 299)
    assert pj.referral_tree(pop, np.random.default_rng(pop.seed)) == [-1, 0]
    doc = pj.scenario_document(run)
    assert run.retained[-1] == run.retained_pools[-1] + run.retained_unfunded[-1]
    assert run.retained_pools[-1] == 0 and run.retained_unfunded[-1] > 0
    assert run.paid[-1] == run.paid_total == 2 * 750000  # both quotas, in full
    # everything promised (paid + owed) against 30 % stated funding of 6000
    assert doc["series"]["promised_to_pool_inflow"][-1] == round(1500000 / 180000, 4)
    assert doc["totals"]["retained_unfunded"] == doc["series"]["retained_unfunded"][-1]
    assert any("no pools" in note for note in doc["notes"])


def test_growth_far_past_its_cap_does_not_overflow() -> None:
    sales = pj.Sales(start_rate=0.001, growth=1.0, max_rate=0.5)
    assert sales.rate("growing", 100_000) == 0.5
    assert sales.rate("growing", 2) == 0.002
    with pytest.raises(pj.ProjectionError, match="seed"):
        pj.Population(seed=-1)


def test_no_buyers_is_said_as_such() -> None:
    pop = pj.Population(members=3, tree="none")
    run = pj.run_scenario(Plan.from_mapping({"preset": "points"}), pop, "none", [0, 0, 0])
    assert run.buyers == 0
    assert pj.scenario_document(run)["payback_days"]["50%"] == {
        "p50": "no buyers",
        "p90": "no buyers",
    }


def test_cli_reads_the_plan_section_of_a_scenario_file(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        "name: s\nplan:\n  preset: points\n  referral: null\n  team: null\n"
        "steps:\n  - join: {member: A}\n",
        encoding="utf-8",
    )
    args = ["project", str(scenario), "--members", "1", "--days", "90", "--tree", "none"]
    args += ["--start-rate", "1", "--scenario", "declining", "--decline", "0.999"]
    args += ["--order-sizes", "3000:1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)["scenarios"]["declining"]
    assert doc["payback_days"]["100%"] == {"p50": 84, "p90": 84}  # the plan: section ran


def test_a_stated_funding_rate_is_used_only_without_pools() -> None:
    pop = pj.Population(members=50, seed=4)
    schedule = pj.Sales(start_rate=0.1).schedule("flat", 50, 5)
    half = Fraction(1, 2)
    points = pj.run_scenario(
        Plan.from_mapping({"preset": "points"}), pop, "f", schedule, funding_rate=half
    )
    assert points.inflow[-1] == sum(points.sales) // 2
    cycle = pj.run_scenario(
        Plan.from_mapping({"preset": "cycle"}), pop, "f", schedule, funding_rate=half
    )
    assert cycle.inflow[-1] < sum(cycle.sales) // 2  # the pools' own 40 %
    assert any("not used" in note for note in cycle.notes)
