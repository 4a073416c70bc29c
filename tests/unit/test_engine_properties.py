"""Invariants of the engine over random scenarios (hypothesis).

- the equity price never falls (every step but an admin equity adjustment);
- for every asset, all accounts sum to zero (every movement is a balanced posting),
  and no member balance is negative;
- no grant's remaining goes below 0 or above its quota; a member's quota is the sum
  of its grants; released value never exceeds the quota granted;
- the ledger agrees with the engine's own equity state;
- settling a day twice equals settling it once;
- a refused step changes nothing.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import scenarios
from tokenmall.engine import Engine, Plan, Refused
from tokenmall.engine.ledger import ASSETS, ISSUANCE, POOL, TREASURY
from tokenmall.scenario import apply_step, parse_scenario, result_document

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def snapshot(engine: Engine) -> Any:
    """Everything observable about the engine's state."""
    return (
        result_document(engine),
        copy.deepcopy(engine.ledger.members),
        {a: dict(v) for a, v in engine.ledger.platform.items()},
        list(engine.grant_remaining),
        sorted(engine.orders),
        engine.day,
        engine.pending_plan.raw if engine.pending_plan else None,
    )


def check_books(engine: Engine) -> None:
    ledger = engine.ledger
    for asset in ASSETS:
        assert ledger.total(asset) == 0, f"{asset} does not balance"
        assert min(ledger.members[asset], default=0) >= 0, f"a member's {asset} went negative"
    assert sum(ledger.members["equity"]) == engine.circulating
    assert ledger.platform["equity"][TREASURY] == engine.treasury >= 0
    assert ledger.platform["cny"][POOL] == engine.pool >= 0
    assert engine.minted >= engine.outstanding
    assert (
        engine.minted <= max(engine.plan.equity.total_supply, engine.minted)
        if engine.plan.equity
        else True
    )
    # what was minted and not burned is exactly what is outstanding
    assert (
        -ledger.platform["equity"][ISSUANCE] - ledger.platform["equity"]["adjustments"]
        == engine.outstanding
    )


def check_quotas(engine: Engine) -> None:
    per_member = [0] * len(engine.names)
    granted = [0] * len(engine.names)
    for g, m in enumerate(engine.grant_member):
        assert 0 <= engine.grant_remaining[g] <= engine.grant_quota[g]
        per_member[m] += engine.grant_remaining[g]
        granted[m] += engine.grant_quota[g]
    assert per_member == engine.quota
    for m in range(len(engine.names)):
        released = sum(int(v[m]) for v in engine.released.values() if m < v.size)
        assert released <= granted[m] - engine.quota[m]


@SETTINGS
@given(scenarios())
def test_invariants_hold_after_every_step(doc: dict[str, Any]) -> None:
    scenario = parse_scenario(doc)
    engine = Engine(scenario.plan)
    # Before the first grant the price is issue_price (RULES §3) even when an admin has
    # minted points into an empty pool: that mint moves the price (§6 allows it) only
    # when the first grant ends the issue-price period.
    minted_before_first_grant = False
    for step in scenario.steps:
        price_before = engine.price()
        before = snapshot(engine)
        granted_before = engine.first_grant_done
        try:
            apply_step(engine, step)
        except Refused:
            assert snapshot(engine) == before, f"refused step {step.number} changed the state"
            continue
        check_books(engine)
        check_quotas(engine)
        admin_equity = step.kind == "adjust" and step.fields["asset"] == "equity"
        minted_before_first_grant |= admin_equity and not granted_before
        deferred = minted_before_first_grant and engine.first_grant_done and not granted_before
        if not admin_equity and not deferred:
            assert engine.price() >= price_before, f"price fell at step {step.number} ({step.kind})"


@SETTINGS
@given(scenarios(with_adjust_equity=False), st.data())
def test_settling_a_day_twice_equals_once(doc: dict[str, Any], data: st.DataObject) -> None:
    scenario = parse_scenario(doc)
    engine = Engine(scenario.plan)
    for step in scenario.steps:
        with contextlib.suppress(Refused):
            apply_step(engine, step)
    day = engine.day
    engine.settle(day)
    once = snapshot(engine)
    report = engine.settle(day)  # the same day again: already settled
    assert report.already_settled
    assert snapshot(engine) == once
    earlier = data.draw(st.integers(1, day))
    assert engine.settle(earlier).already_settled
    assert snapshot(engine) == once


CENTS = st.one_of(
    st.integers(1, 10**7),  # any amount, most of them above the points preset's first tier
    st.integers(299_990, 300_010),  # around a tier threshold
    st.integers(300_000, 400_000).map(lambda c: c - c % 250 + 249),  # base rounding 0.012
)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["points", "cycle", "equity"]),
    st.lists(st.tuples(st.integers(0, 5), CENTS), min_size=1, max_size=30),
)
def test_order_many_leaves_the_state_one_order_at_a_time_leaves(
    preset: str, orders: list[tuple[int, int]]
) -> None:
    def fresh() -> Engine:
        engine = Engine(Plan.from_mapping({"preset": preset}))
        for i in range(6):
            engine.join(f"m{i}", f"m{i - 1}" if i % 3 else None)
        engine.order("m0", 300000)  # an earlier order: ids continue after it
        return engine

    one_by_one, batch = fresh(), fresh()
    for m, cents in orders:
        one_by_one.order(f"m{m}", cents)
    batch.order_many(np.array([m for m, _ in orders]), np.array([c for _, c in orders]))
    for engine in (one_by_one, batch):
        engine.settle()
    assert snapshot(batch) == snapshot(one_by_one)
    assert batch.orders == one_by_one.orders
    assert batch.member_grants == one_by_one.member_grants
    for column in ("grant_member", "grant_quota", "grant_base", "spend", "quota"):
        assert getattr(batch, column) == getattr(one_by_one, column), column
    assert batch.ledger.platform == one_by_one.ledger.platform
    assert batch.released_of(0) == one_by_one.released_of(0)


def test_order_many_refuses_a_bad_batch_whole() -> None:
    engine = Engine(Plan.from_mapping({"preset": "points"}))
    engine.join("a")
    before = snapshot(engine)
    for members, amounts, reason in (
        ([0, 1], [100, 100], "unknown member"),
        ([0, 0], [100, 0], "> 0"),
        ([0], [10**15], "limit"),
    ):
        with pytest.raises(Refused, match=reason):
            engine.order_many(np.array(members), np.array(amounts))
        assert snapshot(engine) == before
