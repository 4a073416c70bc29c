"""The rules engine: explicit state, explicit inputs, balanced postings out.

``Engine`` applies one input at a time (join, order, refund, sell, exchange,
merchant exchange, adjust, plan version, settle).  Every input is validated
completely before anything changes, so a refused input (:class:`Refused`)
leaves the state exactly as it was.  Value only moves through
:class:`~tokenmall.engine.ledger.Ledger` postings.

Units: cents for cash-like values and quota, 1e-8 units for equity points.  The
equity price is kept as the exact ratio ``pool / outstanding`` (cents per unit);
the reported price (CNY per point) is that ratio × 10**6.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from tokenmall.engine import events as ev
from tokenmall.engine import settlement as st
from tokenmall.engine.columns import IntColumn
from tokenmall.engine.ledger import (
    ADJUSTMENTS,
    EXTERNAL,
    ISSUANCE,
    POOL,
    RETAINED,
    ROUNDING,
    SALES,
    TREASURY,
    BatchPosting,
    Ledger,
    Posting,
    ReleaseBatch,
    pool_account,
)
from tokenmall.engine.plan import (
    MAX_CASH_CENTS,
    MAX_POINT_UNITS,
    MAX_TOTAL_CENTS,
    Plan,
    PlanError,
)
from tokenmall.money import UNITS, ceil_div, floor_mul

# price ratio (cents per 1e-8 unit) × this = CNY per point
_PRICE_SCALE = UNITS // 100


class Refused(ValueError):
    """The rules refuse this input; nothing was changed."""


@dataclass(slots=True)
class Order:
    id: str
    member: int
    amount: int  # cents, full amount
    stable: int  # cents paid in stable points
    day: int
    grant: int | None  # grant index, None when the amount is below every tier
    points: int  # equity units granted to the buyer
    refunded: bool = False


@dataclass(frozen=True, slots=True)
class ExitRecord:
    member: int
    points: int
    payout: int


@dataclass
class SettlementReport:
    day: int
    released: dict[str, int]  # kind -> total cents
    members_released: int
    retained: int
    rounding: int
    exits: list[ExitRecord] = field(default_factory=list)
    already_settled: bool = False


@dataclass
class Outputs:
    """What the inputs since the last ``take_outputs()`` produced, in order."""

    postings: list[Posting | BatchPosting | ReleaseBatch]
    events: list[ev.DomainEvent]


class ExitQueue:
    """Exit candidates by ascending ``(quota / points, member)``: a sorted array plus a heap.

    A settlement changes every holder's quota, so the queue is rebuilt from arrays
    (sorted keys, no per-holder Python tuples); the entries single inputs add until
    the next rebuild (``push``) go to a small heap.  ``pop`` takes the lower of the
    two heads, so the queue pops in exactly the order one heap of all entries would.
    """

    __slots__ = ("_at", "_heap", "_keys", "_members")

    def __init__(
        self,
        keys: np.ndarray | None = None,
        members: np.ndarray | None = None,
        heap: list[tuple[float, int]] | None = None,
    ) -> None:
        # arrays, read one element per pop: a settlement's rebuild copies nothing per holder
        self._keys = np.zeros(0) if keys is None else keys
        self._members = np.zeros(0, dtype=np.int64) if members is None else members
        self._at = 0
        self._heap: list[tuple[float, int]] = heap if heap is not None else []

    def __bool__(self) -> bool:
        return self._at < len(self._keys) or bool(self._heap)

    def push(self, key: float, member: int) -> None:
        heapq.heappush(self._heap, (key, member))

    def lowest(self) -> float:
        """The smallest key (``inf`` when empty)."""
        best = float(self._keys[self._at]) if self._at < len(self._keys) else float("inf")
        return min(best, self._heap[0][0]) if self._heap else best

    def pop(self) -> tuple[float, int]:
        at = self._at
        if at < len(self._keys):
            head = (float(self._keys[at]), int(self._members[at]))
            if not self._heap or head <= self._heap[0]:
                self._at = at + 1
                return head
        return heapq.heappop(self._heap)


class Engine:
    def __init__(self, plan: Plan, record: bool = False) -> None:
        """``record=True`` keeps every posting and domain event for ``take_outputs``."""
        self.plan = plan
        self.pending_plan: Plan | None = None
        self.day = 1  # the current (unsettled) business day
        # members, by registration order
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        # per-member and per-grant values are IntColumns: list-like for one input,
        # a no-copy array for settlement
        self.parent = IntColumn()
        # registration order as the registry assigned it (RULES §3's exit tie-break):
        # members may join here in another order when their events arrive out of order
        self.seq = IntColumn()
        self._last_seq = 0
        self.depth = IntColumn()
        self.merchant = IntColumn()  # 1 = merchant (never forced out)
        self.spend = IntColumn()
        self.quota = IntColumn()  # sum of the member's grants' remaining
        # grants, in creation order
        self.grant_member = IntColumn()
        self.grant_quota = IntColumn()
        self.grant_remaining = IntColumn()
        self.grant_base = IntColumn()
        self.member_grants: list[list[int]] = []
        # orders and sales
        self.orders: dict[str, Order] = {}
        self.accepted_orders = 0
        self.paid_today = 0
        self.refunded_today = 0
        self.sales_total = 0
        # books and equity
        self.ledger = Ledger()
        self.points = self.ledger.members["equity"]  # member equity balances (units)
        self.circulating = 0
        self.minted = 0
        self.first_grant_done = False  # before the first grant the price is issue_price
        self.last_price: Fraction = self._issue_price(plan)  # cents per unit; may be 0
        self.last_positive_price: Fraction = self.last_price
        self._exit_heap = ExitQueue()
        self.released: dict[str, np.ndarray] = {}
        self.exits: list[ExitRecord] = []
        self.last_day_result: st.DayResult | None = None
        self._levels_cache: tuple[int, st.TreeLevels] | None = None
        self._events: list[ev.DomainEvent] | None = [] if record else None
        if record:
            self.ledger.journal = []

    # ------------------------------------------------------------ outputs

    def take_outputs(self) -> Outputs:
        """The postings and events produced since the last call (needs ``record=True``)."""
        if self._events is None or self.ledger.journal is None:
            raise RuntimeError("create the engine with record=True to collect outputs")
        outputs = Outputs(self.ledger.journal, self._events)
        self.ledger.journal, self._events = [], []
        return outputs

    def _emit(self, event: ev.DomainEvent) -> None:
        if self._events is not None:
            self._events.append(event)

    # ------------------------------------------------------------ queries

    @staticmethod
    def _issue_price(plan: Plan) -> Fraction:
        price = plan.equity.issue_price if plan.equity else Fraction(1)
        return price / _PRICE_SCALE

    def member(self, name: str) -> int:
        try:
            return self.index[name]
        except KeyError:
            raise Refused(f"unknown member {name!r}") from None

    @property
    def pool(self) -> int:
        return self.ledger.platform["cny"][POOL]

    @property
    def treasury(self) -> int:
        return self.ledger.platform["equity"][TREASURY]

    @property
    def outstanding(self) -> int:
        return self.circulating + self.treasury

    def price_pair(self) -> tuple[int, int]:
        """The exact price as (numerator, denominator) in cents per unit.

        ``pool / outstanding`` once the first grant has happened and points are
        outstanding; otherwise the last price (initially ``issue_price``).
        """
        out = self.outstanding
        if self.first_grant_done and out > 0:
            return self.pool, out
        return self.last_price.numerator, self.last_price.denominator

    def price_ratio(self) -> Fraction:
        return Fraction(*self.price_pair())

    def price(self) -> Fraction:
        """Exact price in CNY per point."""
        return self.price_ratio() * _PRICE_SCALE

    def _grant_price(self) -> tuple[int, int]:
        """The price at which points are granted or bought.

        A zero price (the pool emptied while points exist, possible only after an
        admin mint) would grant unbounded points; the last positive price is used.
        """
        num, den = self.price_pair()
        if num > 0:
            return num, den
        return self.last_positive_price.numerator, self.last_positive_price.denominator

    def _remember_price(self) -> None:
        """Keep the price for when nothing is outstanding ("it stays at its last value")."""
        pool, out = self.pool, self.outstanding
        if self.first_grant_done and out > 0:
            self.last_price = Fraction(pool, out)
            if pool > 0:
                self.last_positive_price = self.last_price

    # ------------------------------------------------------------ members

    def join(
        self, name: str, sponsor: str | None = None, merchant: bool = False, seq: int | None = None
    ) -> int:
        """Add a member; ``seq`` is its registration order (default: after everyone)."""
        if not isinstance(name, str) or not name:
            raise Refused("member must be a non-empty string")
        if name in self.index:
            raise Refused(f"member {name!r} already exists")
        if sponsor == name:
            raise Refused(f"member {name!r} cannot sponsor themselves (the tree has no cycles)")
        if seq is not None and not (isinstance(seq, int) and 0 < seq < 2**62):
            raise Refused(f"registration order must be a positive integer, got {seq!r}")
        parent = self.member(sponsor) if sponsor is not None else -1
        seq = self._last_seq + 1 if seq is None else seq
        self._last_seq = max(self._last_seq, seq)
        m = len(self.names)
        self.names.append(name)
        self.index[name] = m
        self.seq.append(seq)
        self.parent.append(parent)
        self.depth.append(self.depth[parent] + 1 if parent >= 0 else 0)
        self.merchant.append(int(bool(merchant)))
        self.spend.append(0)
        self.quota.append(0)
        self.member_grants.append([])
        self.ledger.add_member()
        self._emit(ev.MemberJoined(name, sponsor, bool(merchant)))
        return m

    def bulk_load(
        self,
        names: list[str],
        parent: list[int],
        spend: list[int],
        grant_member: list[int],
        grant_remaining: list[int],
        grant_base: list[int],
        points: list[int] | None = None,
        pool: int = 0,
        merchant: list[bool] | None = None,
        grant_quota: list[int] | None = None,
    ) -> None:
        """Load a whole population into an empty engine at once (restores, benchmarks).

        ``parent[i] < i`` (sponsors register first); grants are in creation order.
        Value enters through balanced postings like everywhere else: spend and the
        pool from ``external``/``sales``, points from ``issuance``.
        """
        if self.names:
            raise ValueError("bulk_load needs an empty engine")
        n = len(names)
        if any(p >= i for i, p in enumerate(parent)):
            raise ValueError("every sponsor must come before its referrals")
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(names)}
        if len(self.index) != n:
            raise ValueError("member names must be unique")
        self.parent = IntColumn(parent)
        self.seq = IntColumn(range(1, n + 1))
        self._last_seq = n
        depth = [0] * n
        for i, p in enumerate(parent):
            if p >= 0:
                depth[i] = depth[p] + 1
        self.depth = IntColumn(depth)
        self.merchant = IntColumn([int(bool(x)) for x in merchant] if merchant else [0] * n)
        self.spend = IntColumn(spend)
        self.grant_member = IntColumn(grant_member)
        self.grant_quota = IntColumn(grant_remaining if grant_quota is None else grant_quota)
        self.grant_remaining = IntColumn(grant_remaining)
        self.grant_base = IntColumn(grant_base)
        quota = [0] * n
        member_grants: list[list[int]] = [[] for _ in range(n)]
        for g, (m, rem) in enumerate(zip(grant_member, grant_remaining, strict=True)):
            quota[m] += rem
            member_grants[m].append(g)
        self.quota = IntColumn(quota)
        self.member_grants = member_grants
        ledger = self.ledger
        for balances in ledger.members.values():
            balances.extend([0] * n)
        total_spend = sum(spend)
        ledger.post("cny", EXTERNAL, SALES, total_spend, "bulk_load")
        self.sales_total += total_spend
        ledger.post("cny", SALES, POOL, pool, "bulk_load")
        if points is not None:
            held_points = np.asarray(points, dtype=np.int64)
            holders = np.flatnonzero(held_points)
            ledger.post_batch(
                BatchPosting("equity", ISSUANCE, holders, held_points[holders], "bulk_load")
            )
            total = int(held_points.sum())
            self.minted += total
            self.circulating += total
            self.first_grant_done = total > 0
            self._remember_price()
        self._rebuild_exit_heap()

    # ------------------------------------------------------------ orders

    def order(self, name: str, amount: int, order_id: str | None = None, stable: int = 0) -> Order:
        m = self.member(name)
        if amount <= 0:
            raise Refused(f"order amount must be > 0, got {amount / 100}")
        if amount > MAX_CASH_CENTS:
            raise Refused(f"order amount above the limit of {MAX_CASH_CENTS // 100}")
        if self.sales_total + amount > MAX_TOTAL_CENTS:
            raise Refused("the platform's total sales would leave the supported range")
        if stable < 0 or stable > amount:
            raise Refused("stable part must be between 0 and the order amount")
        if stable > self.ledger.members["stable"][m]:
            raise Refused(
                f"member {name!r} holds fewer stable points than the {stable / 100:.2f} to pay"
            )
        oid = order_id if order_id is not None else f"order-{self.accepted_orders + 1}"
        if oid in self.orders:
            raise Refused(f"order {oid!r} already exists")

        plan = self.plan
        self.ledger.post("cny", EXTERNAL, SALES, amount - stable, "order", oid)
        self.ledger.post("stable", m, SALES, stable, "order", oid)
        self.spend[m] += amount
        self.sales_total += amount
        self.paid_today += amount
        self.accepted_orders += 1
        self._emit(ev.OrderPaid(oid, name, amount, stable, self.day))

        grant = None
        tier = plan.grants.tier_for(amount)
        if tier is not None:
            quota = floor_mul(amount, tier.multiple)
            base = floor_mul(amount, plan.grants.daily_rate) if plan.grants.daily_rate else 0
            if quota > 0:
                grant = len(self.grant_member)
                self.grant_member.append(m)
                self.grant_quota.append(quota)
                self.grant_remaining.append(quota)
                self.grant_base.append(base)
                self.member_grants[m].append(grant)
                self.quota[m] += quota
                self._emit(ev.QuotaGranted(oid, name, grant, quota, base))

        points = 0
        eq = plan.equity
        if eq is not None:
            contribution = floor_mul(amount, eq.pool_rate)
            qn, qd = self._grant_price()  # price before this order
            room = max(0, eq.total_supply - self.minted)
            points = min(
                room,
                (contribution * eq.grant_rate.numerator * qd) // (eq.grant_rate.denominator * qn),
            )
            sponsor = self.parent[m]
            sponsor_points = 0
            if eq.referral_grant_rate > 0 and sponsor >= 0 and self.quota[sponsor] > 0:
                sponsor_points = min(
                    room - points,
                    (contribution * eq.referral_grant_rate.numerator * qd)
                    // (eq.referral_grant_rate.denominator * qn),
                )
            self.ledger.post("cny", SALES, POOL, contribution, "contribution", oid)
            self._mint(m, points, "grant", oid)
            self._mint(sponsor, sponsor_points, "referral_grant", oid)
            if points:
                self._emit(ev.PointsGranted(oid, name, points, referral=False))
            if sponsor_points:
                self._emit(
                    ev.PointsGranted(oid, self.names[sponsor], sponsor_points, referral=True)
                )
            if points + sponsor_points > 0:
                self.first_grant_done = True
            self._remember_price()
        order = Order(oid, m, amount, stable, self.day, grant, points)
        self.orders[oid] = order
        self._touch(m)
        self._run_exits()
        return order

    def order_many(self, members: np.ndarray, amounts: np.ndarray) -> None:
        """Cash orders of many members (indexes) at once, with automatic order ids.

        The state afterwards is exactly what ``order(names[m], amount)`` for each
        pair in turn leaves (a test holds the two paths equal), but all or nothing:
        one bad order refuses the whole batch and changes nothing.  Orders are
        independent unless the equity module prices each one after the last, or
        outputs are recorded per order; those cases take the one-by-one path.
        """
        members = np.asarray(members, dtype=np.int64)
        amounts = np.asarray(amounts, dtype=np.int64)
        if members.shape != amounts.shape or members.ndim != 1:
            raise Refused("one amount per member")
        if members.size == 0:
            return
        if self.plan.equity is not None or self._events is not None:
            for m, amount in zip(members.tolist(), amounts.tolist(), strict=True):
                self.order(self.names[m], amount)
            return
        if int(members.min()) < 0 or int(members.max()) >= len(self.names):
            raise Refused("unknown member index in the batch")
        if int(amounts.min()) <= 0:
            raise Refused("order amounts must be > 0")
        if int(amounts.max()) > MAX_CASH_CENTS:
            raise Refused(f"order amount above the limit of {MAX_CASH_CENTS // 100}")
        total = st.exact_total(amounts)
        if self.sales_total + total > MAX_TOTAL_CENTS:
            raise Refused("the platform's total sales would leave the supported range")
        first = self.accepted_orders + 1
        ids = [f"order-{k}" for k in range(first, first + members.size)]
        if not self.orders.keys().isdisjoint(ids):
            raise Refused("an automatic order id of the batch already exists")

        plan = self.plan
        self.ledger.post("cny", EXTERNAL, SALES, total, "order", f"{ids[0]}..{ids[-1]}")
        self.spend.add_repeated(members, amounts)
        self.sales_total += total
        self.paid_today += total
        self.accepted_orders += members.size
        granted = np.full(members.size, -1, dtype=np.int64)
        tiers = plan.grants.tiers
        if tiers:
            thresholds = np.asarray([t.threshold for t in tiers], dtype=np.int64)
            tier_of = np.searchsorted(thresholds, amounts, side="right") - 1
            quota = np.zeros(members.size, dtype=np.int64)
            for k, tier in enumerate(tiers):
                hit = np.flatnonzero(tier_of == k)
                quota[hit] = st.frac_mul_floor(amounts[hit], tier.multiple)
            rate = plan.grants.daily_rate
            base = st.frac_mul_floor(amounts, rate) if rate else np.zeros_like(amounts)
            with_grant = np.flatnonzero(quota > 0)
            owners = members[with_grant]
            start = len(self.grant_member)
            granted[with_grant] = np.arange(start, start + with_grant.size)
            self.grant_member.extend(owners)
            self.grant_quota.extend(quota[with_grant])
            self.grant_remaining.extend(quota[with_grant])
            self.grant_base.extend(base[with_grant])
            self.quota.add_repeated(owners, quota[with_grant])
            member_grants = self.member_grants
            for m, g in zip(owners.tolist(), granted[with_grant].tolist(), strict=True):
                member_grants[m].append(g)
        day = self.day
        orders = self.orders
        for oid, m, amount, g in zip(
            ids, members.tolist(), amounts.tolist(), granted.tolist(), strict=True
        ):
            orders[oid] = Order(oid, m, amount, 0, day, None if g < 0 else g, 0)

    def _mint(self, m: int, units: int, kind: str, ref: str) -> None:
        if units <= 0:
            return
        self.ledger.post("equity", ISSUANCE, m, units, kind, ref)
        self.minted += units
        self.circulating += units
        self._touch(m)

    def refund(self, order_id: str) -> Order:
        order = self.orders.get(order_id)
        if order is None:
            raise Refused(f"unknown order {order_id!r}")
        if order.refunded:
            raise Refused(f"order {order_id!r} is already refunded")
        m = order.member
        order.refunded = True
        self.spend[m] -= order.amount
        self.sales_total -= order.amount
        self.refunded_today += order.amount
        cancelled = 0
        if order.grant is not None:
            cancelled = self.grant_remaining[order.grant]
            self.quota[m] -= cancelled
            self.grant_remaining[order.grant] = 0
        self.ledger.post("stable", SALES, m, order.stable, "refund", order_id)
        self.ledger.post("cny", SALES, EXTERNAL, order.amount - order.stable, "refund", order_id)
        burn = min(order.points, self.points[m])
        value = 0
        if burn > 0:
            num, den = self.price_pair()
            value = min(self.pool, (burn * num) // den)
            self._burn(m, burn, "refund", order_id)
            self.ledger.post("cny", POOL, m, value, "refund", order_id)
            self._remember_price()
        self._emit(
            ev.OrderRefunded(
                order_id, self.names[m], order.amount, order.stable, cancelled, burn, value
            )
        )
        self._touch(m)
        self._run_exits()
        return order

    # ------------------------------------------------------------ equity trades

    def _require_equity(self) -> Any:
        if self.plan.equity is None:
            raise Refused("the equity module is not enabled")
        return self.plan.equity

    def _points_to_trade(self, m: int, points: int | None) -> int:
        held = self.points[m]
        wanted = held if points is None else points
        if wanted <= 0:
            raise Refused(
                "points to trade must be > 0"
                if points is not None
                else f"member {self.names[m]!r} holds no points"
            )
        if wanted > held:
            raise Refused(
                f"member {self.names[m]!r} holds {held / UNITS} points, fewer than {wanted / UNITS}"
            )
        return wanted

    def sell(self, name: str, points: int | None) -> int:
        """Sell ``points`` units (``None`` = all) back to the pool; returns the cny payout."""
        eq = self._require_equity()
        m = self.member(name)
        units = self._points_to_trade(m, points)
        payout = self._sell(m, units, eq.sell_fee_rate, "sell", name)
        self._run_exits()
        return payout

    def _sell(self, m: int, units: int, fee: Fraction, kind: str, ref: str) -> int:
        num, out = self.price_pair()
        gross = units * num  # × 1/out: the exact gross in cents
        payout = (gross * (fee.denominator - fee.numerator)) // (out * fee.denominator)
        # never more than the pool holds (binds only before the first grant, on admin-minted points)
        payout = min(payout, self.pool)
        self._burn(m, units, kind, ref)
        self.ledger.post("cny", POOL, m, payout, kind, ref)
        used = self._use_quota(m, ceil_div(gross, out))
        if kind == "forced_exit":  # the rest of the quota is used up too
            used += self._use_quota(m, self.quota[m])
        self._remember_price()
        self._touch(m)
        self._emit(ev.PointsSold(self.names[m], units, payout, used, forced=kind == "forced_exit"))
        return payout

    def exchange(self, name: str, points: int) -> int:
        """Equity points to the treasury, stable points to the member; returns stable cents."""
        self._require_equity()
        m = self.member(name)
        units = self._points_to_trade(m, points)
        num, out = self.price_pair()
        gross = units * num
        value = gross // out
        self.ledger.post("equity", m, TREASURY, units, "exchange", name)
        self.circulating -= units
        self.ledger.post("stable", ISSUANCE, m, value, "exchange", name)
        used = self._use_quota(m, ceil_div(gross, out))
        self._emit(ev.PointsExchanged(name, units, value, used))
        self._touch(m)
        self._run_exits()
        return value

    def merchant_exchange(self, name: str, stable: int) -> int:
        """A merchant's stable points buy equity points out of the treasury; returns units."""
        self._require_equity()
        m = self.member(name)
        if not self.merchant[m]:
            raise Refused(f"member {name!r} is not a merchant")
        if stable <= 0:
            raise Refused("stable amount must be > 0")
        if stable > MAX_CASH_CENTS:
            raise Refused("stable amount above the limit")
        if stable > self.ledger.members["stable"][m]:
            raise Refused(f"merchant {name!r} holds fewer stable points than {stable / 100:.2f}")
        qn, qd = self._grant_price()
        units = (stable * qd) // qn
        if units <= 0:
            raise Refused("that amount buys no equity points at the current price")
        if units > self.treasury:
            raise Refused(
                f"the treasury holds {self.treasury / UNITS} points, fewer than {units / UNITS}"
            )
        self.ledger.post("stable", m, ISSUANCE, stable, "merchant_exchange", name)
        self.ledger.post("equity", TREASURY, m, units, "merchant_exchange", name)
        self.circulating += units
        self._emit(ev.MerchantExchanged(name, stable, units))
        self._run_exits()
        return units

    def _burn(self, m: int, units: int, kind: str, ref: str) -> None:
        self.ledger.post("equity", m, ISSUANCE, units, kind, ref)
        self.circulating -= units

    def _use_quota(self, m: int, amount: int) -> int:
        """Deduct up to ``amount`` from m's grants, oldest first; returns what was taken."""
        taken = 0
        grants = self.member_grants[m]
        for g in grants:
            if taken >= amount:
                break
            take = min(self.grant_remaining[g], amount - taken)
            self.grant_remaining[g] -= take
            taken += take
        while grants and self.grant_remaining[grants[0]] == 0:
            grants.pop(0)  # spent grants never release again: drop them from the walk
        self.quota[m] -= taken
        return taken

    # ------------------------------------------------------------ admin

    def adjust(self, name: str, asset: str, amount: int, reason: str) -> None:
        """Admin adds (amount > 0) or removes (< 0) value; posted against ``adjustments``."""
        m = self.member(name)
        if asset not in ("cny", "stable", "equity"):
            raise Refused(f"unknown asset {asset!r} (cny, stable or equity)")
        if not reason or not str(reason).strip():
            raise Refused("an adjustment needs a reason")
        if amount == 0:
            raise Refused("adjustment amount must not be zero")
        if abs(amount) > (MAX_POINT_UNITS if asset == "equity" else MAX_CASH_CENTS):
            raise Refused("adjustment amount above the limit")
        held = self.ledger.members[asset][m]
        if held + amount > (MAX_POINT_UNITS if asset == "equity" else MAX_TOTAL_CENTS):
            raise Refused("the balance would leave the supported range")
        if amount < 0 and held + amount < 0:
            raise Refused(
                f"member {name!r} holds {held} minor units of {asset}; "
                f"removing {-amount} would go below zero"
            )
        if asset == "equity":
            eq = self._require_equity()
            if amount > 0 and self.minted + amount > eq.total_supply:
                raise Refused("adding these points would pass equity.total_supply")
            if amount > 0:
                self.ledger.post("equity", ADJUSTMENTS, m, amount, "adjust", reason)
                self.minted += amount
            else:
                self.ledger.post("equity", m, ADJUSTMENTS, -amount, "adjust", reason)
            self.circulating += amount
            self._remember_price()
            self._touch(m)
        elif amount > 0:
            self.ledger.post(asset, ADJUSTMENTS, m, amount, "adjust", reason)
        else:
            self.ledger.post(asset, m, ADJUSTMENTS, -amount, "adjust", reason)
        self._emit(ev.BalanceAdjusted(name, asset, amount, str(reason)))
        self._run_exits()

    def propose_plan(self, partial: dict[str, Any]) -> Plan:
        """A new plan version, effective from the next day (RULES §6)."""
        try:
            version = (self.pending_plan or self.plan).merged(partial)
        except PlanError as exc:
            raise Refused(f"plan: {exc}") from None
        self.pending_plan = version
        self._emit(ev.PlanScheduled(self.day + 1, version.raw))
        return version

    # ------------------------------------------------------------ forced exits

    def _touch(self, m: int) -> None:
        """m's quota or points changed: queue its new exit ratio."""
        if m < 0 or self.merchant[m] or self.plan.equity is None:
            return
        p = self.points[m]
        if p > 0:
            self._exit_heap.push(self.quota[m] / p, m)

    def _run_exits(self) -> None:
        """Force out every due member, lowest ``remaining / points`` first (RULES §3).

        The heap is keyed by the correctly rounded float ``quota / points``;
        since rounding is monotone, every exactly-due member has a key <= the
        rounded price, so popping keys <= price finds all candidates, and the
        exact integer test ``points × pool >= quota × outstanding`` decides.
        """
        eq = self.plan.equity
        heap = self._exit_heap
        if eq is None or not heap:
            return
        points, quota = self.points, self.quota
        while self.outstanding > 0:
            pool, out = self.price_pair()
            price = pool / out
            due: list[int] = []
            keep: list[tuple[float, int]] = []
            while heap.lowest() <= price:
                key, m = heap.pop()
                p = points[m]
                if p == 0 or quota[m] / p != key:
                    continue  # stale entry
                if p * pool >= quota[m] * out:
                    due.append(m)
                else:
                    keep.append((key, m))
            for key, m in keep:
                heap.push(key, m)
            if not due:
                return
            # members already due stay due as the price rises; newly due ones have
            # higher ratios, so finishing this batch in exact order is the same as
            # always taking the lowest due ratio
            for m in self._exact_exit_order(set(due)):
                self._force_exit(m, eq.sell_fee_rate)

    def _exact_exit_order(self, due: set[int]) -> list[int]:
        """Ascending exact ``quota / points``, then registration order (``seq``).

        Sorting by the correctly rounded float first is already right except among
        equal floats, which are re-sorted by the exact ratio.
        """
        quota, points, seq = self.quota, self.points, self.seq
        ordered = sorted(due, key=lambda m: (quota[m] / points[m], seq[m]))
        result: list[int] = []
        i = 0
        while i < len(ordered):
            key = quota[ordered[i]] / points[ordered[i]]
            j = i + 1
            while j < len(ordered) and quota[ordered[j]] / points[ordered[j]] == key:
                j += 1
            group = ordered[i:j]
            if len(group) > 1:
                group.sort(key=lambda m: (Fraction(quota[m], points[m]), seq[m]))
            result.extend(group)
            i = j
        return result

    def _force_exit(self, m: int, fee: Fraction) -> None:
        units = self.points[m]
        payout = self._sell(m, units, fee, "forced_exit", self.names[m])
        self.exits.append(ExitRecord(m, units, payout))

    def _rebuild_exit_heap(self) -> None:
        """All holders keyed by their exit ratio, sorted (a sorted list is a valid heap)."""
        if self.plan.equity is None or self.circulating == 0:
            self._exit_heap = ExitQueue()
            return
        pts = self.points.view()
        holders = np.flatnonzero((pts > 0) & (self.merchant.view() == 0))
        quota = self.quota.view()[holders]
        held = pts[holders]
        if holders.size and max(int(quota.max()), int(held.max())) < 2**53:
            # both exactly representable: IEEE division is then correctly rounded,
            # the same float Python's int / int gives (which the heap's checks use)
            keys = quota.astype(np.float64) / held.astype(np.float64)
            order = np.lexsort((holders, keys))
            self._exit_heap = ExitQueue(keys[order], holders[order])
        else:
            q, p = self.quota, self.points
            self._exit_heap = ExitQueue(heap=sorted((q[m] / p[m], m) for m in holders.tolist()))

    # ------------------------------------------------------------ settlement

    def settle(self, day: int | None = None) -> SettlementReport:
        """Settle the current day and open the next.  Settling a settled day changes nothing."""
        if day is not None and day < self.day:
            return SettlementReport(day, {}, 0, 0, 0, already_settled=True)
        if day is not None and day > self.day:
            raise Refused(f"day {day} has not started yet (current day is {self.day})")
        settled = self.day
        result = st.settle_day(self.day_input())
        self.last_day_result = result
        self._apply_day(result)
        exits_before = len(self.exits)
        self._rebuild_exit_heap()
        self._run_exits()
        report = SettlementReport(
            day=settled,
            released={k: int(v.sum()) for k, v in result.released.items()},
            members_released=result.members_released,
            retained=sum(result.retained.values()) + result.acceleration_retained,
            rounding=sum(result.rounding.values()),
            exits=self.exits[exits_before:],
        )
        self._emit(
            ev.DaySettled(
                settled,
                report.released,
                report.members_released,
                report.retained,
                report.rounding,
                len(report.exits),
            )
        )
        self.day += 1
        self.paid_today = self.refunded_today = 0
        if self.pending_plan is not None:
            had_equity = self.plan.equity is not None
            self.plan, self.pending_plan = self.pending_plan, None
            if self.plan.equity is not None and not self.first_grant_done:
                self.last_price = self.last_positive_price = self._issue_price(self.plan)
            if self.plan.equity is not None and not had_equity:
                # the heap was not kept while the module was off; exits resume at the
                # next step that moves the price, points or quota
                self._rebuild_exit_heap()
        return report

    def day_input(self) -> st.DayInput:
        """The settlement's input: read-only views of the engine's columns (no copies)."""
        return st.DayInput(
            plan=self.plan,
            parent=self.parent.view(),
            depth=self.depth.view(),
            spend=self.spend.view(),
            points=self.points.view(),
            grant_member=self.grant_member.view(),
            grant_remaining=self.grant_remaining.view(),
            grant_base=self.grant_base.view(),
            levels=self._tree_levels(),
            net_sales=max(0, self.paid_today - self.refunded_today),
        )

    def _tree_levels(self) -> st.TreeLevels:
        """The tree by depth, kept between settlements: sponsors never change, so it
        changes only when members join (a cache keyed by the member count)."""
        n = len(self.names)
        cached = self._levels_cache
        if cached is None or cached[0] != n:
            cached = (n, st.tree_levels(self.depth.view()))
            self._levels_cache = cached
        return cached[1]

    def _apply_day(self, result: st.DayResult) -> None:
        n = len(self.names)
        asset = self.plan.release_to
        ledger = self.ledger
        ref = f"day-{self.day}"
        for pool in self.plan.pools:
            account = pool_account(pool.name)
            ledger.post(
                asset, SALES, account, result.pool_funding.get(pool.name, 0), "pool_funding", ref
            )

        def source(kind: str) -> str:
            return pool_account(kind) if kind in result.pool_funding else ISSUANCE

        paid = np.zeros(n, dtype=bool)
        for amounts in result.released.values():
            paid |= amounts > 0
        earners = np.flatnonzero(paid)
        ledger.post_release(
            ReleaseBatch(
                asset,
                earners,
                {k: v[earners] for k, v in result.released.items()},
                {k: source(k) for k in result.released},
                ref,
            )
        )
        for kind, amounts in result.released.items():
            total = self.released.get(kind)
            if total is None or total.size < n:
                grown = np.zeros(n, dtype=np.int64)
                if total is not None:
                    grown[: total.size] = total
                total = grown
            total += amounts
            self.released[kind] = total
        for pool_name, amount in result.retained.items():
            ledger.post(
                asset, pool_account(pool_name), RETAINED, amount, f"retained:{pool_name}", ref
            )
        ledger.post(asset, ISSUANCE, RETAINED, result.acceleration_retained, "retained:burn", ref)
        for kind, amount in result.rounding.items():
            ledger.post(asset, pool_account(kind), ROUNDING, amount, f"rounding:{kind}", ref)
        self.grant_remaining.assign(result.grant_remaining)
        self.quota.assign(result.quota)

    # ------------------------------------------------------------ reporting helpers

    def released_of(self, m: int) -> dict[str, int]:
        return {k: int(v[m]) for k, v in self.released.items() if m < v.size and v[m]}
