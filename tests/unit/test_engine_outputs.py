"""Explicit outputs: each input's postings and domain events (Engine(record=True)).

The postings an input produces, replayed onto empty books, give exactly the
engine's balances; the events say what happened, in order."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.strategies import scenarios
from tokenmall.engine import Engine, Plan, Refused, events
from tokenmall.engine.ledger import ASSETS, BatchPosting, Posting, ReleaseBatch
from tokenmall.scenario import apply_step, parse_scenario


def replay_postings(postings: list[Any]) -> dict[str, dict[Any, int]]:
    books: dict[str, dict[Any, int]] = {a: defaultdict(int) for a in ASSETS}
    for p in postings:
        if isinstance(p, Posting):
            books[p.asset][p.debit] -= p.amount
            books[p.asset][p.credit] += p.amount
        elif isinstance(p, BatchPosting):
            for m, amount in zip(p.members.tolist(), p.amounts.tolist(), strict=True):
                books[p.asset][m] += amount
            books[p.asset][p.platform] -= p.total
        else:
            assert isinstance(p, ReleaseBatch)
            for kind, column in p.columns.items():
                for m, amount in zip(p.members.tolist(), column.tolist(), strict=True):
                    books[p.asset][m] += amount
                books[p.asset][p.sources[kind]] -= int(column.sum())
    return books


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_postings_replayed_equal_the_books(doc: dict[str, Any]) -> None:
    scenario = parse_scenario(doc)
    engine = Engine(scenario.plan, record=True)
    postings: list[Any] = []
    for step in scenario.steps:
        try:
            apply_step(engine, step)
        except Refused:
            assert engine.take_outputs().postings == [], "a refused step produced postings"
            continue
        postings += engine.take_outputs().postings
    books = replay_postings(postings)
    for asset in ASSETS:
        for m, balance in enumerate(engine.ledger.members[asset]):
            assert books[asset].get(m, 0) == balance
        for account, balance in engine.ledger.platform[asset].items():
            assert books[asset].get(account, 0) == balance


def test_events_of_an_order_sell_and_settlement() -> None:
    engine = Engine(Plan.from_mapping({"preset": "equity"}), record=True)
    engine.join("A")
    engine.join("B", "A")
    engine.order("A", 10000, "o1")
    out = engine.take_outputs()
    assert [type(e) for e in out.events] == [
        events.MemberJoined,
        events.MemberJoined,
        events.OrderPaid,
        events.QuotaGranted,
        events.PointsGranted,
    ]
    granted = out.events[-1]
    assert isinstance(granted, events.PointsGranted)
    assert granted.units == 21 * 10**8 and not granted.referral
    engine.sell("A", 10 * 10**8)
    sold = engine.take_outputs().events
    assert len(sold) == 1 and isinstance(sold[0], events.PointsSold)
    # price 30/21: gross 14.2857…, payout ×0.9 rounded down, quota used rounded up
    assert sold[0].payout == 1285 and sold[0].quota_used == 1429 and not sold[0].forced
    engine.settle()
    (settled,) = engine.take_outputs().events
    assert isinstance(settled, events.DaySettled) and settled.day == 1


def test_forced_exit_is_reported_as_a_forced_sell() -> None:
    plan = Plan.from_mapping(
        {"preset": "equity", "grants": {"tiers": [{"threshold": 0, "multiple": "0.1"}]}}
    )
    engine = Engine(plan, record=True)
    engine.join("A")
    engine.join("B")
    engine.order("A", 10000)  # quota 10.00; 21 points worth 30.00: due at once
    forced = [e for e in engine.take_outputs().events if isinstance(e, events.PointsSold)]
    assert len(forced) == 1 and forced[0].forced and forced[0].member == "A"
    assert forced[0].quota_used == 1000  # all of it


def test_outputs_need_recording() -> None:
    with pytest.raises(RuntimeError):
        Engine(Plan.from_mapping({})).take_outputs()
