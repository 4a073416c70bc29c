"""Use cases of the referrals service.

Commands and events are handled cosmicpython style: ``handler(message, uow)``; a
command ends in ``uow.commit()``, after which the caller calls ``svc.committed()``
so that the relay publishes at once.  The event handlers of the subscriptions run
inside the unit of work that ``Service.handle`` opened and in which it claimed the
message in the inbox; they never commit — the kit commits the effect with the
claim.  They raise :class:`Rejected`
before writing anything: the transaction rolls back and the message is
dead-lettered with the reason.

Team performance is kept on each member's row (``members.team_cents``): whatever
moves a member's spend moves the team performance of everyone above by the same
amount, in one statement (a recursive CTE up the sponsor chain).  A read therefore
reads the rows it shows — never the whole forest — and computes their star levels
with the engine's own ``star_levels``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    String,
    Subquery,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from tokenmall import contracts
from tokenmall.db import among, insert_ignoring_conflicts, insert_many
from tokenmall.engine.plan import MAX_CASH_CENTS, Plan
from tokenmall.engine.settlement import star_levels
from tokenmall.messaging import Missing, UnitOfWork
from tokenmall.money import AmountError, to_cents
from tokenmall.servicekit import Rejected
from tokenmall_referrals.adapters.tables import (
    PLAN_ROW_ID,
    member_orders,
    member_seq,
    members,
    plan_state,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ commands and errors


@dataclass(frozen=True)
class RegisterMember:
    member: str
    sponsor: str | None = None
    merchant: bool = False


class ReferralError(ValueError):
    """A command the rules refuse; nothing was changed."""


class MemberExists(ReferralError):
    def __init__(self, member: str) -> None:
        super().__init__(f"member '{member}' already exists")


class UnknownSponsor(ReferralError):
    def __init__(self, sponsor: str) -> None:
        super().__init__(f"unknown sponsor '{sponsor}'")


class SelfSponsor(ReferralError):
    def __init__(self, member: str) -> None:
        super().__init__(f"member '{member}' cannot sponsor themselves (the tree has no cycles)")


class UnknownMember(ReferralError):
    def __init__(self, member: str) -> None:
        super().__init__(f"unknown member '{member}'")


# ------------------------------------------------------------------ views (read models)


@dataclass(frozen=True)
class MemberSummary:
    member: str
    sponsor: str | None
    merchant: bool
    spend_cents: int
    team_performance_cents: int
    star: int
    seq: int  # registration order
    registered_at: datetime | None = None


@dataclass(frozen=True)
class MemberDetail(MemberSummary):
    referral_count: int = 0  # direct referrals (the list: list_members(sponsor=…))


# ------------------------------------------------------------------ registration


async def register_member(cmd: RegisterMember, uow: UnitOfWork) -> MemberDetail:
    """Add a member under its sponsor and emit ``MemberRegistered`` in the same transaction."""
    session = uow.session
    await uow.begin_write()
    if await _member_row(session, cmd.member) is not None:
        raise MemberExists(cmd.member)
    if cmd.sponsor is not None and cmd.sponsor == cmd.member:
        raise SelfSponsor(cmd.member)
    depth = 0
    if cmd.sponsor is not None:
        sponsor_depth = (
            await session.execute(select(members.c.depth).where(members.c.member == cmd.sponsor))
        ).scalar_one_or_none()
        if sponsor_depth is None:
            raise UnknownSponsor(cmd.sponsor)
        depth = int(sponsor_depth) + 1
    registered_at = datetime.now(UTC)
    inserted = await session.execute(
        insert(members)
        .values(
            member=cmd.member,
            sponsor=cmd.sponsor,
            merchant=cmd.merchant,
            seq=_next_seq(session),
            depth=depth,
            spend_cents=0,
            registered_at=registered_at,
        )
        .returning(members.c.seq)
    )
    seq = int(inserted.scalar_one())
    [star] = await _stars(session, [0])  # nobody below a new member yet
    uow.emit(
        contracts.MEMBERS,
        contracts.MemberRegistered(
            member=cmd.member, sponsor=cmd.sponsor, merchant=cmd.merchant, seq=seq
        ),
    )
    await uow.commit()
    return MemberDetail(cmd.member, cmd.sponsor, cmd.merchant, 0, 0, star, seq, registered_at, 0)


def _next_seq(session: AsyncSession) -> Any:
    """The registration order of a new member (see ``tables.member_seq``)."""
    if session.get_bind().dialect.name == "postgresql":
        return member_seq.next_value()
    return select(func.coalesce(func.max(members.c.seq), 0) + 1).scalar_subquery()


# ------------------------------------------------------------------ bulk registration

MAX_BATCH = 10_000
IN_CHUNK = 5_000  # ids per IN (…) list: below every driver's bound on parameters


@dataclass(frozen=True)
class BatchItemResult:
    member: str
    status: str  # "created" | "exists" | "refused"
    seq: int | None = None
    error: str | None = None
    field: str | None = None  # the item's field at fault: "member" or "sponsor"


async def register_members(
    cmds: list[RegisterMember], uow: UnitOfWork, atomic: bool
) -> list[BatchItemResult]:
    """Register many members in one transaction, in order (a sponsor earlier in the
    batch counts).  Per item: ``created``; ``exists`` (registered already with the same
    sponsor and merchant flag: a batch sent again is harmless); ``refused`` with the
    reason (a different registration exists, unknown sponsor, self-sponsoring, twice in
    the batch).  ``atomic``: one refused item and nothing is written (the results say
    which).  The inserts, and the ``MembersRegistered`` outbox rows, are one statement
    each."""
    session = uow.session
    await uow.begin_write()
    wanted = {c.member for c in cmds} | {c.sponsor for c in cmds if c.sponsor is not None}
    known: dict[str, Any] = {}
    ids = sorted(wanted)
    for start in range(0, len(ids), IN_CHUNK):
        rows = await session.execute(
            select(
                members.c.member,
                members.c.sponsor,
                members.c.merchant,
                members.c.seq,
                members.c.depth,
            ).where(among(session, members.c.member, ids[start : start + IN_CHUNK]))
        )
        known.update({row.member: row for row in rows})
    depth_of: dict[str, int] = {m: int(row.depth) for m, row in known.items()}
    results: list[BatchItemResult] = []
    new_rows: list[dict[str, Any]] = []
    in_batch: set[str] = set()
    for cmd in cmds:
        error: str | None = None
        at_fault = "member"
        existing = known.get(cmd.member)
        if cmd.member in in_batch:
            error = f"member '{cmd.member}' appears twice in the batch"
        elif existing is not None:
            if existing.sponsor == cmd.sponsor and bool(existing.merchant) == cmd.merchant:
                results.append(BatchItemResult(cmd.member, "exists", int(existing.seq)))
                in_batch.add(cmd.member)
                continue
            error = f"member '{cmd.member}' already exists with another registration"
        elif cmd.sponsor is not None and cmd.sponsor == cmd.member:
            error, at_fault = str(SelfSponsor(cmd.member)), "sponsor"
        elif cmd.sponsor is not None and cmd.sponsor not in depth_of:
            error, at_fault = str(UnknownSponsor(cmd.sponsor)), "sponsor"
        in_batch.add(cmd.member)
        if error is not None:
            results.append(BatchItemResult(cmd.member, "refused", error=error, field=at_fault))
            continue
        depth = 0 if cmd.sponsor is None else depth_of[cmd.sponsor] + 1
        depth_of[cmd.member] = depth
        new_rows.append(
            {
                "member": cmd.member,
                "sponsor": cmd.sponsor,
                "merchant": cmd.merchant,
                "depth": depth,
                "spend_cents": 0,
                "registered_at": datetime.now(UTC),
            }
        )
        results.append(BatchItemResult(cmd.member, "created"))
    refused = any(r.status == "refused" for r in results)
    if not new_rows or (atomic and refused):
        return results  # nothing to write (the caller's unit of work rolls back)
    seqs = await _next_seqs(session, len(new_rows))
    for row, seq in zip(new_rows, seqs, strict=True):
        row["seq"] = seq
    await insert_many(session, members, new_rows)  # one statement (unnest), in order
    seq_of = {row["member"]: row["seq"] for row in new_rows}
    results = [
        BatchItemResult(r.member, r.status, seq_of[r.member]) if r.status == "created" else r
        for r in results
    ]
    # a few MembersRegistered of bounded size rather than one event per member: consumers
    # take a thousand registrations as one message
    uow.emit_many(
        contracts.MEMBERS,
        contracts.registration_batches(
            [
                # checked already (the request's member ids, the sequence's numbers): built
                # without validating each of thousands again
                contracts.Registration.model_construct(
                    member=row["member"],
                    sponsor=row["sponsor"],
                    merchant=row["merchant"],
                    seq=row["seq"],
                )
                for row in new_rows
            ]
        ),
    )
    await uow.commit()
    return results


async def _next_seqs(session: AsyncSession, count: int) -> list[int]:
    """``count`` new registration numbers, ascending (PostgreSQL: the sequence; SQLite:
    after the largest, under the write lock this transaction holds)."""
    if session.get_bind().dialect.name == "postgresql":
        rows = await session.execute(
            select(member_seq.next_value()).select_from(func.generate_series(1, count))
        )
        return sorted(int(value) for (value,) in rows)
    top = (await session.execute(select(func.coalesce(func.max(members.c.seq), 0)))).scalar_one()
    return list(range(int(top) + 1, int(top) + 1 + count))


# ------------------------------------------------------------------ subscriptions


async def on_order_event(event: contracts.Event, uow: UnitOfWork) -> None:
    """``tokenmall.orders``: spend follows paid orders, net of refunds."""
    if isinstance(event, contracts.OrderPaid | contracts.OrdersPaid):
        await order_paid(event, uow)
    elif isinstance(event, contracts.OrderRefunded):
        await order_refunded(event, uow)
    else:
        log.debug("ignoring %s on %s", event.type, contracts.ORDERS)


async def on_dividends_event(event: contracts.Event, uow: UnitOfWork) -> None:
    """``tokenmall.dividends``: the plan in force, and the rules' refusal of an order."""
    if isinstance(event, contracts.PlanActivated):
        await plan_activated(event, uow)
    elif isinstance(event, contracts.InputApplied | contracts.InputsApplied):
        answers = event.inputs if isinstance(event, contracts.InputsApplied) else [event]
        for answer in answers:
            kind, _, order_id = answer.input_id.partition(":")
            if kind == "order" and not answer.accepted:
                await order_refused(order_id, uow)


async def order_refused(order_id: str, uow: UnitOfWork) -> None:
    """The rules refused a paid order: it never counted (RULES §2: only paid orders
    count), so its amount leaves the member's spend again."""
    session = uow.session
    order = (
        await session.execute(
            select(member_orders.c.member, member_orders.c.amount_cents).where(
                member_orders.c.order_id == order_id, member_orders.c.refunded.is_(False)
            )
        )
    ).one_or_none()
    if order is None:
        exists = await session.execute(
            select(member_orders.c.order_id).where(member_orders.c.order_id == order_id)
        )
        if exists.first() is None:  # the verdict overtook the order
            raise Missing(f"order:{order_id}", f"unknown order '{order_id}'")
        return  # already taken out
    await session.execute(
        update(member_orders).where(member_orders.c.order_id == order_id).values(refunded=True)
    )
    await _move_spend(session, order.member, -int(order.amount_cents))


async def order_paid(event: contracts.OrderPaid | contracts.OrdersPaid, uow: UnitOfWork) -> None:
    """One paid order, or a batch's: what :func:`orders_paid` does to it alone (a member
    not committed yet is waited for: Missing; a malformed amount: Rejected)."""
    _paid_orders(event)  # malformed: rejected here, the bulk handler leaves it alone
    outcome = (await orders_paid([event], uow))[0]
    if outcome is not None:
        raise outcome


IN_LIST_CHUNK = 400  # ids per IN (...) list, rows per multi-row statement


async def orders_paid(events: list[contracts.Event], uow: UnitOfWork) -> list[Missing | None]:
    """:func:`order_paid` for the paid orders of a poll at once (Subscription.bulk), also
    a batch's (``OrdersPaid``, whole: it waits for its members together): one lookup of
    their members, one insert of the new orders, one spend update per member and one
    statement moving every upline; a refund or a malformed order goes to the handler
    alone."""
    session = uow.session
    paid: list[tuple[contracts.OrderPaid | contracts.OrdersPaid, list[_Paid]]] = []
    for event in events:
        if not isinstance(event, contracts.OrderPaid | contracts.OrdersPaid):
            break
        try:
            paid.append((event, _paid_orders(event)))
        except Rejected:
            break
    if not paid:
        return []
    known = await _known_members(session, {o.member for _, orders in paid for o in orders})
    outcomes: list[Missing | None] = []
    rows: dict[str, dict[str, Any]] = {}  # the first event of an order id counts
    for _, orders in paid:
        unknown = next((o.member for o in orders if o.member not in known), None)
        if unknown is not None:
            outcomes.append(Missing(f"member:{unknown}", f"unknown member '{unknown}'"))
            uow.wanted.add(f"member:{unknown}")  # parked in the run
            continue
        outcomes.append(None)
        for order in orders:
            rows.setdefault(
                order.order_id,
                {
                    "order_id": order.order_id,
                    "member": order.member,
                    "amount_cents": order.amount_cents,
                    "refunded": False,
                },
            )
            uow.provide(f"order:{order.order_id}")
        if uow.wanted_provided:
            break  # a message parked in the run waits for this one: it goes next
    recorded = await insert_ignoring_conflicts(
        session, member_orders, list(rows.values()), returning="order_id"
    )
    deltas: dict[str, int] = {}
    for order_id in recorded:
        row = rows[order_id]
        deltas[row["member"]] = deltas.get(row["member"], 0) + int(row["amount_cents"])
    await _move_spends(session, deltas)
    return outcomes


@dataclass(frozen=True, slots=True)
class _Paid:
    order_id: str
    member: str
    amount_cents: int


def _paid_orders(event: contracts.OrderPaid | contracts.OrdersPaid) -> list[_Paid]:
    """The orders an event pays, their amounts checked (Rejected: one is malformed)."""
    if isinstance(event, contracts.OrderPaid):
        return [_Paid(event.order_id, event.member, _order_cents(event))]
    return [_Paid(o.order_id, o.member, _order_cents(o)) for o in event.orders]


async def _known_members(session: AsyncSession, wanted: set[str]) -> set[str]:
    names, known = sorted(wanted), set[str]()
    for start in range(0, len(names), IN_LIST_CHUNK):
        chunk = names[start : start + IN_LIST_CHUNK]
        found = await session.execute(
            select(members.c.member).where(among(session, members.c.member, chunk))
        )
        known.update(found.scalars())
    return known


async def _move_spends(session: AsyncSession, deltas: dict[str, int]) -> None:
    """:func:`_move_spend` for many members: their spends, then every upline at once.
    PostgreSQL: two statements whatever the count, the (member, delta) rows bound as two
    arrays and ``unnest``-ed (no statement, parameter or UNION arm per member); SQLite:
    an update per member and a UNION of literal rows per chunk."""
    items = sorted(deltas.items())
    if not items:
        return
    if session.get_bind().dialect.name == "postgresql":
        rows = (
            func.unnest(
                bindparam("moved_members", [m for m, _ in items], type_=postgresql.ARRAY(String)),
                bindparam(
                    "moved_deltas", [d for _, d in items], type_=postgresql.ARRAY(BigInteger)
                ),
            )
            .table_valued(column("member", String), column("delta", BigInteger))
            .render_derived("moved_rows")
        )
        await session.execute(
            update(members)
            .where(members.c.member == rows.c.member)
            .values(spend_cents=members.c.spend_cents + rows.c.delta)
        )
        await _add_to_uplines(session, select(rows.c.member, rows.c.delta).subquery("moved"))
        return
    for member, delta in items:
        await session.execute(
            update(members)
            .where(members.c.member == member)
            .values(spend_cents=members.c.spend_cents + delta)
        )
    for start in range(0, len(items), IN_LIST_CHUNK):
        chunk = items[start : start + IN_LIST_CHUNK]
        moved = union_all(
            *(
                select(literal(m, String).label("member"), literal(d, BigInteger).label("delta"))
                for m, d in chunk
            )
        ).subquery("moved")
        await _add_to_uplines(session, moved)


async def order_refunded(event: contracts.OrderRefunded, uow: UnitOfWork) -> None:
    session = uow.session
    order = (
        await session.execute(
            select(
                member_orders.c.member, member_orders.c.amount_cents, member_orders.c.refunded
            ).where(member_orders.c.order_id == event.order_id)
        )
    ).one_or_none()
    if order is None:  # the order's event has not been applied yet
        raise Missing(f"order:{event.order_id}", f"unknown order '{event.order_id}'")
    if order.member != event.member:
        raise Rejected(
            f"order '{event.order_id}' belongs to '{order.member}', not to '{event.member}'"
        )
    if order.refunded:
        log.info("order '%s' already refunded; ignoring %s", event.order_id, event.event_id)
        return
    marked = await session.execute(
        update(member_orders)
        .where(member_orders.c.order_id == event.order_id, member_orders.c.refunded.is_(False))
        .values(refunded=True)
    )
    if not marked.rowcount:  # type: ignore[attr-defined]
        return  # refunded concurrently
    await _move_spend(session, order.member, -int(order.amount_cents))


async def _move_spend(session: AsyncSession, member: str, delta: int) -> None:
    """``delta`` cents on the member's spend, and on the team performance of everyone
    above them."""
    await session.execute(
        update(members)
        .where(members.c.member == member)
        .values(spend_cents=members.c.spend_cents + delta)
    )
    moved = select(
        literal(member, String).label("member"), literal(delta, BigInteger).label("delta")
    ).subquery("moved")
    await _add_to_uplines(session, moved)


async def _add_to_uplines(session: AsyncSession, moved: Subquery) -> None:
    """Add each ``moved`` row's ``delta`` to the team performance (``team_cents``) of
    every member above its ``member``, up to the root — in one statement, whatever the
    depth or the number of rows: a recursive CTE carries each delta up the sponsor chain
    (one primary-key lookup per step), the deltas reaching the same member are summed,
    and one UPDATE … FROM adds the sums (SQLite ≥ 3.33 and PostgreSQL alike)."""
    below = members.alias("below")
    upline = (
        select(below.c.sponsor.label("member"), moved.c.delta.label("delta"))
        .join_from(moved, below, below.c.member == moved.c.member)
        .where(below.c.sponsor.is_not(None))
        .cte("upline", recursive=True)
    )
    above = members.alias("above")
    upline = upline.union_all(
        select(above.c.sponsor, upline.c.delta).where(
            above.c.member == upline.c.member, above.c.sponsor.is_not(None)
        )
    )
    # PostgreSQL's sum of BIGINT is NUMERIC: back to exact integer cents
    totals = (
        select(upline.c.member, cast(func.sum(upline.c.delta), BigInteger).label("delta"))
        .group_by(upline.c.member)
        .cte("upline_totals")
    )
    await session.execute(
        update(members)
        .where(members.c.member == totals.c.member)
        .values(team_cents=members.c.team_cents + totals.c.delta)
    )


async def plan_activated(event: contracts.PlanActivated, uow: UnitOfWork) -> None:
    try:
        plan = Plan.from_mapping(event.plan)
    except (ValueError, TypeError) as exc:
        raise Rejected(f"unusable plan for day {event.day}: {exc}") from None
    session = uow.session
    current = (
        await session.execute(select(plan_state.c.day).where(plan_state.c.id == PLAN_ROW_ID))
    ).scalar_one_or_none()
    text = json.dumps(plan.raw, sort_keys=True, default=str)
    if current is not None and event.day < current:
        log.info("ignoring the plan of day %s: day %s is already in force", event.day, current)
        return
    if current is None:
        await session.execute(insert(plan_state).values(id=PLAN_ROW_ID, day=event.day, plan=text))
    else:
        await session.execute(
            update(plan_state)
            .where(plan_state.c.id == PLAN_ROW_ID)
            .values(day=event.day, plan=text)
        )


# ------------------------------------------------------------------ views


async def get_member(uow: UnitOfWork, member: str) -> MemberDetail:
    session = uow.session
    row = await _member_row(session, member)
    if row is None:
        raise UnknownMember(member)
    referral_count = (
        await session.execute(select(func.count()).where(members.c.sponsor == member))
    ).scalar_one()
    [star] = await _stars(session, [int(row.team_cents)])
    return MemberDetail(
        row.member,
        row.sponsor,
        bool(row.merchant),
        int(row.spend_cents),
        int(row.team_cents),
        star,
        int(row.seq),
        row.registered_at,
        int(referral_count),
    )


_SUMMARY_COLUMNS = (
    members.c.seq,
    members.c.member,
    members.c.sponsor,
    members.c.merchant,
    members.c.spend_cents,
    members.c.team_cents,
    members.c.registered_at,
)


async def list_members(
    uow: UnitOfWork, offset: int, limit: int, sponsor: str | None = None
) -> tuple[list[MemberSummary], int]:
    """One page of members in registration order, and how many there are; with
    ``sponsor``, of that member's direct referrals (an index range: ``members_sponsor``)."""
    session = uow.session
    if sponsor is not None and await _member_row(session, sponsor) is None:
        raise UnknownMember(sponsor)
    where = [] if sponsor is None else [members.c.sponsor == sponsor]
    page = (
        await session.execute(
            select(*_SUMMARY_COLUMNS)
            .where(*where)
            .order_by(members.c.seq)
            .offset(offset)
            .limit(limit)
        )
    ).all()
    count = select(func.count()).select_from(members).where(*where)
    total = (await session.execute(count)).scalar_one()
    stars = await _stars(session, [int(r.team_cents) for r in page])
    out = [
        MemberSummary(
            r.member,
            r.sponsor,
            bool(r.merchant),
            int(r.spend_cents),
            int(r.team_cents),
            star,
            int(r.seq),
            r.registered_at,
        )
        for r, star in zip(page, stars, strict=True)
    ]
    return out, int(total)


async def _stars(session: AsyncSession, team_cents: list[int]) -> list[int]:
    """The star levels under the plan in force of members with these team performances
    (a member's star depends on their own team performance alone)."""
    plan = await current_plan(session)
    performance = np.asarray(team_cents, dtype=np.int64)
    return [int(star) for star in star_levels(performance, plan.team if plan else None)]


async def current_plan(session: AsyncSession) -> Plan | None:
    text = (
        await session.execute(select(plan_state.c.plan).where(plan_state.c.id == PLAN_ROW_ID))
    ).scalar_one_or_none()
    return None if text is None else _parse_plan(text)


@lru_cache(maxsize=16)
def _parse_plan(text: str) -> Plan:
    return Plan.from_mapping(json.loads(text))


# ------------------------------------------------------------------ helpers


async def _member_row(session: AsyncSession, member: str) -> Any:
    return (
        await session.execute(
            select(
                members.c.member,
                members.c.sponsor,
                members.c.merchant,
                members.c.seq,
                members.c.spend_cents,
                members.c.team_cents,
                members.c.registered_at,
            ).where(members.c.member == member)
        )
    ).one_or_none()


def _order_cents(event: contracts.OrderPaid | contracts.PaidOrder) -> int:
    try:
        amount = to_cents(event.amount, "amount")
    except AmountError as exc:
        raise Rejected(f"order '{event.order_id}': {exc}") from None
    if not 0 <= amount <= MAX_CASH_CENTS:
        raise Rejected(f"order '{event.order_id}': amount {event.amount} out of range")
    return amount
