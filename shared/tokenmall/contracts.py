"""Event contracts between the services: pydantic v2 models, topics, codec.

Every event carries an envelope: a unique ``event_id``, the ``causation_id`` of
what caused it, the ``producer`` service, a ``schema_version`` and
``occurred_at``.  Amounts are decimal strings in the JSON (exact), converted to
integer minor units by the consumer.  Each event names its Kafka key: the member
id wherever the event concerns one member, so one member's events stay ordered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple, TypeVar
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tokenmall.ids import MemberId

T = TypeVar("T")

SCHEMA_VERSION = 1

# topic -> what flows on it (the README's catalogue is generated from this)
TOPICS: dict[str, str] = {
    "tokenmall.members": "referrals → all: members registered one by one (key: member) and "
    "in batches (key: registrations, so batches keep their order)",
    "tokenmall.orders": "orders → dividends, referrals: orders paid, refunded (key: member) and "
    "paid in batches (key: order-batches, so batches keep their order); day markers (one per "
    "partition)",
    "tokenmall.wallet-requests": "wallet → dividends: trades, adjustments (key: member); "
    "day markers (one per partition)",
    "tokenmall.dividends": "dividends → wallet, referrals, orders: engine results (key: member; "
    "the answers to an order batch: input-batches), release batches (a member of their "
    "partition), day closing",
}
MEMBERS, ORDERS, WALLET_REQUESTS, DIVIDENDS = TOPICS
PARTITIONS = 6


class Route(NamedTuple):
    """Who publishes on a topic, which services consume it, and the event types on it."""

    producer: str
    consumers: tuple[str, ...]
    events: tuple[str, ...]


# topic -> its route: the AsyncAPI document's operations and channel messages
# (tokenmall.asyncapi); tests/unit/test_asyncapi.py holds it to the services' code
ROUTES: dict[str, Route] = {
    MEMBERS: Route(
        "referrals", ("dividends", "orders", "wallet"), ("MemberRegistered", "MembersRegistered")
    ),
    ORDERS: Route(
        "orders",
        ("dividends", "referrals"),
        ("OrderPaid", "OrdersPaid", "OrderRefunded", "DayClosed"),
    ),
    WALLET_REQUESTS: Route("wallet", ("dividends",), ("WalletRequest", "DayClosed")),
    DIVIDENDS: Route(
        "dividends",
        ("orders", "referrals", "wallet"),
        (
            "DayClosing",
            "InputApplied",
            "InputsApplied",
            "ReleaseComputed",
            "DaySettled",
            "PlanScheduled",
            "PlanActivated",
        ),
    ),
}

# The topics whose inputs carry a business day, closed per partition by a DayClosed
# marker before dividends settles that day (the day-boundary watermark).
DAY_STAMPED_TOPICS = (ORDERS, WALLET_REQUESTS)


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


Money = Annotated[Decimal, Field(description="exact decimal, serialised as a string")]


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    type: str
    event_id: str = Field(default_factory=lambda: str(uuid4()))
    causation_id: str | None = None
    producer: str = ""
    schema_version: int = SCHEMA_VERSION
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def key(self) -> str:
        member = getattr(self, "member", None)
        return str(member) if member is not None else "platform"


class MemberRegistered(Event):
    type: Literal["MemberRegistered"] = "MemberRegistered"
    member: str
    sponsor: str | None = None
    merchant: bool = False
    # registration order as referrals assigned it (ascending, gaps allowed): consumers
    # order members by it, never by when the event happened to arrive
    seq: int = Field(ge=1, le=2**62)


class Registration(BaseModel):
    """One member of a :class:`MembersRegistered` batch (the fields of MemberRegistered)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # referrals' member ids (ASCII, at most 65 characters): the size bound below holds
    member: MemberId
    sponsor: MemberId | None = None
    merchant: bool = False
    seq: int = Field(ge=1, lt=2**62)  # the engine's bound


REGISTRATIONS_KEY = "registrations"


class MembersRegistered(Event):
    """Many registrations of one ``POST /v1/members:batch``, in registration order: each
    member's sponsor registered earlier in the same event, in an earlier event or one by
    one.  Every batch has the same key, so batches reach consumers in the order referrals
    registered them (a member only ever registers once, so no per-member order is at
    stake); a consumer applies it as the ``MemberRegistered`` of each member in turn."""

    type: Literal["MembersRegistered"] = "MembersRegistered"
    members: list[Registration] = Field(min_length=1)

    @property
    def key(self) -> str:
        return REGISTRATIONS_KEY


# what one MembersRegistered may hold: members, and bytes of their JSON (under the broker's
# 1 MB message.max.bytes with room for the envelope)
REGISTRATION_BATCH_MEMBERS = 2000
REGISTRATION_BATCH_BYTES = 512_000


def registration_batches(registrations: list[Registration]) -> list[MembersRegistered]:
    """``registrations`` (in order) as consecutive MembersRegistered of bounded size."""
    # the JSON of one entry: its ids, the keys and punctuation, the flag and the seq
    chunks = bounded_chunks(
        registrations,
        lambda r: len(r.member) + len(r.sponsor or "") + 80,
        REGISTRATION_BATCH_MEMBERS,
        REGISTRATION_BATCH_BYTES,
    )
    return [MembersRegistered(members=chunk) for chunk in chunks]


def bounded_chunks(
    items: Sequence[T], size_of: Callable[[T], int], max_items: int, max_bytes: int
) -> list[list[T]]:
    """``items`` in order as consecutive chunks of at most ``max_items`` and ``max_bytes``
    (by ``size_of`` each; an item larger than that alone is a chunk of its own): the
    batch events' bound under the broker's message size."""
    chunks: list[list[T]] = []
    chunk: list[T] = []
    size = 0
    for item in items:
        entry = size_of(item)
        if chunk and (len(chunk) >= max_items or size + entry > max_bytes):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += entry
    if chunk:
        chunks.append(chunk)
    return chunks


class OrderPaid(Event):
    type: Literal["OrderPaid"] = "OrderPaid"
    order_id: str
    member: str
    amount: Money
    stable: Money = Decimal(0)
    # the business day the producer accepted it on (its day row, locked while it is
    # stamped: every input of day D is published before the producer's DayClosed(D));
    # absent from producers older than the day watermark: the engine's current day
    day: int | None = Field(default=None, ge=1, le=2**31 - 1)


class PaidOrder(BaseModel):
    """One order of an :class:`OrdersPaid` batch (the fields of OrderPaid but the day)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str = Field(min_length=1, max_length=200)
    member: MemberId  # a registered member: referrals' ids (the size bound below holds)
    amount: Money
    stable: Money = Decimal(0)


ORDER_BATCHES_KEY = "order-batches"


class OrdersPaid(Event):
    """The orders one ``POST /v1/orders:batch`` paid (one transaction, one business day),
    in the batch's order.  Every batch has the same key, so batches reach consumers in
    the order they were paid; a consumer applies it as the ``OrderPaid`` of each order in
    turn (an order is paid once, by one event: its id is in no other OrderPaid or
    OrdersPaid).  Single ``OrderPaid`` events, keyed by member, are not ordered against
    a batch: their inputs take the order in which dividends receives them, as inputs of
    different members always do."""

    type: Literal["OrdersPaid"] = "OrdersPaid"
    orders: list[PaidOrder] = Field(min_length=1)
    day: int | None = Field(default=None, ge=1, le=2**31 - 1)

    @property
    def key(self) -> str:
        return ORDER_BATCHES_KEY


# what one OrdersPaid may hold: orders, and bytes of their JSON (as registrations)
ORDER_BATCH_ORDERS = 2000
ORDER_BATCH_BYTES = 512_000


def order_batches(paid: list[PaidOrder], day: int | None) -> list[OrdersPaid]:
    """``paid`` (in order) as consecutive OrdersPaid of bounded size."""
    # the JSON of one entry: its ids and amounts, the keys and punctuation
    chunks = bounded_chunks(
        paid,
        lambda o: len(o.order_id) + len(o.member) + 2 * 30 + 60,
        ORDER_BATCH_ORDERS,
        ORDER_BATCH_BYTES,
    )
    return [OrdersPaid(orders=chunk, day=day) for chunk in chunks]


class OrderRefunded(Event):
    type: Literal["OrderRefunded"] = "OrderRefunded"
    order_id: str
    member: str
    amount: Money
    # the business day the producer accepted it on (its day row, locked while it is
    # stamped: every input of day D is published before the producer's DayClosed(D));
    # absent from producers older than the day watermark: the engine's current day
    day: int | None = Field(default=None, ge=1, le=2**31 - 1)


class WalletRequest(Event):
    """A member's equity trade or an admin adjustment, validated and reserved (held) by
    the wallet, to be applied by the engine in dividends (which owns the price)."""

    type: Literal["WalletRequest"] = "WalletRequest"
    request_id: str
    member: str
    kind: Literal["sell", "exchange", "merchant_exchange", "adjust"]
    points: Money | None = None  # sell / exchange; None with sell = all
    stable: Money | None = None  # merchant_exchange
    asset: Literal["cny", "stable", "equity"] | None = None  # adjust
    amount: Money | None = None  # adjust: signed
    reason: str | None = None  # adjust
    operator: str | None = None  # adjust
    # the business day the producer accepted it on (its day row, locked while it is
    # stamped: every input of day D is published before the producer's DayClosed(D));
    # absent from producers older than the day watermark: the engine's current day
    day: int | None = Field(default=None, ge=1, le=2**31 - 1)


class PostingLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    asset: Literal["cny", "stable", "equity"]
    debit: str  # "m:<member>" or a platform account name
    credit: str
    amount: Money
    kind: str


class InputApplied(Event):
    """Dividends applied one input to the engine: its postings and what happened."""

    type: Literal["InputApplied"] = "InputApplied"
    input_id: str  # the request/order/member/adjustment this answers
    member: str | None = None
    accepted: bool
    reason: str | None = None  # why the rules refused it
    postings: list[PostingLine] = []
    facts: list[dict[str, Any]] = []  # the engine's domain events, as plain data
    # the business day the input counts in: the day it was accepted on, or — when it
    # reached the engine only after that day was settled (a forced settlement) — the
    # next open day
    day: int | None = None


class AppliedInput(BaseModel):
    """One input of an :class:`InputsApplied` (the fields of InputApplied but the day)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_id: str
    member: str | None = None
    accepted: bool
    reason: str | None = None
    postings: list[PostingLine] = []
    facts: list[dict[str, Any]] = []


INPUT_BATCHES_KEY = "input-batches"


class InputsApplied(Event):
    """Dividends' answers to the orders of one ``OrdersPaid``, in its order, all on one
    business day: each as the ``InputApplied`` of that order would be.  Every batch has
    the same key (batches arrive in the order dividends applied them); consumers book
    each answer as its InputApplied."""

    type: Literal["InputsApplied"] = "InputsApplied"
    inputs: list[AppliedInput] = Field(min_length=1)
    day: int | None = None

    @property
    def key(self) -> str:
        return INPUT_BATCHES_KEY


# what one InputsApplied may hold: answers, and (estimated) bytes of their JSON
INPUT_BATCH_INPUTS = 2000
INPUT_BATCH_BYTES = 512_000


def _applied_size(applied: AppliedInput) -> int:
    """An upper estimate of one answer's JSON in bytes: its strings (UTF-8), and per
    field its name, quotes and punctuation (a posting's amount as its decimal string)."""

    def n(text: object) -> int:
        return len(str(text).encode())

    size = 100 + n(applied.input_id) + n(applied.member or "") + n(applied.reason or "")
    for posting in applied.postings:
        size += 70 + n(posting.debit) + n(posting.credit) + n(posting.kind) + n(posting.amount)
    for fact in applied.facts:
        size += 2 + sum(8 + n(key) + n(value) for key, value in fact.items())
    return size


def applied_batches(
    answers: list[AppliedInput], day: int | None, max_bytes: int = INPUT_BATCH_BYTES
) -> list[InputsApplied]:
    """``answers`` (in order) as consecutive InputsApplied of bounded size: at most
    INPUT_BATCH_INPUTS answers and ``max_bytes`` of them by the estimate (an upper
    bound; at least one answer per event)."""
    chunks = bounded_chunks(answers, _applied_size, INPUT_BATCH_INPUTS, max_bytes)
    return [InputsApplied(inputs=chunk, day=day) for chunk in chunks]


class ReleaseComputed(Event):
    """Part of one day's releases: members of one Kafka partition bucket — all of them,
    or one chunk of them when the bucket would not fit in one message (every message
    stays under ``TOKENMALL_MAX_MESSAGE_BYTES``).

    Columnar and in integer cents (exact, and cheap to build and parse for a
    million members): ``amounts[kind][i]`` is what ``members[i]`` receives.
    """

    type: Literal["ReleaseComputed"] = "ReleaseComputed"
    day: int
    bucket: int
    buckets: int
    chunk: int = Field(default=0, ge=0)  # this part of the bucket …
    chunks: int = Field(default=1, ge=1)  # … of this many
    asset: Literal["cny", "stable"]
    sources: dict[str, str]  # release kind -> platform account paying it
    members: list[str]
    amounts: dict[str, list[int]]  # release kind -> cents, aligned with members
    partition_key: str  # a member of the bucket: the key that lands on its partition

    @property
    def key(self) -> str:
        return self.partition_key


class DaySettled(Event):
    type: Literal["DaySettled"] = "DaySettled"
    day: int
    released: dict[str, Money]
    members_released: int
    batches: int
    platform_postings: list[PostingLine] = []  # pool funding, retained, rounding
    exit_postings: list[PostingLine] = []  # forced exits at the end of the settlement
    forced_exits: int = 0


class DayClosing(Event):
    """Dividends asks the producers of day-stamped inputs (orders, wallet) to close
    ``day``: they stamp later inputs with the next day and answer with DayClosed
    markers.  Settlement of ``day`` follows once every marker and every input of the
    day has reached the engine."""

    type: Literal["DayClosing"] = "DayClosing"
    day: int = Field(ge=1, le=2**31 - 1)


class DayClosed(Event):
    """A watermark: on ``partition`` of ``topic``, every input of ``day`` (and earlier)
    came before this marker.  One per partition, published after the producer moved
    its day on, so nothing stamped ``day`` can follow it."""

    type: Literal["DayClosed"] = "DayClosed"
    day: int = Field(ge=1, le=2**31 - 1)
    topic: str  # the logical topic it closes (without a deployment's prefix)
    partition: int = Field(ge=0)
    partitions: int = Field(ge=1)  # how many markers close the topic


class PlanScheduled(Event):
    """A new plan version, effective from ``effective_day`` (the next business day)."""

    type: Literal["PlanScheduled"] = "PlanScheduled"
    effective_day: int
    plan: dict[str, Any]


class PlanActivated(Event):
    """The plan in force from ``day`` on (the first plan, and after a settlement)."""

    type: Literal["PlanActivated"] = "PlanActivated"
    day: int
    plan: dict[str, Any]


AnyEvent = Annotated[
    MemberRegistered
    | MembersRegistered
    | OrderPaid
    | OrdersPaid
    | OrderRefunded
    | WalletRequest
    | InputApplied
    | InputsApplied
    | ReleaseComputed
    | DaySettled
    | DayClosing
    | DayClosed
    | PlanScheduled
    | PlanActivated,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyEvent)


class ContractError(ValueError):
    """A message that is not a valid event (goes to the dead-letter topic)."""


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode()


def decode(raw: bytes | str | dict[str, Any]) -> Event:
    try:
        if isinstance(raw, dict):
            return _ADAPTER.validate_python(raw)  # type: ignore[no-any-return]
        return _ADAPTER.validate_json(raw)  # type: ignore[no-any-return]
    except ValidationError as exc:  # also JSON errors (json_invalid)
        raise ContractError(_problems(exc)) from None
    except Exception as exc:
        raise ContractError(str(exc).splitlines()[0] if str(exc) else repr(exc)) from None


def _problems(exc: ValidationError) -> str:
    """What is wrong, e.g. ``OrderPaid.member: Field required`` or ``Input tag 'X' found
    using 'type' does not match …`` (the first line of ``str(exc)`` names only the union)."""
    errors = exc.errors(include_url=False, include_input=False)
    parts = [
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else str(e["msg"])
        for e in errors[:3]
    ]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


EVENT_TYPES: tuple[type[Event], ...] = (
    MemberRegistered,
    MembersRegistered,
    OrderPaid,
    OrdersPaid,
    OrderRefunded,
    WalletRequest,
    InputApplied,
    InputsApplied,
    ReleaseComputed,
    DaySettled,
    DayClosing,
    DayClosed,
    PlanScheduled,
    PlanActivated,
)


def catalogue() -> dict[str, Any]:
    """Topics and the JSON Schema of every event (printed by ``tokenmall events``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "partitions": PARTITIONS,
        "topics": [
            {"topic": name, "dead_letter_topic": dead_letter_topic(name), "flow": flow}
            for name, flow in TOPICS.items()
        ],
        "events": {
            model.__name__: model.model_json_schema(mode="serialization") for model in EVENT_TYPES
        },
    }


def to_json(data: Any) -> str:
    return json.dumps(data, default=str)


def plain(data: Any) -> Any:
    """JSON-safe copy: Decimals become exact decimal strings (never floats)."""
    if isinstance(data, Decimal):
        return str(data)
    if isinstance(data, dict):
        return {str(k): plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [plain(v) for v in data]
    return data
