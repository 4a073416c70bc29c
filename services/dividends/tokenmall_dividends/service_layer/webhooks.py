"""Which of the events dividends emits a mall or an exchange hears of by webhook.

Dividends hosts the platform's webhooks because the asynchronous results are its own:
the verdict on an order and on a trade request, a forced exit, a settled day, a plan in
force.  Each notification's id is derived from what it announces (an order's verdict
is decided once, a day settled once), so the same fact never arrives under two ids
and a receiver dedups by it.  Money is a decimal string, as in the HTTP APIs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from tokenmall import contracts
from tokenmall.engine.plan import plan_document
from tokenmall.money import cents_to_decimal, units_to_decimal
from tokenmall.webhooks import Notification

ORDER_VERDICT = "order.verdict"
REQUEST_DECIDED = "request.decided"
FORCED_EXIT = "member.forced_exit"
DAY_SETTLED = "day.settled"
PLAN_ACTIVATED = "plan.activated"

KINDS = {
    ORDER_VERDICT: "an order was applied (quota and points granted) or refused, and why",
    REQUEST_DECIDED: "a sell, exchange or adjustment request was applied or refused",
    FORCED_EXIT: "a member's equity points were all sold at the exit price (出局)",
    DAY_SETTLED: "a business day was settled: its totals and a link to its release lines",
    PLAN_ACTIVATED: "a plan version took effect",
}

# uuid5 namespace of the notification ids (any fixed uuid: ids stay stable across
# processes and restarts)
NAMESPACE = uuid.UUID("6f1c5a52-3f0e-4a53-9c55-1d0f61a3c9b1")


def notification_id(*parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, ":".join(str(part) for part in parts)))


def _text(amount: Decimal) -> str:
    return format(amount, "f")


def notifications_of(event: contracts.Event) -> Iterable[Notification]:
    if isinstance(event, contracts.InputApplied):
        yield from _answered(event, event.day, event)
    elif isinstance(event, contracts.InputsApplied):
        for answer in event.inputs:
            yield from _answered(answer, event.day, event)
    elif isinstance(event, contracts.DaySettled):
        yield _day_settled(event)
        yield from _exits(event.exit_postings, event.day, event)
    elif isinstance(event, contracts.PlanActivated):
        yield Notification(
            notification_id(PLAN_ACTIVATED, event.event_id),
            PLAN_ACTIVATED,
            {
                "day": event.day,
                "plan": plan_document(event.plan),
                "links": {"plan": "/dividends/v1/plan"},
            },
            event.occurred_at,
        )


def _answered(
    answer: contracts.InputApplied | contracts.AppliedInput,
    day: int | None,
    source: contracts.Event,
) -> Iterator[Notification]:
    prefix, _, ident = answer.input_id.partition(":")
    common = {
        "member": answer.member,
        "accepted": answer.accepted,
        "reason": answer.reason,
        "day": day,
    }
    if prefix == "order":
        yield Notification(
            notification_id(ORDER_VERDICT, answer.input_id),
            ORDER_VERDICT,
            {"order_id": ident, **common, **_grants(answer.facts)}
            | {"links": {"order": f"/orders/v1/orders/{ident}"}},
            source.occurred_at,
        )
    elif prefix == "request":
        yield Notification(
            notification_id(REQUEST_DECIDED, answer.input_id),
            REQUEST_DECIDED,
            {"request_id": ident, **common, "postings": _postings(answer.postings)}
            | {"links": {"request": f"/wallet/v1/requests/{ident}"}},
            source.occurred_at,
        )
    # a price rise inside an input (an order's pool share) can force members out
    forced = [fact for fact in answer.facts if fact.get("type") == "PointsSold" and fact["forced"]]
    for fact in forced:
        yield Notification(
            # one input can force several members out, a batch the same member twice
            notification_id(FORCED_EXIT, source.event_id, answer.input_id, fact["member"]),
            FORCED_EXIT,
            {
                "member": fact["member"],
                "day": day,
                "points": _text(units_to_decimal(fact["units"])),
                "payout": _text(cents_to_decimal(fact["payout"])),
                "links": {"balances": f"/wallet/v1/members/{fact['member']}/balances"},
            },
            source.occurred_at,
        )


def _grants(facts: list[dict[str, Any]]) -> dict[str, str | None]:
    """What the order earned its buyer: quota and points (None when refused)."""
    quota = sum(f["quota"] for f in facts if f.get("type") == "QuotaGranted")
    points = sum(
        f["units"] for f in facts if f.get("type") == "PointsGranted" and not f["referral"]
    )
    granted = any(f.get("type") == "QuotaGranted" for f in facts)
    return {
        "quota": _text(cents_to_decimal(quota)) if granted else None,
        "points": _text(units_to_decimal(points)) if granted else None,
    }


def _postings(lines: list[contracts.PostingLine]) -> list[dict[str, str]]:
    return [
        {
            "asset": line.asset,
            "debit": line.debit,
            "credit": line.credit,
            "amount": _text(line.amount),
            "kind": line.kind,
        }
        for line in lines
    ]


def _day_settled(event: contracts.DaySettled) -> Notification:
    """One per day, whatever the number of members: the totals, and where to page
    through the day's lines (the wallet's, as booked)."""
    day = event.day
    return Notification(
        notification_id(DAY_SETTLED, day),
        DAY_SETTLED,
        {
            "day": day,
            "released": {kind: _text(amount) for kind, amount in sorted(event.released.items())},
            "members_released": event.members_released,
            "forced_exits": event.forced_exits,
            "links": {
                "settlement": f"/dividends/v1/settlements/{day}",
                "releases": f"/wallet/v1/days/{day}/releases",
            },
        },
        event.occurred_at,
    )


def _exits(
    lines: list[contracts.PostingLine], day: int, source: contracts.Event
) -> Iterator[Notification]:
    """The forced exits at the end of a settlement, one per member, from its postings:
    the points burned (equity out of the member) and the payout (cny into it)."""
    points: dict[str, Decimal] = {}
    payout: dict[str, Decimal] = {}
    for line in lines:
        if line.kind != "forced_exit":
            continue
        if line.asset == "equity" and line.debit.startswith("m:"):
            member = line.debit[2:]
            points[member] = points.get(member, Decimal(0)) + line.amount
        elif line.asset == "cny" and line.credit.startswith("m:"):
            member = line.credit[2:]
            payout[member] = payout.get(member, Decimal(0)) + line.amount
    for member in sorted(points.keys() | payout.keys()):
        yield Notification(
            notification_id(FORCED_EXIT, source.event_id, member),
            FORCED_EXIT,
            {
                "member": member,
                "day": day,
                "points": _text(points.get(member, Decimal(0))),
                "payout": _text(payout.get(member, Decimal(0))),
                "links": {"balances": f"/wallet/v1/members/{member}/balances"},
            },
            source.occurred_at,
        )
