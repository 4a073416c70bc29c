"""Use cases of the dividends service: every input goes through ``apply``.

``apply`` runs the engine under the host's lock and commits, inside that lock, the
input's log row, its events (outbox) and — after a settlement — a snapshot, so the
order of the input log is exactly the order in which the engine saw the inputs.
If the commit fails the engine is rebuilt from the database before the error
propagates (the message is then redelivered).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from uuid import uuid4

from pydantic_core import to_json
from sqlalchemy import CursorResult, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokenmall import contracts
from tokenmall.db import among, insert_many
from tokenmall.engine import Engine, Plan, snapshot
from tokenmall.messaging import Missing, UnitOfWork
from tokenmall.money import AmountError, to_cents
from tokenmall.servicekit import Rejected, Service
from tokenmall_dividends.adapters.tables import day_closings, inputs, settlements, snapshots
from tokenmall_dividends.service_layer import closing
from tokenmall_dividends.service_layer.host import MESSAGE_OVERHEAD, EngineHost
from tokenmall_dividends.service_layer.phases import SETTLEMENT_MESSAGES, phases_of
from tokenmall_dividends.service_layer.snapshots import writer_of as snapshot_writer

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    accepted: bool
    reason: str | None
    result: Any
    seconds: float = 0.0


def host_of(svc: Service) -> EngineHost:
    host: EngineHost = svc.state["host"]
    return host


IN_LIST_CHUNK = 900  # ids per IN (...) list: SQLite allows 999 parameters by default

# inputs that arrive as events; their ids are namespaced by kind, so an order id and a
# request id chosen alike by clients never meet in the input log
EVENT_INPUTS = ("join", "order", "refund", "request")


async def apply(
    svc: Service,
    uow: UnitOfWork,
    kind: str,
    input_id: str,
    payload: dict[str, Any],
    member: str | None = None,
    commit: bool = True,
) -> Outcome:
    """Apply one input; the caller holds ``host.lock`` (taken before any database write,
    so a consumer and an HTTP command never wait on each other's locks in turn).
    ``commit``: end the transaction (commands); an event handler leaves that to the kit,
    which commits the effect with the message's inbox row (and a poll's others)."""
    host = host_of(svc)
    assert host.lock.locked(), "apply() runs under the host's lock"
    await uow.begin_write()
    if kind in EVENT_INPUTS and await _logged(uow, input_id):
        raise Rejected(f"input {input_id!r} was already applied (a new event with an old id)")
    engine_before = host.engine
    plan_before = engine_before.plan
    day = engine_before.day
    started = time.perf_counter()
    try:
        accepted, reason, result = host.call(kind, payload)
    except AmountError as exc:  # read before the engine changed: a malformed event
        raise Rejected(f"{input_id}: {exc}") from None
    seconds = time.perf_counter() - started
    try:
        return await _record(
            svc,
            uow,
            kind,
            input_id,
            payload,
            member,
            day,
            plan_before,
            (accepted, reason, result),
            seconds,
            commit,
        )
    except BaseException:
        # the engine ran ahead of the database (an insert or the commit failed): rebuild it
        await load_engine(svc)
        raise
    finally:
        if kind in EVENT_INPUTS:
            closing.closer_of(svc).poke()  # a settlement may have waited for this one


async def _logged_many(uow: UnitOfWork, input_ids: list[str]) -> set[str]:
    """Which of ``input_ids`` are in the input log already (one statement)."""
    found: set[str] = set()
    for start in range(0, len(input_ids), IN_LIST_CHUNK):
        stmt = select(inputs.c.input_id).where(
            among(uow.session, inputs.c.input_id, input_ids[start : start + IN_LIST_CHUNK])
        )
        found.update((await uow.session.execute(stmt)).scalars())
    return found


async def _logged(uow: UnitOfWork, input_id: str) -> bool:
    stmt = select(inputs.c.seq).where(inputs.c.input_id == input_id)
    return (await uow.session.execute(stmt)).first() is not None


async def _record(
    svc: Service,
    uow: UnitOfWork,
    kind: str,
    input_id: str,
    payload: dict[str, Any],
    member: str | None,
    day: int,
    plan_before: Any,
    outcome: tuple[bool, str | None, Any],
    seconds: float,
    commit: bool,
) -> Outcome:
    """The input's events, log row (and after a settlement its snapshot), committed."""
    host = host_of(svc)
    accepted, reason, result = outcome
    settled_now = kind == "settle" and accepted and not result.already_settled
    # a refused plan command changes nothing and its HTTP caller hears why
    refused_plan = not accepted and kind in ("plan", "initial_plan")
    if kind == "settle":
        if settled_now:
            settlement_events = host.settlement_events(
                result.day, result, plan_changed=host.engine.plan is not plan_before
            )
            uow.emit_many(contracts.DIVIDENDS, settlement_events)
        else:
            host.engine.take_outputs()
    elif kind == "initial_plan" and accepted:
        uow.emit(
            contracts.DIVIDENDS,
            contracts.PlanActivated(day=host.engine.day, plan=host.engine.plan.raw),
        )
    elif kind == "plan" and accepted:
        host.engine.take_outputs()
        uow.emit(
            contracts.DIVIDENDS,
            contracts.PlanScheduled(effective_day=host.engine.day + 1, plan=result.raw),
        )
    elif kind == "join" or refused_plan:
        host.engine.take_outputs()
    else:
        uow.emit(contracts.DIVIDENDS, host.input_applied(input_id, member, accepted, reason, day))
    if (kind == "settle" and not settled_now) or refused_plan:
        return Outcome(accepted, reason, result, seconds)  # nothing changed: nothing to log
    now = datetime.now(UTC)
    logged = await uow.session.execute(
        insert(inputs).values(
            input_id=input_id,
            kind=kind,
            payload=json.dumps(payload, default=str),
            day=day,
            accepted=accepted,
            reason=reason,
            created_at=now,
        )
    )
    if settled_now:
        primary_key = cast(CursorResult[Any], logged).inserted_primary_key
        assert primary_key is not None
        seq = primary_key[0]
        # copied now, under the lock; compressed and written after the commit
        captured = (seq, host.engine.day, host.capture())
        await uow.session.execute(
            insert(settlements).values(
                day=result.day,
                members_released=result.members_released,
                released=json.dumps({k: v for k, v in result.released.items()}),
                seconds=seconds,
                created_at=now,
                retained_cents=result.retained,
                rounding_cents=result.rounding,
                forced_exits=len(result.exits),
            )
        )
        requested = (
            await uow.session.execute(
                update(day_closings)
                .where(day_closings.c.day == result.day)
                .values(settled_at=now)
                .returning(day_closings.c.requested_at)
            )
        ).scalar_one_or_none()
        if requested is not None:
            waited = now - (requested if requested.tzinfo else requested.replace(tzinfo=UTC))
            day_metrics: closing.DayMetrics = svc.state["day_metrics"]
            day_metrics.wait.labels(svc.name).observe(max(0.0, waited.total_seconds()))
        if seconds > 0:
            svc.metrics.fanout.labels(svc.name).set(result.members_released / seconds)
    if commit:
        await svc.check_lease(uow.session)  # fencing: only the active process commits
        await uow.commit()
        svc.committed()
        if settled_now:
            snapshot_writer(svc).submit(*captured)
            messages = sum(e.type in SETTLEMENT_MESSAGES for e in settlement_events)
            phases_of(svc).settled(result.members_released, seconds, messages)
    return Outcome(accepted, reason, result, seconds)


# ------------------------------------------------------------------ start-up


async def load_engine(svc: Service, default_plan: dict[str, Any] | None = None) -> None:
    """Rebuild the engine: the latest snapshot, then every accepted input logged after it."""
    assert svc.sessions is not None
    host = host_of(svc)
    svc.memory_epoch += 1  # a batched run in progress starts over on the rebuilt engine
    async with svc.sessions() as session:
        after = await _restore_newest_snapshot(session, host)
        if after == 0:
            host.engine = Engine(Plan.from_mapping(default_plan or {}), record=True)
        rows = (
            await session.execute(
                select(inputs.c.kind, inputs.c.payload)
                .where(inputs.c.seq > after, inputs.c.accepted.is_(True))
                .order_by(inputs.c.seq)
            )
        ).all()
    for row in rows:
        accepted, reason, _ = host.call(row.kind, json.loads(row.payload))
        if not accepted:  # pragma: no cover - it was accepted when it was logged
            raise RuntimeError(f"replaying the input log diverged: {reason}")
        host.engine.take_outputs()


async def _restore_newest_snapshot(session: AsyncSession, host: EngineHost) -> int:
    """The newest snapshot that loads (a damaged one is skipped for the one before it);
    the seq of the last input it includes, 0 if none does."""
    seqs = (
        await session.execute(select(snapshots.c.seq).order_by(snapshots.c.seq.desc()))
    ).scalars()
    for seq in list(seqs):
        state = (
            await session.execute(select(snapshots.c.state).where(snapshots.c.seq == seq))
        ).scalar_one()
        try:
            host.restore(state)
        except (snapshot.SnapshotError, TypeError) as exc:
            log.error(
                "engine snapshot at input %d does not load (%s); trying an older one", seq, exc
            )
            continue
        return int(seq)
    return 0


async def start(svc: Service, default_plan: dict[str, Any]) -> None:
    """Load the engine; on a brand-new database, log the default plan as the first input.
    The kit reloads it after a consumed message's transaction failed past its handlers
    (Service.rebuild_memory)."""
    await load_engine(svc, default_plan)

    async def rebuild() -> None:
        await load_engine(svc)

    svc.rebuild_memory = rebuild
    assert svc.sessions is not None
    async with svc.sessions() as session:
        empty = (await session.execute(select(inputs.c.seq).limit(1))).first() is None
    if empty:
        async with host_of(svc).lock, svc.uow() as uow:
            await apply(svc, uow, "initial_plan", "initial-plan", {"plan": default_plan})


# ------------------------------------------------------------------ event handlers


async def on_member_registered(event: contracts.Event, uow: UnitOfWork, svc: Service) -> None:
    """Referrals validated the registration: it is applied, never judged again here.  A
    referral that overtook its sponsor waits (parked) until the sponsor has joined (a
    batch of registrations waits whole, and joins once every sponsor has)."""
    if isinstance(event, contracts.MembersRegistered):
        problem = _out_of_order(event)
        if problem is not None:
            raise Rejected(problem)
        outcomes = await on_members_registered([event], uow, svc)
        if outcomes and isinstance(outcomes[0], Missing):
            raise outcomes[0]
        return
    assert isinstance(event, contracts.MemberRegistered)
    engine = host_of(svc).engine
    if event.member in engine.index:
        return  # joined already (the same registration under another event id)
    if event.sponsor is not None and event.sponsor not in engine.index:
        raise Missing(f"member:{event.sponsor}", f"sponsor {event.sponsor!r} has not joined yet")
    await apply(
        svc,
        uow,
        "join",
        f"join:{event.member}",
        {
            "member": event.member,
            "sponsor": event.sponsor,
            "merchant": event.merchant,
            "seq": event.seq,
        },
        event.member,
        commit=False,
    )
    uow.provide(f"member:{event.member}")


_STOP = object()  # a bulk call leaves this event to its handler alone


def _out_of_order(event: contracts.MembersRegistered) -> str | None:
    """Why a batch of registrations cannot be applied in its order (a sponsor named after
    its referral, or a member twice: referrals never sends that), None if it can."""
    before: set[str] = set()
    named = {r.member for r in event.members}
    if len(named) < len(event.members):
        return "a member is registered twice in the batch"
    for registration in event.members:
        if registration.sponsor in named and registration.sponsor not in before:
            return f"sponsor {registration.sponsor!r} comes after its referral in the batch"
        before.add(registration.member)
    return None


@dataclass
class _BulkInputs:
    """The input-log rows a bulk call writes at once, and what it has applied (an input
    id taken twice in one call is refused like a logged one: the handler decides)."""

    svc: Service
    uow: UnitOfWork
    day: int
    logged: set[str]
    rows: list[dict[str, Any]]

    @classmethod
    async def start(cls, svc: Service, uow: UnitOfWork, input_ids: list[str]) -> _BulkInputs:
        assert host_of(svc).lock.locked(), "bulk handlers run under the host's lock"
        await uow.begin_write()
        logged = await _logged_many(uow, input_ids)
        return cls(svc, uow, host_of(svc).engine.day, logged, [])

    def log(
        self, kind: str, input_id: str, payload: dict[str, Any], accepted: bool, reason: str | None
    ) -> None:
        self.logged.add(input_id)
        self.rows.append(
            {
                "input_id": input_id,
                "kind": kind,
                # the payloads of bulk inputs are plain strings, numbers and flags:
                # pydantic's encoder (compact; json.loads reads it back the same) costs a
                # fraction of json.dumps, a tenth of an import's time here
                "payload": to_json(payload).decode(),
                "day": self.day,
                "accepted": accepted,
                "reason": reason,
                "created_at": datetime.now(UTC),
            }
        )

    async def write(self) -> None:
        # in the rows' order: their seq is the log's order
        await insert_many(self.uow.session, inputs, self.rows)


async def _bulk(
    svc: Service,
    uow: UnitOfWork,
    events: list[contracts.Event],
    input_ids: Any,
    one: Any,
) -> list[Missing | None]:
    """What ``one(batch, event)`` does for each event in order — an outcome, or
    ``_STOP`` where the event needs its handler alone — with one lookup of the input log
    (of the ``input_ids`` of every event) before and one insert after.  The engine moved
    and something failed: it is rebuilt from the database (``memory_epoch``) before the
    error propagates."""
    ids = [i for event in events for i in input_ids(event)]
    batch = await _BulkInputs.start(svc, uow, ids)
    outcomes: list[Missing | None] = []
    try:
        for event in events:
            uow.causation_id = event.event_id
            outcome = one(batch, event)
            if outcome is _STOP:
                break
            outcomes.append(outcome)
            if isinstance(outcome, Missing):
                uow.wanted.add(outcome.dependency)  # parked in the run: woken when it comes
            if uow.wanted_provided:
                break  # a message parked in the run waits for this one: it goes next
        await batch.write()
    except BaseException:
        await load_engine(svc)
        raise
    finally:
        closing.closer_of(svc).poke()  # a settlement may have waited for these
    return outcomes


async def on_members_registered(
    events: list[contracts.Event], uow: UnitOfWork, svc: Service
) -> list[Missing | None]:
    """:func:`on_member_registered` for many registrations at once (Subscription.bulk)."""
    host = host_of(svc)

    def join(
        batch: _BulkInputs, registration: contracts.Registration | contracts.MemberRegistered
    ) -> None:
        payload = {
            "member": registration.member,
            "sponsor": registration.sponsor,
            "merchant": registration.merchant,
            "seq": registration.seq,
        }
        accepted, reason, _ = host.call("join", payload)
        host.engine.take_outputs()
        batch.log("join", f"join:{registration.member}", payload, accepted, reason)
        uow.provide(f"member:{registration.member}")

    def many(batch: _BulkInputs, event: contracts.MembersRegistered) -> object:
        """All of a batch or, while a sponsor has not joined, none of it (parked whole:
        the engine cannot take back the members before)."""
        if _out_of_order(event) is not None:
            return _STOP  # the handler rejects it
        index = host.engine.index
        fresh = [
            r
            for r in event.members
            if r.member not in index and f"join:{r.member}" not in batch.logged
        ]
        before: set[str] = set()
        for registration in fresh:
            sponsor = registration.sponsor
            if sponsor is not None and sponsor not in index and sponsor not in before:
                return Missing(f"member:{sponsor}", f"sponsor {sponsor!r} not joined")
            before.add(registration.member)
        for registration in fresh:
            join(batch, registration)
        return None

    def one(batch: _BulkInputs, event: contracts.Event) -> object:
        if isinstance(event, contracts.MembersRegistered):
            return many(batch, event)
        if not isinstance(event, contracts.MemberRegistered):
            return _STOP
        engine = host.engine
        if event.member in engine.index:
            return None  # joined already
        if event.sponsor is not None and event.sponsor not in engine.index:
            return Missing(f"member:{event.sponsor}", f"sponsor {event.sponsor!r} not joined")
        if f"join:{event.member}" in batch.logged:
            return _STOP  # an old id in a new event: the handler rejects it
        join(batch, event)
        return None

    def input_ids(event: contracts.Event) -> list[str]:
        if isinstance(event, contracts.MembersRegistered):
            # joined already is known from the engine; the log is asked about the others
            index = host.engine.index
            return [f"join:{r.member}" for r in event.members if r.member not in index]
        if isinstance(event, contracts.MemberRegistered):
            return [f"join:{event.member}"]
        return []

    return await _bulk(svc, uow, events, input_ids, one)


async def on_orders(
    events: list[contracts.Event], uow: UnitOfWork, svc: Service
) -> list[Missing | None]:
    """:func:`on_order` for many paid orders at once (Subscription.bulk); markers and
    refunds go through the handler alone."""
    host = host_of(svc)

    def pay(batch: _BulkInputs, order: contracts.OrderPaid) -> None:
        input_id = f"order:{order.order_id}"
        payload = _order_payload(order)
        accepted, reason, _ = host.call("order", payload)
        uow.emit(
            contracts.DIVIDENDS,
            host.input_applied(input_id, order.member, accepted, reason, batch.day),
        )
        batch.log("order", input_id, payload, accepted, reason)
        uow.provide(f"order:{order.order_id}")

    def one(batch: _BulkInputs, event: contracts.Event) -> object:
        if not isinstance(event, contracts.OrderPaid | contracts.OrdersPaid):
            return _STOP
        engine = host.engine
        if event.day is not None and event.day != engine.day:
            return _STOP  # early (parked) or late (counted, with a warning): the handler
        if isinstance(event, contracts.OrdersPaid):
            missing = _batch_waits_for(svc, event)
            if missing is not None:
                return missing
            if _malformed(event.orders):
                return _STOP  # the handler rejects it (the engine has not moved)
            _pay_batch(svc, uow, batch, event)
            return None
        if event.member not in engine.index:
            return Missing(f"member:{event.member}", f"member {event.member!r} not joined")
        if f"order:{event.order_id}" in batch.logged or _malformed([event]):
            return _STOP
        pay(batch, event)
        return None

    def input_ids(event: contracts.Event) -> list[str]:
        if isinstance(event, contracts.OrdersPaid):
            return [f"order:{order.order_id}" for order in event.orders]
        return [f"order:{event.order_id}"] if isinstance(event, contracts.OrderPaid) else []

    return await _bulk(svc, uow, events, input_ids, one)


def _order_payload(order: contracts.OrderPaid | contracts.PaidOrder) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "member": order.member,
        "amount": str(order.amount),
        "stable": str(order.stable),
    }


def _malformed(orders: Sequence[contracts.OrderPaid | contracts.PaidOrder]) -> str | None:
    """Why one of ``orders`` cannot be an engine input (checked before any moves the
    engine: a batch goes whole or not at all), or None."""
    for order in orders:
        try:
            to_cents(order.amount, "amount")
            to_cents(order.stable, "stable")
        except AmountError as exc:
            return f"order:{order.order_id}: {exc}"
    return None


def _batch_waits_for(svc: Service, event: contracts.OrdersPaid) -> Missing | None:
    """The first member of the batch who has not joined: the batch waits whole (the
    engine cannot take back the orders before)."""
    index = host_of(svc).engine.index
    for order in event.orders:
        if order.member not in index:
            return Missing(f"member:{order.member}", f"member {order.member!r} not joined")
    return None


def _require_member(svc: Service, member: str) -> None:
    """Orders and requests may overtake their member's registration (another topic): they
    are parked until it arrives — however long that takes."""
    if member not in host_of(svc).engine.index:
        raise Missing(f"member:{member}", f"member {member!r} has not joined yet")


def _check_day(svc: Service, kind: str, day: int | None, inputs: int = 1) -> None:
    closing.check_day(svc, host_of(svc).engine.day, kind, day, inputs)


async def on_order(event: contracts.Event, uow: UnitOfWork, svc: Service) -> None:
    if isinstance(event, contracts.DayClosed):
        await closing.record_marker(event, uow, svc)
    elif isinstance(event, contracts.OrderPaid):
        _require_member(svc, event.member)
        _check_day(svc, "order", event.day)
        await apply(
            svc,
            uow,
            "order",
            f"order:{event.order_id}",
            _order_payload(event),
            event.member,
            commit=False,
        )
        uow.provide(f"order:{event.order_id}")
    elif isinstance(event, contracts.OrdersPaid):
        missing = _batch_waits_for(svc, event)
        if missing is not None:
            raise missing
        _check_day(svc, "order", event.day, len(event.orders))
        problem = _malformed(event.orders)
        if problem is not None:
            raise Rejected(problem)
        ids = [f"order:{order.order_id}" for order in event.orders]
        batch = await _BulkInputs.start(svc, uow, ids)
        try:
            _pay_batch(svc, uow, batch, event)
            await batch.write()
        except BaseException:
            await load_engine(svc)  # the engine ran ahead of the database: rebuilt
            raise
        finally:
            closing.closer_of(svc).poke()  # a settlement may have waited for these
    elif isinstance(event, contracts.OrderRefunded):
        if not await _logged(uow, f"order:{event.order_id}"):
            raise Missing(f"order:{event.order_id}", f"order {event.order_id!r} has not arrived")
        _check_day(svc, "refund", event.day)
        await apply(
            svc,
            uow,
            "refund",
            f"refund:{event.order_id}",
            {"order_id": event.order_id},
            event.member,
            commit=False,
        )


def _pay_batch(
    svc: Service, uow: UnitOfWork, batch: _BulkInputs, event: contracts.OrdersPaid
) -> None:
    """A batch's orders through the engine one after the other (one logged already was
    applied: skipped), answered by InputsApplied (contracts.applied_batches)."""
    host = host_of(svc)
    answers: list[contracts.AppliedInput] = []
    for order in event.orders:
        input_id = f"order:{order.order_id}"
        if input_id in batch.logged:
            continue
        payload = _order_payload(order)
        accepted, reason, _ = host.call("order", payload)
        answers.append(host.applied_input(input_id, order.member, accepted, reason))
        batch.log("order", input_id, payload, accepted, reason)
        uow.provide(input_id)
    # under the broker's message size the service is configured for, as release batches
    room = min(contracts.INPUT_BATCH_BYTES, host.max_message_bytes - MESSAGE_OVERHEAD)
    uow.emit_many(contracts.DIVIDENDS, contracts.applied_batches(answers, batch.day, room))


async def on_wallet_request(event: contracts.Event, uow: UnitOfWork, svc: Service) -> None:
    if isinstance(event, contracts.DayClosed):
        await closing.record_marker(event, uow, svc)
        return
    if not isinstance(event, contracts.WalletRequest):
        raise Rejected(f"{event.type} is not a wallet request")
    _require_member(svc, event.member)
    _check_day(svc, "request", event.day)
    payload = event.model_dump(
        mode="json", include={"member", "kind", "points", "stable", "asset", "amount", "reason"}
    )
    await apply(
        svc, uow, "request", f"request:{event.request_id}", payload, event.member, commit=False
    )


# ------------------------------------------------------------------ commands (HTTP)


async def schedule_plan(svc: Service, plan: dict[str, Any], activate_now: bool) -> Outcome:
    async with host_of(svc).lock, svc.uow() as uow:
        kind = "initial_plan" if activate_now else "plan"
        return await apply(svc, uow, kind, f"plan:{uuid4()}", {"plan": plan})


async def settle(svc: Service, day: int) -> Outcome:
    """Settle ``day`` at once, whatever is still on its way (tests, tools; the API goes
    through the day closing in service_layer/closing.py)."""
    async with host_of(svc).lock, svc.uow() as uow:
        return await apply(svc, uow, "settle", f"settle:{day}", {"day": day})
