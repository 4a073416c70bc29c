"""Bad scenario files (SCENARIOS.md "Steps"): rejected up front, or stopped at the right step.

* A file that cannot be read as a scenario (invalid YAML, unknown step or field,
  a number that is not a number) raises ScenarioError before any step runs.
* A step the rules refuse, without ``refused: true``, stops the run with
  StepFailed naming its 1-based number (``repeat`` expansions count) and why.
* ``refused: true`` on an accepted step also stops the run.
* A refused step changes nothing at all: the engine state before and after is equal.
"""

from __future__ import annotations

import copy
import re
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tokenmall.engine import Engine, Plan, Refused
from tokenmall.scenario import (
    ScenarioError,
    Step,
    StepFailed,
    apply_step,
    load_scenario,
    parse_scenario,
    result_document,
    run_steps,
    simulate,
)


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ---------------------------------------------------------------- unreadable files


def test_invalid_yaml_is_a_scenario_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        steps:
          - join: {member: A
          - order: {member: A, amount: 100}
        """,
    )
    with pytest.raises(ScenarioError, match="invalid YAML"):
        load_scenario(path)


def test_not_a_mapping_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="mapping"):
        load_scenario(write(tmp_path, "- join: {member: A}\n"))


def test_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.yaml")


def test_unknown_step_kind_names_the_step_and_the_kind(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        steps:
          - join: {member: A}
          - buy: {member: A, amount: 100}
        """,
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert "'buy'" in message
    assert "unknown step" in message
    # second entry of the list: steps[1] (0-based index) or step 2
    assert re.search(r"steps\[1\]|step 2\b", message), message


def test_unknown_field_names_the_step_and_the_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        steps:
          - join: {member: A}
          - join: {member: B}
          - order: {member: A, amount: 100, colour: red}
        """,
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert "colour" in message
    assert "unknown field" in message
    assert re.search(r"steps\[2\]|step 3\b", message), message


def test_unknown_top_level_key_and_check_field(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="stepz"):
        load_scenario(write(tmp_path, "stepz: []\n"))
    with pytest.raises(ScenarioError, match=r"checks\[0\].*within"):
        load_scenario(write(tmp_path, "checks: [{path: day, equals: 1, within: 2}]\n", "c.yaml"))


def test_missing_required_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        steps:
          - join: {member: A}
          - order: {member: A}
        """,
    )
    with pytest.raises(ScenarioError, match=r"order needs \['amount'\]"):
        load_scenario(path)


def test_unknown_plan_key_in_a_plan_step(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        steps:
          - join: {member: A}
          - plan: {grants: {dialy_rate: 0.01}}
        """,
    )
    with pytest.raises(ScenarioError, match="dialy_rate"):
        load_scenario(path)


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ("order: {member: A, amount: ten}", "amount"),
        ("order: {member: A, amount: 100, stable: lots}", "stable"),
        ("sell: {member: A, points: some}", "points"),
        ("exchange: {member: A, points: '1,5'}", "points"),
        ("merchant_exchange: {member: A, stable: [1]}", "stable"),
        ("adjust: {member: A, asset: cny, amount: true, reason: x}", "amount"),
        ("order: {member: A, amount: .nan}", "amount"),
    ],
)
def test_non_numeric_amount_rejected_before_any_step(tmp_path: Path, step: str, field: str) -> None:
    # Step 1 would be refused at run time (unknown member): getting a ScenarioError
    # and not a StepFailed shows the whole file is read before anything runs.
    path = write(
        tmp_path,
        f"""\
        plan: {{preset: equity}}
        steps:
          - order: {{member: ghost, amount: 100}}
          - join: {{member: "m{{i}}"}}
            repeat: 3
          - {step}
        """,
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert field in message
    if ".nan" not in step:  # YAML floats are rejected by the loader, with a line number
        assert "step 5" in message, message  # 1 + 3 repeats + 1


def test_non_numeric_amount_in_a_repeated_step_names_the_expanded_step() -> None:
    doc = {
        "steps": [
            {"join": {"member": "A"}},
            {"order": {"member": "A", "amount": "{i}0"}, "repeat": 2},
            {"order": {"member": "A", "amount": "1{i}x"}, "repeat": 2},
        ]
    }
    with pytest.raises(ScenarioError, match=r"step 4 \(order\)"):
        parse_scenario(doc)


def test_non_numeric_plan_value_at_top_level_is_a_scenario_error() -> None:
    with pytest.raises(ScenarioError, match="daily_rate"):
        parse_scenario({"plan": {"preset": "points", "grants": {"daily_rate": "abc"}}})


def test_non_numeric_value_in_a_plan_step_is_rejected_before_any_step() -> None:
    doc = {
        "plan": {"preset": "cycle"},
        "steps": [
            {"join": {"member": "A"}},
            {"plan": {"grants": {"daily_rate": "abc"}}},
        ],
    }
    with pytest.raises(ScenarioError, match="daily_rate"):
        parse_scenario(doc)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"join": {"member": "A"}, "repeat": 0}, "repeat"),
        ({"join": {"member": "A"}, "repeat": "two"}, "repeat"),
        ({"join": {"member": "A"}, "repeat": "2.5"}, "repeat"),
        ({"join": {"member": "A"}, "repeat": -1}, "repeat"),
        ({"join": {"member": "A"}, "repeat": True}, "repeat"),
        ({"join": {"member": "A"}, "refused": "yes"}, "refused"),
        ({"join": {"member": "A"}, "order": {"member": "A", "amount": 1}}, "exactly one"),
        ({"join": {"member": ["A"]}}, "member must be a string"),
        ({"join": {"member": "A", "merchant": "no"}}, "merchant"),
        ({"sell": {"member": "A", "all": "yes"}}, "all must be"),
        ("join", "one-key mapping"),
    ],
)
def test_malformed_step_modifiers_and_fields(raw: Any, match: str) -> None:
    with pytest.raises(ScenarioError, match=match):
        parse_scenario({"steps": [raw]})


@pytest.mark.parametrize("repeat", [3, "3", " 3 ", Decimal("3.0")])
def test_repeat_may_be_written_as_a_string(repeat: Any) -> None:
    # SCENARIOS.md: numbers may be written as YAML numbers or strings
    (*_, last) = parse_scenario({"steps": [{"join": {"member": "m{i}"}, "repeat": repeat}]}).steps
    assert (last.number, last.fields) == (3, {"member": "m3"})


# ---------------------------------------------------------------- refused at run time

# Steps 1-5; every case below adds its bad step(s) from step 6 on.
PREFIX = """\
plan: {preset: equity}
steps:
  - join: {member: "m{i}"}
    repeat: 3
  - join: {member: shop, merchant: true}
  - order: {member: m1, amount: 100, id: a1}     # m1: 21 points, quota 200
"""

RUNTIME_CASES: list[tuple[str, str, int, str, str]] = [
    # (id, extra steps, failing step number, kind, message regex)
    (
        "unknown-member",
        "  - order: {member: nobody, amount: 100}\n",
        6,
        "order",
        r"unknown member 'nobody'",
    ),
    ("negative-amount", "  - order: {member: m2, amount: -5}\n", 6, "order", r"must be > 0"),
    ("zero-amount", "  - order: {member: m2, amount: 0}\n", 6, "order", r"must be > 0"),
    (
        "three-decimals",
        "  - order: {member: m2, amount: '10.005'}\n",
        6,
        "order",
        r"more than 2 decimal places",
    ),
    (
        "sell-more-than-held",
        "  - settle: {}\n  - sell: {member: m1, points: 21.00000001}\n",
        7,
        "sell",
        r"holds 21\.0 points, fewer than",
    ),
    ("sell-nothing-held", "  - sell: {member: m2, all: true}\n", 6, "sell", r"holds no points"),
    (
        "merchant-beyond-treasury",
        "  - adjust: {member: shop, asset: stable, amount: 50, reason: takings}\n"
        "  - merchant_exchange: {member: shop, stable: 10}\n",
        7,
        "merchant_exchange",
        r"treasury holds 0\.0 points",
    ),
    (
        "unknown-sponsor",
        "  - join: {member: m9, sponsor: ghost}\n",
        6,
        "join",
        r"unknown member 'ghost'",
    ),
    (
        "duplicate-member",
        "  - join: {member: 'x{i}'}\n    repeat: 2\n  - join: {member: x2}\n",
        8,
        "join",
        r"member 'x2' already exists",
    ),
    (
        "duplicate-in-repeat",
        "  - join: {member: dup}\n    repeat: 3\n",
        7,
        "join",
        r"member 'dup' already exists",
    ),
    (
        "second-refund",
        "  - refund: {order: a1}\n    repeat: 2\n",
        7,
        "refund",
        r"order 'a1' is already refunded",
    ),
    ("unknown-order", "  - refund: {order: zz}\n", 6, "refund", r"unknown order 'zz'"),
    (
        "adjust-below-zero",
        "  - adjust: {member: m2, asset: cny, amount: -1, reason: fix}\n",
        6,
        "adjust",
        r"below zero",
    ),
    (
        "adjust-zero",
        "  - adjust: {member: m2, asset: cny, amount: 0, reason: fix}\n",
        6,
        "adjust",
        r"must not be zero",
    ),
    ("bad-plan-value", "  - plan: {equity: {pool_rate: 2}}\n", 6, "plan", r"pool_rate"),
]


@pytest.mark.parametrize(
    ("extra", "number", "kind", "why"),
    [c[1:] for c in RUNTIME_CASES],
    ids=[c[0] for c in RUNTIME_CASES],
)
def test_refused_step_without_flag_stops_at_its_number(
    tmp_path: Path, extra: str, number: int, kind: str, why: str
) -> None:
    path = write(tmp_path, PREFIX + extra + "  - order: {member: m3, amount: 100}\n")
    scenario = load_scenario(path)  # readable: the refusal only happens at run time
    with pytest.raises(StepFailed) as info:
        simulate(scenario)
    failed = info.value
    assert failed.step == number
    assert failed.kind == kind
    assert re.search(why, failed.message), failed.message
    assert str(failed).startswith(f"step {number} ({kind}): refused: ")


@pytest.mark.parametrize(
    ("extra", "number"), [c[1:3] for c in RUNTIME_CASES], ids=[c[0] for c in RUNTIME_CASES]
)
def test_same_step_with_refused_flag_passes(tmp_path: Path, extra: str, number: int) -> None:
    # mark the failing step refused: true (only that one expansion is refused, so
    # split a repeat into its accepted part and its refused part)
    scenario = load_scenario(write(tmp_path, PREFIX + extra))
    steps = [Step(s.number, s.kind, s.fields, refused=(s.number == number)) for s in scenario.steps]
    scenario.steps = steps[:number]
    result = simulate(scenario)
    plain = copy.copy(scenario)
    plain.steps = steps[: number - 1]
    assert result.document == simulate(plain).document


def test_refused_flag_on_an_accepted_step_fails(tmp_path: Path) -> None:
    path = write(tmp_path, PREFIX + "  - order: {member: m2, amount: 100}\n    refused: true\n")
    with pytest.raises(StepFailed) as info:
        simulate(load_scenario(path))
    assert info.value.step == 6
    assert info.value.kind == "order"
    assert "expected to be refused, but it was accepted" in str(info.value)
    assert str(info.value).startswith("step 6 (order)")


def test_refused_flag_on_a_repeat_fails_at_the_first_accepted_expansion(tmp_path: Path) -> None:
    # refund a1 twice, both marked refused: the first refund is accepted -> step 6 fails
    path = write(tmp_path, PREFIX + "  - refund: {order: a1}\n    repeat: 2\n    refused: true\n")
    with pytest.raises(StepFailed) as info:
        simulate(load_scenario(path))
    assert info.value.step == 6
    assert "accepted" in info.value.message


# ---------------------------------------------------------------- nothing is half-applied

BASE_DOC: dict[str, Any] = {
    "plan": {
        "preset": "equity",
        "grants": {"tiers": [{"threshold": 0, "multiple": 2}], "daily_rate": "0.01"},
        "pools": [{"name": "static", "rate": "0.30", "split": "pro_rata", "weight": "shares"}],
        "referral": {"gen1_rate": "0.5", "gen2_rate": "0.3"},
    },
    "steps": [
        {"join": {"member": "A"}},
        {"join": {"member": "B", "sponsor": "A"}},
        {"join": {"member": "C", "sponsor": "B"}},
        {"join": {"member": "M", "merchant": True}},
        {"join": {"member": "Z"}},
        {"order": {"member": "A", "amount": 1000, "id": "a1"}},
        {"order": {"member": "B", "amount": 3000, "id": "b1"}},
        {"order": {"member": "C", "amount": 200, "id": "c1"}},
        {"refund": {"order": "c1"}},
        {"settle": {}},
        {"exchange": {"member": "A", "points": 20}},  # puts points in the treasury
        {"adjust": {"member": "M", "asset": "stable", "amount": 100, "reason": "takings"}},
        {"merchant_exchange": {"member": "M", "stable": 10}},
        {"order": {"member": "B", "amount": 500, "id": "b2"}},
        {"order": {"member": "A", "amount": 100, "stable": 5, "id": "a2"}},
        {
            "plan": {
                "pools": [
                    {"name": "static", "rate": "0.40", "split": "pro_rata", "weight": "shares"}
                ]
            }
        },  # pending from day 3
    ],
}


def base_engine() -> Engine:
    scenario = parse_scenario(BASE_DOC)
    engine = Engine(scenario.plan)
    run_steps(engine, scenario.steps)
    return engine


def snapshot(engine: Engine) -> dict[str, Any]:
    ledger = engine.ledger
    return {
        "document": result_document(engine),
        "ledger.members": copy.deepcopy(ledger.members),
        # a defaultdict read may add a zero entry; zero and absent are the same balance
        "ledger.platform": {
            a: {k: v for k, v in b.items() if v} for a, b in ledger.platform.items()
        },
        "quota": list(engine.quota),
        "grant_remaining": list(engine.grant_remaining),
        "grant_member": list(engine.grant_member),
        "member_grants": copy.deepcopy(engine.member_grants),
        "orders": {
            k: (o.member, o.amount, o.stable, o.refunded, o.points, o.grant)
            for k, o in engine.orders.items()
        },
        "members": (
            list(engine.names),
            dict(engine.index),
            list(engine.parent),
            list(engine.merchant),
            list(engine.spend),
        ),
        "counters": (
            engine.day,
            engine.accepted_orders,
            engine.paid_today,
            engine.refunded_today,
            engine.sales_total,
            engine.circulating,
            engine.minted,
            engine.first_grant_done,
            engine.last_price,
        ),
        "plans": (id(engine.plan), id(engine.pending_plan)),
        "exits": list(engine.exits),
        "released": {k: v.tolist() for k, v in engine.released.items()},
    }


def test_base_state_is_rich_enough() -> None:
    """The refusals below start from a state with every kind of value in it."""
    engine = base_engine()
    doc = result_document(engine)
    assert engine.treasury > 0 and engine.pool > 0 and engine.paid_today > 0
    assert engine.pending_plan is not None and engine.orders["c1"].refunded
    assert doc["members"]["M"]["stable"] == "90.00"
    assert doc["members"]["A"]["released"]["gen1"] != "0.00"


HALF_APPLIED_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("join-duplicate", {"join": {"member": "A"}}, r"already exists"),
    ("join-unknown-sponsor", {"join": {"member": "N", "sponsor": "ghost"}}, r"unknown member"),
    ("join-empty-name", {"join": {"member": ""}}, r"non-empty"),
    ("order-unknown-member", {"order": {"member": "ghost", "amount": 10}}, r"unknown member"),
    ("order-zero", {"order": {"member": "A", "amount": 0}}, r"> 0"),
    ("order-negative", {"order": {"member": "A", "amount": -10}}, r"> 0"),
    ("order-3-decimals", {"order": {"member": "A", "amount": "10.001"}}, r"decimal places"),
    (
        "order-stable-over-held",
        {"order": {"member": "B", "amount": 10000, "stable": 931}},
        r"fewer stable points",
    ),
    (
        "order-stable-over-amount",
        {"order": {"member": "B", "amount": 10, "stable": 11}},
        r"between 0 and the order amount",
    ),
    ("order-duplicate-id", {"order": {"member": "B", "amount": 10, "id": "a1"}}, r"already exists"),
    ("refund-second", {"refund": {"order": "c1"}}, r"already refunded"),
    ("refund-unknown", {"refund": {"order": "nope"}}, r"unknown order"),
    ("sell-more-than-held", {"sell": {"member": "B", "points": 100000}}, r"fewer than"),
    ("sell-zero", {"sell": {"member": "B", "points": 0}}, r"> 0"),
    ("sell-9-decimals", {"sell": {"member": "B", "points": "0.000000001"}}, r"decimal places"),
    ("sell-all-of-nothing", {"sell": {"member": "Z", "points": "all"}}, r"holds no points"),
    ("sell-unknown-member", {"sell": {"member": "ghost", "all": True}}, r"unknown member"),
    ("exchange-more-than-held", {"exchange": {"member": "B", "points": 100000}}, r"fewer than"),
    ("exchange-negative", {"exchange": {"member": "B", "points": -1}}, r"> 0"),
    (
        "merchant-exchange-beyond-treasury",
        {"merchant_exchange": {"member": "M", "stable": 90}},
        r"treasury holds",
    ),
    (
        "merchant-exchange-over-stable",
        {"merchant_exchange": {"member": "M", "stable": "90.01"}},
        r"fewer stable points",
    ),
    (
        "merchant-exchange-not-merchant",
        {"merchant_exchange": {"member": "B", "stable": 1}},
        r"not a merchant",
    ),
    ("merchant-exchange-zero", {"merchant_exchange": {"member": "M", "stable": 0}}, r"> 0"),
    (
        "adjust-cny-below-zero",
        {"adjust": {"member": "C", "asset": "cny", "amount": "-42.61", "reason": "fix"}},
        r"below zero",
    ),
    (
        "adjust-equity-below-zero",
        {"adjust": {"member": "M", "asset": "equity", "amount": "-5.34746181", "reason": "fix"}},
        r"below zero",
    ),
    (
        "adjust-equity-beyond-supply",
        {"adjust": {"member": "A", "asset": "equity", "amount": 100000000, "reason": "gift"}},
        r"total_supply",
    ),
    (
        "adjust-zero",
        {"adjust": {"member": "A", "asset": "stable", "amount": 0, "reason": "x"}},
        r"not be zero",
    ),
    (
        "adjust-unknown-asset",
        {"adjust": {"member": "A", "asset": "gold", "amount": 1, "reason": "x"}},
        r"unknown asset",
    ),
    (
        "adjust-no-reason",
        {"adjust": {"member": "A", "asset": "cny", "amount": 1, "reason": " "}},
        r"needs a reason",
    ),
    (
        "adjust-unknown-member",
        {"adjust": {"member": "ghost", "asset": "cny", "amount": 1, "reason": "x"}},
        r"unknown member",
    ),
    ("plan-bad-value", {"plan": {"equity": {"pool_rate": 2}}}, r"plan: .*pool_rate"),
    ("plan-bad-release-to", {"plan": {"release_to": "gold"}}, r"plan: .*release_to"),
]


@pytest.mark.parametrize(
    ("raw", "why"), [c[1:] for c in HALF_APPLIED_CASES], ids=[c[0] for c in HALF_APPLIED_CASES]
)
def test_refused_step_changes_nothing(raw: dict[str, Any], why: str) -> None:
    engine = base_engine()
    before = snapshot(engine)
    (step,) = parse_scenario({"steps": [raw]}).steps
    with pytest.raises(Refused, match=why):
        apply_step(engine, step)
    assert snapshot(engine) == before
    # and the engine still works normally afterwards
    engine.settle()
    assert engine.day == before["counters"][0] + 1


@pytest.mark.parametrize(
    ("raw", "why"), [c[1:] for c in HALF_APPLIED_CASES], ids=[c[0] for c in HALF_APPLIED_CASES]
)
def test_refused_step_in_a_scenario_changes_nothing(raw: dict[str, Any], why: str) -> None:
    flagged = {**raw, "refused": True}
    with_refusal = {**BASE_DOC, "steps": [*BASE_DOC["steps"], flagged, {"settle": {}}]}
    without = {**BASE_DOC, "steps": [*BASE_DOC["steps"], {"settle": {}}]}
    assert (
        simulate(parse_scenario(with_refusal)).document
        == simulate(parse_scenario(without)).document
    )
    # without the flag the run stops at that step, with the reason
    plain = {**BASE_DOC, "steps": [*BASE_DOC["steps"], raw]}
    with pytest.raises(StepFailed, match=why) as info:
        simulate(parse_scenario(plain))
    assert info.value.step == len(BASE_DOC["steps"]) + 1


def test_settle_of_a_future_day_changes_nothing() -> None:
    engine = base_engine()
    before = snapshot(engine)
    with pytest.raises(Refused, match="has not started"):
        engine.settle(day=engine.day + 1)
    assert snapshot(engine) == before


def test_settle_of_a_past_day_changes_nothing() -> None:
    engine = base_engine()
    before = snapshot(engine)
    report = engine.settle(day=1)
    assert report.already_settled
    assert snapshot(engine) == before


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.sell("A", None),
        lambda e: e.exchange("A", 10**8),
        lambda e: e.merchant_exchange("M", 100),
        lambda e: e.adjust("A", "equity", 10**8, "gift"),
    ],
    ids=["sell", "exchange", "merchant_exchange", "adjust-equity"],
)
def test_equity_steps_refused_without_equity_module(call: Any) -> None:
    engine = Engine(Plan.from_mapping({"preset": "cycle"}))
    engine.join("A")
    engine.join("M", merchant=True)
    engine.order("A", 100_000, "a1")
    engine.adjust("M", "stable", 10_000, "takings")
    before = snapshot(engine)
    with pytest.raises(Refused, match="equity module is not enabled"):
        call(engine)
    assert snapshot(engine) == before


def test_amount_beyond_int64_is_refused_not_a_crash() -> None:
    doc = {
        "steps": [
            {"join": {"member": "A"}},
            {"order": {"member": "A", "amount": "100000000000000000"}},
        ]
    }
    with pytest.raises((StepFailed, ScenarioError)):
        simulate(parse_scenario(doc))


@pytest.mark.parametrize("body", [{"member": "B"}, {"member": "B", "all": False}])
def test_sell_without_points_is_a_file_error(body: dict[str, Any]) -> None:
    with pytest.raises(ScenarioError, match=r"step 2 \(sell\): sell needs points"):
        parse_scenario({"steps": [{"join": {"member": "B"}}, {"sell": body}]})
