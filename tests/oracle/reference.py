"""Independent reference implementation ("oracle") of the tokenmall rule book.

This module re-implements /work/shared/spec/RULES.md and SCENARIOS.md in the
most literal way we could think of, for tests only: plain per-member loops,
exact integers (cents for cash-like values, units of 1e-8 for equity points)
and ``fractions.Fraction`` for rates and the equity price.  It deliberately
shares no code with the real (vectorised) engine under ``shared/``.

Units
-----
* cash-like amounts (cny, stable, quota, releases, sales): integer cents;
* equity points: integer units of 1e-8;
* rates, price, weights: ``Fraction`` (exact); the price is the exact ratio
  ``pool / (circulating + treasury)`` and is only rounded when reported.

Every computed amount is rounded exactly once, where it is computed: DOWN for
what a member receives or what is funded/created, UP for quota taken by a
sell or an exchange.

Public interface
----------------
``run_scenario(doc) -> dict`` runs a scenario mapping (as loaded from YAML)
and returns the result document of SCENARIOS.md.  A step the rules refuse
raises ``ScenarioRefused`` unless it carries ``refused: true``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

__all__ = ["ScenarioRefused", "run_scenario"]

CENTS = 100  # cash-like minor units per unit
POINT_UNITS = 10**8  # equity point minor units per point

CASH_ASSETS = ("cny", "stable")
KIND_ORDER = {"gen1": 0, "gen2": 1, "team": 2, "peer": 3}


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class ScenarioRefused(Exception):
    """A step that the rules refuse (and that was not marked ``refused: true``),
    or a step marked ``refused: true`` that the rules accept."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"step {step} refused: {reason}")
        self.step = step
        self.reason = reason


class _Refuse(Exception):
    """Internal: the rules refuse the current step (nothing has changed yet)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------


def _num(x: Any, what: str = "number") -> Fraction:
    """Read a scenario number (int, float, str, Decimal) exactly as a Fraction.

    A value that is not a number makes the scenario invalid (ValueError), which
    is not a refusal."""
    if isinstance(x, bool) or x is None:
        raise ValueError(f"{what}: not a number: {x!r}")
    if isinstance(x, Fraction):
        return x
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, float):
        d = Decimal(str(x))
    elif isinstance(x, Decimal):
        d = x
    elif isinstance(x, str):
        try:
            d = Decimal(x.strip())
        except InvalidOperation as exc:
            raise ValueError(f"{what}: not a number: {x!r}") from exc
    else:
        raise ValueError(f"{what}: not a number: {x!r}")
    if not d.is_finite():
        raise ValueError(f"{what}: not a finite number: {x!r}")
    return Fraction(d)


def _opt_num(x: Any, what: str) -> Fraction | None:
    return None if x is None else _num(x, what)


def _floor(x: Fraction) -> int:
    return math.floor(x)


def _ceil(x: Fraction) -> int:
    return math.ceil(x)


def _fmt(units: int, digits: int) -> str:
    """Format an integer amount of minor units with exactly `digits` decimals."""
    sign = "-" if units < 0 else ""
    q, r = divmod(abs(units), 10**digits)
    return f"{sign}{q}.{r:0{digits}d}"


def _cash(units: int) -> str:
    return _fmt(units, 2)


def _pts(units: int) -> str:
    return _fmt(units, 8)


# --------------------------------------------------------------------------
# Plans: presets, merging, parsing
# --------------------------------------------------------------------------

_SEED_TEAM_LEVELS = [
    {"threshold": 50000, "rate": "0.10"},
    {"threshold": 200000, "rate": "0.20"},
    {"threshold": 600000, "rate": "0.26"},
    {"threshold": 2000000, "rate": "0.32"},
    {"threshold": 6000000, "rate": "0.38"},
    {"threshold": 15000000, "rate": "0.44"},
    {"threshold": 30000000, "rate": "0.50"},
]

_DEFAULT_WEIGHTS = {
    "share_unit": 1000,
    "referral_share_rate": 0,
    "contribution_unit": 1000,
    "referral_contribution_rate": 0,
}

# Values a module takes when it is switched on (from null) by a partial plan
# that does not name every key: the seed values.
_MODULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "equity": {
        "pool_rate": "0.30",
        "grant_rate": "0.70",
        "issue_price": 1,
        "total_supply": 100000000,
        "sell_fee_rate": "0.10",
        "referral_grant_rate": 0,
    },
    "referral": {"gen1_rate": "0.5", "gen2_rate": "0.3"},
    "team": {"levels": _SEED_TEAM_LEVELS, "peer_rate": "0.03", "max_depth": None},
    "weights": _DEFAULT_WEIGHTS,
    "grants": {"tiers": [], "daily_rate": None},
}

_BASE_PLAN: dict[str, Any] = {
    "timezone": "Asia/Shanghai",
    "release_to": "stable",
    "grants": {"tiers": [], "daily_rate": None},
    "equity": None,
    "weights": dict(_DEFAULT_WEIGHTS),
    "pools": [],
    "referral": None,
    "team": None,
}

_PRESETS: dict[str, dict[str, Any]] = {
    "points": {
        **_BASE_PLAN,
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
        "team": {"levels": _SEED_TEAM_LEVELS, "peer_rate": "0.03", "max_depth": None},
    },
    "equity": {
        **_BASE_PLAN,
        "grants": {"tiers": [{"threshold": 0, "multiple": 2}], "daily_rate": None},
        "equity": dict(_MODULE_DEFAULTS["equity"]),
    },
    "cycle": {
        **_BASE_PLAN,
        "grants": {"tiers": [{"threshold": 0, "multiple": 2}], "daily_rate": None},
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
}

_PLAN_KEYS = {
    "preset",
    "timezone",
    "release_to",
    "grants",
    "equity",
    "weights",
    "pools",
    "referral",
    "team",
}


def _deep_merge(base: Any, over: Any, key: str | None = None) -> Any:
    """Merge `over` into `base`: mappings key by key (recursively), anything
    else (lists, scalars, an explicit null) replaces whole.  A module mapping
    merged into a null module starts from the module's seed defaults."""
    if isinstance(over, dict):
        if base is None and key in _MODULE_DEFAULTS:
            base = _MODULE_DEFAULTS[key]
        if isinstance(base, dict):
            out = copy.deepcopy(base)
            for k, v in over.items():
                out[k] = _deep_merge(out.get(k), v, k)
            return out
        return copy.deepcopy(over)
    return copy.deepcopy(over)


def _merge_plan(current: dict[str, Any] | None, partial: Any) -> dict[str, Any]:
    """A new full plan (raw mapping) = `partial` merged into `current`.

    If `partial` names a preset, the preset replaces the current plan as the
    base and the other keys are merged into it."""
    if partial is None:
        partial = {}
    if not isinstance(partial, dict):
        raise ValueError(f"plan must be a mapping, got {partial!r}")
    unknown = set(partial) - _PLAN_KEYS
    if unknown:
        raise ValueError(f"unknown plan keys: {sorted(unknown)}")
    preset = partial.get("preset")
    if preset is not None:
        if preset not in _PRESETS:
            raise ValueError(f"unknown preset {preset!r}")
        base = copy.deepcopy(_PRESETS[preset])
    elif current is None:
        base = copy.deepcopy(_BASE_PLAN)
    else:
        base = copy.deepcopy(current)
    rest = {k: v for k, v in partial.items() if k != "preset"}
    merged = _deep_merge(base, rest)
    return merged


@dataclass
class _Tier:
    name: str
    min: Fraction
    max: Fraction | None
    rate: Fraction


@dataclass
class _Pool:
    name: str
    split: str  # pro_rata | tiers
    weight: str  # shares | contribution | equity_points
    rate: Fraction | None
    tiers: list[_Tier]


@dataclass
class _Equity:
    pool_rate: Fraction
    grant_rate: Fraction
    issue_price: Fraction
    total_supply_units: int
    sell_fee_rate: Fraction
    referral_grant_rate: Fraction


@dataclass
class _Team:
    levels: list[tuple[Fraction, Fraction]]  # (threshold, rate), ascending threshold
    peer_rate: Fraction
    max_depth: int | None


@dataclass
class _Plan:
    release_to: str
    grant_tiers: list[tuple[Fraction, Fraction]]  # (threshold, multiple) in list order
    daily_rate: Fraction | None
    equity: _Equity | None
    share_unit: Fraction
    referral_share_rate: Fraction
    contribution_unit: Fraction
    referral_contribution_rate: Fraction
    pools: list[_Pool]
    gen1_rate: Fraction | None  # None = no referral module
    gen2_rate: Fraction | None
    team: _Team | None


def _parse_plan(raw: dict[str, Any]) -> _Plan:
    release_to = raw.get("release_to") or "stable"
    if release_to not in CASH_ASSETS:
        raise ValueError(f"release_to must be stable or cny, got {release_to!r}")

    grants = raw.get("grants") or {}
    tiers = []
    for t in grants.get("tiers") or []:
        tiers.append((_num(t["threshold"], "grant threshold"), _num(t["multiple"], "multiple")))
    daily_rate = _opt_num(grants.get("daily_rate"), "daily_rate")

    eq_raw = raw.get("equity")
    equity = None
    if eq_raw is not None:
        e = {**_MODULE_DEFAULTS["equity"], **eq_raw}
        equity = _Equity(
            pool_rate=_num(e["pool_rate"], "pool_rate"),
            grant_rate=_num(e["grant_rate"], "grant_rate"),
            issue_price=_num(e["issue_price"], "issue_price"),
            total_supply_units=_floor(_num(e["total_supply"], "total_supply") * POINT_UNITS),
            sell_fee_rate=_num(e["sell_fee_rate"], "sell_fee_rate"),
            referral_grant_rate=_num(e.get("referral_grant_rate") or 0, "referral_grant_rate"),
        )

    w = {**_DEFAULT_WEIGHTS, **(raw.get("weights") or {})}

    pools = []
    for p in raw.get("pools") or []:
        split = p.get("split", "pro_rata")
        weight = p.get("weight", "shares")
        if split not in ("pro_rata", "tiers"):
            raise ValueError(f"unknown pool split {split!r}")
        if weight not in ("shares", "contribution", "equity_points"):
            raise ValueError(f"unknown pool weight {weight!r}")
        ptiers = []
        if split == "tiers":
            for t in p.get("tiers") or []:
                ptiers.append(
                    _Tier(
                        name=str(t.get("name", "")),
                        min=_num(t.get("min", 0) or 0, "tier min"),
                        max=_opt_num(t.get("max"), "tier max"),
                        rate=_num(t["rate"], "tier rate"),
                    )
                )
            rate = None
        else:
            rate = _num(p["rate"], "pool rate")
        pools.append(
            _Pool(name=str(p["name"]), split=split, weight=weight, rate=rate, tiers=ptiers)
        )

    ref = raw.get("referral")
    gen1 = gen2 = None
    if ref is not None:
        gen1 = _num(ref.get("gen1_rate", 0) or 0, "gen1_rate")
        gen2 = _num(ref.get("gen2_rate", 0) or 0, "gen2_rate")

    team_raw = raw.get("team")
    team = None
    if team_raw is not None:
        levels = [
            (_num(lv["threshold"], "level threshold"), _num(lv["rate"], "level rate"))
            for lv in (team_raw.get("levels") or [])
        ]
        levels.sort(key=lambda lv: lv[0])  # stable sort: ascending thresholds
        md = team_raw.get("max_depth")
        team = _Team(
            levels=levels,
            peer_rate=_num(team_raw.get("peer_rate", 0) or 0, "peer_rate"),
            max_depth=None if md is None else int(_num(md, "max_depth")),
        )

    return _Plan(
        release_to=release_to,
        grant_tiers=tiers,
        daily_rate=daily_rate,
        equity=equity,
        share_unit=_num(w["share_unit"], "share_unit"),
        referral_share_rate=_num(w["referral_share_rate"], "referral_share_rate"),
        contribution_unit=_num(w["contribution_unit"], "contribution_unit"),
        referral_contribution_rate=_num(
            w["referral_contribution_rate"], "referral_contribution_rate"
        ),
        pools=pools,
        gen1_rate=gen1,
        gen2_rate=gen2,
        team=team,
    )


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------


@dataclass
class _Grant:
    order_id: str
    quota: int  # cents
    remaining: int  # cents
    base: int  # cents per day (0 = no base release)


@dataclass
class _Member:
    name: str
    idx: int  # registration order
    sponsor: str | None
    merchant: bool
    children: list[str] = field(default_factory=list)
    grants: list[_Grant] = field(default_factory=list)
    spend: int = 0  # cents, net of refunds
    released: dict[str, int] = field(default_factory=dict)  # kind -> cents


@dataclass
class _Order:
    id: str
    member: str
    amount: int  # cents
    stable: int  # cents paid in stable points
    grant: _Grant | None
    points: int  # equity point units granted to the buyer by this order
    day: int
    refunded: bool = False


def _member_account(name: str) -> str:
    return "member:" + name


class _Engine:
    def __init__(self, plan_doc: Any) -> None:
        self.raw_plan = _merge_plan(None, plan_doc)
        self.plan = _parse_plan(self.raw_plan)
        self.pending_raw: dict[str, Any] | None = None
        self.day = 1
        self.members: dict[str, _Member] = {}  # insertion order = registration order
        self.orders: dict[str, _Order] = {}
        self.accepted_orders = 0
        # double-entry ledger: (account, asset) -> balance in minor units
        self.ledger: dict[tuple[str, str], int] = {}
        self.sales_total = 0  # cents: paid minus refunded, whole life
        self.day_paid = 0
        self.day_refunded = 0
        # equity state
        self.circulating = 0  # point units held by members
        self.minted = 0  # point units ever issued
        self.price_set = False  # has an order granted points yet?
        self.last_price: Fraction | None = None
        self.positive_price: Fraction | None = None  # the last non-zero price

    # ---------------------------------------------------------------- ledger
    def bal(self, account: str, asset: str) -> int:
        return self.ledger.get((account, asset), 0)

    def post(self, src: str, dst: str, asset: str, amount: int) -> None:
        assert amount >= 0, (src, dst, asset, amount)
        if amount == 0:
            return
        self.ledger[(src, asset)] = self.bal(src, asset) - amount
        self.ledger[(dst, asset)] = self.bal(dst, asset) + amount
        if src.startswith("member:"):
            assert self.ledger[(src, asset)] >= 0, f"negative balance {src} {asset}"

    def mbal(self, m: _Member, asset: str) -> int:
        return self.bal(_member_account(m.name), asset)

    # ----------------------------------------------------------- quantities
    def remaining(self, m: _Member) -> int:
        return sum(g.remaining for g in m.grants)

    def deduct(self, m: _Member, amount: int) -> int:
        """Take up to `amount` cents from m's grants, oldest first; return what was taken."""
        taken = 0
        for g in m.grants:
            if taken >= amount:
                break
            t = min(g.remaining, amount - taken)
            g.remaining -= t
            taken += t
        return taken

    def gen1_spend(self, m: _Member) -> int:
        return sum(self.members[c].spend for c in m.children)

    def shares(self, m: _Member, plan: _Plan) -> int:
        v = Fraction(m.spend, CENTS) + plan.referral_share_rate * Fraction(
            self.gen1_spend(m), CENTS
        )
        return _floor(v / plan.share_unit)

    def contribution(self, m: _Member, plan: _Plan) -> int:
        v = Fraction(m.spend, CENTS) + plan.referral_contribution_rate * Fraction(
            self.gen1_spend(m), CENTS
        )
        return _floor(v / plan.contribution_unit)

    def team_performance(self, m: _Member) -> int:
        total = 0
        stack = list(m.children)
        while stack:
            c = self.members[stack.pop()]
            total += c.spend
            stack.extend(c.children)
        return total

    def star_and_rate(self, m: _Member, plan: _Plan) -> tuple[int, Fraction]:
        if plan.team is None:
            return 0, Fraction(0)
        perf = Fraction(self.team_performance(m), CENTS)
        star, rate = 0, Fraction(0)
        for i, (threshold, r) in enumerate(plan.team.levels):
            if perf >= threshold:
                star, rate = i + 1, r
        return star, rate

    # ---------------------------------------------------------------- equity
    def treasury(self) -> int:
        return self.bal("treasury", "equity")

    def pool_cents(self) -> int:
        return self.bal("pool", "cny")

    def outstanding(self) -> int:
        return self.circulating + self.treasury()

    def price(self, plan: _Plan | None = None) -> Fraction | None:
        """Exact current price (None if there is no equity module)."""
        plan = plan or self.plan
        if not self.price_set:
            return plan.equity.issue_price if plan.equity is not None else None
        out = self.outstanding()
        if out > 0:
            return Fraction(self.pool_cents(), CENTS) / Fraction(out, POINT_UNITS)
        return self.last_price

    def last_positive_price(self, plan: _Plan) -> Fraction:
        """The most recent non-zero price (issue_price before any)."""
        if self.positive_price is not None:
            return self.positive_price
        assert plan.equity is not None
        return plan.equity.issue_price

    def _after_equity_change(self, price_before: Fraction | None) -> None:
        """Remember the price, so that it can stay at its last value when nothing
        is outstanding any more."""
        if not self.price_set:
            return
        out = self.outstanding()
        if out > 0:
            self.last_price = Fraction(self.pool_cents(), CENTS) / Fraction(out, POINT_UNITS)
            if self.last_price > 0:
                self.positive_price = self.last_price
        elif price_before is not None:
            self.last_price = price_before

    def mint(self, m: _Member, units: int, source: str = "issuance") -> None:
        if units <= 0:
            return
        self.post(source, _member_account(m.name), "equity", units)
        self.circulating += units
        self.minted += units

    def burn(self, m: _Member, units: int, sink: str = "issuance") -> None:
        if units <= 0:
            return
        self.post(_member_account(m.name), sink, "equity", units)
        self.circulating -= units

    def sell_points(self, m: _Member, units: int, fee: Fraction, forced: bool) -> None:
        """Sell `units` points of m at the current price (payout to cny from the pool)."""
        p = self.price()
        assert p is not None
        gross = Fraction(units, POINT_UNITS) * p  # CNY, exact
        payout = _floor(gross * (1 - fee) * CENTS)
        # Only reachable before the first grant (price = issue_price while the
        # pool may be empty, e.g. points added by an adjustment): the pool
        # cannot pay more than it holds.
        payout = min(payout, self.pool_cents())
        quota_taken = _ceil(gross * CENTS)
        self.burn(m, units)
        self.post("pool", _member_account(m.name), "cny", payout)
        if forced:
            for g in m.grants:
                g.remaining = 0
        else:
            self.deduct(m, quota_taken)
        self._after_equity_change(p)

    def forced_exits(self, plan: _Plan) -> None:
        """RULES §3: repeatedly exit the due member with the lowest remaining/points."""
        if plan.equity is None:
            return
        while True:
            p = self.price(plan)
            if p is None:
                return
            best: tuple[Fraction, int, _Member] | None = None
            for m in self.members.values():
                if m.merchant:
                    continue
                pts = self.mbal(m, "equity")
                if pts <= 0:
                    continue
                points = Fraction(pts, POINT_UNITS)
                rem = Fraction(self.remaining(m), CENTS)
                if points * p >= rem:
                    key = (rem / points, m.idx, m)
                    if best is None or key[:2] < best[:2]:
                        best = key
            if best is None:
                return
            m = best[2]
            self.sell_points(m, self.mbal(m, "equity"), plan.equity.sell_fee_rate, forced=True)

    # ------------------------------------------------------------ step parts
    def member(self, name: Any) -> _Member:
        if name is None:
            raise _Refuse("no member named")
        m = self.members.get(str(name))
        if m is None:
            raise _Refuse(f"unknown member {name!r}")
        return m

    @staticmethod
    def cash_units(x: Any, what: str) -> int:
        """A cash amount in cents; refuses more than 2 decimals (sign not checked)."""
        v = _num(x, what) * CENTS
        if v.denominator != 1:
            raise _Refuse(f"{what} has more than 2 decimals: {x!r}")
        return int(v)

    @staticmethod
    def point_units(x: Any, what: str) -> int:
        v = _num(x, what) * POINT_UNITS
        if v.denominator != 1:
            raise _Refuse(f"{what} has more than 8 decimals: {x!r}")
        return int(v)

    def equity_plan(self) -> _Equity:
        if self.plan.equity is None:
            raise _Refuse("no equity module")
        return self.plan.equity

    # ----------------------------------------------------------------- steps
    def step_join(self, b: dict[str, Any]) -> None:
        _check_fields("join", b, {"member"}, {"sponsor", "merchant"})
        if b["member"] is None:
            raise ValueError("join: member must be named")
        name = str(b["member"])
        if name in self.members:
            raise _Refuse(f"member {name!r} already exists")
        sponsor = b.get("sponsor")
        if sponsor is not None:
            sponsor = str(sponsor)
            if sponsor not in self.members:
                raise _Refuse(f"unknown sponsor {sponsor!r}")
        merchant = b.get("merchant", False)
        if merchant is None:
            merchant = False
        if not isinstance(merchant, bool):
            raise ValueError(f"merchant must be true/false, got {merchant!r}")
        self.members[name] = _Member(
            name=name, idx=len(self.members), sponsor=sponsor, merchant=merchant
        )
        if sponsor is not None:
            self.members[sponsor].children.append(name)

    def step_order(self, b: dict[str, Any]) -> None:
        _check_fields("order", b, {"member", "amount"}, {"id", "stable"})
        m = self.member(b["member"])
        amount = self.cash_units(b["amount"], "amount")
        if amount <= 0:
            raise _Refuse("order amount must be > 0")
        stable = 0
        if b.get("stable") is not None:
            stable = self.cash_units(b["stable"], "stable")
            if stable < 0:
                raise _Refuse("stable part < 0")
            if stable > amount:
                raise _Refuse("stable part > amount")
            if stable > self.mbal(m, "stable"):
                raise _Refuse("member does not hold that many stable points")
        default_id = f"order-{self.accepted_orders + 1}"
        oid = str(b["id"]) if b.get("id") is not None else default_id
        if oid in self.orders:
            raise _Refuse(f"duplicate order id {oid!r}")

        # --- accepted: effects
        plan = self.plan
        acc = _member_account(m.name)
        self.post("external", "sales", "cny", amount - stable)
        self.post(acc, "sales", "stable", stable)
        m.spend += amount
        self.sales_total += amount
        self.day_paid += amount
        self.accepted_orders += 1

        # grant: highest threshold <= amount (later entry wins a tie)
        amount_f = Fraction(amount, CENTS)
        multiple = None
        best_threshold = None
        for threshold, mult in plan.grant_tiers:
            if threshold <= amount_f and (best_threshold is None or threshold >= best_threshold):
                best_threshold, multiple = threshold, mult
        grant = None
        if multiple is not None:
            quota = _floor(amount * multiple)
            base = _floor(amount * plan.daily_rate) if plan.daily_rate is not None else 0
            grant = _Grant(order_id=oid, quota=quota, remaining=quota, base=base)
            m.grants.append(grant)

        # equity points
        buyer_points = 0
        eq = plan.equity
        if eq is not None:
            p = self.price()
            assert p is not None
            if p == 0:
                # Project decision: a zero price (pool emptied, then an admin mint)
                # grants at the last positive price instead of "unbounded" points.
                p = self.last_positive_price(plan)
            contribution = _floor(amount * eq.pool_rate)  # cents
            self.post("sales", "pool", "cny", contribution)
            c = Fraction(contribution, CENTS)
            available = eq.total_supply_units - self.minted
            # p > 0 always holds (pool > 0 whenever points are outstanding);
            # a zero price would mean "as many points as the cap allows".
            want_buyer = _floor(c * eq.grant_rate / p * POINT_UNITS) if p > 0 else available
            buyer_points = max(0, min(want_buyer, available))
            sponsor_points = 0
            if eq.referral_grant_rate > 0 and m.sponsor is not None:
                s = self.members[m.sponsor]
                if self.remaining(s) > 0:
                    if p > 0:
                        want_s = _floor(c * eq.referral_grant_rate / p * POINT_UNITS)
                    else:
                        want_s = available
                    sponsor_points = max(0, min(want_s, available - buyer_points))
            self.mint(m, buyer_points)
            if sponsor_points > 0:
                self.mint(self.members[m.sponsor], sponsor_points)
            if buyer_points > 0 or sponsor_points > 0:
                self.price_set = True
            self._after_equity_change(p)

        self.orders[oid] = _Order(
            id=oid,
            member=m.name,
            amount=amount,
            stable=stable,
            grant=grant,
            points=buyer_points,
            day=self.day,
        )
        self.forced_exits(plan)

    def step_refund(self, b: dict[str, Any]) -> None:
        _check_fields("refund", b, {"order"}, set())
        oid = b["order"]
        if oid is None or str(oid) not in self.orders:
            raise _Refuse(f"unknown order {oid!r}")
        o = self.orders[str(oid)]
        if o.refunded:
            raise _Refuse(f"order {o.id!r} already refunded")
        m = self.members[o.member]
        acc = _member_account(m.name)
        self.post("sales", "external", "cny", o.amount - o.stable)
        self.post("sales", acc, "stable", o.stable)
        m.spend -= o.amount
        self.sales_total -= o.amount
        self.day_refunded += o.amount
        if o.grant is not None:
            o.grant.remaining = 0
        # the order's points are reversed even while the equity module is switched
        # off (its pool and points still exist; only trading is closed)
        if o.points > 0:
            n = min(o.points, self.mbal(m, "equity"))
            if n > 0:
                p = self.price()
                assert p is not None
                payout = _floor(Fraction(n, POINT_UNITS) * p * CENTS)
                payout = min(payout, self.pool_cents())  # never binds after a grant
                self.burn(m, n)
                self.post("pool", acc, "cny", payout)
                self._after_equity_change(p)
        o.refunded = True
        self.forced_exits(self.plan)

    def step_sell(self, b: dict[str, Any]) -> None:
        _check_fields("sell", b, {"member"}, {"points", "all"})
        m = self.member(b["member"])
        eq = self.equity_plan()
        held = self.mbal(m, "equity")
        pts = b.get("points")
        if b.get("all") is True or (isinstance(pts, str) and pts.strip().lower() == "all"):
            units = held
            if units == 0:
                raise _Refuse("sell all of 0 points")
        else:
            if pts is None:
                raise ValueError("sell needs `points` or `all: true`")
            units = self.point_units(pts, "points")
            if units <= 0:
                raise _Refuse("sell of 0 or negative points")
        if units > held:
            raise _Refuse("sell of more points than held")
        self.sell_points(m, units, eq.sell_fee_rate, forced=False)
        self.forced_exits(self.plan)

    def step_exchange(self, b: dict[str, Any]) -> None:
        _check_fields("exchange", b, {"member", "points"}, set())
        m = self.member(b["member"])
        self.equity_plan()
        units = self.point_units(b["points"], "points")
        if units <= 0:
            raise _Refuse("exchange of 0 or negative points")
        if units > self.mbal(m, "equity"):
            raise _Refuse("exchange of more points than held")
        p = self.price()
        assert p is not None
        value = Fraction(units, POINT_UNITS) * p
        credit = _floor(value * CENTS)
        quota_taken = _ceil(value * CENTS)
        acc = _member_account(m.name)
        self.post(acc, "treasury", "equity", units)
        self.circulating -= units
        self.post("issuance", acc, "stable", credit)
        self.deduct(m, quota_taken)
        self._after_equity_change(p)
        self.forced_exits(self.plan)

    def step_merchant_exchange(self, b: dict[str, Any]) -> None:
        _check_fields("merchant_exchange", b, {"member", "stable"}, set())
        m = self.member(b["member"])
        self.equity_plan()
        if not m.merchant:
            raise _Refuse("member is not a merchant")
        stable = self.cash_units(b["stable"], "stable")
        if stable <= 0:
            raise _Refuse("merchant exchange of 0 or negative stable points")
        if stable > self.mbal(m, "stable"):
            raise _Refuse("merchant does not hold that many stable points")
        p = self.price()
        if p is not None and p == 0:
            p = self.last_positive_price(self.plan)  # project decision, as for orders
        if p is None or p <= 0:
            raise _Refuse("no price")
        units = _floor(Fraction(stable, CENTS) / p * POINT_UNITS)
        if units <= 0:
            raise _Refuse("merchant exchange buys 0 points")
        if units > self.treasury():
            raise _Refuse("treasury holds fewer points")
        acc = _member_account(m.name)
        self.post(acc, "issuance", "stable", stable)
        self.post("treasury", acc, "equity", units)
        self.circulating += units
        self._after_equity_change(p)
        self.forced_exits(self.plan)

    def step_adjust(self, b: dict[str, Any]) -> None:
        _check_fields("adjust", b, {"member", "asset", "amount"}, {"reason"})
        m = self.member(b["member"])
        asset = b["asset"]
        if asset not in ("cny", "stable", "equity"):
            raise ValueError(f"unknown asset {asset!r}")
        acc = _member_account(m.name)
        if asset == "equity":
            eq = self.equity_plan()
            units = self.point_units(b["amount"], "amount")
            if units == 0:
                raise _Refuse("adjustment of 0")
            if units > 0 and self.minted + units > eq.total_supply_units:
                raise _Refuse("adjustment beyond total_supply")
            if units < 0 and self.mbal(m, "equity") < -units:
                raise _Refuse("adjustment would make the balance negative")
            p = self.price()
            if units > 0:
                self.mint(m, units, source="adjustments")
            else:
                self.burn(m, -units, sink="adjustments")
            self._after_equity_change(p)
        else:
            units = self.cash_units(b["amount"], "amount")
            if units == 0:
                raise _Refuse("adjustment of 0")
            if units < 0 and self.mbal(m, asset) < -units:
                raise _Refuse("adjustment would make the balance negative")
            if units > 0:
                self.post("adjustments", acc, asset, units)
            else:
                self.post(acc, "adjustments", asset, -units)
        self.forced_exits(self.plan)

    def step_plan(self, b: Any) -> None:
        base = self.pending_raw if self.pending_raw is not None else self.raw_plan
        new_raw = _merge_plan(base, b)
        _parse_plan(new_raw)  # validate now
        self.pending_raw = new_raw

    def step_settle(self, b: Any) -> None:
        if b not in (None, {}):
            raise ValueError(f"settle takes no fields, got {b!r}")
        self.settle()

    # ------------------------------------------------------------ settlement
    def settle(self) -> None:
        plan = self.plan
        asset = plan.release_to
        members = list(self.members.values())  # registration order

        # 1. base release, per grant
        base_released: dict[str, int] = {}
        for m in members:
            r_total = 0
            for g in m.grants:
                if g.base > 0 and g.remaining > 0:
                    r = min(g.base, g.remaining)
                    g.remaining -= r
                    r_total += r
            if r_total > 0:
                base_released[m.name] = r_total
                self.post("issuance", _member_account(m.name), asset, r_total)
                m.released["base"] = m.released.get("base", 0) + r_total

        # 2. pools, in plan order
        net = max(0, self.day_paid - self.day_refunded)
        for pool in plan.pools:
            self.pay_pool(pool, plan, net, asset)

        # 3./4. accelerations: collect (kind, source, amount) per earner
        accel: dict[str, list[tuple[int, int, str, int]]] = {}

        def add(earner: str, kind: str, source: _Member, amount: int) -> None:
            if amount > 0:
                accel.setdefault(earner, []).append((KIND_ORDER[kind], source.idx, kind, amount))

        if plan.gen1_rate is not None:
            for x in members:
                r = base_released.get(x.name, 0)
                if r == 0 or x.sponsor is None:
                    continue
                add(x.sponsor, "gen1", x, _floor(plan.gen1_rate * r))
                s = self.members[x.sponsor]
                if s.sponsor is not None:
                    add(s.sponsor, "gen2", x, _floor(plan.gen2_rate * r))

        if plan.team is not None:
            rates = {m.name: self.star_and_rate(m, plan)[1] for m in members}
            max_depth = plan.team.max_depth
            for x in members:
                r = base_released.get(x.name, 0)
                if r == 0:
                    continue
                level = Fraction(0)  # m in RULES §5
                peer_paid = False
                depth = 0
                upline = x.sponsor
                while upline is not None and (max_depth is None or depth < max_depth):
                    depth += 1
                    u_rate = rates[upline]
                    if u_rate > level:
                        add(upline, "team", x, _floor((u_rate - level) * r))
                        level = u_rate
                        peer_paid = False
                    elif u_rate == level and level > 0 and not peer_paid:
                        add(upline, "peer", x, _floor(plan.team.peer_rate * r))
                        peer_paid = True
                    upline = self.members[upline].sponsor

        for m in members:
            entries = sorted(accel.get(m.name, []))
            for _, _, kind, amount in entries:
                paid = self.deduct(m, amount)
                self.post("issuance", _member_account(m.name), asset, paid)
                if paid > 0:
                    m.released[kind] = m.released.get(kind, 0) + paid
                self.post("issuance", "retained", asset, amount - paid)

        # forced exits at the end of the settlement, under the settled day's plan
        self.forced_exits(plan)

        # next day
        self.day += 1
        self.day_paid = 0
        self.day_refunded = 0
        if self.pending_raw is not None:
            self.raw_plan = self.pending_raw
            self.plan = _parse_plan(self.raw_plan)
            self.pending_raw = None

    def weight(self, m: _Member, pool: _Pool, plan: _Plan) -> Fraction:
        if pool.weight == "shares":
            return Fraction(self.shares(m, plan))
        if pool.weight == "contribution":
            return Fraction(self.contribution(m, plan))
        return Fraction(self.mbal(m, "equity"), POINT_UNITS)

    def pay_share(self, m: _Member, fund_account: str, pool: _Pool, share: int, asset: str) -> None:
        paid = self.deduct(m, share)
        self.post(fund_account, _member_account(m.name), asset, paid)
        if paid > 0:
            m.released[pool.name] = m.released.get(pool.name, 0) + paid
        self.post(fund_account, "retained", asset, share - paid)

    def pay_pool(self, pool: _Pool, plan: _Plan, net: int, asset: str) -> None:
        fund = "pool-fund:" + pool.name
        members = list(self.members.values())
        # eligibility is fixed when the pool starts paying
        weights = {m.name: self.weight(m, pool, plan) for m in members}
        eligible = [m for m in members if weights[m.name] > 0 and self.remaining(m) > 0]

        if pool.split == "pro_rata":
            assert pool.rate is not None
            funding = _floor(pool.rate * net)
            if funding <= 0:
                return
            self.post("sales", fund, asset, funding)
            if not eligible:
                self.post(fund, "retained", asset, funding)
            else:
                total_w = sum(weights[m.name] for m in eligible)
                distributed = 0
                for m in eligible:
                    share = _floor(funding * weights[m.name] / total_w)
                    distributed += share
                    self.pay_share(m, fund, pool, share, asset)
                self.post(fund, "rounding", asset, funding - distributed)
        else:
            for tier in pool.tiers:
                funding = _floor(tier.rate * net)
                if funding <= 0:
                    continue
                self.post("sales", fund, asset, funding)
                in_tier = [
                    m
                    for m in eligible
                    if weights[m.name] >= tier.min
                    and (tier.max is None or weights[m.name] <= tier.max)
                ]
                if not in_tier:
                    self.post(fund, "retained", asset, funding)
                    continue
                share = funding // len(in_tier)
                for m in in_tier:
                    self.pay_share(m, fund, pool, share, asset)
                self.post(fund, "rounding", asset, funding - share * len(in_tier))
        assert self.bal(fund, asset) == 0

    # ---------------------------------------------------------------- checks
    def check_invariants(self) -> None:
        for m in self.members.values():
            for asset in ("cny", "stable", "equity"):
                assert self.mbal(m, asset) >= 0, (m.name, asset)
            for g in m.grants:
                assert 0 <= g.remaining <= g.quota, (m.name, g)
            assert m.spend >= 0
        assert self.circulating == sum(self.mbal(m, "equity") for m in self.members.values())
        assert self.treasury() >= 0
        assert self.pool_cents() >= 0
        eq = self.plan.equity
        if eq is not None:
            assert self.minted <= max(eq.total_supply_units, self.minted)  # cap checked at mint
        for asset in ("cny", "stable", "equity"):
            assert sum(v for (_, a), v in self.ledger.items() if a == asset) == 0

    # ---------------------------------------------------------------- result
    def result(self) -> dict[str, Any]:
        plan = self.plan
        price = self.price()
        members_out: dict[str, Any] = {}
        for m in self.members.values():
            star, _ = self.star_and_rate(m, plan)
            members_out[m.name] = {
                "cny": _cash(self.mbal(m, "cny")),
                "stable": _cash(self.mbal(m, "stable")),
                "equity": _pts(self.mbal(m, "equity")),
                "quota_remaining": _cash(self.remaining(m)),
                "spend": _cash(m.spend),
                "shares": self.shares(m, plan),
                "contribution": self.contribution(m, plan),
                "star": star,
                "team_performance": _cash(self.team_performance(m)),
                "released": {k: _cash(v) for k, v in m.released.items() if v != 0},
                "merchant": m.merchant,
            }
        return {
            "day": self.day,
            "equity": {
                "price": None
                if (plan.equity is None or price is None)
                else _pts(_floor(price * POINT_UNITS)),
                "pool": _cash(self.pool_cents()),
                "circulating": _pts(self.circulating),
                "treasury": _pts(self.treasury()),
                "minted": _pts(self.minted),
            },
            "platform": {
                "retained": _cash(sum(self.bal("retained", a) for a in CASH_ASSETS)),
                "rounding": _cash(sum(self.bal("rounding", a) for a in CASH_ASSETS)),
                "sales": _cash(self.sales_total),
            },
            "members": members_out,
        }


# --------------------------------------------------------------------------
# Scenario runner
# --------------------------------------------------------------------------

_STEP_KINDS = (
    "join",
    "order",
    "refund",
    "settle",
    "sell",
    "exchange",
    "merchant_exchange",
    "adjust",
    "plan",
)


def _check_fields(kind: str, body: Any, required: set[str], optional: set[str]) -> None:
    if not isinstance(body, dict):
        raise ValueError(f"{kind}: fields must be a mapping, got {body!r}")
    missing = required - set(body)
    if missing:
        raise ValueError(f"{kind}: missing fields {sorted(missing)}")
    unknown = set(body) - required - optional
    if unknown:
        raise ValueError(f"{kind}: unknown fields {sorted(unknown)}")


def _substitute(obj: Any, i: int) -> Any:
    if isinstance(obj, str):
        return obj.replace("{i}", str(i))
    if isinstance(obj, dict):
        return {_substitute(k, i): _substitute(v, i) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, i) for v in obj]
    return obj


def _expand_steps(steps: Any) -> list[tuple[str, Any, bool]]:
    """(kind, body, refused_flag) per expanded step."""
    if steps is None:
        return []
    if not isinstance(steps, list):
        raise ValueError("steps must be a list")
    out: list[tuple[str, Any, bool]] = []
    for raw in steps:
        if not isinstance(raw, dict):
            raise ValueError(f"a step must be a mapping, got {raw!r}")
        kinds = [k for k in raw if k in _STEP_KINDS]
        extra = set(raw) - set(_STEP_KINDS) - {"repeat", "refused"}
        if len(kinds) != 1 or extra:
            raise ValueError(f"cannot read step {raw!r}")
        kind = kinds[0]
        refused = raw.get("refused", False)
        if not isinstance(refused, bool):
            raise ValueError(f"refused must be true/false in {raw!r}")
        repeat = raw.get("repeat")
        if repeat is None:
            out.append((kind, copy.deepcopy(raw[kind]), refused))
        else:
            n = _num(repeat, "repeat")
            if n.denominator != 1 or n < 0:
                raise ValueError(f"repeat must be a whole number >= 0 in {raw!r}")
            for i in range(1, int(n) + 1):
                out.append((kind, _substitute(copy.deepcopy(raw[kind]), i), refused))
    return out


def _engine_snapshot(engine: _Engine) -> Any:
    return (
        engine.result(),
        engine.accepted_orders,
        sorted(engine.orders),
        engine.pending_raw,
        engine.day_paid,
        engine.day_refunded,
        dict(engine.ledger),
        engine.last_price,
        engine.price_set,
    )


def run_scenario(doc: dict[str, Any]) -> dict[str, Any]:
    """Run a scenario mapping and return the result document (SCENARIOS.md)."""
    if not isinstance(doc, dict):
        raise ValueError("a scenario must be a mapping")
    unknown = set(doc) - {"name", "plan", "steps", "checks", "description"}
    if unknown:
        raise ValueError(f"unknown scenario keys: {sorted(unknown)}")
    steps = _expand_steps(doc.get("steps"))
    engine = _Engine(doc.get("plan"))
    for number, (kind, body, refused_flag) in enumerate(steps, start=1):
        before = _engine_snapshot(engine) if refused_flag else None
        handler = getattr(engine, "step_" + kind)
        try:
            handler(body)
        except _Refuse as r:
            if not refused_flag:
                raise ScenarioRefused(number, r.reason) from None
            # a refused step must have changed nothing
            assert _engine_snapshot(engine) == before, f"step {number} changed state"
            continue
        if refused_flag:
            raise ScenarioRefused(number, "expected refusal but step was accepted")
        engine.check_invariants()
    return engine.result()
