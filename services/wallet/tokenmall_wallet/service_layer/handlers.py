"""The wallet's use cases.

Event side: the rules engine (dividends) computes every posting; the wallet books
them exactly as received — a journal row per posting line, one release line per
member per settlement day — and finalises the holds and requests they answer.

Command side (the HTTP API): holds, trade requests and admin adjustments are
validated against the *available* balance (balance − active holds), reserved by a
hold and, for requests, sent to dividends as a ``WalletRequest`` in the same
transaction (outbox).

Every command transaction starts with a write on the member's row
(``lock_member``): on PostgreSQL that row lock serialises one member's commands;
on SQLite it takes the write lock before anything is read, so the available
balance cannot change between the check and the hold.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import exists, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from tokenmall import business_day
from tokenmall.api_style import iso_utc
from tokenmall.contracts import (
    WALLET_REQUESTS,
    AppliedInput,
    DaySettled,
    Event,
    InputApplied,
    InputsApplied,
    MemberRegistered,
    MembersRegistered,
    PostingLine,
    ReleaseComputed,
    WalletRequest,
    to_json,
)
from tokenmall.db import among
from tokenmall.messaging import Missing, UnitOfWork
from tokenmall.money import (
    AmountError,
    cents_to_decimal,
    format_cents,
    format_units,
    to_cents,
    to_units,
    units_to_decimal,
)
from tokenmall.servicekit import Rejected
from tokenmall_wallet.adapters import tables
from tokenmall_wallet.adapters.tables import (
    balances,
    business_days,
    holds,
    journal,
    member_account,
    members,
    release_lines,
    requests,
)

Asset = Literal["cny", "stable", "equity"]
TradeKind = Literal["sell", "exchange", "merchant_exchange"]
LABELS: dict[str, str] = {"cny": "cny", "stable": "stable points", "equity": "points"}
INT64 = 2**63
RELEASE_CREDIT = "members"  # the credit side of a release's platform leg: see release_lines


class WalletError(Exception):
    """A command the wallet refuses; ``status_code`` is its HTTP status."""

    status_code = 400


class NotFound(WalletError):
    status_code = 404


class Invalid(WalletError):
    status_code = 422


class Conflict(WalletError):
    status_code = 409


class UnknownMember(NotFound):
    """Not (yet) in this wallet's read model of the members."""


# ----------------------------------------------------------------- amounts


def to_minor(asset: str, value: object) -> int:
    """Cents for cny/stable, 1e-8 units for equity; too many decimals is an error."""
    return to_units(value) if asset == "equity" else to_cents(value)


def format_minor(asset: str, minor: int) -> str:
    return format_units(minor) if asset == "equity" else format_cents(minor)


def minor_to_decimal(asset: str, minor: int) -> Decimal:
    return units_to_decimal(minor) if asset == "equity" else cents_to_decimal(minor)


def _fewer(member: str, asset: str, wanted: int, available: int) -> str:
    return (
        f"member {member!r} holds fewer {LABELS[asset]} than {format_minor(asset, wanted)} "
        f"(available: {format_minor(asset, available)})"
    )


# ----------------------------------------------------------------- booking (event side)


def _posting_rows(
    postings: Iterable[PostingLine],
    event_id: str,
    ref: str,
    deltas: defaultdict[tuple[str, str], int],
    day: int | None,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in postings:
        try:
            amount = to_minor(p.asset, p.amount)
        except AmountError as exc:
            raise Rejected(f"posting {p.kind} {p.debit} -> {p.credit}: {exc}") from None
        if not -INT64 < amount < INT64:
            raise Rejected(f"posting {p.kind} {p.debit} -> {p.credit}: amount out of range")
        rows.append(
            {
                "event_id": event_id,
                "asset": p.asset,
                "debit": p.debit,
                "credit": p.credit,
                "amount": amount,
                "kind": p.kind,
                "ref": ref,
                "day": day,
            }
        )
        deltas[(p.debit, p.asset)] -= amount
        deltas[(p.credit, p.asset)] += amount
    return rows


async def book_postings(
    session: AsyncSession,
    postings: Sequence[PostingLine],
    event_id: str,
    ref: str,
    day: int | None,
) -> None:
    """Book posting lines exactly as received: journal rows and balance deltas."""
    deltas: defaultdict[tuple[str, str], int] = defaultdict(int)
    rows = _posting_rows(postings, event_id, ref, deltas, day)
    await tables.insert_journal(session, rows)
    await tables.apply_deltas(session, deltas)


async def on_members(event: Event, uow: UnitOfWork) -> None:
    rows, provides = member_rows(event)
    if rows:
        await tables.add_members(uow.session, rows)
    for dependency in provides:
        uow.provide(dependency)


def member_rows(event: Event) -> tuple[list[dict[str, Any]], list[str]]:
    """What :func:`on_members` writes (Subscription.bulk, servicekit.rows_per_event): a
    row per member registered, and the dependencies they provide."""
    if isinstance(event, MembersRegistered):
        rows = [{"member": r.member, "merchant": r.merchant, "seq": r.seq} for r in event.members]
    elif isinstance(event, MemberRegistered):
        rows = [{"member": event.member, "merchant": event.merchant, "seq": event.seq}]
    else:
        return [], []
    return rows, [f"member:{row['member']}" for row in rows]


async def write_members(uow: UnitOfWork, rows: list[dict[str, Any]]) -> None:
    await tables.add_members(uow.session, rows)


async def on_dividends(event: Event, uow: UnitOfWork) -> None:
    """InputApplied (InputsApplied), ReleaseComputed and DaySettled; other types are not
    the wallet's."""
    if isinstance(event, InputApplied):
        await input_applied(event, uow)
    elif isinstance(event, InputsApplied):
        await _book_orders(uow, [_orders_booking(event)])
    elif isinstance(event, ReleaseComputed):
        await release_computed(event, uow)
    elif isinstance(event, DaySettled):
        await day_settled(event, uow)


async def input_applied(event: InputApplied, uow: UnitOfWork) -> None:
    """The engine's answer to an input: ``request:<id>`` (a trade or adjustment this
    wallet sent), ``order:<id>`` (an order; its stable part may be held here under the
    order id), ``refund:<id>``, …: book its postings, then settle the request or hold."""
    session = uow.session
    await book_postings(session, event.postings, event.event_id, event.input_id, event.day)
    kind, _, ident = event.input_id.partition(":")
    if kind == "order":
        # a plain hold (the stable part of an order): the engine's posting moved it
        await _set_hold(session, ident, "captured" if event.accepted else "released")
        return
    request = await _request_row(session, ident) if kind == "request" else None
    if request is not None and request.status == "pending":
        result = (
            to_json(
                {
                    "postings": [p.model_dump(mode="json") for p in event.postings],
                    "facts": event.facts,
                }
            )
            if event.accepted
            else None
        )
        await session.execute(
            update(requests)
            .where(requests.c.request_id == ident, requests.c.status == "pending")
            .values(
                status="done" if event.accepted else "refused",
                reason=None if event.accepted else (event.reason or "refused"),
                result=result,
                decided_at=datetime.now(UTC),
            )
        )
        # accepted: the postings already moved the value; refused: nothing moves
        await _set_hold(session, ident, "released")


HOLD_IDS_PER_UPDATE = 500


async def orders_decided(events: list[Event], uow: UnitOfWork) -> list[Missing | None]:
    """:func:`input_applied` for the engine's verdicts on a poll's orders at once
    (Subscription.bulk), also a batch's (InputsApplied): one journal insert, the balance
    deltas summed, one hold update per outcome; any other event (a request's verdict, a
    release batch, a day event) or a malformed one goes to the handler alone."""
    bookings: list[_OrdersBooking] = []
    for event in events:
        if not (
            isinstance(event, InputsApplied)
            or (isinstance(event, InputApplied) and event.input_id.startswith("order:"))
        ):
            break
        try:
            bookings.append(_orders_booking(event))
        except Rejected:
            break  # its handler refuses it
    await _book_orders(uow, bookings)
    return [None] * len(bookings)


@dataclass
class _OrdersBooking:
    """What the verdicts of one event book: journal rows, balance deltas, holds."""

    rows: list[dict[str, Any]]
    deltas: defaultdict[tuple[str, str], int]
    holds_to: dict[str, list[str]]


def _orders_booking(event: InputApplied | InputsApplied) -> _OrdersBooking:
    """Rejected: an answer is not an order's, or a posting is malformed."""
    answers: Sequence[InputApplied | AppliedInput] = (
        event.inputs if isinstance(event, InputsApplied) else [event]
    )
    booking = _OrdersBooking([], defaultdict(int), {"captured": [], "released": []})
    for answer in answers:
        kind, _, order_id = answer.input_id.partition(":")
        if kind != "order":
            raise Rejected(f"InputsApplied answers orders only, not {answer.input_id!r}")
        booking.rows += _posting_rows(
            answer.postings, event.event_id, answer.input_id, booking.deltas, event.day
        )
        booking.holds_to["captured" if answer.accepted else "released"].append(order_id)
    return booking


async def _book_orders(uow: UnitOfWork, bookings: list[_OrdersBooking]) -> None:
    session = uow.session
    deltas: defaultdict[tuple[str, str], int] = defaultdict(int)
    holds_to: dict[str, list[str]] = {"captured": [], "released": []}
    for booking in bookings:
        for key, delta in booking.deltas.items():
            deltas[key] += delta
        for status, ids in booking.holds_to.items():
            holds_to[status] += ids
    await tables.insert_journal(session, [row for b in bookings for row in b.rows])
    await tables.apply_deltas(session, deltas)
    for status, ids in holds_to.items():
        for start in range(0, len(ids), HOLD_IDS_PER_UPDATE):
            await session.execute(
                update(holds)
                .where(
                    among(session, holds.c.hold_id, ids[start : start + HOLD_IDS_PER_UPDATE]),
                    holds.c.status == "held",
                )
                .values(status=status)
            )


async def _set_hold(session: AsyncSession, hold_id: str, status: str) -> None:
    await session.execute(
        update(holds)
        .where(holds.c.hold_id == hold_id, holds.c.status == "held")
        .values(status=status)
    )


async def release_computed(event: ReleaseComputed, uow: UnitOfWork) -> None:
    """One release line per member (bulk insert), member balances by one executemany
    UPSERT, and one platform leg per release kind (its column total)."""
    n = len(event.members)
    kinds = list(event.amounts)
    for kind in kinds:
        if len(event.amounts[kind]) != n:
            raise Rejected(
                f"release column {kind!r} has {len(event.amounts[kind])} amounts for {n} members"
            )
        if kind not in event.sources:
            raise Rejected(f"release kind {kind!r} has no source account")
    if len(set(event.members)) != n:
        raise Rejected("a member appears twice in one release batch")
    columns = [event.amounts[kind] for kind in kinds]
    asset, day = event.asset, event.day
    # {"kind": cents} of the non-zero kinds, written without a json.dumps per member
    prefixes = [json.dumps(kind) + ":" for kind in kinds]
    lines: list[tuple[Any, ...]] = []
    deltas: defaultdict[tuple[str, str], int] = defaultdict(int)
    rows = zip(*columns, strict=True) if columns else itertools.repeat((), n)
    for member, amounts in zip(event.members, rows, strict=True):
        total = sum(amounts)
        text = ",".join([p + str(v) for p, v in zip(prefixes, amounts, strict=True) if v])
        lines.append((day, member, asset, "{" + text + "}", total))
        if total:
            deltas[(member_account(member), asset)] += total
    legs: list[dict[str, Any]] = []
    for kind, col in zip(kinds, columns, strict=True):
        column_total = sum(col)
        if not column_total:
            continue
        source = event.sources[kind]
        deltas[(source, asset)] -= column_total
        legs.append(
            {
                "event_id": event.event_id,
                "asset": asset,
                "debit": source,
                "credit": RELEASE_CREDIT,
                "amount": column_total,
                "kind": kind,
                "ref": f"release:{day}:{event.bucket}" + (f".{event.chunk}" if event.chunk else ""),
                "day": day,
            }
        )
    if any(not -INT64 < value < INT64 for value in deltas.values()):
        raise Rejected("a release amount is out of range")
    try:
        await tables.insert_release_lines(uow.session, lines)
    except tables.AlreadyBooked:
        raise Rejected(
            f"releases of day {day} in {asset} are already booked for a member "
            f"of bucket {event.bucket}"
        ) from None
    await tables.insert_journal(uow.session, legs)
    await tables.apply_deltas(uow.session, deltas)


async def day_settled(event: DaySettled, uow: UnitOfWork) -> None:
    postings = [*event.platform_postings, *event.exit_postings]
    await book_postings(uow.session, postings, event.event_id, f"day:{event.day}", event.day)


# ----------------------------------------------------------------- commands (HTTP side)


@dataclass(frozen=True)
class PlaceHold:
    hold_id: str
    member: str
    asset: Asset
    amount: int  # minor units, > 0


@dataclass(frozen=True)
class SubmitTrade:
    request_id: str
    member: str
    kind: TradeKind
    points: int | None = None  # sell / exchange, 1e-8 units; None = all available
    stable: int | None = None  # merchant_exchange, cents


@dataclass(frozen=True)
class SubmitAdjustment:
    request_id: str
    member: str
    asset: Asset
    amount: int  # signed minor units, != 0
    reason: str
    operator: str


@dataclass(frozen=True)
class Outcome:
    id: str
    status: str
    replay: bool  # the id existed already: nothing changed


async def lock_member(session: AsyncSession, member: str) -> bool:
    """Take the member's row lock (a no-op write); returns the merchant flag."""
    result = await tables.execute(
        session,
        update(members).where(members.c.member == member).values(merchant=members.c.merchant),
    )
    if not result.rowcount:
        raise UnknownMember(f"unknown member {member!r}")
    stmt = select(members.c.merchant).where(members.c.member == member)
    return bool((await session.execute(stmt)).scalar_one())


async def available(session: AsyncSession, member: str, asset: str) -> int:
    balance = await tables.balance_of(session, member_account(member), asset)
    return balance - await tables.held_amount(session, member, asset)


async def _request_row(session: AsyncSession, request_id: str) -> Row[Any] | None:
    stmt = select(requests).where(requests.c.request_id == request_id)
    return (await session.execute(stmt)).first()


async def _hold_row(session: AsyncSession, hold_id: str) -> Row[Any] | None:
    return (await session.execute(select(holds).where(holds.c.hold_id == hold_id))).first()


async def _insert_hold(
    session: AsyncSession, hold_id: str, member: str, asset: str, amount: int
) -> None:
    await session.execute(
        insert(holds).values(
            hold_id=hold_id, member=member, asset=asset, amount=amount, status="held"
        )
    )


async def place_hold(uow: UnitOfWork, cmd: PlaceHold) -> Outcome:
    session = uow.session
    await lock_member(session, cmd.member)
    if await _request_row(session, cmd.hold_id) is not None:
        raise Conflict(f"id {cmd.hold_id!r} belongs to a wallet request")
    existing = await _hold_row(session, cmd.hold_id)
    if existing is not None:
        if (existing.member, existing.asset, existing.amount) != (
            cmd.member,
            cmd.asset,
            cmd.amount,
        ):
            raise Conflict(f"hold {cmd.hold_id!r} already exists with a different body")
        if existing.status == "held":
            return Outcome(cmd.hold_id, "held", replay=True)  # a retried request
        if existing.status == "captured":
            raise Conflict(f"hold {cmd.hold_id!r} was already captured")
    # new, or released before (an unpaid order deleted, then created again): hold anew
    free = await available(session, cmd.member, cmd.asset)
    if free < cmd.amount:
        raise Conflict(_fewer(cmd.member, cmd.asset, cmd.amount, free))
    if existing is None:
        await _insert_hold(session, cmd.hold_id, cmd.member, cmd.asset, cmd.amount)
    else:
        await session.execute(
            update(holds)
            .where(holds.c.hold_id == cmd.hold_id, holds.c.status == "released")
            .values(status="held")
        )
    await uow.commit()
    return Outcome(cmd.hold_id, "held", replay=False)


async def release_hold(uow: UnitOfWork, hold_id: str) -> Outcome:
    session = uow.session
    owned = exists(select(requests.c.request_id).where(requests.c.request_id == hold_id))
    result = await tables.execute(
        session,
        update(holds)
        .where(holds.c.hold_id == hold_id, holds.c.status == "held", ~owned)
        .values(status="released"),
    )
    if result.rowcount:
        await uow.commit()
        return Outcome(hold_id, "released", replay=False)
    row = await _hold_row(session, hold_id)
    if row is None:
        raise NotFound(f"unknown hold {hold_id!r}")
    if await _request_row(session, hold_id) is not None:
        raise Conflict(
            f"hold {hold_id!r} belongs to wallet request {hold_id!r}: "
            "it is released when the request completes"
        )
    if row.status == "released":
        return Outcome(hold_id, "released", replay=True)
    raise Conflict(f"hold {hold_id!r} is {row.status}, not held")


def _replay(row: Row[Any], member: str, kind: str, submitted: dict[str, Any]) -> Outcome:
    stored = json.loads(row.body).get("request")
    if (row.member, row.kind, stored) != (member, kind, submitted):
        raise Conflict(f"request {row.request_id!r} already exists with a different body")
    return Outcome(row.request_id, row.status, replay=True)


async def _new_request(
    uow: UnitOfWork,
    request_id: str,
    member: str,
    kind: str,
    submitted: dict[str, Any],
    hold: tuple[str, int] | None,
    event: WalletRequest,
) -> Outcome:
    session = uow.session
    # the day row stays locked until this commits: the day cannot close in between
    day = await business_day.stamp(session, business_days)
    if hold is not None:
        asset, amount = hold
        await _insert_hold(session, request_id, member, asset, amount)
    body = {
        "request": submitted,
        "hold": None if hold is None else {"asset": hold[0], "amount": format_minor(*hold)},
    }
    await session.execute(
        insert(requests).values(
            request_id=request_id,
            member=member,
            kind=kind,
            body=to_json(body),
            status="pending",
            reason=None,
            result=None,
            created_at=datetime.now(UTC),
            day=day,
        )
    )
    uow.emit(WALLET_REQUESTS, event.model_copy(update={"day": day}))
    await uow.commit()
    return Outcome(request_id, "pending", replay=False)


async def _check_new_id(session: AsyncSession, request_id: str) -> None:
    if await _hold_row(session, request_id) is not None:
        raise Conflict(f"id {request_id!r} is already used by a hold")


async def submit_trade(uow: UnitOfWork, cmd: SubmitTrade) -> Outcome:
    """Validate a sell / exchange / merchant exchange, hold its value, send it to dividends."""
    session = uow.session
    merchant = await lock_member(session, cmd.member)
    submitted: dict[str, Any] = {
        "points": (
            None
            if cmd.kind == "merchant_exchange"
            else "all"
            if cmd.points is None
            else format_units(cmd.points)
        ),
        "stable": None if cmd.stable is None else format_cents(cmd.stable),
    }
    existing = await _request_row(session, cmd.request_id)
    if existing is not None:
        return _replay(existing, cmd.member, cmd.kind, submitted)
    await _check_new_id(session, cmd.request_id)
    asset: Asset
    if cmd.kind == "merchant_exchange":
        if not merchant:
            raise Conflict(f"member {cmd.member!r} is not a merchant")
        if cmd.stable is None:
            raise Invalid("a merchant exchange names its stable amount")
        asset, amount = "stable", cmd.stable
        free = await available(session, cmd.member, asset)
    else:
        asset = "equity"
        free = await available(session, cmd.member, asset)
        if cmd.points is None:
            if free <= 0:
                raise Conflict(f"member {cmd.member!r} holds no points to {cmd.kind}")
            amount = free
        else:
            amount = cmd.points
    if free < amount:
        raise Conflict(_fewer(cmd.member, asset, amount, free))
    event = WalletRequest(
        request_id=cmd.request_id,
        member=cmd.member,
        kind=cmd.kind,
        points=None if asset == "stable" else units_to_decimal(amount),
        stable=cents_to_decimal(amount) if asset == "stable" else None,
    )
    return await _new_request(
        uow, cmd.request_id, cmd.member, cmd.kind, submitted, (asset, amount), event
    )


async def submit_adjustment(uow: UnitOfWork, cmd: SubmitAdjustment) -> Outcome:
    """An admin adjustment: a removal is held until dividends applied it."""
    session = uow.session
    await lock_member(session, cmd.member)
    submitted: dict[str, Any] = {
        "asset": cmd.asset,
        "amount": format_minor(cmd.asset, cmd.amount),
        "reason": cmd.reason,
        "operator": cmd.operator,
    }
    existing = await _request_row(session, cmd.request_id)
    if existing is not None:
        return _replay(existing, cmd.member, "adjust", submitted)
    await _check_new_id(session, cmd.request_id)
    hold: tuple[str, int] | None = None
    if cmd.amount < 0:
        free = await available(session, cmd.member, cmd.asset)
        if free + cmd.amount < 0:
            raise Conflict(
                f"member {cmd.member!r} holds {format_minor(cmd.asset, free)} "
                f"{LABELS[cmd.asset]} available; removing "
                f"{format_minor(cmd.asset, -cmd.amount)} would go below zero"
            )
        hold = (cmd.asset, -cmd.amount)
    event = WalletRequest(
        request_id=cmd.request_id,
        member=cmd.member,
        kind="adjust",
        asset=cmd.asset,
        amount=minor_to_decimal(cmd.asset, cmd.amount),
        reason=cmd.reason,
        operator=cmd.operator,
    )
    return await _new_request(uow, cmd.request_id, cmd.member, "adjust", submitted, hold, event)


# ----------------------------------------------------------------- views (read side)


# an engine fact's integer fields, as the minor units they count in
_FACT_UNITS = {"units": "equity", "payout": "cny", "stable": "stable", "quota_used": "cny"}
_FACT_NAMES = {"units": "points", "payout": "cny", "stable": "stable", "quota_used": "quota_used"}


def _outcome(facts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What a done request moved, from the engine's facts, as decimal strings: points
    sold or exchanged, cny paid out, stable points, quota used; an adjustment's amount."""
    moved: dict[str, Any] = {}
    for fact in facts:
        if fact.get("type") == "BalanceAdjusted":
            asset = str(fact["asset"])
            moved["amount"] = format_minor(asset, int(fact["amount"]))
            continue
        for field, asset in _FACT_UNITS.items():
            if isinstance(fact.get(field), int):
                moved[_FACT_NAMES[field]] = format_minor(asset, int(fact[field]))
        if "forced" in fact:
            moved["forced"] = bool(fact["forced"])
    return moved or None


def _posting_view(line: dict[str, Any]) -> dict[str, Any]:
    amount = Decimal(str(line["amount"]))
    asset = str(line["asset"])
    return {
        "kind": line["kind"],
        "asset": asset,
        "debit": line["debit"],
        "credit": line["credit"],
        "amount": format_minor(asset, to_minor(asset, amount)),
    }


async def request_view(session: AsyncSession, request_id: str) -> dict[str, Any]:
    """A request as its client sent it (the fields of its body), its status, and once
    done what it moved; ``refusal`` says why a refused one was refused."""
    row = await _request_row(session, request_id)
    if row is None:
        raise NotFound(f"unknown request {request_id!r}")
    body = json.loads(row.body)
    asked = body.get("request") or {}
    result = None if row.result is None else json.loads(row.result)
    hold = body.get("hold")
    return {
        "request_id": row.request_id,
        "member": row.member,
        "kind": row.kind,
        "status": row.status,
        "day": row.day,
        "created_at": iso_utc(row.created_at),
        "decided_at": iso_utc(row.decided_at),
        "points": asked.get("points"),
        "stable": asked.get("stable"),
        "asset": asked.get("asset"),
        "amount": asked.get("amount"),
        "reason": asked.get("reason"),
        "operator": asked.get("operator"),
        "held": hold,
        "refusal": row.reason,
        "outcome": None if result is None else _outcome(result.get("facts", [])),
        "postings": [] if result is None else [_posting_view(p) for p in result["postings"]],
    }


async def _require_member(session: AsyncSession, member: str) -> None:
    stmt = select(members.c.member).where(members.c.member == member)
    if (await session.execute(stmt)).first() is None:
        raise UnknownMember(f"unknown member {member!r}")


async def member_balances(session: AsyncSession, member: str) -> dict[str, Any]:
    await _require_member(session, member)
    stmt = select(balances.c.asset, balances.c.balance).where(
        balances.c.account == member_account(member)
    )
    amounts = {asset: 0 for asset in tables.ASSETS}
    amounts.update({r.asset: int(r.balance) for r in await session.execute(stmt)})
    held_stmt = (
        select(holds.c.asset, func.sum(holds.c.amount).label("amount"))
        .where(holds.c.member == member, holds.c.status == "held")
        .group_by(holds.c.asset)
    )
    held = {asset: 0 for asset in tables.ASSETS}
    held.update({r.asset: int(r.amount) for r in await session.execute(held_stmt)})
    return {
        "member": member,
        **{asset: format_minor(asset, amounts[asset]) for asset in tables.ASSETS},
        "held": {asset: format_minor(asset, held[asset]) for asset in tables.ASSETS},
        "available": {
            asset: format_minor(asset, amounts[asset] - held[asset]) for asset in tables.ASSETS
        },
    }


async def balance_page(session: AsyncSession, offset: int, limit: int) -> dict[str, Any]:
    """A page of members in registration order with their balances."""
    total = int((await session.execute(select(func.count()).select_from(members))).scalar_one())
    names = list(
        (
            await session.execute(
                select(members.c.member).order_by(members.c.seq).offset(offset).limit(limit)
            )
        ).scalars()
    )
    found: dict[tuple[str, str], int] = {}
    if names:
        stmt = select(balances.c.account, balances.c.asset, balances.c.balance).where(
            among(session, balances.c.account, [member_account(m) for m in names])
        )
        found = {(r.account, r.asset): int(r.balance) for r in await session.execute(stmt)}
    rows = [
        {
            "member": m,
            **{
                asset: format_minor(asset, found.get((member_account(m), asset), 0))
                for asset in tables.ASSETS
            },
        }
        for m in names
    ]
    return {"items": rows, "total": total, "offset": offset, "limit": limit}


async def platform_accounts(session: AsyncSession) -> dict[str, dict[str, str]]:
    stmt = (
        select(balances.c.account, balances.c.asset, balances.c.balance)
        .where(~balances.c.account.startswith("m:", autoescape=True))
        .order_by(balances.c.asset, balances.c.account)
    )
    result: dict[str, dict[str, str]] = {asset: {} for asset in tables.ASSETS}
    for r in await session.execute(stmt):
        result.setdefault(r.asset, {})[r.account] = format_minor(r.asset, int(r.balance))
    return result


async def statement(session: AsyncSession, member: str, offset: int, limit: int) -> dict[str, Any]:
    """A page of the member's journal entries, newest first."""
    await _require_member(session, member)
    account = member_account(member)
    mine = or_(journal.c.debit == account, journal.c.credit == account)
    total = int((await session.execute(select(func.count()).where(mine))).scalar_one())
    stmt = select(journal).where(mine).order_by(journal.c.id.desc()).offset(offset).limit(limit)
    entries = []
    for r in await session.execute(stmt):
        amount = int(r.amount)
        change = (amount if r.credit == account else 0) - (amount if r.debit == account else 0)
        entries.append(
            {
                "id": int(r.id),
                "event_id": r.event_id,
                "asset": r.asset,
                "debit": r.debit,
                "credit": r.credit,
                "amount": format_minor(r.asset, amount),
                "change": format_minor(r.asset, change),
                "kind": r.kind,
                "ref": r.ref,
                "day": r.day,
                "booked_at": iso_utc(r.booked_at),
            }
        )
    return {"items": entries, "total": total, "offset": offset, "limit": limit}


async def release_lines_page(
    session: AsyncSession, member: str, offset: int, limit: int
) -> dict[str, Any]:
    """A page of the member's daily release lines, newest day first (an index range
    scan of the member's key)."""
    await _require_member(session, member)
    mine = release_lines.c.member == member
    total = int((await session.execute(select(func.count()).where(mine))).scalar_one())
    stmt = (
        select(release_lines)
        .where(mine)
        .order_by(release_lines.c.day.desc(), release_lines.c.asset)
        .offset(offset)
        .limit(limit)
    )
    lines = [{"day": int(r.day), **_release_line(r)} for r in await session.execute(stmt)]
    return {"items": lines, "total": total, "offset": offset, "limit": limit}


async def day_release_lines_page(
    session: AsyncSession, day: int, offset: int, limit: int
) -> dict[str, Any]:
    """A page of one business day's release lines for all members, by member then asset
    (an index range scan of ``release_lines_day``); a day without releases is an empty
    page."""
    of_day = release_lines.c.day == day
    total = int((await session.execute(select(func.count()).where(of_day))).scalar_one())
    stmt = (
        select(release_lines)
        .where(of_day)
        .order_by(release_lines.c.member, release_lines.c.asset)
        .offset(offset)
        .limit(limit)
    )
    lines = [{"member": r.member, **_release_line(r)} for r in await session.execute(stmt)]
    return {"items": lines, "total": total, "offset": offset, "limit": limit}


def _release_line(r: Row[Any]) -> dict[str, Any]:
    """A release line's asset, amounts per kind and total as decimal strings, and
    when it was booked."""
    amounts = json.loads(r.amounts)
    return {
        "asset": r.asset,
        "amounts": {k: format_minor(r.asset, int(v)) for k, v in amounts.items()},
        "total": format_minor(r.asset, int(r.total)),
        "booked_at": iso_utc(r.booked_at),
    }
