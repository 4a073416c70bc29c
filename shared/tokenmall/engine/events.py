"""Domain events: what each engine input did, as plain immutable records.

The engine emits them (with ``Engine(plan, record=True)``) next to the postings
of the same input; the services map them onto their versioned Kafka contracts.
Amounts are integer minor units: cents, or 1e-8 units for equity points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class MemberJoined:
    member: str
    sponsor: str | None
    merchant: bool


@dataclass(frozen=True, slots=True)
class OrderPaid:
    order_id: str
    member: str
    amount: int
    stable: int  # part paid in stable points
    day: int


@dataclass(frozen=True, slots=True)
class QuotaGranted:
    order_id: str
    member: str
    grant: int  # grant index, in creation order
    quota: int
    daily_base: int


@dataclass(frozen=True, slots=True)
class PointsGranted:
    order_id: str
    member: str
    units: int
    referral: bool  # granted to the buyer's sponsor


@dataclass(frozen=True, slots=True)
class OrderRefunded:
    order_id: str
    member: str
    amount: int
    stable_returned: int
    quota_cancelled: int
    points_burned: int
    payout: int  # cny paid from the pool for the burned points


@dataclass(frozen=True, slots=True)
class PointsSold:
    member: str
    units: int
    payout: int
    quota_used: int
    forced: bool  # a forced exit (出局)


@dataclass(frozen=True, slots=True)
class PointsExchanged:
    member: str
    units: int
    stable: int
    quota_used: int


@dataclass(frozen=True, slots=True)
class MerchantExchanged:
    member: str
    stable: int
    units: int


@dataclass(frozen=True, slots=True)
class BalanceAdjusted:
    member: str
    asset: str
    amount: int  # negative removes
    reason: str


@dataclass(frozen=True, slots=True)
class PlanScheduled:
    effective_day: int
    plan: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DaySettled:
    day: int
    released: dict[str, int]  # kind -> total cents (the per-member lines are in the ReleaseBatch)
    members_released: int
    retained: int
    rounding: int
    forced_exits: int


DomainEvent = (
    MemberJoined
    | OrderPaid
    | QuotaGranted
    | PointsGranted
    | OrderRefunded
    | PointsSold
    | PointsExchanged
    | MerchantExchanged
    | BalanceAdjusted
    | PlanScheduled
    | DaySettled
)
