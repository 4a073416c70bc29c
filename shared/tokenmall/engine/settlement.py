"""Daily settlement as set-based array passes (RULES.md §4, §5).

``settle_day`` is a pure function: arrays in, arrays out.  Members are indexes
``0..n-1`` in registration order; a sponsor always registers before its
referrals, so ``parent[i] < i`` and index order is a topological order of the
forest.  All amounts are exact integers (cents; equity weights in 1e-8 units).

Exactness with NumPy: int64 arithmetic is exact until it overflows, so every
product that could pass 2**63 is bounded first and falls back to Python
integers (object arrays) when the bound cannot be proven; integer sums through
``np.bincount`` (which accumulates in float64) are only used when the total is
below 2**53, where every partial sum of integers is exact.

The team walk follows the design note: rounding is per (earner, kind, source)
amount, so instead of per-level aggregates the walk advances every source one
upline per pass (``cur = parent[cur]``), at most ``max_depth`` passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from math import lcm

import numpy as np
from numpy.typing import NDArray

from tokenmall.engine.plan import Plan, PoolConfig, TeamConfig, WeightsConfig
from tokenmall.money import UNITS

I64 = NDArray[np.int64]
_INT64_SAFE = 2**62
_FLOAT_EXACT = 2**53
ACCELERATION_KINDS = ("gen1", "gen2", "team", "peer")


# ------------------------------------------------------------------ exact helpers


def exact_total(values: I64) -> int:
    """The exact sum of non-negative int64 values, whatever its size.

    Each value is split into 31-bit halves whose int64 sums cannot overflow for
    fewer than 2**31 values; the halves are recombined as a Python int.
    """
    high = values >> 31
    low = values & (2**31 - 1)
    return int(high.sum(dtype=np.int64)) * 2**31 + int(low.sum(dtype=np.int64))


def sum_by(index: I64, values: I64, n: int) -> I64:
    """``out[i] = sum(values[index == i])`` exactly, as int64, for non-negative values.

    Every group sum is at most the grand total, so the total decides the path:
    float64 ``bincount`` (fast) while it is below 2**53, where all partial sums of
    integers are exact; an int64 ``add.at`` below 2**63; beyond that the result
    cannot be an int64 at all.
    """
    out = np.zeros(n, dtype=np.int64)
    if values.size == 0:
        return out
    if int(values.min()) < 0:
        raise ValueError("sum_by takes non-negative amounts")
    total = exact_total(values)
    if total < _FLOAT_EXACT:
        summed = np.bincount(index, weights=values, minlength=n)
        return np.rint(summed).astype(np.int64)
    if total >= 2**63:
        raise OverflowError("a total beyond int64: amounts out of the supported range")
    np.add.at(out, index, values)
    return out


def mul_div_floor(values: I64, numerator: int, denominator: int) -> I64:
    """``floor(values × numerator / denominator)`` element-wise, exact."""
    if values.size == 0:
        return values.copy()
    peak = int(np.abs(values).max())
    if peak * abs(numerator) < _INT64_SAFE:
        return (values * numerator) // denominator
    wide = values.astype(object) * numerator // denominator
    return np.asarray(wide, dtype=np.int64)


def mul_div_floor_arrays(values: I64, factors: I64, denominator: int) -> I64:
    """``floor(values × factors / denominator)`` element-wise, exact."""
    if values.size == 0:
        return values.copy()
    peak = int(np.abs(values).max()) * int(np.abs(factors).max())
    if peak < _INT64_SAFE:
        return (values * factors) // denominator
    wide = values.astype(object) * factors.astype(object) // denominator
    return np.asarray(wide, dtype=np.int64)


def frac_mul_floor(values: I64, rate: Fraction) -> I64:
    return mul_div_floor(values, rate.numerator, rate.denominator)


# ------------------------------------------------------------------ derived weights


def referral_sums(parent: I64, values: I64) -> I64:
    """Sum of ``values`` over each member's direct referrals (generation 1)."""
    has = parent >= 0
    return sum_by(parent[has], values[has], parent.size)


def unit_weight(spend: I64, gen1_spend: I64, rate: Fraction, unit: int) -> I64:
    """``floor((spend + rate × gen1 spend) / unit)`` exactly (shares, contribution value)."""
    n, d = rate.numerator, rate.denominator
    total = (
        spend.astype(object) * d + gen1_spend.astype(object) * n
        if _big(spend, gen1_spend, n, d)
        else spend * d + gen1_spend * n
    )
    return np.asarray(total // (unit * d), dtype=np.int64)


def _big(a: I64, b: I64, n: int, d: int) -> bool:
    if a.size == 0:
        return False
    return (int(np.abs(a).max()) * d + int(np.abs(b).max()) * n) >= _INT64_SAFE


def member_weights(parent: I64, spend: I64, cfg: WeightsConfig) -> tuple[I64, I64]:
    gen1 = referral_sums(parent, spend)
    shares = unit_weight(spend, gen1, cfg.referral_share_rate, cfg.share_unit)
    contribution = unit_weight(spend, gen1, cfg.referral_contribution_rate, cfg.contribution_unit)
    return shares, contribution


def team_performance(parent: I64, depth: I64, spend: I64) -> I64:
    """Total spend of everyone below each member, at any depth (excluding the member).

    Subtree sums bottom-up, one array pass per tree level.
    """
    n = parent.size
    subtree = spend.copy()
    if n == 0:
        return subtree
    max_depth = int(depth.max())
    if max_depth > 2000:  # a degenerate chain: one linear pass beats thousands of array passes
        sub = subtree.tolist()
        par = parent.tolist()
        for i in range(n - 1, -1, -1):
            if par[i] >= 0:
                sub[par[i]] += sub[i]
        subtree = np.asarray(sub, dtype=np.int64)
    else:
        order = np.argsort(depth, kind="stable")
        bounds = np.searchsorted(depth[order], np.arange(max_depth + 2))
        for d in range(max_depth, 0, -1):
            idx = order[bounds[d] : bounds[d + 1]]
            subtree += sum_by(parent[idx], subtree[idx], n)
    return subtree - spend


def star_levels(performance: I64, team: TeamConfig | None) -> I64:
    if team is None or not team.levels:
        return np.zeros(performance.size, dtype=np.int64)
    thresholds = np.asarray([lv.threshold for lv in team.levels], dtype=np.int64)
    return np.searchsorted(thresholds, performance, side="right").astype(np.int64)


# ------------------------------------------------------------------ settlement


@dataclass
class DayInput:
    plan: Plan
    parent: I64  # -1 = no sponsor
    depth: I64  # 0 for a root
    spend: I64  # cents, net of refunds
    points: I64  # equity units per member
    grant_member: I64
    grant_remaining: I64  # cents, oldest grant first within a member (creation order)
    grant_base: I64  # cents per day (0 = no base release)
    net_sales: int  # cents, max(0, paid - refunded) of the day


@dataclass
class DayResult:
    grant_remaining: I64
    quota: I64  # per member, after the day
    released: dict[str, I64]  # kind -> per member cents
    pool_funding: dict[str, int] = field(default_factory=dict)  # pool name -> funded cents
    retained: dict[str, int] = field(default_factory=dict)  # pool name -> cents to retained
    acceleration_retained: int = 0  # accelerations an earner could not take (burn)
    rounding: dict[str, int] = field(default_factory=dict)  # pool name -> split remainder
    star: I64 | None = None
    team_performance: I64 | None = None

    @property
    def members_released(self) -> int:
        paid = np.zeros(self.quota.size, dtype=bool)
        for amounts in self.released.values():
            paid |= amounts > 0
        return int(paid.sum())


def settle_day(inp: DayInput) -> DayResult:
    plan = inp.plan
    n = inp.parent.size
    g_rem = inp.grant_remaining.copy()

    # 1. base release, per grant
    base = np.minimum(inp.grant_base, g_rem)
    g_rem -= base
    base_by_member = sum_by(inp.grant_member, base, n)
    quota = sum_by(inp.grant_member, g_rem, n)
    quota_after_base = quota.copy()
    result = DayResult(g_rem, quota, {"base": base_by_member})

    # 2. pools, in plan order
    if plan.pools:
        shares, contribution = member_weights(inp.parent, inp.spend, plan.weights)
        weight_of = {"shares": shares, "contribution": contribution, "equity_points": inp.points}
        for pool in plan.pools:
            _pay_pool(pool, weight_of[pool.weight], inp.net_sales, quota, result)

    # 3./4. accelerations from base releases: referral, then team and peer
    accelerations: dict[str, list[tuple[I64, I64]]] = {k: [] for k in ACCELERATION_KINDS}
    sources = np.flatnonzero(base_by_member > 0)
    source_release = base_by_member[sources]
    if plan.referral is not None and sources.size:
        _referral(
            inp.parent,
            sources,
            source_release,
            plan.referral.gen1_rate,
            plan.referral.gen2_rate,
            accelerations,
        )
    if plan.team is not None:
        performance = team_performance(inp.parent, inp.depth, inp.spend)
        star = star_levels(performance, plan.team)
        result.star, result.team_performance = star, performance
        if sources.size and plan.team.levels:
            _team_walk(inp.parent, star, plan.team, sources, source_release, accelerations)

    retained_acc = 0
    for kind in ACCELERATION_KINDS:  # the order in which a biting cap is applied (RULES §5.4)
        parts = accelerations[kind]
        if not parts:
            continue
        earners = np.concatenate([p[0] for p in parts])
        amounts = np.concatenate([p[1] for p in parts])
        owed = sum_by(earners, amounts, n)
        paid = np.minimum(owed, quota)
        quota -= paid
        retained_acc += int((owed - paid).sum())
        result.released[kind] = paid
    result.acceleration_retained = retained_acc

    # deduct the day's pool and acceleration payments from grants, oldest first
    _deduct_oldest_first(inp.grant_member, g_rem, quota_after_base - quota)
    return result


def _pay_pool(pool: PoolConfig, weight: I64, net_sales: int, quota: I64, out: DayResult) -> None:
    n = weight.size
    paid = np.zeros(n, dtype=np.int64)
    funded = retained = rounding = 0
    if pool.split == "pro_rata":
        funding = (net_sales * pool.rate.numerator) // pool.rate.denominator
        funded = funding
        eligible = np.flatnonzero((weight > 0) & (quota > 0))
        total_weight = int(weight[eligible].sum()) if eligible.size else 0
        if total_weight == 0:
            retained = funding
        else:
            share = mul_div_floor(weight[eligible], funding, total_weight)
            take = np.minimum(share, quota[eligible])
            paid[eligible] = take
            quota[eligible] -= take
            rounding = funding - int(share.sum())
            retained = int((share - take).sum())
    else:
        scale = UNITS if pool.weight == "equity_points" else 1
        # who is eligible is decided once, when the pool starts paying (RULES §4)
        can_earn = (weight >= 1) & (quota > 0)
        for tier in pool.tiers:
            funding = (net_sales * tier.rate.numerator) // tier.rate.denominator
            funded += funding
            lo = -((-tier.min.numerator * scale) // tier.min.denominator)  # ceil
            in_tier = can_earn & (weight >= lo)
            if tier.max is not None:
                in_tier &= weight <= (tier.max.numerator * scale) // tier.max.denominator
            members = np.flatnonzero(in_tier)
            if members.size == 0:
                retained += funding
                continue
            each = funding // members.size
            take = np.minimum(each, quota[members])
            paid[members] += take
            quota[members] -= take
            rounding += funding - each * members.size
            retained += int((each - take).sum())
    out.released[pool.name] = paid
    out.pool_funding[pool.name] = funded
    if retained:
        out.retained[pool.name] = retained
    if rounding:
        out.rounding[pool.name] = rounding


def _referral(
    parent: I64,
    sources: I64,
    release: I64,
    gen1: Fraction,
    gen2: Fraction,
    acc: dict[str, list[tuple[I64, I64]]],
) -> None:
    up1 = parent[sources]
    has1 = up1 >= 0
    if gen1 > 0 and has1.any():
        acc["gen1"].append((up1[has1], frac_mul_floor(release[has1], gen1)))
    up2 = np.where(has1, parent[np.maximum(up1, 0)], -1)
    has2 = up2 >= 0
    if gen2 > 0 and has2.any():
        acc["gen2"].append((up2[has2], frac_mul_floor(release[has2], gen2)))


def _team_walk(
    parent: I64,
    star: I64,
    team: TeamConfig,
    sources: I64,
    release: I64,
    acc: dict[str, list[tuple[I64, I64]]],
) -> None:
    """Differential and peer bonus, advancing every source one upline per pass.

    Rates are integers over a common denominator so the comparisons and the
    per-(earner, kind, source) amounts are exact.
    """
    den = lcm(*(lv.rate.denominator for lv in team.levels), team.peer_rate.denominator)
    level_rate = [0] + [lv.rate.numerator * (den // lv.rate.denominator) for lv in team.levels]
    n = parent.size
    rate = np.asarray(level_rate, dtype=np.int64)[star]
    rate = np.append(rate, 0)  # sentinel member n: no sponsor, rate 0
    up = np.where(parent >= 0, parent, n)
    up = np.append(up, n)
    peer = team.peer_rate.numerator * (den // team.peer_rate.denominator)
    top_rate = max(level_rate)
    if top_rate == 0:
        return

    cur = up[sources]
    src_release = release
    best = np.zeros(sources.size, dtype=np.int64)  # m: the highest rate paid so far
    peer_paid = np.zeros(sources.size, dtype=bool)  # peer bonus taken at level m
    max_depth = team.max_depth
    depth = 0
    while cur.size:
        depth += 1
        if max_depth is not None and depth > max_depth:
            break
        r = rate[cur]
        raise_ = r > best
        if raise_.any():
            acc["team"].append(
                (
                    cur[raise_],
                    mul_div_floor_arrays(r[raise_] - best[raise_], src_release[raise_], den),
                )
            )
        same = ~raise_ & (r == best) & (best > 0) & ~peer_paid
        if peer > 0 and same.any():
            acc["peer"].append((cur[same], mul_div_floor(src_release[same], peer, den)))
        peer_paid = np.where(raise_, False, peer_paid | same)
        best = np.where(raise_, r, best)
        cur = up[cur]
        # a walk ends at the root, or once nothing above can pay any more
        done = (cur == n) | ((best == top_rate) & (peer_paid | (peer == 0)))
        if done.any():
            keep = ~done
            cur, src_release, best, peer_paid = (
                cur[keep],
                src_release[keep],
                best[keep],
                peer_paid[keep],
            )


def _deduct_oldest_first(grant_member: I64, grant_remaining: I64, deduction: I64) -> None:
    """Take ``deduction[m]`` from member m's grants, oldest grant first, in place."""
    if not deduction.any():
        return
    order = np.argsort(grant_member, kind="stable")
    owner = grant_member[order]
    rem = grant_remaining[order]
    running = np.cumsum(rem) - rem  # remaining in all earlier grants (global)
    first = np.searchsorted(owner, owner, side="left")  # each grant's member's first grant
    before = running - running[first]  # remaining in the member's older grants
    take = np.clip(deduction[owner] - before, 0, rem)
    grant_remaining[order] = rem - take
