"""Plans: the operator's parameters, presets, merging and validation (RULES.md §9, SCENARIOS.md).

A plan is written as a nested mapping (YAML/JSON).  ``merge_plan`` combines
mappings the way SCENARIOS.md says (mappings merge key by key, lists and
explicit nulls replace), and ``Plan.from_mapping`` turns the merged mapping into
an immutable, validated :class:`Plan` whose rates are exact fractions and whose
amounts are integer minor units.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tokenmall.money import AmountError, to_cents, to_decimal, to_fraction, to_units

RELEASE_KINDS_FIXED = ("base", "gen1", "gen2", "team", "peer")
WEIGHTS = ("shares", "contribution", "equity_points")
SPLITS = ("pro_rata", "tiers")
ASSETS_FOR_RELEASE = ("stable", "cny")


# Bounds that keep every sum inside int64 minor units: lifetime sales × the largest
# multiple bounds all quota ever granted (10**16 × 100 < 2**63).
MAX_CASH_CENTS = 10**14  # one amount: at most 1,000,000,000,000.00
MAX_TOTAL_CENTS = 10**16  # lifetime sales, and any one balance: 100,000,000,000,000.00
MAX_POINT_UNITS = 10**18  # 10,000,000,000 points
MAX_MULTIPLE = 100


class PlanError(ValueError):
    """A plan that cannot be used: unknown key, wrong type, value out of range."""


PRESETS: dict[str, dict[str, Any]] = {
    "equity": {
        "grants": {"tiers": [{"threshold": 0, "multiple": 2}], "daily_rate": None},
        "equity": {
            "pool_rate": "0.30",
            "grant_rate": "0.70",
            "issue_price": 1,
            "total_supply": 100000000,
            "sell_fee_rate": "0.10",
            "referral_grant_rate": 0,
        },
    },
    "cycle": {
        "grants": {"tiers": [{"threshold": 0, "multiple": 2}], "daily_rate": None},
        "weights": {
            "share_unit": 1000,
            "referral_share_rate": 0,
            "contribution_unit": 1000,
            "referral_contribution_rate": 0,
        },
        "pools": [
            {"name": "static", "rate": "0.30", "split": "pro_rata", "weight": "shares"},
            {
                "name": "dynamic",
                "split": "tiers",
                "weight": "shares",
                "tiers": [
                    {"name": "V1", "min": 50, "max": 100, "rate": "0.01"},
                    {"name": "V2", "min": 101, "max": 200, "rate": "0.03"},
                    {"name": "V3", "min": 201, "max": 500, "rate": "0.06"},
                ],
            },
        ],
    },
    "points": {
        "grants": {
            "tiers": [
                {"threshold": 3000, "multiple": "2.5"},
                {"threshold": 9000, "multiple": 3},
                {"threshold": 27000, "multiple": "3.5"},
                {"threshold": 51000, "multiple": 4},
            ],
            "daily_rate": "0.012",
        },
        "referral": {"gen1_rate": "0.5", "gen2_rate": "0.3"},
        "team": {
            "levels": [
                {"threshold": 50000, "rate": "0.10"},
                {"threshold": 200000, "rate": "0.20"},
                {"threshold": 600000, "rate": "0.26"},
                {"threshold": 2000000, "rate": "0.32"},
                {"threshold": 6000000, "rate": "0.38"},
                {"threshold": 15000000, "rate": "0.44"},
                {"threshold": 30000000, "rate": "0.50"},
            ],
            "peer_rate": "0.03",
            "max_depth": None,
        },
    },
}

# What a plan is without a preset: every optional module off.
BASE_PLAN: dict[str, Any] = {
    "timezone": "Asia/Shanghai",
    "release_to": "stable",
    "grants": {"tiers": [], "daily_rate": None},
    "equity": None,
    "weights": {
        "share_unit": 1000,
        "referral_share_rate": 0,
        "contribution_unit": 1000,
        "referral_contribution_rate": 0,
    },
    "pools": [],
    "referral": None,
    "team": None,
}

# Keys left out of a module that is switched on take the seed values (RULES §9),
# as they would had the module come with its preset.
MODULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "equity": dict(PRESETS["equity"]["equity"]),
    "referral": dict(PRESETS["points"]["referral"]),
    "team": dict(PRESETS["points"]["team"]),
}

_SCHEMA: dict[str, Any] = {
    "preset": str,
    "timezone": str,
    "release_to": str,
    "grants": {"tiers": [{"threshold": 0, "multiple": 0}], "daily_rate": 0},
    "equity": {k: 0 for k in MODULE_DEFAULTS["equity"]},
    "weights": {k: 0 for k in BASE_PLAN["weights"]},
    "pools": [
        {
            "name": str,
            "rate": 0,
            "split": str,
            "weight": str,
            "tiers": [{"name": str, "min": 0, "max": 0, "rate": 0}],
        }
    ],
    "referral": {"gen1_rate": 0, "gen2_rate": 0},
    "team": {"levels": [{"threshold": 0, "rate": 0}], "peer_rate": 0, "max_depth": 0},
}


def _check_keys(value: Any, schema: Any, where: str) -> None:
    """Reject unknown keys anywhere in a (partial) plan mapping."""
    if value is None:
        return
    if isinstance(schema, dict):
        if not isinstance(value, Mapping):
            raise PlanError(f"{where or 'plan'} must be a mapping")
        for key, sub in value.items():
            if key not in schema:
                raise PlanError(f"unknown plan key {where + '.' if where else ''}{key}")
            _check_keys(sub, schema[key], f"{where}.{key}" if where else str(key))
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise PlanError(f"{where} must be a list")
        for i, item in enumerate(value):
            _check_keys(item, schema[0], f"{where}[{i}]")


def check_plan_numbers(value: Any, where: str = "", schema: Any = None) -> None:
    """Every numeric plan field holds a number (or null): a file-level error otherwise."""
    schema = _SCHEMA if schema is None else schema
    if value is None:
        return
    if isinstance(schema, dict) and isinstance(value, Mapping):
        for key, sub in value.items():
            if key in schema:
                check_plan_numbers(sub, f"{where}.{key}" if where else str(key), schema[key])
    elif isinstance(schema, list) and isinstance(value, list):
        for i, item in enumerate(value):
            check_plan_numbers(item, f"{where}[{i}]", schema[0])
    elif schema == 0:
        try:
            to_decimal(value, where)
        except AmountError as exc:
            raise PlanError(str(exc)) from None


# numeric plan fields that are counts, not amounts or rates: integers in the document
PLAN_COUNTS = frozenset({"min", "max", "max_depth"})


def plan_document(value: Any, schema: Any = None, key: str = "") -> Any:
    """A plan as the HTTP APIs and webhooks show it (README, "API style"): every amount,
    rate and multiple a decimal string in the form it was written (``3`` → ``"3"``,
    ``"0.30"`` stays), counts (a pool tier's ``min``/``max`` shares, the team's
    ``max_depth``) integers — one form per field, whatever the file mixed."""
    schema = _SCHEMA if schema is None else schema
    if value is None:
        return None
    if isinstance(schema, dict) and isinstance(value, Mapping):
        return {
            k: plan_document(v, schema[k], k) if k in schema else copy.deepcopy(v)
            for k, v in value.items()
        }
    if isinstance(schema, list) and isinstance(value, list):
        return [plan_document(item, schema[0], key) for item in value]
    if schema == 0 and not isinstance(value, bool):
        number = to_decimal(value, key)
        if key in PLAN_COUNTS and number == number.to_integral_value():
            return int(number)
        return str(number)
    return copy.deepcopy(value)


def merge_plan(base: Mapping[str, Any], partial: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``partial`` into ``base``: mappings key by key, lists and nulls replace whole.

    A ``preset`` key in ``partial`` restarts from that preset before merging the
    rest of ``partial``.
    """
    _check_keys(partial, _SCHEMA, "")
    if "preset" in partial and partial["preset"] is not None:
        name = partial["preset"]
        if name not in PRESETS:
            raise PlanError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
        result = _deep_merge(BASE_PLAN, PRESETS[name])
        result["preset"] = name
    else:
        result = copy.deepcopy(dict(base))
    rest = {k: v for k, v in partial.items() if k != "preset"}
    return _deep_merge(result, rest)


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(base))
    for key, value in over.items():
        current = result.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            result[key] = _deep_merge(current, value)
        elif isinstance(value, Mapping) and current is None and key in MODULE_DEFAULTS:
            result[key] = _deep_merge(MODULE_DEFAULTS[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


# ---------------------------------------------------------------- typed plan


@dataclass(frozen=True, slots=True)
class AmountTier:
    threshold: int  # cents
    multiple: Fraction


@dataclass(frozen=True, slots=True)
class GrantsConfig:
    tiers: tuple[AmountTier, ...]  # ascending by threshold
    daily_rate: Fraction | None

    def tier_for(self, amount: int) -> AmountTier | None:
        chosen = None
        for tier in self.tiers:
            if tier.threshold <= amount:
                chosen = tier
        return chosen


@dataclass(frozen=True, slots=True)
class EquityConfig:
    pool_rate: Fraction
    grant_rate: Fraction
    issue_price: Fraction  # CNY per point
    total_supply: int  # units
    sell_fee_rate: Fraction
    referral_grant_rate: Fraction


@dataclass(frozen=True, slots=True)
class WeightsConfig:
    share_unit: int  # cents
    referral_share_rate: Fraction
    contribution_unit: int  # cents
    referral_contribution_rate: Fraction


@dataclass(frozen=True, slots=True)
class TierConfig:
    name: str
    min: Fraction
    max: Fraction | None
    rate: Fraction


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    split: str  # pro_rata | tiers
    weight: str  # shares | contribution | equity_points
    rate: Fraction  # pro_rata only
    tiers: tuple[TierConfig, ...]


@dataclass(frozen=True, slots=True)
class ReferralConfig:
    gen1_rate: Fraction
    gen2_rate: Fraction


@dataclass(frozen=True, slots=True)
class StarLevel:
    threshold: int  # cents of team performance
    rate: Fraction


@dataclass(frozen=True, slots=True)
class TeamConfig:
    levels: tuple[StarLevel, ...]  # ascending by threshold; star n = levels[n-1]
    peer_rate: Fraction
    max_depth: int | None


@dataclass(frozen=True)
class Plan:
    raw: dict[str, Any]
    timezone: str
    release_to: str
    grants: GrantsConfig
    equity: EquityConfig | None
    weights: WeightsConfig
    pools: tuple[PoolConfig, ...]
    referral: ReferralConfig | None
    team: TeamConfig | None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Plan:
        """Build a plan from a (partial) mapping, starting from its preset or the base plan."""
        return cls.parse(merge_plan(BASE_PLAN, mapping))

    def merged(self, partial: Mapping[str, Any]) -> Plan:
        """A new version: this plan with ``partial`` merged in."""
        return Plan.parse(merge_plan(self.raw, partial))

    @property
    def release_kinds(self) -> tuple[str, ...]:
        return ("base", *(p.name for p in self.pools), "gen1", "gen2", "team", "peer")

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Plan:
        try:
            return _parse(dict(raw))
        except AmountError as exc:
            raise PlanError(str(exc)) from None


def _rate(value: Any, where: str, *, upper: Fraction | None = Fraction(1)) -> Fraction:
    if value is None:
        raise PlanError(f"{where} is required")
    rate = to_fraction(value, where)
    if rate < 0 or (upper is not None and rate > upper):
        bound = f"between 0 and {upper}" if upper is not None else ">= 0"
        raise PlanError(f"{where} must be {bound}, got {value}")
    return rate


def _text(value: Any, where: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise PlanError(f"{where} must be a non-empty string")
    if choices is not None and value not in choices:
        raise PlanError(f"{where} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _timezone(value: Any) -> str:
    name = _text(value, "timezone")
    try:
        ZoneInfo(name)  # the IANA database ships with the package (tzdata)
    except (ZoneInfoNotFoundError, ValueError):
        raise PlanError(f"timezone {name!r} is not an IANA time zone") from None
    return name


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PlanError(f"{where} must be a mapping")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PlanError(f"{where} must be a list")
    return value


def _parse(raw: dict[str, Any]) -> Plan:
    grants_raw = _mapping(raw.get("grants") or {}, "grants")
    tiers = []
    for i, t in enumerate(_list(grants_raw.get("tiers"), "grants.tiers")):
        t = _mapping(t, f"grants.tiers[{i}]")
        threshold = to_cents(t.get("threshold"), f"grants.tiers[{i}].threshold")
        if threshold < 0:
            raise PlanError(f"grants.tiers[{i}].threshold must be >= 0")
        tiers.append(
            AmountTier(
                threshold,
                _rate(
                    t.get("multiple"), f"grants.tiers[{i}].multiple", upper=Fraction(MAX_MULTIPLE)
                ),
            )
        )
    tiers.sort(key=lambda t: t.threshold)
    if len({t.threshold for t in tiers}) != len(tiers):
        raise PlanError("grants.tiers has two tiers with the same threshold")
    daily = grants_raw.get("daily_rate")
    grants = GrantsConfig(
        tuple(tiers), None if daily is None else _rate(daily, "grants.daily_rate")
    )

    equity = None
    if raw.get("equity") is not None:
        e = {**MODULE_DEFAULTS["equity"], **_mapping(raw["equity"], "equity")}
        issue_price = to_fraction(e["issue_price"], "equity.issue_price")
        if issue_price <= 0:
            raise PlanError("equity.issue_price must be > 0")
        supply = to_units(e["total_supply"], "equity.total_supply")
        if not 0 <= supply <= MAX_POINT_UNITS:
            raise PlanError(f"equity.total_supply must be between 0 and {MAX_POINT_UNITS // 10**8}")
        equity = EquityConfig(
            pool_rate=_rate(e["pool_rate"], "equity.pool_rate"),
            grant_rate=_rate(e["grant_rate"], "equity.grant_rate"),
            issue_price=issue_price,
            total_supply=supply,
            sell_fee_rate=_rate(e["sell_fee_rate"], "equity.sell_fee_rate"),
            referral_grant_rate=_rate(e["referral_grant_rate"], "equity.referral_grant_rate"),
        )
        # Points are minted at most at the pre-order price for what enters the pool,
        # which is what keeps the price from falling (RULES §3 invariant).
        if equity.grant_rate + equity.referral_grant_rate > 1:
            raise PlanError("equity.grant_rate + equity.referral_grant_rate must not exceed 1")

    w = {**BASE_PLAN["weights"], **_mapping(raw.get("weights") or {}, "weights")}
    weights = WeightsConfig(
        share_unit=to_cents(w["share_unit"], "weights.share_unit"),
        referral_share_rate=_rate(
            w["referral_share_rate"], "weights.referral_share_rate", upper=None
        ),
        contribution_unit=to_cents(w["contribution_unit"], "weights.contribution_unit"),
        referral_contribution_rate=_rate(
            w["referral_contribution_rate"], "weights.referral_contribution_rate", upper=None
        ),
    )
    if weights.share_unit <= 0 or weights.contribution_unit <= 0:
        raise PlanError("weights.share_unit and weights.contribution_unit must be > 0")

    pools = []
    names: set[str] = set()
    for i, p in enumerate(_list(raw.get("pools"), "pools")):
        p = _mapping(p, f"pools[{i}]")
        where = f"pools[{i}]"
        name = _text(p.get("name"), f"{where}.name")
        if name in names or name in RELEASE_KINDS_FIXED:
            raise PlanError(
                f"{where}.name {name!r} is already used (names must be unique and not "
                f"one of {', '.join(RELEASE_KINDS_FIXED)})"
            )
        names.add(name)
        split = _text(p.get("split"), f"{where}.split", SPLITS)
        weight = _text(p.get("weight"), f"{where}.weight", WEIGHTS)
        pool_tiers = []
        if split == "tiers":
            for j, t in enumerate(_list(p.get("tiers"), f"{where}.tiers")):
                t = _mapping(t, f"{where}.tiers[{j}]")
                tw = f"{where}.tiers[{j}]"
                lo = _rate(t.get("min", 0), f"{tw}.min", upper=None)
                hi = None if t.get("max") is None else _rate(t.get("max"), f"{tw}.max", upper=None)
                if hi is not None and hi < lo:
                    raise PlanError(f"{tw}.max must be >= min")
                tier_name = t.get("name") or f"T{j + 1}"
                pool_tiers.append(
                    TierConfig(str(tier_name), lo, hi, _rate(t.get("rate"), f"{tw}.rate"))
                )
            if not pool_tiers:
                raise PlanError(f"{where}: a tiers pool needs at least one tier")
            rate = Fraction(0)
        else:
            if p.get("tiers"):
                raise PlanError(f"{where}: tiers are only for split: tiers")
            rate = _rate(p.get("rate"), f"{where}.rate")
        pools.append(PoolConfig(name, split, weight, rate, tuple(pool_tiers)))

    referral = None
    if raw.get("referral") is not None:
        r = {**MODULE_DEFAULTS["referral"], **_mapping(raw["referral"], "referral")}
        referral = ReferralConfig(
            _rate(r["gen1_rate"], "referral.gen1_rate"), _rate(r["gen2_rate"], "referral.gen2_rate")
        )

    team = None
    if raw.get("team") is not None:
        tm = {**MODULE_DEFAULTS["team"], **_mapping(raw["team"], "team")}
        levels = []
        for i, lv in enumerate(_list(tm["levels"], "team.levels")):
            lv = _mapping(lv, f"team.levels[{i}]")
            th = to_cents(lv.get("threshold"), f"team.levels[{i}].threshold")
            if th < 0:
                raise PlanError(f"team.levels[{i}].threshold must be >= 0")
            levels.append(StarLevel(th, _rate(lv.get("rate"), f"team.levels[{i}].rate")))
        levels.sort(key=lambda lv: lv.threshold)
        depth = tm["max_depth"]
        if depth is not None:
            if isinstance(depth, bool) or (not isinstance(depth, int) and not str(depth).isdigit()):
                raise PlanError("team.max_depth must be a whole number >= 0 or null")
            depth = int(depth)
            if depth < 0:
                raise PlanError("team.max_depth must be >= 0 or null")
        team = TeamConfig(tuple(levels), _rate(tm["peer_rate"], "team.peer_rate"), depth)

    return Plan(
        raw=raw,
        timezone=_timezone(raw.get("timezone", "Asia/Shanghai")),
        release_to=_text(raw.get("release_to", "stable"), "release_to", ASSETS_FOR_RELEASE),
        grants=grants,
        equity=equity,
        weights=weights,
        pools=tuple(pools),
        referral=referral,
        team=team,
    )
