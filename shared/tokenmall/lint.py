"""Plan lint (``tokenmall lint PLAN.yaml``): what a plan promises, checked before it runs.

Pure: no I/O.  :func:`lint_plan` takes the parsed YAML document — a plan mapping
(the ``plan:`` section of SCENARIOS.md, presets and merge rules included) or a
whole scenario file with a ``plan:`` key — and returns :class:`Finding`\\ s, each
with a severity, the parameter path (``team.max_depth``, ``pools[1].tiers[0]``),
the reason and, where one applies, the rule or law.  All arithmetic is exact
(``Fraction``); decimals are only formatted for the messages.

Severities
    ``error`` exactly when the engine refuses the plan: the plan goes through the
    engine's own merge and validation (``Plan.from_mapping``), and each section
    (``grants``, ``equity``, ``pools``, …) is also validated alone so that one run
    names every broken section; the parameter is the key the engine's message
    names.  Duplicate grant thresholds, ``max < min`` in a pool tier and rates
    above 100 % are such engine errors.  Everything else is a ``warning``: the
    engine runs the plan, but it promises something suspect.  With errors, the
    checks of the valid sections still run; ``funding`` and ``payback`` (which
    combine sections) need an error-free plan.

Warnings (``code``)
    ``levels``
        The largest number of uplines that earn from one member's purchase or
        release: ``referral.gen2_rate > 0`` → 2, ``gen1_rate`` only → 1,
        ``equity.referral_grant_rate > 0`` → 1, a referral rate in ``weights``
        used by a pool → 1, ``team`` (with a positive level rate) →
        ``max_depth`` or unlimited when null.  More than 3 → warning: 团队计酬
        under the 2005 禁止传销条例 (art. 7(3)); the 2013 opinion of the Supreme
        People's Court, the Supreme People's Procuratorate and the Ministry of
        Public Security on pyramid-selling cases sets the criminal threshold at
        3+ levels and 30+ participants.
    ``funding`` — the flat-sales model
        Sales are a flat S per day, all orders in one grant tier (multiple m).
        *Incoming*: F × S, F = the sum of the pool rates (tier rates included)
        when the plan has pools, otherwise the stated funding rate
        (``funding_rate``; default the equity ``pool_rate`` when the plan has
        the equity module, else 0.30).  *Promised*: every day's orders are
        promised m × S of quota.  With a base release d, a grant releases
        d × A a day (d × (1 + a) × A with the accelerations a = gen1 + gen2 +
        the top team rate + the peer bonuses the walk can reach), so after its
        lifetime the outstanding grants release d(1 + a) × S × m / (d(1 + a))
        = m × S a day: the release rates cancel out, they only set how soon
        that steady state comes.  Warning when m > F, with the day from which
        the growing promise passes the funding (base only: the first day t with
        t × d > F; with every acceleration: t × d(1 + a) > F).  A plan whose
        only release is its pools can never pay more than F × S, so there the
        warning says that quota piles up by (m − F) × S a day and only F / m of
        it can ever be released.  A plan with neither a base release nor pools
        (the ``equity`` preset: its quota only bounds forced exit) has no
        daily promise and is not checked.
    ``payback``
        Per grant tier: days to release the whole quota = ceil(m / r), the
        spend itself pays back after ceil(1 / r) days; warning when the quota
        takes more than ``payback_days`` (default 1000, design clarifications).
        r is the base rate d (a member without downline: no accelerations);
        a plan without a base release uses its pools at their most favourable,
        r = F (all of a day's pool funding goes to that day's buyers), so it is
        flagged only when even that is too slow.
    ``pool-rates``
        Pool rates (pro-rata rates, every tier rate, and ``equity.pool_rate``,
        which takes its share of sales too) summing beyond 100 % of sales.
    ``ignored``
        A ``rate`` on a ``split: tiers`` pool: the engine ignores it (the tier
        rates fund the pool).
    ``tier-overlap`` / ``tier-gap`` / ``tier-empty``
        Tiers of a pool, sorted by ``min``: a weight in two tiers is paid by
        both; a weight value between two tiers that no tier covers is in no
        tier (weights ``shares`` and ``contribution`` are whole numbers, so
        100 → 101 is contiguous; ``equity_points`` have 8 decimals, so 100 →
        101 leaves a gap and 100 → 100.00000001 does not); a tier no weight
        value can fall in.  Below the first tier's ``min`` is not a gap.
    ``order``
        Thresholds not ascending as written (``grants.tiers``,
        ``team.levels``, a pool's tiers by ``min``: the engine sorts grants
        tiers and team levels, so the written order misleads), two team levels
        with the same threshold (the first can never be a member's star), and
        team rates that fall as the threshold rises.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any, Literal

from tokenmall.engine.plan import BASE_PLAN, Plan, PlanError, PoolConfig, merge_plan
from tokenmall.money import AmountError, to_cents, to_fraction

Severity = Literal["error", "warning"]

DEFAULT_PAYBACK_DAYS = 1000
DEFAULT_FUNDING_RATE = Fraction(3, 10)
MAX_LEVELS = 3

PYRAMID_RULE = (
    "禁止传销条例 (2005) art. 7(3) 团队计酬; 最高人民法院、最高人民检察院、公安部"
    "《关于办理组织领导传销活动刑事案件适用法律若干问题的意见》(2013): "
    "3+ levels and 30+ participants"
)
SCENARIO_KEYS = frozenset({"name", "description", "plan", "steps", "checks"})
_GRID = {"shares": Fraction(1), "contribution": Fraction(1), "equity_points": Fraction(1, 10**8)}
_PATH = re.compile(
    r"(?<![\w.\[])((?:preset|timezone|release_to|grants|equity|weights|pools|referral|team)"
    r"(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*)"
)


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    parameter: str
    reason: str
    rule: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def exit_code(findings: Iterable[Finding]) -> int:
    """0 clean, 1 warnings only, 2 any error."""
    severities = {f.severity for f in findings}
    return 2 if "error" in severities else 1 if severities else 0


def error(parameter: str, reason: str, code: str = "invalid") -> Finding:
    return Finding("error", code, parameter, reason)


# ------------------------------------------------------------------ entry point


def plan_section(document: Any) -> tuple[Mapping[str, Any] | None, list[Finding]]:
    """The plan mapping of a plan file or of a scenario file (its ``plan:`` key)."""
    if document is None:
        return {}, []
    if not isinstance(document, Mapping):
        return None, [error("plan", "a plan file is a mapping of plan keys (or a scenario)")]
    if not {"plan", "steps", "checks"} & set(document):
        return document, []
    unknown = sorted(str(k) for k in set(document) - SCENARIO_KEYS)
    findings = [error(k, f"unknown top-level key {k} of a scenario file") for k in unknown]
    plan = document.get("plan") or {}
    if not isinstance(plan, Mapping):
        return None, [*findings, error("plan", "plan must be a mapping")]
    return plan, findings


def lint_plan(
    mapping: Any,
    *,
    payback_days: int = DEFAULT_PAYBACK_DAYS,
    funding_rate: Fraction | None = None,
) -> list[Finding]:
    """Lint a plan mapping or a scenario document (see the module docstring)."""
    plan_raw, findings = plan_section(mapping)
    if plan_raw is None:
        return findings
    try:
        merged = merge_plan(BASE_PLAN, plan_raw)  # unknown keys, unknown preset
    except PlanError as exc:
        return [*findings, _engine_error(exc)]
    try:
        plan = Plan.parse(merged)
        complete = True
    except PlanError as whole:
        broken = _broken_sections(merged)
        findings += [_engine_error(exc) for exc in broken.values()] or [_engine_error(whole)]
        valid = {**merged, **{k: BASE_PLAN[k] for k in broken if k in BASE_PLAN}}
        try:
            plan = Plan.parse(valid)
        except PlanError:
            return findings
        merged, complete = valid, False
    findings += _levels(plan)
    findings += _pool_rates(plan, merged)
    findings += _tiers(plan)
    findings += _order(plan, merged)
    if complete:
        rate = funding_rate
        if rate is None:
            rate = plan.equity.pool_rate if plan.equity is not None else DEFAULT_FUNDING_RATE
        findings += _funding_and_payback(plan, merged, rate, payback_days)
    return findings


def _engine_error(exc: PlanError) -> Finding:
    message = str(exc)
    unknown = re.match(r"unknown plan key (\S+)", message)
    if unknown:
        parameter = unknown.group(1)
    else:
        found = _PATH.search(message)
        parameter = found.group(1) if found else "plan"
    return error(parameter, message)


def _broken_sections(merged: Mapping[str, Any]) -> dict[str, PlanError]:
    """Each top-level section validated alone on the base plan: which ones the engine refuses."""
    broken: dict[str, PlanError] = {}
    for key in merged:
        if key == "preset":
            continue
        try:
            Plan.parse({**BASE_PLAN, key: merged[key]})
        except PlanError as exc:
            broken[key] = exc
    return broken


# ------------------------------------------------------------------ levels


def _levels(plan: Plan) -> list[Finding]:
    candidates: list[tuple[float | int, str, str]] = []  # (levels, parameter, why)
    if plan.referral is not None:
        if plan.referral.gen2_rate > 0:
            candidates.append((2, "referral.gen2_rate", "referral pays the sponsor's sponsor"))
        elif plan.referral.gen1_rate > 0:
            candidates.append((1, "referral.gen1_rate", "referral pays the sponsor"))
    if plan.equity is not None and plan.equity.referral_grant_rate > 0:
        candidates.append((1, "equity.referral_grant_rate", "equity points for the sponsor"))
    weights = {p.weight for p in plan.pools}
    if "shares" in weights and plan.weights.referral_share_rate > 0:
        candidates.append((1, "weights.referral_share_rate", "shares from direct referrals"))
    if "contribution" in weights and plan.weights.referral_contribution_rate > 0:
        candidates.append(
            (1, "weights.referral_contribution_rate", "contribution from direct referrals")
        )
    team = plan.team
    if team is not None and any(lv.rate > 0 for lv in team.levels):
        if team.max_depth is None:
            candidates.append((math.inf, "team.max_depth", "the team walk has no max_depth"))
        else:
            candidates.append(
                (team.max_depth, "team.max_depth", "the team walk pays that many uplines")
            )
    if not candidates:
        return []
    levels, parameter, why = max(candidates, key=lambda c: c[0])
    if levels <= MAX_LEVELS:
        return []
    shown = "unlimited" if levels == math.inf else str(levels)
    return [
        Finding(
            "warning",
            "levels",
            parameter,
            f"{shown} levels of uplines earn from one member's purchase or release ({why}); "
            f"more than {MAX_LEVELS} levels is 团队计酬 pyramid selling",
            PYRAMID_RULE,
        )
    ]


# ------------------------------------------------------------------ pools


def _pool_funding(pool: PoolConfig) -> Fraction:
    return sum((t.rate for t in pool.tiers), Fraction(0)) if pool.split == "tiers" else pool.rate


def _pool_rates(plan: Plan, raw: Mapping[str, Any]) -> list[Finding]:
    findings = []
    raw_pools = raw.get("pools") or []
    for i, pool in enumerate(plan.pools):
        if pool.split == "tiers" and raw_pools[i].get("rate") is not None:
            findings.append(
                Finding(
                    "warning",
                    "ignored",
                    f"pools[{i}].rate",
                    f"pool {pool.name!r} splits by tiers: its rate is ignored, the tier rates "
                    f"({_pct(_pool_funding(pool))} in all) fund it",
                )
            )
    parts = [(f"pools[{i}] {p.name}", _pool_funding(p)) for i, p in enumerate(plan.pools)]
    if plan.equity is not None:
        parts.append(("equity.pool_rate", plan.equity.pool_rate))
    total = sum((rate for _, rate in parts), Fraction(0))
    if total > 1:
        listed = ", ".join(f"{name} {_pct(rate)}" for name, rate in parts)
        findings.append(
            Finding(
                "warning",
                "pool-rates",
                "pools",
                f"pool rates sum to {_pct(total)} of sales ({listed}): more than the sales "
                "that fund them",
            )
        )
    return findings


def _tiers(plan: Plan) -> list[Finding]:
    findings = []
    for i, pool in enumerate(plan.pools):
        if pool.split != "tiers":
            continue
        grid = _GRID[pool.weight]
        unit = "equity points" if pool.weight == "equity_points" else pool.weight
        ranked = sorted(range(len(pool.tiers)), key=lambda j: (pool.tiers[j].min, j))
        covering: int | None = None  # the tier reaching highest so far
        covered: Fraction | None = None  # its max; None = unbounded
        for j in ranked:
            tier = pool.tiers[j]
            where = f"pools[{i}].tiers[{j}]"
            lowest = _ceil_to(tier.min, grid)  # the smallest weight value in the tier
            if tier.max is not None and lowest > tier.max:
                findings.append(
                    Finding(
                        "warning",
                        "tier-empty",
                        where,
                        f"tier {tier.name} ({_range(tier.min, tier.max)}) of pool {pool.name!r} "
                        f"holds no possible {unit} value (steps of {_num(grid)})",
                    )
                )
                continue
            if covering is not None:
                other = pool.tiers[covering]
                if covered is None or lowest <= covered:
                    tops = [x for x in (tier.max, covered) if x is not None]
                    both = _range(lowest, min(tops) if tops else None)
                    findings.append(
                        Finding(
                            "warning",
                            "tier-overlap",
                            where,
                            f"tier {tier.name} ({_range(tier.min, tier.max)}) overlaps tier "
                            f"{other.name} ({_range(other.min, other.max)}) of pool "
                            f"{pool.name!r}: a member with {both} {unit} is in both and paid "
                            "by each",
                        )
                    )
                else:
                    after = (covered // grid) * grid + grid  # the next weight value above
                    if after < lowest:
                        findings.append(
                            Finding(
                                "warning",
                                "tier-gap",
                                where,
                                f"pool {pool.name!r} has a gap between tier {other.name} (max "
                                f"{_num(covered)}) and tier {tier.name} (min {_num(tier.min)}):"
                                f" {_range(after, lowest - grid)} {unit} is in no tier",
                            )
                        )
            if covering is None or (
                covered is not None and (tier.max is None or tier.max > covered)
            ):
                covering, covered = j, tier.max
    return findings


def _ceil_to(value: Fraction, grid: Fraction) -> Fraction:
    return math.ceil(value / grid) * grid


# ------------------------------------------------------------------ ordering


def _raw_list(raw: Mapping[str, Any], *keys: str) -> list[Any]:
    node: Any = raw
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, list) else []


def _order(plan: Plan, raw: Mapping[str, Any]) -> list[Finding]:
    findings = []
    grants = [to_cents(t["threshold"]) for t in _raw_list(raw, "grants", "tiers")]
    findings += _descending(grants, "grants.tiers", "threshold", "the engine picks by amount")
    if plan.team is not None:
        levels = _raw_list(raw, "team", "levels")
        if len(levels) != len(plan.team.levels):  # levels left to the module defaults
            levels = [
                {"threshold": _cents(lv.threshold), "rate": lv.rate} for lv in plan.team.levels
            ]
        thresholds = [to_cents(lv["threshold"]) for lv in levels]
        findings += _descending(thresholds, "team.levels", "threshold", "star n = n-th lowest")
        seen: dict[int, int] = {}
        for j, th in enumerate(thresholds):
            if th in seen:
                findings.append(
                    Finding(
                        "warning",
                        "order",
                        f"team.levels[{j}].threshold",
                        f"team.levels[{seen[th]}] and team.levels[{j}] have the same threshold "
                        f"{_cents(th)}: the lower of the two stars can never be reached",
                    )
                )
            seen.setdefault(th, j)
        ranked = sorted(range(len(levels)), key=lambda j: thresholds[j])
        for a, b in itertools.pairwise(ranked):
            low, high = _level_rate(levels[a]), _level_rate(levels[b])
            if thresholds[b] > thresholds[a] and high < low:
                findings.append(
                    Finding(
                        "warning",
                        "order",
                        f"team.levels[{b}].rate",
                        f"a higher star (threshold {_cents(thresholds[b])}) has a lower rate "
                        f"({_pct(high)}) than the star below it ({_pct(low)}): reaching it "
                        "lowers the differential",
                    )
                )
    for i, pool in enumerate(plan.pools):
        mins = [t.min for t in pool.tiers]
        findings += _descending(mins, f"pools[{i}].tiers", "min", "tiers read lowest first")
    return findings


def _level_rate(level: Mapping[str, Any]) -> Fraction:
    rate = level["rate"]
    return rate if isinstance(rate, Fraction) else to_fraction(rate)


def _descending(values: list[Any], where: str, key: str, note: str) -> list[Finding]:
    findings = []
    for j in range(1, len(values)):
        if values[j] < max(values[:j]):
            findings.append(
                Finding(
                    "warning",
                    "order",
                    f"{where}[{j}].{key}",
                    f"{where} {key}s are not ascending: {where}[{j}] comes after a higher "
                    f"{key} ({note}); write them in ascending order",
                )
            )
    return findings


# ------------------------------------------------------------------ funding and payback


def _team_acceleration(plan: Plan) -> Fraction:
    """The most a team walk can pay on one unit of base release: top rate + peer bonuses."""
    team = plan.team
    if team is None:
        return Fraction(0)
    rates = {lv.rate for lv in team.levels if lv.rate > 0}
    if not rates or team.max_depth == 0:
        return Fraction(0)
    # each peer bonus needs a level of its own and one more upline after it
    peers = len(rates) if team.max_depth is None else min(len(rates), team.max_depth // 2)
    return max(rates) + peers * team.peer_rate


def _funding_and_payback(
    plan: Plan, raw: Mapping[str, Any], funding_rate: Fraction, payback_days: int
) -> list[Finding]:
    d = plan.grants.daily_rate or Fraction(0)
    pools = sum((_pool_funding(p) for p in plan.pools), Fraction(0))
    if d == 0 and not plan.pools:
        return []  # no daily release is promised (e.g. the equity preset)
    if plan.pools:
        funding, source = pools, "the pool rates"
    else:
        funding, source = funding_rate, "the stated --funding-rate"
    accel = Fraction(0)
    if plan.referral is not None:
        accel += plan.referral.gen1_rate + plan.referral.gen2_rate
    accel += _team_acceleration(plan)
    speed = d + (pools if d == 0 else 0)  # pools-only: most favourable case
    raw_tiers = _raw_list(raw, "grants", "tiers")
    findings = []
    for i, t in enumerate(raw_tiers):
        m = to_fraction(t["multiple"])
        if m == 0:
            continue
        where = f"grants.tiers[{i}].multiple"
        tier = f"orders from {_cents(to_cents(t['threshold']))} get {_num(m)}× quota"
        if m > funding:
            if d > 0:
                base_day = math.floor(funding / d) + 1
                full_day = math.floor(funding / (d * (1 + accel))) + 1
                when = f"from day {base_day} of flat sales with base release only"
                if accel > 0:
                    when += (
                        f", from day {full_day} with every acceleration "
                        f"(gen1+gen2+team+peer up to {_pct(accel)} of base)"
                    )
                reason = (
                    f"{tier}: at flat daily sales S the plan promises to release {_num(m)}×S a "
                    f"day once grants run their course (base {_pct(d)}/day), but funding is "
                    f"{_pct(funding)}×S ({source}): {_pct(funding / m)} covered; "
                    f"the promise passes the funding {when}"
                )
            else:
                reason = (
                    f"{tier}: at flat daily sales S the plan grants {_num(m)}×S of quota a day "
                    f"but the pools pay out {_pct(funding)}×S: quota piles up by "
                    f"{_num(m - funding)}×S a day and only {_pct(funding / m)} of it can ever "
                    "be released"
                )
            findings.append(Finding("warning", "funding", where, reason))
        if speed > 0:
            quota_days = math.ceil(m / speed)
            if quota_days > payback_days:
                spend = (
                    f"the spend itself pays back after {math.ceil(1 / speed)} days"
                    if m >= 1
                    else "the spend never pays back (multiple below 1)"
                )
                assumption = (
                    f"base {_pct(d)}/day, no accelerations"
                    if d > 0
                    else f"pools at best {_pct(speed)} of the spend per day"
                )
                findings.append(
                    Finding(
                        "warning",
                        "payback",
                        where,
                        f"{tier}: releasing the whole quota takes {quota_days} days "
                        f"({assumption}), more than {payback_days}; {spend}",
                    )
                )
    return findings


# ------------------------------------------------------------------ formatting (messages only)


def _num(value: Fraction, places: int = 8) -> str:
    with localcontext() as ctx:
        ctx.prec = 40
        exact = Decimal(value.numerator) / Decimal(value.denominator)
        text = f"{exact.quantize(Decimal(1).scaleb(-places)).normalize():f}"
    return text


def _pct(value: Fraction) -> str:
    return f"{_num(value * 100, 2)}%"


def _cents(cents: int) -> str:
    return _num(Fraction(cents, 100), 2)


def _range(lo: Fraction, hi: Fraction | None) -> str:
    return f"{_num(lo)}+" if hi is None else f"{_num(lo)}–{_num(hi)}"


def parse_rate(text: str) -> Fraction:
    """A ``--funding-rate`` between 0 and 1, read exactly."""
    try:
        rate = to_fraction(text, "--funding-rate")
    except AmountError as exc:
        raise ValueError(str(exc)) from None
    if not 0 <= rate <= 1:
        raise ValueError(f"--funding-rate must be between 0 and 1, got {text}")
    return rate
