"""Sustainability projection (``tokenmall project PLAN.yaml``): what a plan promises over time.

The projection runs the real rules engine — the same :class:`~tokenmall.engine.Engine`
the simulator and the dividends service use, no separate formula — over a
synthetic population for a number of days, under three sales scenarios, and
measures what the plan owes against what comes in.

Population (defaults documented in the README, all settable)
    ``members`` register on day 1 into a referral tree: ``preferential`` (each new
    member's sponsor is an earlier member picked with probability proportional to
    1 + their referrals — a few leaders recruit most, as in real referral
    networks), ``random`` (uniform among earlier members) or ``none``; a share
    ``sponsored`` of members has a sponsor, the rest are roots.  Order amounts are
    drawn from ``order_sizes``: a weighted list of amounts (default the package
    sizes these malls sell, 3,000 / 9,000 / 27,000 / 51,000 CNY at 60/25/10/5 %)
    or ``lognormal:MEDIAN:SIGMA``.

Sales scenarios (orders per day, members picked uniformly without repetition)
    ``flat``: ``start_rate`` × members every day.  ``growing``: the fraction of
    members ordering grows by ``growth`` a day, compounding, up to ``max_rate`` —
    +1 %/day compounds to ~1,428× over 730 days, so uncapped it would describe a
    mall whose members each order many times a day; the cap (default twice the
    start) keeps "growing" a growing mall.  ``declining``: shrinks by ``decline``
    a day, compounding.  Fractional orders carry over to the next day, so the
    totals follow the rate exactly.

Measures, per scenario and day
    outstanding quota (promised, not yet released) and its ratio to that day's
    sales and to the cumulative pool inflow (the equity pool's contributions plus
    every daily pool's funding; a plan with neither is compared with a stated
    ``funding_rate`` of sales, as ``tokenmall lint`` does); everything promised so
    far (paid out + outstanding) against that inflow — the ratio that cannot look
    better just because promises were paid out of money that never came in;
    released value; the equity price, the equity pool, retained (split into pool
    money nobody could take and accelerations beyond an earner's quota, the burn
    rule) and rounding totals.  At the end:
    payback — days from a buyer's first order until the value paid to them
    (releases plus forced-exit cash; points still held are not cash) first
    reaches 50 % / 100 % of what they spent so far — as Kaplan–Meier percentiles,
    so that buyers who joined late and could not have been paid back yet count as
    censored, not as "never"; a percentile the curve does not reach is "never
    within N days" (N = the longest follow-up); with the equity module also
    counting the points held at the day's price ("incl. points"); and the share
    of all released value that went to the top 1 % / 10 % of members.  Payback is
    per buyer against all they spent so far, so a repeat order moves the target.

Money stays exact (integer cents, the engine's own Fractions); floats appear only
in the ratios and the survival statistics, which are not money.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from queue import Empty
from typing import Any

import numpy as np

from tokenmall.engine import Engine, Plan, Refused
from tokenmall.engine.ledger import RETAINED, ROUNDING, SALES
from tokenmall.engine.settlement import exact_total
from tokenmall.money import format_cents

SCENARIOS = ("growing", "flat", "declining")
TREES = ("preferential", "random", "none")
DEFAULT_ORDER_SIZES = "3000:60,9000:25,27000:10,51000:5"
DEFAULT_FUNDING_RATE = Fraction(3, 10)  # the same stated rate as tokenmall lint
PAYBACK_LEVELS = (Fraction(1, 2), Fraction(1))
TABLE_DAYS = (30, 90, 180, 365, 730)


class ProjectionError(ValueError):
    """Settings the projection cannot use (the message names the setting)."""


# ------------------------------------------------------------------ settings


@dataclass(frozen=True)
class OrderSizes:
    """Order amounts in cents: a weighted choice, or a log-normal spread."""

    amounts: tuple[int, ...] = ()
    weights: tuple[Fraction, ...] = ()
    lognormal: tuple[int, float] | None = None  # (median cents, sigma)

    @classmethod
    def parse(cls, text: str) -> OrderSizes:
        spec = text.strip()
        m = re.fullmatch(r"lognormal:(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)", spec)
        if m:
            median = Fraction(m.group(1))
            if median < 1:
                raise ProjectionError("order sizes: a lognormal median must be at least 1 CNY")
            return cls(lognormal=(int(median * 100), float(m.group(2))))
        amounts, weights = [], []
        for part in spec.split(","):
            pm = re.fullmatch(r"\s*(\d+(?:\.\d{1,2})?)\s*:\s*(\d+(?:\.\d+)?)\s*", part)
            if not pm:
                raise ProjectionError(
                    f"order sizes: {part.strip()!r} is not AMOUNT:WEIGHT "
                    "(e.g. 3000:60,9000:40) and the whole is not lognormal:MEDIAN:SIGMA"
                )
            amount, weight = Fraction(pm.group(1)), Fraction(pm.group(2))
            if amount <= 0:
                raise ProjectionError("order sizes: amounts must be > 0")
            amounts.append(int(amount * 100))
            weights.append(weight)
        if sum(weights) <= 0:
            raise ProjectionError("order sizes: the weights must not all be 0")
        return cls(tuple(amounts), tuple(weights))

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        if self.lognormal is not None:
            median, sigma = self.lognormal
            cny = np.rint(rng.lognormal(math.log(median / 100), sigma, count))
            return np.maximum(cny, 1).astype(np.int64) * 100
        p = np.array([float(w) for w in self.weights])
        return rng.choice(np.array(self.amounts, dtype=np.int64), size=count, p=p / p.sum())

    def describe(self) -> str:
        if self.lognormal is not None:
            median, sigma = self.lognormal
            return f"lognormal: median {format_cents(median)} CNY, sigma {sigma}"
        total = sum(self.weights)
        return ", ".join(
            f"{format_cents(a)} CNY {float(w / total):.0%}"
            for a, w in zip(self.amounts, self.weights, strict=True)
        )


@dataclass(frozen=True)
class Population:
    members: int = 100_000
    tree: str = "preferential"
    sponsored: float = 0.9
    order_sizes: OrderSizes = field(default_factory=lambda: OrderSizes.parse(DEFAULT_ORDER_SIZES))
    seed: int = 1

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ProjectionError("members: at least 1")
        if self.tree not in TREES:
            raise ProjectionError(f"tree: one of {', '.join(TREES)}, not {self.tree!r}")
        if not 0 <= self.sponsored <= 1:
            raise ProjectionError("sponsored: a share between 0 and 1")
        if self.seed < 0:
            raise ProjectionError("seed: a whole number >= 0")


@dataclass(frozen=True)
class Sales:
    """How many orders a day: a start rate (fraction of members) and its change."""

    start_rate: float = 0.005
    growth: float = 0.01
    decline: float = 0.01
    max_rate: float | None = None  # None: twice the start rate (at most every member)

    def __post_init__(self) -> None:
        if not 0 < self.start_rate <= 1:
            raise ProjectionError("start rate: a fraction of members in (0, 1]")
        if not 0 <= self.growth <= 1:
            raise ProjectionError("growth: a daily rate in [0, 1]")
        if not 0 <= self.decline < 1:
            raise ProjectionError("decline: a daily rate in [0, 1)")
        if self.max_rate is not None and not self.start_rate <= self.max_rate <= 1:
            raise ProjectionError("max rate: between the start rate and 1")

    @property
    def cap(self) -> float:
        return self.max_rate if self.max_rate is not None else min(1.0, 2 * self.start_rate)

    def rate(self, scenario: str, day: int) -> float:
        if scenario == "flat":
            return self.start_rate
        if scenario == "growing":
            # compare exponents, not powers: (1 + g) ** day overflows a float long
            # after the cap is reached
            if (day - 1) * math.log1p(self.growth) >= math.log(self.cap / self.start_rate):
                return self.cap
            return self.start_rate * (1 + self.growth) ** (day - 1)
        if scenario == "declining":
            return self.start_rate * (1 - self.decline) ** (day - 1)
        raise ProjectionError(f"scenario: one of {', '.join(SCENARIOS)}, not {scenario!r}")

    def schedule(self, scenario: str, members: int, days: int) -> list[int]:
        """Orders per day; fractions carry over so the cumulative count tracks the rate."""
        counts, owed = [], 0.0
        for day in range(1, days + 1):
            owed += self.rate(scenario, day) * members
            whole = min(members, int(owed + 1e-9))
            counts.append(whole)
            owed -= whole
        return counts

    def describe(self, scenario: str) -> str:
        start = f"{self.start_rate:.2%} of members a day"
        if scenario == "flat":
            return start
        if scenario == "growing":
            return f"{start}, +{self.growth:.2%} a day compounding, capped at {self.cap:.2%}"
        return f"{start}, -{self.decline:.2%} a day compounding"


# ------------------------------------------------------------------ population


def referral_tree(pop: Population, rng: np.random.Generator) -> list[int]:
    """Sponsor index per member (-1 = root); a sponsor always registers first."""
    n = pop.members
    if pop.tree == "none" or n == 1:
        return [-1] * n
    has_sponsor = (rng.random(n) < pop.sponsored).tolist()
    draws = rng.random(n).tolist()
    parent = [-1] * n
    if pop.tree == "random":
        for i in range(1, n):
            if has_sponsor[i]:
                parent[i] = int(draws[i] * i)
        return parent
    # preferential attachment: an urn holding each member once plus once per referral
    urn = [0]
    for i in range(1, n):
        if has_sponsor[i]:
            sponsor = urn[int(draws[i] * len(urn))]
            parent[i] = sponsor
            urn.append(sponsor)
        urn.append(i)
    return parent


def build_engine(plan: Plan, pop: Population, rng: np.random.Generator) -> tuple[Engine, list[str]]:
    engine = Engine(plan)
    names = [f"m{i}" for i in range(pop.members)]
    zeros = [0] * pop.members
    engine.bulk_load(names, referral_tree(pop, rng), zeros, [], [], [])
    return engine, names


# ------------------------------------------------------------------ one scenario


@dataclass
class ScenarioRun:
    """Raw per-day series of one scenario (exact integers; cents unless named)."""

    name: str
    definition: str
    day: list[int] = field(default_factory=list)
    orders: list[int] = field(default_factory=list)
    sales: list[int] = field(default_factory=list)
    outstanding: list[int] = field(default_factory=list)
    inflow: list[int] = field(default_factory=list)  # cumulative pool inflow
    released: list[int] = field(default_factory=list)  # that day
    pool: list[int] = field(default_factory=list)
    retained: list[int] = field(default_factory=list)  # cumulative, both kinds below
    retained_pools: list[int] = field(default_factory=list)  # funded, nobody could take it
    retained_unfunded: list[int] = field(default_factory=list)  # accelerations past quota
    paid: list[int] = field(default_factory=list)  # cumulative releases + exit cash
    rounding: list[int] = field(default_factory=list)  # cumulative
    price: list[tuple[int, int] | None] = field(default_factory=list)  # CNY/point, exact
    exits: list[int] = field(default_factory=list)
    inflow_kind: str = "pools"
    payback: dict[str, dict[str, int | None]] = field(default_factory=dict)
    payback_curves: dict[str, list[float]] = field(default_factory=dict)
    follow_up: int = 0
    buyers: int = 0
    top_share: dict[str, float | None] = field(default_factory=dict)
    paid_total: int = 0
    released_total: int = 0
    seconds: float = 0.0  # wall time of this scenario's run (not part of its document)
    notes: list[str] = field(default_factory=list)


def run_scenario(
    plan: Plan,
    pop: Population,
    name: str,
    schedule: Sequence[int],
    *,
    definition: str = "",
    funding_rate: Fraction | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScenarioRun:
    """Run the engine for ``len(schedule)`` days with ``schedule[d]`` orders on day d + 1."""
    started = time.perf_counter()
    rng = np.random.default_rng(pop.seed)
    engine, _ = build_engine(plan, pop, rng)
    n = pop.members
    stated = funding_rate if funding_rate is not None else DEFAULT_FUNDING_RATE
    has_pool = bool(plan.pools) or plan.equity is not None
    run = ScenarioRun(name, definition, inflow_kind="pools" if has_pool else "stated")
    if plan.equity is not None and not plan.grants.daily_rate and not plan.pools:
        run.notes.append(
            "nothing is released daily: the quota only caps forced exit (RULES §3), so "
            "outstanding quota is a ceiling, not a debt; what holders can take out is "
            "points × price, which the pool covers by construction (see the payback "
            "'incl. points')"
        )
    if has_pool and funding_rate is not None:
        run.notes.append(
            "--funding-rate is not used: the plan has pools, their real funding is the inflow"
        )
    if not has_pool:
        run.notes.append(
            f"the plan has no pools: inflow is the stated funding, {float(stated):.0%} of "
            "sales (--funding-rate)"
        )
    first_day = np.zeros(n, dtype=np.int64)  # 0 = has not ordered
    paid = np.zeros(n, dtype=np.int64)  # releases + forced-exit cash, per member
    released = np.zeros(n, dtype=np.int64)
    levels = [(_level_key(lv), lv, False) for lv in PAYBACK_LEVELS]
    if plan.equity is not None:  # also counting the points held at the day's price
        levels += [(f"{_level_key(lv)} incl. points", lv, True) for lv in PAYBACK_LEVELS]
    reached = [np.zeros(n, dtype=np.int64) for _ in levels]  # day reached, 0 = not
    pool_funding = retained_pools = retained_unfunded = 0
    exits_seen = 0
    for index, count in enumerate(schedule):
        day = index + 1
        sales_before = engine.sales_total
        if count:
            who = rng.choice(n, size=min(count, n), replace=False)
            amounts = pop.order_sizes.draw(rng, who.size)
            try:
                engine.order_many(who, amounts)  # = engine.order(names[m], amount) for each
            except Refused as exc:
                raise ProjectionError(
                    f"{name}, day {day}: the engine refused the day's orders: {exc}"
                ) from None
            new = who[first_day[who] == 0]
            first_day[new] = day
        day_sales = engine.sales_total - sales_before
        report = engine.settle()
        result = engine.last_day_result
        assert result is not None
        pool_funding += sum(result.pool_funding.values())
        retained_pools += sum(result.retained.values())
        retained_unfunded += result.acceleration_retained
        today = np.zeros(n, dtype=np.int64)
        for amounts_by_member in result.released.values():
            today += amounts_by_member
        released += today
        paid += today
        # forced exits happen at settlement and during orders (any price rise)
        new_exits = engine.exits[exits_seen:]
        exits_seen = len(engine.exits)
        for exit_ in new_exits:
            paid[exit_.member] += exit_.payout
        spend = engine.spend.view()
        held_value = None
        if plan.equity is not None:  # a statistic, not money: float is fine here
            num, den = engine.price_pair()
            held_value = engine.points.view() * (num / den)
        for (_, level, with_points), days_reached in zip(levels, reached, strict=True):
            hit = (days_reached == 0) & (first_day > 0)
            if with_points and held_value is not None:
                hit &= (paid + held_value) * level.denominator >= spend * level.numerator
            else:
                hit &= paid * level.denominator >= spend * level.numerator
            days_reached[hit] = day
        # cash sales leave the cny sales account only into the equity pool (and into
        # the daily pools when they pay in cny): what left it is the pool inflow
        equity_inflow = engine.sales_total - engine.ledger.platform["cny"][SALES]
        if plan.release_to == "cny":
            equity_inflow -= pool_funding
        if has_pool:
            inflow = pool_funding + equity_inflow
        else:
            inflow = engine.sales_total * stated.numerator // stated.denominator
        platform = engine.ledger.platform
        run.day.append(day)
        run.orders.append(int(count))
        run.sales.append(day_sales)
        run.outstanding.append(exact_total(engine.quota.view()))
        run.inflow.append(inflow)
        run.released.append(sum(report.released.values()))
        run.pool.append(engine.pool)
        run.retained.append(sum(platform[a][RETAINED] for a in platform))
        run.retained_pools.append(retained_pools)
        run.retained_unfunded.append(retained_unfunded)
        run.paid.append(exact_total(paid))
        run.rounding.append(sum(platform[a][ROUNDING] for a in platform))
        if plan.equity is not None:
            price = engine.price()
            run.price.append((price.numerator, price.denominator))
        else:
            run.price.append(None)
        run.exits.append(len(new_exits))
        if progress is not None:
            progress(day)
    days = len(schedule)
    buyers = first_day > 0
    run.buyers = int(buyers.sum())
    run.follow_up = days - int(first_day[buyers].min()) + 1 if run.buyers else 0
    for (key, _, _), days_reached in zip(levels, reached, strict=True):
        got = days_reached[buyers] > 0
        duration = np.where(
            got, days_reached[buyers] - first_day[buyers] + 1, days - first_day[buyers] + 1
        )
        run.payback[key] = kaplan_meier_percentiles(duration, got, (0.5, 0.9))
        run.payback_curves[key] = kaplan_meier_curve(duration, got, days)
    run.released_total = exact_total(released)
    run.paid_total = exact_total(paid)
    run.top_share = top_shares(released, (Fraction(1, 100), Fraction(1, 10)))
    run.seconds = time.perf_counter() - started
    return run


def _level_key(level: Fraction) -> str:
    return f"{int(level * 100)}%"


# ------------------------------------------------------------------ statistics


def _survival(duration: np.ndarray, event: np.ndarray, horizon: int) -> np.ndarray:
    """Kaplan–Meier survival S(t) for t = 0..horizon (S(0) = 1)."""
    if duration.size == 0:
        return np.ones(horizon + 1)
    t_max = max(horizon, int(duration.max()))
    events = np.bincount(duration[event], minlength=t_max + 1).astype(np.float64)
    leaving = np.bincount(duration, minlength=t_max + 1)
    at_risk = duration.size - np.concatenate(([0], np.cumsum(leaving)[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(at_risk > 0, 1 - events / np.maximum(at_risk, 1), 1.0)
    step[0] = 1.0
    return np.cumprod(step)[: horizon + 1]


def kaplan_meier_percentiles(
    duration: np.ndarray, event: np.ndarray, shares: Sequence[float]
) -> dict[str, int | None]:
    """Smallest t by which a share of buyers reached the level (``None``: not within the data).

    ``duration`` is the time to the event for ``event`` True, else the time the
    buyer was observed without it (censored).
    """
    horizon = int(duration.max()) if duration.size else 0
    survival = _survival(duration, event, horizon)
    out: dict[str, int | None] = {}
    for share in shares:
        done = np.flatnonzero(survival <= 1 - share + 1e-12)
        out[f"p{round(share * 100)}"] = int(done[0]) if done.size else None
    return out


def kaplan_meier_curve(duration: np.ndarray, event: np.ndarray, days: int) -> list[float]:
    """The share of buyers paid back by day t since their first order, t = 0..days."""
    return [round(1 - s, 6) for s in _survival(duration, event, days).tolist()]


def top_shares(values: np.ndarray, tops: Sequence[Fraction]) -> dict[str, float | None]:
    total = exact_total(values)
    ordered = np.sort(values)[::-1]
    out: dict[str, float | None] = {}
    for top in tops:
        k = max(1, math.ceil(values.size * top))
        key = f"top_{float(top * 100):g}%"
        out[key] = None if total == 0 else exact_total(ordered[:k]) / total
    return out


# ------------------------------------------------------------------ documents


def _ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else round(numerator / denominator, 4)


def _price_text(price: tuple[int, int] | None) -> str | None:
    if price is None:
        return None
    num, den = price
    return f"{num * 10**8 // den / 10**8:.8f}"  # shown to 8 places, floor


def scenario_document(run: ScenarioRun) -> dict[str, Any]:
    """JSON-ready: money as decimal strings, per-day series as columns."""
    days = run.day[-1] if run.day else 0
    never = f"never within {run.follow_up} days" if run.buyers else "no buyers"
    payback = {
        level: {k: (v if v is not None else never) for k, v in pct.items()}
        for level, pct in run.payback.items()
    }
    return {
        "definition": run.definition,
        "days": days,
        "buyers": run.buyers,
        "inflow": (
            "cumulative pool inflow (equity pool contributions + daily pool funding)"
            if run.inflow_kind == "pools"
            else "stated funding: the funding rate × cumulative sales (the plan has no pools)"
        ),
        "payback_days": payback,
        "top_share_of_released": run.top_share,
        "totals": {
            "sales": format_cents(sum(run.sales)),
            "released": format_cents(run.released_total),
            "paid_out": format_cents(run.paid_total),
            "outstanding_quota": format_cents(run.outstanding[-1] if run.outstanding else 0),
            "pool_inflow": format_cents(run.inflow[-1] if run.inflow else 0),
            "retained": format_cents(run.retained[-1] if run.retained else 0),
            "retained_pools": format_cents(run.retained_pools[-1] if run.day else 0),
            "retained_unfunded": format_cents(run.retained_unfunded[-1] if run.day else 0),
            "rounding": format_cents(run.rounding[-1] if run.rounding else 0),
            "forced_exits": sum(run.exits),
        },
        "series": {
            "day": run.day,
            "orders": run.orders,
            "sales": [format_cents(v) for v in run.sales],
            "outstanding_quota": [format_cents(v) for v in run.outstanding],
            "outstanding_to_daily_sales": [
                _ratio(o, s) for o, s in zip(run.outstanding, run.sales, strict=True)
            ],
            "pool_inflow": [format_cents(v) for v in run.inflow],
            "outstanding_to_pool_inflow": [
                _ratio(o, i) for o, i in zip(run.outstanding, run.inflow, strict=True)
            ],
            "paid_out": [format_cents(v) for v in run.paid],
            # everything promised so far (paid + still owed) against what came in:
            # above 1 the plan has promised more than it was ever funded with
            "promised_to_pool_inflow": [
                _ratio(p + o, i)
                for p, o, i in zip(run.paid, run.outstanding, run.inflow, strict=True)
            ],
            "released": [format_cents(v) for v in run.released],
            "equity_price": [_price_text(p) for p in run.price],
            "equity_pool": [format_cents(v) for v in run.pool],
            "retained": [format_cents(v) for v in run.retained],
            "retained_pools": [format_cents(v) for v in run.retained_pools],
            "retained_unfunded": [format_cents(v) for v in run.retained_unfunded],
            "rounding": [format_cents(v) for v in run.rounding],
            "forced_exits": run.exits,
        },
        "payback_curves": run.payback_curves,
        "notes": run.notes,
    }


def table_days(days: int) -> list[int]:
    return sorted({d for d in TABLE_DAYS if d <= days} | {days})


def settings_document(pop: Population, sales: Sales, days: int) -> dict[str, Any]:
    return {
        "members": pop.members,
        "days": days,
        "tree": pop.tree,
        "sponsored": pop.sponsored,
        "order_sizes": pop.order_sizes.describe(),
        "seed": pop.seed,
        "sales": {**asdict(sales), "max_rate": sales.cap},
    }


def plan_mapping(document: Any) -> Mapping[str, Any]:
    """The plan section of a plan file or scenario file, as ``tokenmall lint`` reads it."""
    from tokenmall.lint import plan_section

    raw, problems = plan_section(document)
    if raw is None or problems:
        reasons = "; ".join(f"{p.parameter}: {p.reason}" for p in problems) or "not a plan"
        raise ProjectionError(reasons)
    return raw


# ------------------------------------------------------------------ all scenarios


def _worker(
    plan_raw: Mapping[str, Any],
    pop: Population,
    name: str,
    schedule: list[int],
    definition: str,
    funding_rate: Fraction | None,
    queue: Any,
) -> ScenarioRun:
    plan = Plan.from_mapping(plan_raw)

    def report(day: int) -> None:
        if queue is not None and (day % 5 == 0 or day == len(schedule)):
            queue.put((name, day))

    return run_scenario(
        plan,
        pop,
        name,
        schedule,
        definition=definition,
        funding_rate=funding_rate,
        progress=report,
    )


def project(
    plan_raw: Mapping[str, Any],
    pop: Population,
    sales: Sales,
    days: int,
    *,
    scenarios: Sequence[str] = SCENARIOS,
    funding_rate: Fraction | None = None,
    workers: int | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> dict[str, ScenarioRun]:
    """Every scenario, in parallel processes (one per scenario, at most ``workers``).

    Scenarios are independent runs of their own engine, so they scale with cores;
    ``workers=1`` runs them one after another in this process.
    """
    if days < 1:
        raise ProjectionError("days: at least 1")
    Plan.from_mapping(plan_raw)  # a broken plan fails here, before any process starts
    jobs = {
        name: (sales.schedule(name, pop.members, days), sales.describe(name)) for name in scenarios
    }
    count = workers if workers is not None else min(len(jobs), os.cpu_count() or 1)
    if count <= 1 or len(jobs) == 1:
        progress = _CallbackQueue(on_progress)
        return {
            name: _worker(plan_raw, pop, name, schedule, definition, funding_rate, progress)
            for name, (schedule, definition) in jobs.items()
        }
    context = multiprocessing.get_context("spawn")  # no forked copies of this process's threads
    with context.Manager() as manager:
        queue = manager.Queue()
        with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
            futures = {
                name: pool.submit(
                    _worker, dict(plan_raw), pop, name, schedule, definition, funding_rate, queue
                )
                for name, (schedule, definition) in jobs.items()
            }
            pending = set(futures.values())
            while pending:
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                _drain(queue, on_progress)
                for future in done:
                    future.result()  # an error in a worker surfaces here
            _drain(queue, on_progress)
            return {name: future.result() for name, future in futures.items()}


class _CallbackQueue:
    """What ``_worker`` reports to, in this process: straight to the callback."""

    def __init__(self, on_progress: Callable[[str, int], None] | None) -> None:
        self.on_progress = on_progress

    def put(self, item: tuple[str, int]) -> None:
        if self.on_progress is not None:
            self.on_progress(*item)


def _drain(queue: Any, on_progress: Callable[[str, int], None] | None) -> None:
    while True:
        try:
            name, day = queue.get_nowait()
        except Empty:
            return
        if on_progress is not None:
            on_progress(name, day)
