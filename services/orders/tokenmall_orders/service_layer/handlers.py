"""Commands of the orders service and their handlers; read-side queries at the end.

Command handlers take ``(command, uow)`` (plus the wallet when they need it), run
one local transaction and end in ``uow.commit()``: the order row, the outbox rows
of the events it raised and the stored idempotent response commit together.
Amounts are integer cents inside; ``Decimal`` only arrives in commands.

A command that carries an :class:`Idempotency` key answers a repeat of the same
request with the first (successful) response and changes nothing; the same key
on a different request is refused.  Refused requests are not stored: they changed
nothing, so repeating one runs it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple, cast
from uuid import uuid4

from sqlalchemy import CursorResult, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from tokenmall import business_day, contracts
from tokenmall.api_style import iso_utc
from tokenmall.contracts import (
    AppliedInput,
    Event,
    InputApplied,
    InputsApplied,
    MemberRegistered,
    MembersRegistered,
    OrderPaid,
    OrderRefunded,
)
from tokenmall.db import among, insert_ignoring_conflicts
from tokenmall.engine.plan import MAX_CASH_CENTS
from tokenmall.messaging import Missing, UnitOfWork
from tokenmall.money import AmountError, cents_to_decimal, format_cents, to_cents
from tokenmall.registry import MemberRegistry, learn_member
from tokenmall.servicekit import Rejected
from tokenmall_orders.adapters.tables import business_days, idempotency, members, orders
from tokenmall_orders.adapters.wallet import (
    InsufficientFunds,
    Wallet,
    WalletError,
    WalletUnavailable,
)

# created → pending (paid by the mall; OrderPaid published) → paid | refused (the rules'
# verdict, InputApplied from dividends); paid → refunded
CREATED, PENDING, PAID, REFUSED, REFUNDED = "created", "pending", "paid", "refused", "refunded"

log = logging.getLogger(__name__)


# --- errors ---------------------------------------------------------------------------


class OrderError(Exception):
    """A request the rules refuse; nothing was changed."""


class NotFound(OrderError):
    pass


class UnknownMember(NotFound):
    pass


class Conflict(OrderError):
    pass


class Invalid(OrderError):
    pass


# --- commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class Idempotency:
    key: str
    method: str
    path: str


@dataclass(frozen=True)
class CreateOrder:
    member: str
    amount: Decimal
    stable: Decimal = Decimal(0)
    order_id: str | None = None  # None: a uuid4
    idempotency: Idempotency | None = None


@dataclass(frozen=True)
class PayOrder:
    order_id: str
    idempotency: Idempotency | None = None


@dataclass(frozen=True)
class RefundOrder:
    order_id: str
    idempotency: Idempotency | None = None


@dataclass(frozen=True)
class DeleteOrder:
    order_id: str


@dataclass(frozen=True)
class Reply:
    """What a command answered: a status code and a JSON body (replayed as is)."""

    status_code: int
    body: dict[str, Any]
    replayed: bool = False  # the stored answer to an earlier request with the same key
    emitted: bool = False  # the transaction wrote events to the outbox


@dataclass(frozen=True)
class Order:
    order_id: str
    member: str
    amount_cents: int
    stable_cents: int
    status: str
    reason: str | None = None  # why the rules refused it
    day: int | None = None  # the business day it counts in (once paid)
    created_at: datetime | None = None
    paid_at: datetime | None = None
    decided_at: datetime | None = None  # the rules' verdict arrived
    refunded_at: datetime | None = None

    def view(self, status: str | None = None) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "member": self.member,
            "amount": format_cents(self.amount_cents),
            "stable": format_cents(self.stable_cents),
            "status": status or self.status,
            "reason": self.reason,
            "day": self.day,
            "created_at": iso_utc(self.created_at),
            "paid_at": iso_utc(self.paid_at),
            "decided_at": iso_utc(self.decided_at),
            "refunded_at": iso_utc(self.refunded_at),
        }


# --- command handlers -----------------------------------------------------------------


async def create_order(
    cmd: CreateOrder, uow: UnitOfWork, registry: MemberRegistry | None = None
) -> Reply:
    """Create an order.  A member this service has not heard of yet (its registration
    event is on its way) is looked up in the registry first: read-your-writes for the
    mall, with the result the event would have given."""
    try:
        return await _create_order(cmd, uow)
    except UnknownMember:
        if registry is None or not await learn_member(uow, registry, cmd.member, member_registered):
            raise
    return await _create_order(cmd, uow)


def _checked_amounts(amount_: Decimal, stable_: Decimal) -> tuple[int, int]:
    """An order's amount and stable part in cents, or Invalid naming the field."""
    amount = _cents(amount_, "amount")
    stable = _cents(stable_, "stable")
    if amount <= 0:
        raise Invalid(f"amount must be greater than 0, got {str(amount_)!r}")
    if amount > MAX_CASH_CENTS:
        raise Invalid(
            f"amount must be at most {format_cents(MAX_CASH_CENTS)}, got {str(amount_)!r}"
        )
    if stable < 0:
        raise Invalid(f"stable must not be negative, got {str(stable_)!r}")
    if stable > amount:
        raise Invalid(
            f"stable ({format_cents(stable)}) must not exceed the amount ({format_cents(amount)})"
        )
    return amount, stable


async def _create_order(cmd: CreateOrder, uow: UnitOfWork) -> Reply:
    amount, stable = _checked_amounts(cmd.amount, cmd.stable)
    fingerprint = _fingerprint("create", cmd.member, amount, stable, cmd.order_id)
    order = Order(
        cmd.order_id or str(uuid4()), cmd.member, amount, stable, CREATED, created_at=_now()
    )
    async with uow:
        await uow.begin_write()
        if (replay := await _replay(uow, cmd.idempotency, fingerprint)) is not None:
            return replay
        known = await uow.session.execute(
            select(members.c.member).where(members.c.member == cmd.member)
        )
        if known.first() is None:
            raise UnknownMember(f"member {cmd.member!r} is not registered")
        if await _load(uow, order.order_id) is not None:
            # a concurrent request with the same key may have committed between the
            # replay check above and this read (PostgreSQL reads what is committed when
            # each statement starts): its stored answer is visible now, with its order
            if (replay := await _replay(uow, cmd.idempotency, fingerprint)) is not None:
                return replay
            raise Conflict(f"order {order.order_id!r} already exists")
        reply = Reply(201, order.view())
        try:
            await uow.session.execute(
                insert(orders).values(
                    order_id=order.order_id,
                    member=order.member,
                    amount_cents=amount,
                    stable_cents=stable,
                    status=CREATED,
                    created_at=order.created_at,
                )
            )
            await _remember(uow, cmd.idempotency, fingerprint, reply)
            await uow.commit()
            return reply
        except IntegrityError:
            pass  # a concurrent request inserted the same order id or key first
    async with uow:
        if (replay := await _replay(uow, cmd.idempotency, fingerprint)) is not None:
            return replay
    raise Conflict(f"order {order.order_id!r} already exists")


async def pay_order(cmd: PayOrder, uow: UnitOfWork, wallet: Wallet) -> Reply:
    """Hold the stable part in the wallet (if any), then mark pending and emit OrderPaid;
    the order is ``paid`` once the rules accepted it (:func:`order_verdict`).

    The wallet call happens outside any database transaction; the hold id is the
    order id, so a retried pay asks the wallet for the same hold again.  An order
    without a stable part is read and marked in one transaction.
    """
    fingerprint = _fingerprint("pay", cmd.order_id)
    async with uow:
        await uow.begin_write()
        if (replay := await _replay(uow, cmd.idempotency, fingerprint)) is not None:
            return replay
        order = await _existing(uow, cmd.order_id)
        # a concurrent request with the same key may have committed between the replay
        # check and this read (PostgreSQL reads what is committed when each statement
        # starts): its stored answer is visible now, with the order's state
        if order.status != CREATED and (replay := await _replay(uow, cmd.idempotency, fingerprint)):
            return replay
        _check_payable(order)
        if order.stable_cents == 0:  # nothing to hold outside: marked pending right here
            marked = await _mark_pending(cmd, uow, order, fingerprint)
            if isinstance(marked, Reply):
                return marked
    if order.stable_cents > 0:
        try:
            await wallet.hold(
                hold_id=order.order_id,
                member=order.member,
                asset="stable",
                amount_cents=order.stable_cents,
            )
        except InsufficientFunds:
            raise Conflict(
                f"member {order.member!r} holds fewer stable points than "
                f"{format_cents(order.stable_cents)}"
            ) from None
        async with uow:
            await uow.begin_write()
            if (replay := await _replay(uow, cmd.idempotency, fingerprint)) is not None:
                return replay
            marked = await _mark_pending(cmd, uow, order, fingerprint)
            if isinstance(marked, Reply):
                return marked
    assert isinstance(marked, _NotMarked)  # a reply returned above
    current = marked.current
    if current is None or not _same_order(current, order):
        # deleted (or deleted and created anew) while this pay held its stable part: the
        # delete released the hold before this pay placed it, so this pay releases it —
        # unless the order now under this id holds the very same (one member, one amount)
        if current is None or (current.member, current.stable_cents) != (
            order.member,
            order.stable_cents,
        ):
            await _release_hold(wallet, order)
        if current is None:
            raise NotFound(f"order {cmd.order_id!r} not found")
        raise Conflict(f"order {cmd.order_id!r} changed while being paid; try again")
    async with uow:
        if (replay := await _replay(uow, cmd.idempotency, fingerprint)) is not None:
            return replay
        _check_payable(await _existing(uow, cmd.order_id))
    raise Conflict(f"order {cmd.order_id!r} changed while being paid; try again")


@dataclasses.dataclass
class _NotMarked:
    """The order was not ``created`` any more when it was to be marked: what is there."""

    current: Order | None


async def _mark_pending(
    cmd: PayOrder, uow: UnitOfWork, order: Order, fingerprint: str
) -> Reply | _NotMarked:
    """In ``uow``'s write transaction: stamp the business day, move ``order`` from
    created to pending, emit OrderPaid and commit — the reply; or what the order is now
    when another request changed it first (nothing committed)."""
    # the day row stays locked until this commits: the day cannot close in between
    day = await business_day.stamp(uow.session, business_days)
    paid_at = _now()
    if not await _transition(uow, order, CREATED, PENDING, paid_at=paid_at, day=day):
        if (replay := await _replay(uow, cmd.idempotency, fingerprint)) is not None:
            return replay
        current = await _load(uow, cmd.order_id)
        if current is not None and _same_order(current, order):
            _check_payable(current)  # paid by a concurrent request: its hold is ours too
            raise Conflict(f"order {cmd.order_id!r} changed while being paid; try again")
        return _NotMarked(current)
    # accepted for payment; the rules' verdict follows (poll GET /v1/orders/{id})
    paid = dataclasses.replace(order, day=day, paid_at=paid_at)
    reply = Reply(202, paid.view(PENDING), emitted=True)
    uow.emit(
        contracts.ORDERS,
        OrderPaid(
            order_id=order.order_id,
            member=order.member,
            causation_id=order.order_id,
            amount=cents_to_decimal(order.amount_cents),
            stable=cents_to_decimal(order.stable_cents),
            day=day,
        ),
    )
    try:
        await _remember(uow, cmd.idempotency, fingerprint, reply)
        await uow.commit()
        return reply
    except IntegrityError:
        return _NotMarked(order)  # the same key, committed by a concurrent request


async def refund_order(cmd: RefundOrder, uow: UnitOfWork) -> Reply:
    """Refund a paid order: mark refunded and emit OrderRefunded (consumers reverse it)."""
    fingerprint = _fingerprint("refund", cmd.order_id)
    async with uow:
        await uow.begin_write()
        if (replay := await _replay(uow, cmd.idempotency, fingerprint)) is not None:
            return replay
        order = await _existing(uow, cmd.order_id)
        day = await business_day.stamp(uow.session, business_days)
        refunded_at = _now()
        if not await _transition(uow, order, PAID, REFUNDED, refunded_at=refunded_at):
            if (replay := await _replay(uow, cmd.idempotency, fingerprint)) is not None:
                return replay
            _check_refundable(await _existing(uow, cmd.order_id))
            raise Conflict(f"order {cmd.order_id!r} changed while being refunded; try again")
        refunded = dataclasses.replace(order, refunded_at=refunded_at)
        reply = Reply(200, refunded.view(REFUNDED), emitted=True)
        uow.emit(
            contracts.ORDERS,
            OrderRefunded(
                order_id=order.order_id,
                member=order.member,
                causation_id=order.order_id,
                amount=cents_to_decimal(order.amount_cents),
                day=day,
            ),
        )
        try:
            await _remember(uow, cmd.idempotency, fingerprint, reply)
            await uow.commit()
            return reply
        except IntegrityError:
            pass
    async with uow:
        if (replay := await _replay(uow, cmd.idempotency, fingerprint)) is not None:
            return replay
        _check_refundable(await _existing(uow, cmd.order_id))
    raise Conflict(f"order {cmd.order_id!r} changed while being refunded; try again")


async def delete_order(cmd: DeleteOrder, uow: UnitOfWork, wallet: Wallet) -> None:
    """Delete an order that was never paid (an abandoned one): its id is free again.

    Nothing was published about an unpaid order, so nothing is emitted.  A paid or
    refunded order is never deleted.  A stable part may have been held by a pay that
    failed afterwards: the hold is released once the order is gone (never before, so
    a concurrent pay that wins keeps its hold); a failed release is only logged.
    """
    async with uow:
        await uow.begin_write()
        order = await _existing(uow, cmd.order_id)
        result = await uow.session.execute(
            delete(orders).where(
                orders.c.order_id == order.order_id,
                orders.c.status == CREATED,
                orders.c.stable_cents == order.stable_cents,
            )
        )
        if cast(CursorResult[Any], result).rowcount != 1:
            order = await _existing(uow, cmd.order_id)
            raise Conflict(f"order {order.order_id!r} is {order.status}: it cannot be deleted")
        await uow.commit()
    await _release_hold(wallet, order)


async def _release_hold(wallet: Wallet, order: Order) -> None:
    """Release the stable hold of an order that is gone; a failed release is only logged."""
    if order.stable_cents > 0:
        try:
            await wallet.release(order.order_id)
        except WalletError as exc:
            log.warning("order %r deleted, but its hold was not released: %s", order.order_id, exc)


# --- paid orders in bulk (POST /v1/orders:batch) -------------------------------------

MAX_BATCH = 1000  # paid orders per call
HOLDS_AT_ONCE = 16  # wallet calls in flight for the stable parts of one batch
IN_LIST_CHUNK = 500  # ids per IN (...) list on SQLite (PostgreSQL takes one array)


@dataclass(frozen=True)
class PaidOrderItem:
    """An order the mall's payment system has paid: created and paid in one step."""

    order_id: str
    member: str
    amount: Decimal
    stable: Decimal = Decimal(0)


@dataclass(frozen=True)
class PaidItemResult:
    """accepted: created (or found created) and paid now, pending the rules' verdict;
    exists: paid before with the same member, amount and stable part (a batch sent again
    is harmless; ``order`` is how it stands); refused: nothing changed (``error``, with
    the status code and field a single create + pay would have answered)."""

    order_id: str
    status: str  # accepted | exists | refused | skipped (atomic: another was refused)
    order: dict[str, Any] | None = None
    error: str | None = None
    code: int | None = None
    field: str | None = None


def _refused(order_id: str, code: int, error: str, field: str | None = None) -> PaidItemResult:
    return PaidItemResult(order_id, "refused", error=error, code=code, field=field)


async def pay_orders(
    items: list[PaidOrderItem],
    uow: UnitOfWork,
    wallet: Wallet,
    registry: MemberRegistry | None = None,
    atomic: bool = False,
) -> tuple[list[PaidItemResult], bool]:
    """Create and pay up to MAX_BATCH orders: what ``create`` + ``pay`` does to each, with
    one read and one write transaction for all (one insert, one ``OrdersPaid``).  Per
    order id idempotent; per item refused (invalid amounts, unknown member, an order id
    taken by another order, too few stable points) without holding up the others —
    or, ``atomic``, the whole batch (none paid, the holds it placed released).
    Returns the results in the items' order and whether anything was paid."""
    results: dict[int, PaidItemResult] = {}
    wanted: dict[str, tuple[int, Order]] = {}
    for i, item in enumerate(items):
        try:
            amount, stable = _checked_amounts(item.amount, item.stable)
        except Invalid as exc:
            field = str(exc).split(" ", 1)[0]
            results[i] = _refused(item.order_id, 422, str(exc), field)
            continue
        if item.order_id in wanted:
            results[i] = _refused(
                item.order_id,
                422,
                f"order {item.order_id!r} appears twice in the batch",
                "order_id",
            )
            continue
        wanted[item.order_id] = (i, Order(item.order_id, item.member, amount, stable, CREATED))
    async with uow:
        existing = await _load_many(uow, list(wanted))
        known = await _known_members(uow, {order.member for _, order in wanted.values()})
    unknown = {order.member for _, order in wanted.values()} - known
    if unknown and registry is not None:
        known |= await _learn_members(uow, registry, unknown)
    to_pay: list[tuple[int, Order]] = []
    for order_id, (i, order) in wanted.items():
        current = existing.get(order_id)
        if current is None and order.member not in known:
            results[i] = _refused(
                order_id, 404, f"member {order.member!r} is not registered", "member"
            )
        elif current is not None and not _same_order(current, order):
            results[i] = _refused(
                order_id,
                409,
                f"order {order_id!r} already exists with another member, amount or stable part",
                "order_id",
            )
        elif current is not None and current.status != CREATED:
            results[i] = PaidItemResult(order_id, "exists", order=current.view())
        else:
            to_pay.append((i, order))
    if atomic and results:
        return [results.get(i) or _untouched(item) for i, item in enumerate(items)], False
    held = await _hold_stable_parts(wallet, [o for _, o in to_pay], results, wanted)
    if atomic and results:
        for _, order in to_pay:
            if order.order_id in held:
                await _release_hold(wallet, order)
        return [results.get(i) or _untouched(item) for i, item in enumerate(items)], False
    paying = [(i, order) for i, order in to_pay if i not in results]
    paid = await _mark_paid(uow, [order for _, order in paying])
    for i, order in paying:
        if order.order_id in paid:
            view = paid[order.order_id].view(PENDING)
            results[i] = PaidItemResult(order.order_id, "accepted", order=view)
    lost = [(i, order) for i, order in paying if order.order_id not in paid]
    if lost:  # changed by a concurrent request between the read and the write
        async with uow:
            now = await _load_many(uow, [order.order_id for _, order in lost])
        for i, order in lost:
            current = now.get(order.order_id)
            if current is not None and _same_order(current, order) and current.status != CREATED:
                results[i] = PaidItemResult(order.order_id, "exists", order=current.view())
                continue
            if order.order_id in held and (
                current is None
                or (current.member, current.stable_cents) != (order.member, order.stable_cents)
            ):
                await _release_hold(wallet, order)  # as pay_order does (see there)
            results[i] = _refused(
                order.order_id, 409, f"order {order.order_id!r} changed while being paid; try again"
            )
    return [results[i] for i in range(len(items))], bool(paid)


def _untouched(item: PaidOrderItem) -> PaidItemResult:
    """An item of an atomic batch that another item's refusal left alone."""
    return PaidItemResult(item.order_id, "skipped")


async def _hold_stable_parts(
    wallet: Wallet,
    orders_: list[Order],
    results: dict[int, PaidItemResult],
    wanted: dict[str, tuple[int, Order]],
) -> set[str]:
    """Hold the stable parts (a few wallet calls at a time, outside any transaction; a
    member's in the batch's order); an order whose hold the wallet refuses is refused.
    Returns the order ids held."""
    gate = asyncio.Semaphore(HOLDS_AT_ONCE)
    held: set[str] = set()

    async def hold(order: Order) -> None:
        index = wanted[order.order_id][0]
        async with gate:
            try:
                await wallet.hold(
                    hold_id=order.order_id,
                    member=order.member,
                    asset="stable",
                    amount_cents=order.stable_cents,
                )
            except InsufficientFunds:
                results[index] = _refused(
                    order.order_id,
                    409,
                    f"member {order.member!r} holds fewer stable points than "
                    f"{format_cents(order.stable_cents)}",
                    "stable",
                )
                return
            except WalletUnavailable as exc:
                results[index] = _refused(
                    order.order_id, 503, f"the wallet is unavailable, try again: {exc}"
                )
                return
            except WalletError as exc:
                results[index] = _refused(order.order_id, 502, str(exc))
                return
        held.add(order.order_id)

    async def hold_in_order(of_member: list[Order]) -> None:
        for order in of_member:  # a member's in the batch's order, as one by one
            await hold(order)

    by_member: dict[str, list[Order]] = {}
    for order in orders_:
        if order.stable_cents > 0:
            by_member.setdefault(order.member, []).append(order)
    await asyncio.gather(*(hold_in_order(of_member) for of_member in by_member.values()))
    return held


async def _mark_paid(uow: UnitOfWork, orders_: list[Order]) -> dict[str, Order]:
    """One write transaction: new orders inserted as pending, created ones moved to
    pending, one OrdersPaid for them (contracts.order_batches).  Returns the orders paid,
    as they are now, by id (one another request created or paid meanwhile is left out)."""
    if not orders_:
        return {}
    paid: set[str] = set()
    async with uow:
        await uow.begin_write()
        # the day row stays locked until this commits: the day cannot close in between
        day = await business_day.stamp(uow.session, business_days)
        now = _now()
        current = await _load_many(uow, [order.order_id for order in orders_])
        new = [order for order in orders_ if order.order_id not in current]
        rows = [
            {
                "order_id": order.order_id,
                "member": order.member,
                "amount_cents": order.amount_cents,
                "stable_cents": order.stable_cents,
                "status": PENDING,
                "created_at": now,
                "paid_at": now,
                "day": day,
            }
            for order in new
        ]
        paid.update(
            await insert_ignoring_conflicts(uow.session, orders, rows, returning="order_id")
        )
        for order in orders_:
            found = current.get(order.order_id)
            if (
                found is not None
                and found.status == CREATED
                and _same_order(found, order)
                and await _transition(uow, order, CREATED, PENDING, paid_at=now, day=day)
            ):
                paid.add(order.order_id)
        # one event for the batch (several past contracts.ORDER_BATCH_ORDERS): consumers
        # apply a poll's worth of orders as one message, not a message per order
        paid_in_order = [
            contracts.PaidOrder(
                order_id=order.order_id,
                member=order.member,
                amount=cents_to_decimal(order.amount_cents),
                stable=cents_to_decimal(order.stable_cents),
            )
            for order in orders_
            if order.order_id in paid
        ]
        uow.emit_many(contracts.ORDERS, contracts.order_batches(paid_in_order, day))
        await uow.commit()
    return {
        order.order_id: dataclasses.replace(
            order,
            day=day,
            created_at=found.created_at if (found := current.get(order.order_id)) else now,
            paid_at=now,
        )
        for order in orders_
        if order.order_id in paid
    }


async def _load_many(uow: UnitOfWork, order_ids: list[str]) -> dict[str, Order]:
    found: dict[str, Order] = {}
    for start in range(0, len(order_ids), IN_LIST_CHUNK):
        chunk = order_ids[start : start + IN_LIST_CHUNK]
        rows = await uow.session.execute(
            _select_orders().where(among(uow.session, orders.c.order_id, chunk))
        )
        found.update((row.order_id, Order(*row)) for row in rows)
    return found


async def _known_members(uow: UnitOfWork, wanted: set[str]) -> set[str]:
    names, known = sorted(wanted), set[str]()
    for start in range(0, len(names), IN_LIST_CHUNK):
        chunk = names[start : start + IN_LIST_CHUNK]
        rows = await uow.session.execute(
            select(members.c.member).where(among(uow.session, members.c.member, chunk))
        )
        known.update(rows.scalars())
    return known


async def _learn_members(uow: UnitOfWork, registry: MemberRegistry, wanted: set[str]) -> set[str]:
    """Members whose registration event has not arrived yet, from the registry (one after
    the other: rare, a mall that registered them a moment ago — read-your-writes)."""
    return {m for m in sorted(wanted) if await learn_member(uow, registry, m, member_registered)}


# --- event handlers (tokenmall.members) -----------------------------------------------


async def member_registered(event: Event, uow: UnitOfWork) -> None:
    """Add the member (or a batch's members) to the read model (ignored if present).

    The service kit claims the event in the inbox and commits this transaction
    after the handler returns, so this handler does not commit itself.
    """
    made = member_rows(event)
    if made is None:
        assert isinstance(event, MemberRegistered)
        raise Rejected(f"member id must be 1–200 characters, got {event.member!r}")
    rows, provides = made
    if rows:
        await write_members(uow, rows)
    for dependency in provides:
        uow.provide(dependency)


def member_rows(event: Event) -> tuple[list[dict[str, Any]], list[str]] | None:
    """What :func:`member_registered` writes (Subscription.bulk, servicekit.rows_per_event):
    a row per member, and the dependencies they provide; None: refused."""
    if isinstance(event, MembersRegistered):  # the contract bounds its ids
        names = [registration.member for registration in event.members]
    elif isinstance(event, MemberRegistered):
        if not event.member or len(event.member) > 200:
            return None
        names = [event.member]
    else:
        return [], []  # other events on the members topic do not concern orders
    return [{"member": name} for name in names], [f"member:{name}" for name in names]


async def write_members(uow: UnitOfWork, rows: list[dict[str, Any]]) -> None:
    await insert_ignoring_conflicts(uow.session, members, rows)


async def order_verdict(event: Event, uow: UnitOfWork) -> None:
    """``tokenmall.dividends``: the rules' answer to an order (``InputApplied`` of
    ``order:<id>``, or one of an ``InputsApplied``) makes a pending order paid, or refused
    with the engine's reason (the wallet releases its stable hold on the same event).
    Other events are not ours."""
    await _decide(uow, _verdicts(event) or [])


async def order_verdicts(events: list[Event], uow: UnitOfWork) -> list[Missing | None]:
    """:func:`order_verdict` for many verdicts at once (Subscription.bulk): the accepted
    ones of one business day by one UPDATE, a refused one with its reason; any other
    event (day closing) goes to the handler alone."""
    verdicts: list[_Verdict] = []
    taken = 0
    for event in events:
        found = _verdicts(event)
        if found is None:
            break
        verdicts += found
        taken += 1
    await _decide(uow, verdicts)
    return [None] * taken


class _Verdict(NamedTuple):
    order_id: str
    accepted: bool
    reason: str | None
    day: int | None


def _verdicts(event: Event) -> list[_Verdict] | None:
    """The orders' verdicts an event carries; None: it is no verdict."""
    answers: Sequence[InputApplied | AppliedInput]
    if isinstance(event, InputApplied):
        answers = [event]
    elif isinstance(event, InputsApplied):
        answers = event.inputs
    else:
        return None
    return [
        _Verdict(a.input_id.partition(":")[2], a.accepted, a.reason, event.day)
        for a in answers
        if a.input_id.startswith("order:")
    ]


async def _decide(uow: UnitOfWork, verdicts: list[_Verdict]) -> None:
    decided: dict[str, _Verdict] = {}  # the first verdict of an order decides
    for verdict in verdicts:
        decided.setdefault(verdict.order_id, verdict)
    now = _now()
    accepted: dict[int | None, list[str]] = {}
    for verdict in decided.values():
        if verdict.accepted:
            accepted.setdefault(verdict.day, []).append(verdict.order_id)
            continue
        counted_in = {} if verdict.day is None else {"day": verdict.day}
        await uow.session.execute(
            update(orders)
            .where(orders.c.order_id == verdict.order_id, orders.c.status == PENDING)
            .values(
                status=REFUSED,
                reason=verdict.reason or "refused by the rules",
                decided_at=now,
                **counted_in,
            )
        )
    for day, ids in accepted.items():
        counted_in = {} if day is None else {"day": day}
        for start in range(0, len(ids), IN_LIST_CHUNK):
            await uow.session.execute(
                update(orders)
                .where(among(uow.session, orders.c.order_id, ids[start : start + IN_LIST_CHUNK]))
                .where(orders.c.status == PENDING)
                .values(status=PAID, reason=None, decided_at=now, **counted_in)
            )


# --- queries --------------------------------------------------------------------------


async def get_order(order_id: str, uow: UnitOfWork) -> dict[str, Any]:
    async with uow:
        return (await _existing(uow, order_id)).view()


async def member_orders(
    member: str, uow: UnitOfWork, *, limit: int = 100, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """A page of the member's orders, oldest first, and how many the member has."""
    async with uow:
        known = await uow.session.execute(
            select(members.c.member).where(members.c.member == member)
        )
        if known.first() is None:
            raise NotFound(f"member {member!r} is not registered")
        rows = await uow.session.execute(
            _select_orders()
            .where(orders.c.member == member)
            .order_by(orders.c.created_at, orders.c.order_id)
            .limit(limit)
            .offset(offset)
        )
        views = [Order(*row).view() for row in rows]
        total = (
            await uow.session.execute(
                select(func.count()).select_from(orders).where(orders.c.member == member)
            )
        ).scalar_one()
        return views, int(total)


async def sales(uow: UnitOfWork) -> dict[str, str]:
    """All-time totals (RULES §6): paid = every order ever paid, sales = paid − refunded."""
    async with uow:
        rows = await uow.session.execute(
            select(orders.c.status, func.coalesce(func.sum(orders.c.amount_cents), 0))
            .where(orders.c.status.in_([PAID, REFUNDED]))
            .group_by(orders.c.status)
        )
        totals = {status: int(total) for status, total in rows}
    refunded = totals.get(REFUNDED, 0)
    paid = totals.get(PAID, 0) + refunded
    return {
        "paid": format_cents(paid),
        "refunded": format_cents(refunded),
        "sales": format_cents(paid - refunded),
    }


# --- helpers --------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _cents(value: Decimal, what: str) -> int:
    try:
        return to_cents(str(value), what)
    except AmountError as exc:
        raise Invalid(str(exc)) from None


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _select_orders() -> Any:
    return select(
        orders.c.order_id,
        orders.c.member,
        orders.c.amount_cents,
        orders.c.stable_cents,
        orders.c.status,
        orders.c.reason,
        orders.c.day,
        orders.c.created_at,
        orders.c.paid_at,
        orders.c.decided_at,
        orders.c.refunded_at,
    )


async def _load(uow: UnitOfWork, order_id: str) -> Order | None:
    row = (await uow.session.execute(_select_orders().where(orders.c.order_id == order_id))).first()
    return None if row is None else Order(*row)


async def _existing(uow: UnitOfWork, order_id: str) -> Order:
    order = await _load(uow, order_id)
    if order is None:
        raise NotFound(f"order {order_id!r} not found")
    return order


async def _transition(
    uow: UnitOfWork, order: Order, before: str, after: str, **stamps: datetime | int
) -> bool:
    """Move ``order`` from ``before`` to ``after``; False if it is no longer in ``before``
    or no longer the order that was read (deleted and created again in between)."""
    result = await uow.session.execute(
        update(orders)
        .where(
            orders.c.order_id == order.order_id,
            orders.c.status == before,
            orders.c.member == order.member,
            orders.c.amount_cents == order.amount_cents,
            orders.c.stable_cents == order.stable_cents,
        )
        .values(status=after, **stamps)
    )
    return cast(CursorResult[Any], result).rowcount == 1


def _same_order(a: Order, b: Order) -> bool:
    return (a.member, a.amount_cents, a.stable_cents) == (b.member, b.amount_cents, b.stable_cents)


def _check_payable(order: Order) -> None:
    if order.status in (PENDING, PAID):
        raise Conflict(f"order {order.order_id!r} is already paid")
    if order.status == REFUSED:
        raise Conflict(f"order {order.order_id!r} was refused: {order.reason}")
    if order.status == REFUNDED:
        raise Conflict(f"order {order.order_id!r} is already paid and refunded")


def _check_refundable(order: Order) -> None:
    if order.status == CREATED:
        raise Conflict(f"order {order.order_id!r} is not paid")
    if order.status == PENDING:
        raise Conflict(f"order {order.order_id!r} awaits the rules' verdict; try again shortly")
    if order.status == REFUSED:
        raise Conflict(f"order {order.order_id!r} was refused by the rules: {order.reason}")
    if order.status == REFUNDED:
        raise Conflict(f"order {order.order_id!r} is already refunded")


async def _replay(uow: UnitOfWork, key: Idempotency | None, fingerprint: str) -> Reply | None:
    """The stored response to an earlier request with this key, or None."""
    if key is None:
        return None
    row = (
        await uow.session.execute(
            select(
                idempotency.c.method,
                idempotency.c.path,
                idempotency.c.fingerprint,
                idempotency.c.status_code,
                idempotency.c.response,
            ).where(idempotency.c.key == key.key)
        )
    ).first()
    if row is None:
        return None
    if (row.method, row.path, row.fingerprint) != (key.method, key.path, fingerprint):
        raise Invalid(
            f"Idempotency-Key {key.key!r} was already used for a different request "
            f"({row.method} {row.path})"
        )
    return Reply(row.status_code, json.loads(row.response), replayed=True)


async def _remember(
    uow: UnitOfWork, key: Idempotency | None, fingerprint: str, reply: Reply
) -> None:
    if key is None:
        return
    await uow.session.execute(
        insert(idempotency).values(
            key=key.key,
            method=key.method,
            path=key.path,
            fingerprint=fingerprint,
            status_code=reply.status_code,
            response=json.dumps(reply.body),
            created_at=_now(),
        )
    )
