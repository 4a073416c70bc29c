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
_LEVEL_PASS_LIMIT = 2000  # deeper trees take the linear (Python) pass instead of level passes
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
    # size × largest bounds the total: one pass decides the common (small) case
    small = int(values.max()) * values.size < _FLOAT_EXACT
    total = 0 if small else exact_total(values)
    if small or total < _FLOAT_EXACT:
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


@dataclass(frozen=True)
class TreeLevels:
    """Members grouped by tree depth, for passes that go one level at a time.

    ``members(d)`` are the members at depth d, in index order.  ``linear`` means
    the tree is too deep (a degenerate chain) for level passes: one linear pass in
    index order (sponsors come first) is then cheaper.
    """

    order: I64
    bounds: I64
    linear: bool = False

    @property
    def deepest(self) -> int:
        return self.bounds.size - 2

    def members(self, d: int) -> I64:
        return self.order[self.bounds[d] : self.bounds[d + 1]]


def tree_levels(depth: I64) -> TreeLevels:
    deepest = int(depth.max()) if depth.size else 0
    if deepest > _LEVEL_PASS_LIMIT:
        return TreeLevels(np.zeros(0, dtype=np.int64), np.zeros(2, dtype=np.int64), linear=True)
    order = np.argsort(depth, kind="stable")
    return TreeLevels(order, np.searchsorted(depth[order], np.arange(deepest + 2)))


def team_performance(parent: I64, depth: I64, spend: I64, levels: TreeLevels | None = None) -> I64:
    """Total spend of everyone below each member, at any depth (excluding the member).

    Subtree sums bottom-up, one array pass per tree level.
    """
    n = parent.size
    subtree = spend.copy()
    if n == 0:
        return subtree
    tree = tree_levels(depth) if levels is None else levels
    if tree.linear:  # a degenerate chain: one linear pass
        sub = subtree.tolist()
        par = parent.tolist()
        for i in range(n - 1, -1, -1):
            if par[i] >= 0:
                sub[par[i]] += sub[i]
        subtree = np.asarray(sub, dtype=np.int64)
    else:
        for d in range(tree.deepest, 0, -1):
            idx = tree.members(d)
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
    levels: TreeLevels | None = None  # the tree by depth, when the caller has it already


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
        levels = inp.levels if inp.levels is not None else tree_levels(inp.depth)
        performance = team_performance(inp.parent, inp.depth, inp.spend, levels)
        star = star_levels(performance, plan.team)
        result.star, result.team_performance = star, performance
        if sources.size and plan.team.levels:
            _team_walk(
                inp.parent,
                inp.depth,
                levels,
                star,
                plan.team,
                sources,
                source_release,
                accelerations,
            )

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
    depth: I64,
    levels: TreeLevels,
    star: I64,
    team: TeamConfig,
    sources: I64,
    release: I64,
    acc: dict[str, list[tuple[I64, I64]]],
) -> None:
    """Differential and peer bonus (RULES §5): each source jumps straight to its next earner.

    Walking up one upline per pass costs (sources × tree depth) array work, though
    only the few uplines that raise the rate (or take the peer bonus) earn.  So the
    walk first tabulates, for every member m and every rate present r,
    ``nearest[r][m]`` — the nearest of m and its uplines whose rate is at least r —
    and then each pass moves every source to its next earner: the nearest upline
    at the rate already paid while the peer bonus is still open there, else the
    nearest with a higher rate.  A pass per earner, not per level.

    Rates are integers over a common denominator so the comparisons and the
    per-(earner, kind, source) amounts are exact.
    """
    den = lcm(*(lv.rate.denominator for lv in team.levels), team.peer_rate.denominator)
    level_rate = [0] + [lv.rate.numerator * (den // lv.rate.denominator) for lv in team.levels]
    n = parent.size
    level_rates = np.asarray(level_rate, dtype=np.int64)
    member_rate = level_rates[star]
    held = np.flatnonzero(np.bincount(star, minlength=level_rates.size))  # stars present
    rates = np.unique(np.append(level_rates[held], 0))  # the rates present, ascending, 0 first
    if rates.size == 1:
        return  # nobody earns a team rate
    rank = np.append(np.searchsorted(rates, member_rate), 0)  # sentinel n: rank 0
    up = np.append(np.where(parent >= 0, parent, n), n)
    nearest, row_of = _nearest_at_least(up, levels, rank, rates.size - 1)
    level = np.append(depth, 0)
    peer = team.peer_rate.numerator * (den // team.peer_rate.denominator)
    max_depth = team.max_depth

    # per pass only positions are carried; amounts are computed once at the end
    width = nearest.shape[1]
    flat = nearest.reshape(-1)
    pos = np.arange(sources.size)  # which source each walk belongs to
    cur = up[sources]
    best = np.zeros(sources.size, dtype=np.int64)  # rank of the highest rate paid so far
    peer_open = np.zeros(sources.size, dtype=bool)  # peer bonus still payable at `best`
    src_level = depth[sources]
    # every step records (earner, source position, rank before, rank reached); which
    # steps are raises and which peer bonuses is sorted out once, after the walk
    steps: list[tuple[I64, I64, I64, I64]] = []
    while cur.size:
        earner = flat[row_of[cur] * width + best + 1 - peer_open]
        alive = earner != n
        if max_depth is not None:  # the earner's distance: 1 = the source's sponsor
            alive &= src_level[pos] - level[earner] <= max_depth
        if not alive.all():
            earner, pos, best, peer_open = earner[alive], pos[alive], best[alive], peer_open[alive]
        got = rank[earner]  # >= best; > best unless the peer bonus was open
        steps.append((earner, pos, best, got))
        peer_open = got > best if peer > 0 else peer_open
        best = got
        cur = up[earner]
    if not steps:
        return
    earners = np.concatenate([s[0] for s in steps])
    at = np.concatenate([s[1] for s in steps])
    before = np.concatenate([s[2] for s in steps])
    reached = np.concatenate([s[3] for s in steps])
    raise_ = reached > before
    if raise_.any():
        diff = rates[reached[raise_]] - rates[before[raise_]]
        acc["team"].append((earners[raise_], mul_div_floor_arrays(diff, release[at[raise_]], den)))
    same = ~raise_  # an earner at the rate already paid: the peer bonus
    if peer > 0 and same.any():
        acc["peer"].append((earners[same], mul_div_floor(release[at[same]], peer, den)))


def _nearest_at_least(up: I64, levels: TreeLevels, rank: I64, top: int) -> tuple[I64, I64]:
    """The nearest of a member and its uplines with ``rank >= r``, for r = 1..top.

    Returns ``(table, row_of)``: the answer for member m is
    ``table[row_of[m], r]`` (n when there is none).  Members without a rate
    (rank 0, most of them) answer as their nearest ranked upline does, so the
    table has one row per ranked member plus a last row of n (nobody ranked at
    or above); ``row_of[m]`` is the row of m's nearest ranked member-or-upline.
    Column top + 1 is all n (a walk that has paid the top rate).  Both are filled
    top-down one tree level at a time (``levels``), or by one linear pass in
    index order for a degenerate chain (sponsors come first).
    """
    n = up.size - 1
    ranked = np.flatnonzero(rank[:n] > 0)
    k = ranked.size
    row_at = np.full(n + 1, k, dtype=np.int64)  # row of each ranked member; k = none
    row_at[ranked] = np.arange(k)
    table = np.full((k + 1, top + 2), n, dtype=np.int64)
    wanted = np.arange(1, top + 1, dtype=np.int64)
    row_of = np.full(n + 1, k, dtype=np.int64)
    if levels.linear:
        rows = table[:, 1 : top + 1].tolist()
        ranks, ups, row_list, at = rank.tolist(), up.tolist(), row_of.tolist(), row_at.tolist()
        for m in range(n):
            above = row_list[ups[m]]
            if ranks[m] > 0:
                row = at[m]
                row_list[m] = row
                rows[row] = [m if ranks[m] >= r else rows[above][r - 1] for r in range(1, top + 1)]
            else:
                row_list[m] = above
        table[:, 1 : top + 1] = np.asarray(rows, dtype=np.int64).reshape(k + 1, top)
        row_of = np.asarray(row_list, dtype=np.int64)
        return table, row_of
    inner = table[:, 1 : top + 1]
    for d in range(levels.deepest + 1):
        idx = levels.members(d)
        above = row_of[up[idx]]
        own = rank[idx] > 0
        row_of[idx] = np.where(own, row_at[idx], above)
        mine = idx[own]
        if mine.size:
            inner[row_at[mine]] = np.where(
                rank[mine][:, None] >= wanted, mine[:, None], inner[above[own]]
            )
    return table, row_of


def _deduct_oldest_first(grant_member: I64, grant_remaining: I64, deduction: I64) -> None:
    """Take ``deduction[m]`` from member m's grants, oldest grant first, in place.

    Most members owe less than their oldest live grant still holds: that grant
    pays it all, found without sorting (grants are in creation order, so a
    member's oldest live grant is its smallest live index).  Only the members
    whose debt spans several grants have their grants sorted into member order.
    """
    if not deduction.any():
        return
    # only grants that can give anything: a spent grant or a member owing nothing
    # takes nothing, and leaving them out does not change any member's oldest-first order
    live = np.flatnonzero((grant_remaining > 0) & (deduction[grant_member] > 0))
    if live.size == 0:
        return
    owners = grant_member[live]
    oldest = np.full(deduction.size, grant_remaining.size, dtype=np.int64)
    np.minimum.at(oldest, owners, live)
    debtors = np.flatnonzero(deduction > 0)  # a debt never exceeds the quota: each has a grant
    first = oldest[debtors]
    fits = deduction[debtors] <= grant_remaining[first]
    grant_remaining[first[fits]] -= deduction[debtors[fits]]
    if fits.all():
        return
    spans = np.zeros(deduction.size, dtype=bool)
    spans[debtors[~fits]] = True
    live = live[spans[owners]]
    order = np.argsort(grant_member[live], kind="stable")
    live = live[order]
    owner = grant_member[live]
    rem = grant_remaining[live]
    running = np.cumsum(rem) - rem  # remaining in all earlier grants (global)
    start = np.searchsorted(owner, owner, side="left")  # each grant's member's first grant
    before = running - running[start]  # remaining in the member's older grants
    take = np.clip(deduction[owner] - before, 0, rem)
    grant_remaining[live] = rem - take
