"""The exact-integer array helpers of the vectorised settlement, including the
paths that only large values or degenerate trees take."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenmall.engine import Engine, Plan
from tokenmall.engine import settlement as sm

I64 = np.int64


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2**40)), min_size=1, max_size=50))
def test_sum_by_is_exact(pairs: list[tuple[int, int]]) -> None:
    idx = np.array([p[0] for p in pairs], dtype=I64)
    val = np.array([p[1] for p in pairs], dtype=I64)
    expected = [0] * 10
    for i, v in pairs:
        expected[i] += v
    assert sm.sum_by(idx, val, 10).tolist() == expected


def test_sum_by_beyond_float_precision_stays_exact() -> None:
    big = 2**60 // 4 + 1  # sums past 2**53 must not go through float64
    out = sm.sum_by(np.array([0, 0, 1], dtype=I64), np.array([big, 1, 3], dtype=I64), 2)
    assert out.tolist() == [big + 1, 3]


@given(
    st.lists(st.integers(0, 2**62), min_size=1, max_size=20),
    st.integers(1, 10**12),
    st.integers(1, 10**15),
)
def test_mul_div_floor_matches_python_ints(values: list[int], num: int, den: int) -> None:
    want = [v * num // den for v in values]
    if max(want) < 2**63:
        assert sm.mul_div_floor(np.array(values, dtype=I64), num, den).tolist() == want
    else:  # a result int64 cannot hold is an error, never a wrapped number
        with pytest.raises(OverflowError):
            sm.mul_div_floor(np.array(values, dtype=I64), num, den)


def test_unit_weight_with_referral_rate() -> None:
    # RULES §4: spend 1500, gen-1 spend 1500, rate 0.5 -> floor(2250 / 1000) = 2 shares
    spend = np.array([150000, 150000], dtype=I64)
    gen1 = sm.referral_sums(np.array([-1, 0], dtype=I64), spend)
    assert gen1.tolist() == [150000, 0]
    assert sm.unit_weight(spend, gen1, Fraction(1, 2), 100000).tolist() == [2, 1]


def test_team_performance_on_a_chain_deeper_than_the_level_pass_limit() -> None:
    n = 2500  # deeper than 2000 levels: the linear path
    parent = np.arange(-1, n - 1, dtype=I64)
    depth = np.arange(n, dtype=I64)
    spend = np.ones(n, dtype=I64)
    perf = sm.team_performance(parent, depth, spend)
    assert perf[0] == n - 1 and perf[-1] == 0 and perf[n // 2] == n - n // 2 - 1


def test_team_walk_respects_max_depth() -> None:
    # chain U3 <- U2 <- U1 <- X, all at 1 star (10%), X releases 100.00 a day
    plan = Plan.from_mapping(
        {
            "preset": "points",
            "grants": {"tiers": [{"threshold": 0, "multiple": 10}], "daily_rate": "0.1"},
            "referral": {"gen1_rate": 0, "gen2_rate": 0},
            "team": {
                "levels": [{"threshold": 100, "rate": "0.1"}],
                "peer_rate": "0.03",
                "max_depth": 1,
            },
        }
    )
    engine = Engine(plan)
    for name, sponsor in [("U3", None), ("U2", "U3"), ("U1", "U2"), ("X", "U1")]:
        engine.join(name, sponsor)
    for name in ("U3", "U2", "U1"):
        engine.order(name, 10000)  # 100.00: quota 1000.00, 1 star from the orders below
    engine.order("X", 100000)  # base 100.00 a day
    engine.settle()
    released = {name: engine.released_of(engine.index[name]) for name in ("U1", "U2", "U3")}
    assert released["U1"].get("team") == 1000  # 10% of X's 100.00
    assert released["U2"].get("team") == 100  # 10% of U1's own 10.00, one upline up
    # max_depth 1: X's walk stops after U1 (no peer for U2), U1's after U2 (none for U3)
    assert "peer" not in released["U2"] and "peer" not in released["U3"]


def test_team_walk_without_max_depth_pays_the_peer_above() -> None:
    plan = Plan.from_mapping(
        {
            "preset": "points",
            "grants": {"tiers": [{"threshold": 0, "multiple": 10}], "daily_rate": "0.1"},
            "referral": {"gen1_rate": 0, "gen2_rate": 0},
            "team": {"levels": [{"threshold": 100, "rate": "0.1"}], "peer_rate": "0.03"},
        }
    )
    engine = Engine(plan)
    for name, sponsor in [("U3", None), ("U2", "U3"), ("U1", "U2"), ("X", "U1")]:
        engine.join(name, sponsor)
    for name in ("U3", "U2", "U1"):
        engine.order(name, 10000)
    engine.order("X", 100000)
    engine.settle()
    u2 = engine.released_of(engine.index["U2"])
    u3 = engine.released_of(engine.index["U3"])
    assert u2.get("peer") == 300  # first equal-rate upline above U1 in X's walk: 3% of 100.00
    assert u3.get("peer") == 30  # in U1's walk U2 takes the team part, U3 the peer: 3% of 10.00
    assert u3.get("team") == 100  # 10% of U2's 10.00 base


def test_exit_heap_rebuild_with_huge_values_uses_exact_python_keys() -> None:
    engine = Engine(Plan.from_mapping({"preset": "equity"}))
    engine.bulk_load(
        names=["a", "b"],
        parent=[-1, 0],
        spend=[100, 100],
        grant_member=[0, 1],
        grant_remaining=[2**54, 5],
        grant_base=[0, 0],
        points=[2**54, 2**54],
        pool=10**6,
    )
    # b: 5 cents of quota against huge points -> due at once; a: ratio 1 > price -> stays
    engine.settle()
    assert engine.points[1] == 0 and engine.points[0] == 2**54
    assert [e.member for e in engine.exits] == [1]


def _walk_one_upline_at_a_time(
    parent: list[int], star: list[int], team: object, sources: list[int], release: list[int]
) -> dict[str, dict[int, int]]:
    """RULES §5 read literally: every source climbs one sponsor at a time."""
    from math import lcm

    levels = team.levels  # type: ignore[attr-defined]
    peer_rate: Fraction = team.peer_rate  # type: ignore[attr-defined]
    max_depth = team.max_depth  # type: ignore[attr-defined]
    den = lcm(*(lv.rate.denominator for lv in levels), peer_rate.denominator)
    rate = [0] + [int(lv.rate * den) for lv in levels]
    peer = int(peer_rate * den)
    out: dict[str, dict[int, int]] = {"team": {}, "peer": {}}
    for s, rel in zip(sources, release, strict=True):
        best, peer_paid, cur, dist = 0, False, parent[s], 1
        while cur >= 0 and (max_depth is None or dist <= max_depth):
            r = rate[star[cur]]
            if r > best:
                out["team"][cur] = out["team"].get(cur, 0) + (r - best) * rel // den
                best, peer_paid = r, False
            elif r == best and best > 0 and not peer_paid:
                peer_paid = True
                if peer:
                    out["peer"][cur] = out["peer"].get(cur, 0) + rel * peer // den
            cur, dist = parent[cur], dist + 1
    return out


@given(
    st.integers(1, 60),
    st.integers(0, 2**32 - 1),
    st.lists(st.sampled_from(["0.05", "0.1", "0.2", "0.15", "0.3"]), min_size=1, max_size=4),
    st.sampled_from(["0", "0.03", "0.1"]),
    st.sampled_from([None, 1, 2, 5]),
    st.booleans(),
)
def test_team_walk_by_jumps_equals_the_walk_one_upline_at_a_time(
    n: int,
    seed: int,
    rates: list[str],
    peer_rate: str,
    max_depth: int | None,
    chain_path: bool,
) -> None:
    rng = np.random.default_rng(seed)
    parent = [-1] + [int(rng.integers(-1, i)) for i in range(1, n)]
    if rng.random() < 0.3:  # long chains reach the depth limit and many equal rates
        parent = [-1] + [i - 1 if rng.random() < 0.8 else p for i, p in enumerate(parent[1:], 1)]
    depth = [0] * n
    for i, p in enumerate(parent):
        depth[i] = depth[p] + 1 if p >= 0 else 0
    levels = [{"threshold": 100 * (k + 1), "rate": r} for k, r in enumerate(rates)]
    team = Plan.from_mapping(
        {
            "preset": "points",
            "team": {"levels": levels, "peer_rate": peer_rate, "max_depth": max_depth},
        }
    ).team
    assert team is not None
    star = rng.integers(0, len(team.levels) + 1, n).tolist()
    sources = sorted(set(rng.integers(0, n, max(1, n // 2)).tolist()))
    release = rng.integers(1, 10**9, len(sources)).tolist()
    acc: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"team": [], "peer": []}
    limit = sm._LEVEL_PASS_LIMIT
    try:
        if chain_path:
            sm._LEVEL_PASS_LIMIT = -1  # force the linear passes (a degenerate chain)
        depths = np.array(depth, dtype=I64)
        sm._team_walk(
            np.array(parent, dtype=I64),
            depths,
            sm.tree_levels(depths),
            np.array(star, dtype=I64),
            team,
            np.array(sources, dtype=I64),
            np.array(release, dtype=I64),
            acc,  # type: ignore[arg-type]
        )
    finally:
        sm._LEVEL_PASS_LIMIT = limit
    got: dict[str, dict[int, int]] = {"team": {}, "peer": {}}
    for kind, parts in acc.items():
        for earners, amounts in parts:
            for m, a in zip(earners.tolist(), amounts.tolist(), strict=True):
                got[kind][m] = got[kind].get(m, 0) + a
    assert got == _walk_one_upline_at_a_time(parent, star, team, sources, release)


@given(st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_oldest_first_deduction_equals_taking_grant_by_grant(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    grants = int(rng.integers(0, 40))
    member = rng.integers(0, n, grants)
    remaining = rng.integers(0, 5, grants) * rng.integers(0, 1000, grants)
    quota = np.bincount(member, weights=remaining, minlength=n).astype(np.int64)
    owed = (quota * rng.random(n) * (rng.random(n) < 0.7)).astype(np.int64)
    want = remaining.tolist()
    for m in range(n):  # RULES §4/§5: a member's payments use up its oldest grant first
        left = int(owed[m])
        for g in range(grants):
            if member[g] == m and left:
                take = min(want[g], left)
                want[g] -= take
                left -= take
    got = remaining.astype(np.int64).copy()
    sm._deduct_oldest_first(member.astype(np.int64), got, owed)
    assert got.tolist() == want
