"""The engine host: one rules engine, applied to one input at a time.

Inputs are plain JSON-able payloads (logged as they are, replayed on restart);
the engine's outputs (postings, domain events, release batches) become the
contract events other services consume.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
from typing import Any

import numpy as np
from aiokafka.partitioner import murmur2

from tokenmall import contracts
from tokenmall.engine import Engine, Plan, PlanError, Refused, snapshot
from tokenmall.engine.ledger import BatchPosting, Posting, ReleaseBatch
from tokenmall.money import cents_to_decimal, to_cents, to_units, units_to_decimal


def kafka_partition(key: str, partitions: int = contracts.PARTITIONS) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as the producer)."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


# what a release message holds besides its members and amounts: the envelope, day,
# bucket, asset, sources and kind names (a generous bound: they are short)
MESSAGE_OVERHEAD = 4096
DEFAULT_MAX_MESSAGE_BYTES = 900_000  # Kafka's default message.max.bytes is 1,048,588


def _json_sizes(keys: list[str], columns: dict[str, Any]) -> Any:
    """An upper bound of the bytes each member adds to a release message's JSON: its id
    (quoted, a comma; ids need no escaping) and one integer per kind (digits, a sign, a
    comma — one byte more than the digits, against float rounding in log10)."""
    sizes = np.fromiter((len(k) + 3 for k in keys), dtype=np.int64, count=len(keys))
    for column in columns.values():
        magnitude = np.maximum(np.abs(np.asarray(column, dtype=np.int64)), 1)
        sizes += np.floor(np.log10(magnitude.astype(np.float64))).astype(np.int64) + 4
    return sizes


def chunk_bounds(sizes: Any, budget: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) row ranges whose sizes each add up to at most ``budget``
    (a single row larger than the budget gets a range of its own)."""
    if budget <= 0:
        raise ValueError("the message bound leaves no room for members")
    total = np.cumsum(sizes)
    bounds: list[tuple[int, int]] = []
    start, n = 0, len(total)
    while start < n:
        before = int(total[start - 1]) if start else 0
        end = int(np.searchsorted(total, before + budget, side="right"))
        end = max(end, start + 1)
        bounds.append((start, end))
        start = end
    return bounds


class EngineHost:
    def __init__(
        self,
        plan: dict[str, Any] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.engine = Engine(Plan.from_mapping(plan or {}), record=True)
        self.max_message_bytes = max_message_bytes
        self.lock = asyncio.Lock()
        self.applied = 0  # inputs applied (accepted), including the initial plan

    # ------------------------------------------------------------ applying inputs

    def call(self, kind: str, payload: dict[str, Any]) -> tuple[bool, str | None, Any]:
        """Apply one input; (accepted, reason, result).  A refusal changes nothing."""
        try:
            result = self._dispatch(kind, payload)
        except Refused as exc:
            self.engine.take_outputs()  # nothing, by construction; keep the buffers empty
            return False, str(exc), None
        self.applied += 1
        return True, None, result

    def _dispatch(self, kind: str, p: dict[str, Any]) -> Any:
        engine = self.engine
        if kind == "initial_plan":
            if len(engine.names) or engine.day != 1:
                raise Refused("the first plan can only be set before anything happened")
            # merged into the newest version, like any plan (a pending one is folded in)
            try:
                plan = (engine.pending_plan or engine.plan).merged(p["plan"])
            except PlanError as exc:
                raise Refused(f"plan: {exc}") from None
            self.engine = Engine(plan, record=True)
            return self.engine.plan
        if kind == "join":
            seq = p.get("seq")
            return engine.join(
                p["member"],
                p.get("sponsor"),
                bool(p.get("merchant")),
                None if seq is None else int(seq),
            )
        if kind == "order":
            return engine.order(
                p["member"], to_cents(p["amount"]), p["order_id"], to_cents(p.get("stable") or 0)
            )
        if kind == "refund":
            return engine.refund(p["order_id"])
        if kind == "plan":
            return engine.propose_plan(p["plan"])
        if kind == "settle":
            return engine.settle(int(p["day"]))
        if kind == "request":
            return self._request(p)
        raise Refused(f"unknown input kind {kind!r}")

    def _request(self, p: dict[str, Any]) -> Any:
        engine = self.engine
        member, kind = p["member"], p["kind"]
        if kind == "sell":
            points = p.get("points")
            return engine.sell(member, None if points in (None, "all") else to_units(points))
        if kind == "exchange":
            return engine.exchange(member, to_units(p["points"]))
        if kind == "merchant_exchange":
            return engine.merchant_exchange(member, to_cents(p["stable"]))
        if kind == "adjust":
            asset = p["asset"]
            amount = to_units(p["amount"]) if asset == "equity" else to_cents(p["amount"])
            return engine.adjust(member, asset, amount, p.get("reason") or "")
        raise Refused(f"unknown request kind {kind!r}")

    # ------------------------------------------------------------ outputs as events

    def account(self, account: int | str) -> str:
        return f"m:{self.engine.names[account]}" if isinstance(account, int) else account

    def posting_line(self, posting: Posting) -> contracts.PostingLine:
        to_decimal = units_to_decimal if posting.asset == "equity" else cents_to_decimal
        return contracts.PostingLine(
            asset=posting.asset,  # type: ignore[arg-type]
            debit=self.account(posting.debit),
            credit=self.account(posting.credit),
            amount=to_decimal(posting.amount),
            kind=posting.kind,
        )

    def input_applied(
        self, input_id: str, member: str | None, accepted: bool, reason: str | None, day: int
    ) -> contracts.InputApplied:
        return contracts.InputApplied(**self._answer(input_id, member, accepted, reason), day=day)

    def applied_input(
        self, input_id: str, member: str | None, accepted: bool, reason: str | None
    ) -> contracts.AppliedInput:
        """:meth:`input_applied` as one answer of an InputsApplied (its day is the batch's)."""
        return contracts.AppliedInput(**self._answer(input_id, member, accepted, reason))

    def _answer(
        self, input_id: str, member: str | None, accepted: bool, reason: str | None
    ) -> dict[str, Any]:
        """The answer to the last input: its fields, with the postings and facts taken
        from the engine's outputs."""
        outputs = self.engine.take_outputs()
        return {
            "input_id": input_id,
            "member": member,
            "accepted": accepted,
            "reason": reason,
            "postings": [self.posting_line(p) for p in outputs.postings if isinstance(p, Posting)],
            "facts": [_fact(e) for e in outputs.events],
        }

    def settlement_events(self, day: int, report: Any, plan_changed: bool) -> list[contracts.Event]:
        """A settlement's outputs: release batches per partition bucket, then DaySettled."""
        outputs = self.engine.take_outputs()
        events: list[contracts.Event] = []
        platform: list[contracts.PostingLine] = []
        exits: list[contracts.PostingLine] = []
        for item in outputs.postings:
            if isinstance(item, ReleaseBatch):
                events.extend(self._release_batches(day, item))
            elif isinstance(item, Posting):
                line = self.posting_line(item)
                involves_member = isinstance(item.debit, int) or isinstance(item.credit, int)
                (exits if involves_member else platform).append(line)
            elif isinstance(item, BatchPosting):  # pragma: no cover - settlement uses ReleaseBatch
                raise AssertionError("unexpected batch posting in a settlement")
        events.append(
            contracts.DaySettled(
                day=day,
                released={k: cents_to_decimal(v) for k, v in report.released.items()},
                members_released=report.members_released,
                batches=sum(isinstance(e, contracts.ReleaseComputed) for e in events),
                platform_postings=platform,
                exit_postings=exits,
                forced_exits=len(report.exits),
            )
        )
        if plan_changed:
            events.append(contracts.PlanActivated(day=self.engine.day, plan=self.engine.plan.raw))
        return events

    def _release_batches(self, day: int, batch: ReleaseBatch) -> list[contracts.ReleaseComputed]:
        """One message per partition bucket — several (chunks) where a bucket's JSON would
        exceed ``max_message_bytes``; every chunk keyed by a member of its bucket, so a
        bucket's chunks stay on one partition, in order."""
        names = self.engine.names
        members = batch.members.tolist()
        keys = [names[m] for m in members]
        buckets = np.fromiter((kafka_partition(k) for k in keys), dtype=np.int64, count=len(keys))
        sizes = _json_sizes(keys, batch.columns)
        result = []
        for bucket in range(contracts.PARTITIONS):
            rows = np.flatnonzero(buckets == bucket)
            if rows.size == 0:
                continue
            parts = chunk_bounds(sizes[rows], self.max_message_bytes - MESSAGE_OVERHEAD)
            for chunk, (start, end) in enumerate(parts):
                part = rows[start:end]
                result.append(
                    contracts.ReleaseComputed(
                        day=day,
                        bucket=bucket,
                        buckets=contracts.PARTITIONS,
                        chunk=chunk,
                        chunks=len(parts),
                        asset=batch.asset,  # type: ignore[arg-type]
                        sources=batch.sources,
                        members=[keys[i] for i in part.tolist()],
                        amounts={
                            kind: column[part].tolist() for kind, column in batch.columns.items()
                        },
                        partition_key=keys[int(rows[0])],
                        # the first (often only) chunk keeps the id of a whole bucket
                        event_id=f"release-{day}-{bucket}" + (f".{chunk}" if chunk else ""),
                    )
                )
        return result

    # ------------------------------------------------------------ persistence

    def capture(self) -> snapshot.Captured:
        """The engine's state, copied (under the lock; sealed into bytes outside it)."""
        return snapshot.capture(self.engine)

    def snapshot(self) -> bytes:
        return snapshot.dumps(self.engine)

    def restore(self, state: bytes) -> None:
        # pickle: written by a version before the snapshot format (in our own database)
        engine = snapshot.loads(state) if snapshot.is_snapshot(state) else pickle.loads(state)
        if not isinstance(engine, Engine):
            raise TypeError("snapshot is not an engine")
        self.engine = engine


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _fact(event: Any) -> dict[str, Any]:
    """A domain event as an ``InputApplied`` fact: its type and fields.  Shallow (the
    events of an input are flat records): ``dataclasses.asdict`` deep-copies every value
    and was a tenth of the dividends service's time under a batch of orders."""
    kind = type(event)
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(event))
    return {"type": kind.__name__} | {name: getattr(event, name) for name in names}
