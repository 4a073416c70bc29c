"""``tokenmall.client``: the platform's HTTP API as typed Python, sync and async.

::

    async with AsyncClient(urls, token="...") as api:
        member = await api.referrals.register_member("+8613800000001")
        await api.orders.create_order(member.member, Decimal("99.00"), order_id="o-1")
        await api.orders.pay_order("o-1", idempotency_key="pay-o-1")
        balances = await api.wallet.balances(member.member)

``Client`` is the same API without ``await``.  Both talk HTTP only (httpx), to the four
services' base URLs (``{"orders": url, "wallet": url, "dividends": url, "referrals":
url}``; a client that uses fewer services needs only theirs).

- **Money is** ``Decimal``: responses' decimal strings become ``Decimal`` s, and amounts
  are sent as decimal strings (a ``Decimal``, ``int`` or ``str``; a ``float`` is refused
  with ``TypeError`` before anything is sent: it has already lost its decimals).
- **Lists** are pages (``Page``: ``items``, ``total``, ``offset``, ``limit``); a list
  method returns an ``AsyncItems`` / ``Items``: iterate it for every item (page after
  page, ``page_size`` at a time), or ask for ``.page(offset, limit)``, ``.pages()`` or
  ``.all()``.  ``pages(service, path)`` does the same for any list, as plain dicts.
- **Errors**: a 4xx or 5xx raises ``ApiError`` (``status``, and ``code``, ``message``,
  ``field`` from the error body); an answer the client cannot read (an unexpected
  status, a body that does not parse) raises ``UnexpectedResponse``, an ``ApiError``
  too.  Network errors are httpx's own (``httpx.HTTPError``).
- **Token**: ``token=`` a string, or a callable (async for ``AsyncClient``) returning
  one: sent as ``Authorization: Bearer <token>``; a callable is asked once, and again
  when a request is answered 401 (that request is then sent once more).

Each endpoint is written once, as a ``Call`` (or a ``Listing``) built by the
``_*Calls`` classes below; the async and sync namespaces turn a builder into a method
that sends it (``_Async``, ``_Blocking``, ``_AsyncList``, ``_BlockingList``).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Self, TypeVar, overload
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "SERVICES",
    "Amount",
    "ApiError",
    "AsyncClient",
    "AsyncItems",
    "Balances",
    "Client",
    "DayReleaseLine",
    "Equity",
    "Grant",
    "Input",
    "Items",
    "LoggedInput",
    "Member",
    "MemberBalance",
    "MemberSummary",
    "NewMember",
    "Order",
    "Page",
    "PaidOrder",
    "PaidOrderResult",
    "PaidOrders",
    "ParkedEvent",
    "Plan",
    "PlanScheduled",
    "RegistrationItem",
    "Registrations",
    "ReleaseLine",
    "RequestStatus",
    "RulesMember",
    "RulesMemberDetail",
    "Sales",
    "Settlement",
    "SettlementWaiting",
    "State",
    "StatementEntry",
    "SyncStatus",
    "UnexpectedResponse",
    "WalletRequest",
    "Webhook",
    "WebhookAttempt",
    "WebhookCreated",
    "WebhookDelivery",
    "WebhookDeliveryDetail",
    "decimal_text",
    "gateway_urls",
]

SERVICES = ("orders", "wallet", "dividends", "referrals")
MAX_PAGE_SIZE = 10_000  # the platform's limit on every list (tokenmall.api_style.MAX_LIMIT)
DEFAULT_PAGE_SIZE = 1000

T = TypeVar("T")
P = ParamSpec("P")

Amount = Decimal | int | str
"""Money as the client takes it: a ``Decimal``, an ``int`` or a decimal string."""

Asset = Literal["cny", "stable", "equity"]


def decimal_text(value: Amount | float) -> str:
    """``value`` as the API's decimal string (``Decimal("1E+2")`` is ``"100"``); a float
    (or a bool) is refused: it has lost its decimals before anything could keep them."""
    if isinstance(value, float):
        raise TypeError(f"money is a Decimal, int or decimal string, not a float ({value!r})")
    if isinstance(value, bool):
        raise TypeError(f"money is a Decimal, int or decimal string, not {value!r}")
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"money is a Decimal, int or decimal string, not {value!r}")


def _wire(data: Any) -> Any:
    """A JSON body: Decimals as decimal strings, floats refused (in plans too)."""
    if isinstance(data, float | Decimal):
        return decimal_text(data)
    if isinstance(data, Mapping):
        return {str(k): _wire(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_wire(v) for v in data]
    return data


def _seg(value: str | int) -> str:
    """A path segment (ids are already URL-safe; anything else is escaped)."""
    return quote(str(value), safe="+:@")


# ------------------------------------------------------------------ errors


class ApiError(Exception):
    """A service answered 4xx or 5xx: ``status`` and the error body's ``code``,
    ``message`` and ``field`` (the one field at fault, ``body.amount``, or None)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        method: str = "",
        url: str = "",
        text: str = "",
    ) -> None:
        super().__init__(status, code, message, field)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.method = method
        self.url = url
        self.text = text  # the raw body

    def __str__(self) -> str:
        where = f" ({self.field})" if self.field else ""
        return f"{self.method} {self.url}: {self.status} {self.code}: {self.message}{where}"

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        code, message, at = f"http_{response.status_code}", response.text, None
        try:
            body = response.json()
        except ValueError:
            body = None
        else:
            # the one error body of every service: {"code", "message", "field"}
            if isinstance(body, dict):
                message = str(body.get("message", body))
                code = str(body.get("code") or code)
                at = body.get("field") if isinstance(body.get("field"), str) else None
            else:
                message = str(body)
        return cls(
            response.status_code,
            code,
            message,
            at,
            method=response.request.method,
            url=str(response.request.url),
            text=response.text,
        )


class UnexpectedResponse(ApiError):
    """An answer the client cannot read: a status the endpoint does not answer, or a body
    that is not what it documents."""

    @classmethod
    def about(cls, response: httpx.Response, why: str) -> UnexpectedResponse:
        return cls(
            response.status_code,
            "unexpected_response",
            why,
            method=response.request.method,
            url=str(response.request.url),
            text=response.text,
        )


# ------------------------------------------------------------------ models


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Page(_Model, Generic[T]):
    """One page of a list: ``items`` from ``offset`` on, at most ``limit`` of them, of
    ``total`` in the whole list."""

    items: list[T]
    total: int
    offset: int
    limit: int


RawPage = Page[dict[str, Any]]


class SyncStatus(_Model):
    """``GET /v1/sync``: how far a service is from quiet."""

    service: str
    pid: int
    outbox_backlog: int
    consumer_lag: int | None
    parked: int
    ready: bool
    role: str
    progress: int


class ParkedEvent(_Model):
    """An event parked until what it depends on arrives (``/v1/parked``)."""

    id: int
    service: str
    consumer: str
    key: str
    waiting_for: str
    topic: str
    event_id: str
    event_type: str
    parked_at: datetime
    attempts: int
    last_error: str | None
    day: int | None


# referrals


class MemberSummary(_Model):
    member: str
    sponsor: str | None
    merchant: bool
    spend: Decimal
    team_performance: Decimal
    star: int
    seq: int
    registered_at: datetime | None


class Member(MemberSummary):
    referral_count: int


@dataclass(frozen=True)
class NewMember:
    """A member to register (``register_members``)."""

    member: str
    sponsor: str | None = None
    merchant: bool = False


class RegistrationItem(_Model):
    member: str
    status: Literal["created", "exists", "refused"]
    seq: int | None
    error: str | None


class Registrations(_Model):
    items: list[RegistrationItem]
    created: int
    existing: int
    refused: int


# orders

OrderStatus = Literal["created", "pending", "paid", "refused", "refunded"]


class Order(_Model):
    order_id: str
    member: str
    amount: Decimal
    stable: Decimal
    status: OrderStatus
    reason: str | None = None
    day: int | None = None
    created_at: datetime | None = None
    paid_at: datetime | None = None
    decided_at: datetime | None = None
    refunded_at: datetime | None = None


class Sales(_Model):
    paid: Decimal
    refunded: Decimal
    sales: Decimal


@dataclass(frozen=True)
class PaidOrder:
    """An order the mall's payment system has paid (``create_orders_batch``)."""

    order_id: str
    member: str
    amount: Amount
    stable: Amount = 0


class PaidOrderResult(_Model):
    order_id: str
    status: Literal["accepted", "exists", "refused"]
    order: Order | None = None
    error: str | None = None
    code: int | None = None
    field: str | None = None


class PaidOrders(_Model):
    items: list[PaidOrderResult]
    accepted: int
    existing: int
    refused: int


# wallet


class MemberBalance(_Model):
    member: str
    cny: Decimal
    stable: Decimal
    equity: Decimal


class Balances(MemberBalance):
    held: dict[str, Decimal]
    available: dict[str, Decimal]


class StatementEntry(_Model):
    id: int
    event_id: str
    asset: str
    debit: str
    credit: str
    amount: Decimal
    change: Decimal
    kind: str
    ref: str
    day: int | None
    booked_at: datetime | None


class ReleaseLine(_Model):
    day: int
    asset: str
    amounts: dict[str, Decimal]
    total: Decimal
    booked_at: datetime | None


class DayReleaseLine(_Model):
    """A member's releases of one business day in one asset (a day's page of them)."""

    member: str
    asset: str
    amounts: dict[str, Decimal]
    total: Decimal
    booked_at: datetime | None


class RequestStatus(_Model):
    request_id: str
    status: str  # pending | done | refused


class Held(_Model):
    asset: str
    amount: Decimal


class Posting(_Model):
    kind: str
    asset: str
    debit: str
    credit: str
    amount: Decimal


class Outcome(_Model):
    points: Decimal | None = None
    cny: Decimal | None = None
    stable: Decimal | None = None
    quota_used: Decimal | None = None
    amount: Decimal | None = None
    forced: bool | None = None


class WalletRequest(_Model):
    """A trade request or adjustment: what its client sent, its status and once decided
    what it moved (``refusal``: why the rules refused it)."""

    request_id: str
    member: str
    kind: str
    status: str  # pending | done | refused
    day: int | None
    created_at: datetime
    decided_at: datetime | None
    points: Decimal | Literal["all"] | None
    stable: Decimal | None
    asset: str | None
    amount: Decimal | None
    reason: str | None
    operator: str | None
    held: Held | None
    refusal: str | None
    outcome: Outcome | None
    postings: list[Posting]


_ACCOUNTS = TypeAdapter(dict[str, dict[str, Decimal]])


# dividends


class Equity(_Model):
    price: Decimal | None
    pool: Decimal
    circulating: Decimal
    treasury: Decimal
    minted: Decimal


class State(_Model):
    day: int
    member_count: int
    order_count: int
    equity: Equity


class RulesMember(_Model):
    """A member as the rules engine sees it (dividends)."""

    member: str
    cny: Decimal
    stable: Decimal
    equity: Decimal
    quota_remaining: Decimal
    spend: Decimal
    shares: int
    contribution: int
    star: int
    team_performance: Decimal
    released: dict[str, Decimal]


class RulesMemberDetail(RulesMember):
    grant_count: int


class Grant(_Model):
    seq: int
    quota: Decimal
    remaining: Decimal


class Input(_Model):
    input_id: str
    seq: int
    kind: str
    accepted: bool
    reason: str | None
    day: int | None


class LoggedInput(_Model):
    """One entry of the engine's input log (``payload``: the engine call's arguments)."""

    seq: int
    input_id: str
    kind: str
    payload: dict[str, Any]
    accepted: bool
    reason: str | None
    day: int


class Plan(_Model):
    day: int
    current: dict[str, Any]
    pending: dict[str, Any] | None


class Webhook(_Model):
    id: str
    url: str
    description: str | None
    events: list[str]
    active: bool
    created_at: datetime


class WebhookCreated(Webhook):
    secret: str  # shown once: keep it to verify deliveries (tokenmall.webhooks.verify)


class WebhookDelivery(_Model):
    id: int
    endpoint_id: str
    event_id: str
    type: str
    status: str  # pending | delivered | failed | cancelled
    attempts: int
    next_try_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None


class WebhookAttempt(_Model):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookDeliveryDetail(WebhookDelivery):
    payload: dict[str, Any]
    attempt_log: list[WebhookAttempt]


class PlanScheduled(_Model):
    accepted: bool
    effective_day: int


class Settlement(_Model):
    day: int
    status: Literal["completed"]
    already_settled: bool
    released: dict[str, Decimal]
    members_released: int
    retained: Decimal | None = None
    rounding: Decimal | None = None
    forced_exits: int | None = None
    duration_ms: int
    settled_at: datetime


class WaitingInput(_Model):
    id: int
    event_type: str
    key: str
    waiting_for: str


class WaitingFor(_Model):
    markers: dict[str, str | list[int]]
    parked_inputs: int
    parked: list[WaitingInput]


class SettlementWaiting(_Model):
    """A settlement requested and still waiting for its day's inputs (202)."""

    day: int
    status: Literal["waiting"]
    requested_at: datetime
    waiting_for: WaitingFor


# ------------------------------------------------------------------ requests


Params = Mapping[str, str | int]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request to a service and how to read its answer (``ok``: the statuses it
    answers when it succeeds)."""

    service: str
    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Params | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None
    ok: tuple[int, ...] = (200,)

    def answer(self, response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise ApiError.of(response)
        if response.status_code not in self.ok:
            raise UnexpectedResponse.about(response, f"status {response.status_code}")
        try:
            return self.read(response)
        except ValueError as exc:  # not JSON, or not the documented shape
            raise UnexpectedResponse.about(response, f"unreadable answer: {exc}") from None


M = TypeVar("M", bound=BaseModel)


def _reads(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate_json(response.content)


def _nothing(response: httpx.Response) -> None:
    return None


def _settlement(response: httpx.Response) -> Settlement | SettlementWaiting:
    if response.status_code == 202:
        return SettlementWaiting.model_validate_json(response.content)
    return Settlement.model_validate_json(response.content)


def _check_page_size(page_size: int) -> int:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be 1-{MAX_PAGE_SIZE}, got {page_size}")
    return page_size


@dataclass(frozen=True)
class Listing(Generic[T]):
    """A list endpoint: ``page`` reads one page; ``keyset``: the item field the next page
    starts after (``after_<keyset>=``), instead of an offset."""

    service: str
    path: str
    page: type[Page[T]]
    page_size: int = DEFAULT_PAGE_SIZE
    params: Params = field(default_factory=dict)
    keyset: str | None = None

    def __post_init__(self) -> None:
        _check_page_size(self.page_size)

    def call(self, offset: int | None, limit: int, after: Any = None) -> Call[Page[T]]:
        params: dict[str, str | int] = {**self.params, "limit": limit}
        if offset is not None:
            params["offset"] = offset
        if after is not None and self.keyset is not None:
            params[f"after_{self.keyset}"] = after
        return Call(self.service, "GET", self.path, _reads(self.page), params)

    def first(self) -> Call[Page[T]]:
        return self.call(None if self.keyset else 0, self.page_size)

    def next(self, page: Page[T], seen: int) -> Call[Page[T]] | None:
        """The request for the page after ``page`` (``seen`` items so far), or None."""
        if not page.items:
            return None
        if self.keyset is None:
            return None if seen >= page.total else self.call(seen, self.page_size)
        if len(page.items) < self.page_size:
            return None
        last = page.items[-1]
        key = last[self.keyset] if isinstance(last, dict) else getattr(last, self.keyset)
        return self.call(None, self.page_size, key)


# ------------------------------------------------------------------ the endpoints


class _Calls:
    """The routes every service has (``/v1/sync``, ``/v1/parked``)."""

    def __init__(self, service: str) -> None:
        self.service = service

    def _call(
        self,
        method: str,
        path: str,
        read: Callable[[httpx.Response], T],
        *,
        params: Params | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> Call[T]:
        return Call(self.service, method, path, read, params, json, headers, ok)

    def _list(
        self,
        path: str,
        page: type[Page[T]],
        page_size: int,
        params: Params | None = None,
        keyset: str | None = None,
    ) -> Listing[T]:
        return Listing(self.service, path, page, page_size, dict(params or {}), keyset)

    def sync(self) -> Call[SyncStatus]:
        """Quiescence: outbox backlog, consumer lag, parked events, progress."""
        return self._call("GET", "/v1/sync", _reads(SyncStatus))

    def parked(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> Listing[ParkedEvent]:
        """Events parked until what they depend on arrives, oldest first."""
        return self._list("/v1/parked", Page[ParkedEvent], page_size)

    def discard_parked(self, parked_id: int) -> Call[ParkedEvent]:
        """Dead-letter one parked event (an operator's decision)."""
        return self._call("DELETE", f"/v1/parked/{parked_id}", _reads(ParkedEvent))


def _idempotency(key: str | None) -> dict[str, str] | None:
    return None if key is None else {"Idempotency-Key": key}


class _ReferralsCalls(_Calls):
    def register_member(
        self, member: str, sponsor: str | None = None, merchant: bool = False
    ) -> Call[Member]:
        """Register a member (its sponsor is fixed for good); 409 if it exists."""
        body: dict[str, Any] = {"member": member, "merchant": merchant}
        if sponsor is not None:
            body["sponsor"] = sponsor
        return self._call("POST", "/v1/members", _reads(Member), json=body, ok=(200, 201))

    def register_members(
        self, members: Iterable[NewMember | str], *, atomic: bool = False
    ) -> Call[Registrations]:
        """Up to 10,000 members in one call, in order (a sponsor may come earlier in the
        batch); ``atomic``: all or none (one refused item: ``ApiError`` 422)."""
        rows = [NewMember(m) if isinstance(m, str) else m for m in members]
        body = {
            "members": [
                {"member": m.member, "merchant": m.merchant}
                | ({"sponsor": m.sponsor} if m.sponsor is not None else {})
                for m in rows
            ]
        }
        params = {"atomic": "true"} if atomic else None
        return self._call(
            "POST", "/v1/members:batch", _reads(Registrations), params=params, json=body
        )

    def member(self, member: str) -> Call[Member]:
        return self._call("GET", f"/v1/members/{_seg(member)}", _reads(Member))

    def members(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> Listing[MemberSummary]:
        """Every member, in registration order."""
        return self._list("/v1/members", Page[MemberSummary], page_size)

    def referrals_of(
        self, member: str, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Listing[MemberSummary]:
        """The member's direct referrals, in registration order."""
        return self._list(f"/v1/members/{_seg(member)}/referrals", Page[MemberSummary], page_size)


class _OrdersCalls(_Calls):
    def create_order(
        self,
        member: str,
        amount: Amount,
        *,
        stable: Amount | None = None,
        order_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Call[Order]:
        """An unpaid order (status ``created``); ``stable``: the part paid in stable
        points; ``order_id``: the mall's id (default: a uuid4)."""
        body: dict[str, Any] = {"member": member, "amount": decimal_text(amount)}
        if order_id is not None:
            body = {"order_id": order_id, **body}
        if stable is not None:
            body["stable"] = decimal_text(stable)
        return self._call(
            "POST",
            "/v1/orders",
            _reads(Order),
            json=body,
            headers=_idempotency(idempotency_key),
            ok=(200, 201),
        )

    def pay_order(self, order_id: str, *, idempotency_key: str | None = None) -> Call[Order]:
        """Pay: the order is ``pending`` until the rules' verdict makes it ``paid`` or
        ``refused`` (``wait_verdict``)."""
        return self._call(
            "POST",
            f"/v1/orders/{_seg(order_id)}/pay",
            _reads(Order),
            headers=_idempotency(idempotency_key),
            ok=(200, 202),
        )

    def refund_order(self, order_id: str, *, idempotency_key: str | None = None) -> Call[Order]:
        return self._call(
            "POST",
            f"/v1/orders/{_seg(order_id)}/refund",
            _reads(Order),
            headers=_idempotency(idempotency_key),
        )

    def delete_order(self, order_id: str) -> Call[None]:
        """Delete an order that was never paid (its id is free again)."""
        return self._call("DELETE", f"/v1/orders/{_seg(order_id)}", _nothing, ok=(204,))

    def order(self, order_id: str) -> Call[Order]:
        return self._call("GET", f"/v1/orders/{_seg(order_id)}", _reads(Order))

    def member_orders(self, member: str, *, page_size: int = DEFAULT_PAGE_SIZE) -> Listing[Order]:
        """A member's orders, oldest first."""
        return self._list(f"/v1/members/{_seg(member)}/orders", Page[Order], page_size)

    def create_orders_batch(
        self, orders: Iterable[PaidOrder], *, atomic: bool = False
    ) -> Call[PaidOrders]:
        """Up to 1,000 orders the mall has paid, created and paid in one call
        (idempotent per order id); ``atomic``: all or none."""
        body = {
            "orders": [
                {
                    "order_id": o.order_id,
                    "member": o.member,
                    "amount": decimal_text(o.amount),
                    "stable": decimal_text(o.stable),
                }
                for o in orders
            ]
        }
        params = {"atomic": "true"} if atomic else None
        return self._call("POST", "/v1/orders:batch", _reads(PaidOrders), params=params, json=body)

    def sales(self) -> Call[Sales]:
        """All-time totals: paid, refunded, paid − refunded."""
        return self._call("GET", "/v1/sales", _reads(Sales))


class _WalletCalls(_Calls):
    def balances(self, member: str) -> Call[Balances]:
        """A member's balances, what is held and what is available."""
        return self._call("GET", f"/v1/members/{_seg(member)}/balances", _reads(Balances))

    def all_balances(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> Listing[MemberBalance]:
        """Every member's balances, in registration order."""
        return self._list("/v1/balances", Page[MemberBalance], page_size)

    def platform_accounts(self) -> Call[dict[str, dict[str, Decimal]]]:
        """{asset: {account: balance}} of every platform account."""
        return self._call(
            "GET", "/v1/accounts/platform", lambda r: _ACCOUNTS.validate_json(r.content)
        )

    def statement(
        self, member: str, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Listing[StatementEntry]:
        """The member's journal entries, newest first."""
        return self._list(f"/v1/members/{_seg(member)}/statement", Page[StatementEntry], page_size)

    def releases(self, member: str, *, page_size: int = DEFAULT_PAGE_SIZE) -> Listing[ReleaseLine]:
        """The member's daily releases, newest day first."""
        return self._list(f"/v1/members/{_seg(member)}/releases", Page[ReleaseLine], page_size)

    def submit_request(
        self,
        member: str,
        kind: Literal["sell", "exchange", "merchant_exchange"],
        *,
        points: Amount | Literal["all"] | None = None,
        stable: Amount | None = None,
        request_id: str | None = None,
    ) -> Call[RequestStatus]:
        """A trade: sell or exchange ``points`` (or "all"), a merchant's exchange of
        ``stable``; ``pending`` until the rules decide (``request``)."""
        body: dict[str, Any] = {"kind": kind}
        if request_id is not None:
            body = {"request_id": request_id, **body}
        if points is not None:
            body["points"] = "all" if points == "all" else decimal_text(points)
        if stable is not None:
            body["stable"] = decimal_text(stable)
        return self._call(
            "POST",
            f"/v1/members/{_seg(member)}/requests",
            _reads(RequestStatus),
            json=body,
            ok=(200, 202),
        )

    def adjust(
        self,
        member: str,
        asset: Asset,
        amount: Amount,
        *,
        reason: str,
        operator: str,
        request_id: str | None = None,
    ) -> Call[RequestStatus]:
        """An admin adjustment of a member's balance (``amount`` signed, not zero)."""
        body: dict[str, Any] = {
            "member": member,
            "asset": asset,
            "amount": decimal_text(amount),
            "reason": reason,
            "operator": operator,
        }
        if request_id is not None:
            body = {"request_id": request_id, **body}
        return self._call(
            "POST", "/v1/admin/adjustments", _reads(RequestStatus), json=body, ok=(200, 202)
        )

    def request(self, request_id: str) -> Call[WalletRequest]:
        return self._call("GET", f"/v1/requests/{_seg(request_id)}", _reads(WalletRequest))

    def day_releases(
        self, day: int, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Listing[DayReleaseLine]:
        """Every member's release lines of ``day``, by member then asset (what a
        ``day.settled`` webhook links to)."""
        return self._list(f"/v1/days/{day}/releases", Page[DayReleaseLine], page_size)


class _DividendsCalls(_Calls):
    def state(self) -> Call[State]:
        """The open business day, counts, and the equity pool and price."""
        return self._call("GET", "/v1/state", _reads(State))

    def plan(self) -> Call[Plan]:
        return self._call("GET", "/v1/plan", _reads(Plan))

    def schedule_plan(
        self, plan: Mapping[str, Any], *, activate_now: bool = False
    ) -> Call[PlanScheduled]:
        """A (partial) plan, in force from the next business day (``activate_now``: at
        once, only before anything happened)."""
        body: dict[str, Any] = {"plan": _wire(plan)}
        if activate_now:
            body["activate_now"] = True
        return self._call("POST", "/v1/plan", _reads(PlanScheduled), json=body, ok=(200, 202))

    def settle(self, day: int, *, force: bool = False) -> Call[Settlement | SettlementWaiting]:
        """Settle ``day`` once its inputs are in: the settlement, or (still waiting for
        them) a ``SettlementWaiting`` (``settlement(day)`` follows it)."""
        params = {"force": "true"} if force else None
        return self._call(
            "POST", f"/v1/settlements/{day}", _settlement, params=params, ok=(200, 202)
        )

    def settlement(self, day: int) -> Call[Settlement | SettlementWaiting]:
        """A settled day, or one requested and still waiting (404: never requested)."""
        return self._call("GET", f"/v1/settlements/{day}", _settlement, ok=(200, 202))

    def member(self, member: str) -> Call[RulesMemberDetail]:
        return self._call("GET", f"/v1/members/{_seg(member)}", _reads(RulesMemberDetail))

    def members(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> Listing[RulesMember]:
        """Every member as the rules see it, in registration order."""
        return self._list("/v1/members", Page[RulesMember], page_size)

    def grants(self, member: str, *, page_size: int = DEFAULT_PAGE_SIZE) -> Listing[Grant]:
        """The member's quota grants, in creation order."""
        return self._list(f"/v1/members/{_seg(member)}/grants", Page[Grant], page_size)

    def input(self, input_id: str) -> Call[Input]:
        """An input of the engine's log by its id, ``<kind>:<id>`` (``order:o-1``)."""
        return self._call("GET", f"/v1/inputs/{_seg(input_id)}", _reads(Input))

    def inputs(
        self, *, after_seq: int | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Listing[LoggedInput]:
        """The engine's input log in the order it applied it (pages by ``after_seq``:
        each costs the same wherever it is); ``after_seq``: only what follows it."""
        params = {} if after_seq is None else {"after_seq": after_seq}
        return self._list("/v1/inputs", Page[LoggedInput], page_size, params, keyset="seq")

    def register_webhook(
        self, url: str, events: Sequence[str], *, description: str | None = None
    ) -> Call[WebhookCreated]:
        """An endpoint for these event kinds; the answer's ``secret`` is shown only here."""
        body = {"url": url, "events": list(events), "description": description}
        return self._call("POST", "/v1/webhooks", _reads(WebhookCreated), json=body, ok=(201,))

    def webhooks(self, *, page_size: int = DEFAULT_PAGE_SIZE) -> Listing[Webhook]:
        return self._list("/v1/webhooks", Page[Webhook], page_size)

    def webhook(self, webhook_id: str) -> Call[Webhook]:
        return self._call("GET", f"/v1/webhooks/{_seg(webhook_id)}", _reads(Webhook))

    def delete_webhook(self, webhook_id: str) -> Call[None]:
        """Stop the endpoint; what waits for it is cancelled."""
        return self._call("DELETE", f"/v1/webhooks/{_seg(webhook_id)}", _nothing, ok=(204,))

    def webhook_deliveries(
        self, webhook_id: str, *, status: str | None = None, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Listing[WebhookDelivery]:
        """The endpoint's delivery log, newest first (``status`` filters)."""
        params = {} if status is None else {"status": status}
        path = f"/v1/webhooks/{_seg(webhook_id)}/deliveries"
        return self._list(path, Page[WebhookDelivery], page_size, params)

    def webhook_delivery(self, webhook_id: str, delivery_id: int) -> Call[WebhookDeliveryDetail]:
        path = f"/v1/webhooks/{_seg(webhook_id)}/deliveries/{delivery_id}"
        return self._call("GET", path, _reads(WebhookDeliveryDetail))

    def redeliver(self, webhook_id: str, delivery_id: int) -> Call[WebhookDeliveryDetail]:
        """Send the delivery again now, with a fresh retry window."""
        path = f"/v1/webhooks/{_seg(webhook_id)}/deliveries/{delivery_id}/redeliver"
        return self._call("POST", path, _reads(WebhookDeliveryDetail), ok=(202,))

    def ping_webhook(self, webhook_id: str) -> Call[WebhookDeliveryDetail]:
        """A ``webhook.ping`` to this endpoint alone."""
        path = f"/v1/webhooks/{_seg(webhook_id)}/ping"
        return self._call("POST", path, _reads(WebhookDeliveryDetail), ok=(202,))


# ------------------------------------------------------------------ lists


class AsyncItems(Generic[T]):
    """A list: ``async for item in ...`` reads every item, a page at a time."""

    def __init__(self, client: AsyncClient, listing: Listing[T]) -> None:
        self._client = client
        self.listing = listing

    def __aiter__(self) -> AsyncIterator[T]:
        return self._items()

    async def _items(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.items:
                yield item

    async def pages(self) -> AsyncIterator[Page[T]]:
        """Every page, in order."""
        call: Call[Page[T]] | None = self.listing.first()
        seen = 0
        while call is not None:
            page = await self._client.send(call)
            yield page
            seen += len(page.items)
            call = self.listing.next(page, seen)

    async def page(self, offset: int = 0, limit: int = 100) -> Page[T]:
        """One page: ``limit`` items (1-10,000) from ``offset`` on."""
        return await self._client.send(self.listing.call(offset, _check_page_size(limit)))

    async def all(self) -> list[T]:
        return [item async for item in self]


class Items(Generic[T]):
    """A list: ``for item in ...`` reads every item, a page at a time."""

    def __init__(self, client: Client, listing: Listing[T]) -> None:
        self._client = client
        self.listing = listing

    def __iter__(self) -> Iterator[T]:
        for page in self.pages():
            yield from page.items

    def pages(self) -> Iterator[Page[T]]:
        """Every page, in order."""
        call: Call[Page[T]] | None = self.listing.first()
        seen = 0
        while call is not None:
            page = self._client.send(call)
            yield page
            seen += len(page.items)
            call = self.listing.next(page, seen)

    def page(self, offset: int = 0, limit: int = 100) -> Page[T]:
        """One page: ``limit`` items (1-10,000) from ``offset`` on."""
        return self._client.send(self.listing.call(offset, _check_page_size(limit)))

    def all(self) -> list[T]:
        return list(self)


# ------------------------------------------------------------------ builder → method


class _AsyncNamespace:
    def __init__(self, client: AsyncClient, calls: Any) -> None:
        self._client = client
        self._calls = calls


class _SyncNamespace:
    def __init__(self, client: Client, calls: Any) -> None:
        self._client = client
        self._calls = calls


def _named(method: Any, build: Callable[..., Any]) -> Any:
    method.__name__ = method.__qualname__ = build.__name__
    method.__doc__ = build.__doc__
    return method


class _Async(Generic[P, T]):
    """A builder of a ``Call[T]`` as a coroutine method of an async namespace."""

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self.build = build

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(
        self, obj: _AsyncNamespace, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, obj: _AsyncNamespace | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        build, client, calls = self.build, obj._client, obj._calls

        async def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return await client.send(build(calls, *args, **kwargs))

        return _named(method, build)


class _Blocking(Generic[P, T]):
    """A builder of a ``Call[T]`` as a method of a sync namespace."""

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self.build = build

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: _SyncNamespace, owner: type[Any]) -> Callable[P, T]: ...
    def __get__(self, obj: _SyncNamespace | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        build, client, calls = self.build, obj._client, obj._calls

        def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return client.send(build(calls, *args, **kwargs))

        return _named(method, build)


class _AsyncList(Generic[P, T]):
    """A builder of a ``Listing[T]`` as a method answering ``AsyncItems[T]``."""

    def __init__(self, build: Callable[Concatenate[Any, P], Listing[T]]) -> None:
        self.build = build

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: _AsyncNamespace, owner: type[Any]) -> Callable[P, AsyncItems[T]]: ...
    def __get__(self, obj: _AsyncNamespace | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        build, client, calls = self.build, obj._client, obj._calls

        def method(*args: P.args, **kwargs: P.kwargs) -> AsyncItems[T]:
            return AsyncItems(client, build(calls, *args, **kwargs))

        return _named(method, build)


class _BlockingList(Generic[P, T]):
    """A builder of a ``Listing[T]`` as a method answering ``Items[T]``."""

    def __init__(self, build: Callable[Concatenate[Any, P], Listing[T]]) -> None:
        self.build = build

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: _SyncNamespace, owner: type[Any]) -> Callable[P, Items[T]]: ...
    def __get__(self, obj: _SyncNamespace | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        build, client, calls = self.build, obj._client, obj._calls

        def method(*args: P.args, **kwargs: P.kwargs) -> Items[T]:
            return Items(client, build(calls, *args, **kwargs))

        return _named(method, build)


# ------------------------------------------------------------------ async namespaces


class _AsyncService(_AsyncNamespace):
    sync = _Async(_Calls.sync)
    parked = _AsyncList(_Calls.parked)
    discard_parked = _Async(_Calls.discard_parked)


class AsyncReferrals(_AsyncService):
    """Referrals: registration, the sponsor tree, spend, team performance, stars."""

    register_member = _Async(_ReferralsCalls.register_member)
    register_members = _Async(_ReferralsCalls.register_members)
    member = _Async(_ReferralsCalls.member)
    members = _AsyncList(_ReferralsCalls.members)
    referrals_of = _AsyncList(_ReferralsCalls.referrals_of)


class AsyncOrders(_AsyncService):
    """Orders: create, pay, refund, read; paid orders in bulk; sales."""

    create_order = _Async(_OrdersCalls.create_order)
    pay_order = _Async(_OrdersCalls.pay_order)
    refund_order = _Async(_OrdersCalls.refund_order)
    delete_order = _Async(_OrdersCalls.delete_order)
    order = _Async(_OrdersCalls.order)
    member_orders = _AsyncList(_OrdersCalls.member_orders)
    create_orders_batch = _Async(_OrdersCalls.create_orders_batch)
    sales = _Async(_OrdersCalls.sales)

    async def wait_verdict(
        self, order_id: str, *, timeout: float = 30.0, poll_seconds: float = 0.05
    ) -> Order:
        """The order once it is no longer ``pending`` (paid, refused, …); TimeoutError
        after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (order := await self.order(order_id)).status == "pending":
            if time.monotonic() > deadline:
                raise TimeoutError(f"order {order_id} still pending after {timeout} s")
            await asyncio.sleep(poll_seconds)
        return order


class AsyncWallet(_AsyncService):
    """The wallet: balances, statements, releases, trade requests, adjustments."""

    balances = _Async(_WalletCalls.balances)
    all_balances = _AsyncList(_WalletCalls.all_balances)
    platform_accounts = _Async(_WalletCalls.platform_accounts)
    statement = _AsyncList(_WalletCalls.statement)
    releases = _AsyncList(_WalletCalls.releases)
    submit_request = _Async(_WalletCalls.submit_request)
    adjust = _Async(_WalletCalls.adjust)
    request = _Async(_WalletCalls.request)
    day_releases = _AsyncList(_WalletCalls.day_releases)


class AsyncDividends(_AsyncService):
    """Dividends, the rules engine: state, plans, settlements, members, the input log."""

    state = _Async(_DividendsCalls.state)
    plan = _Async(_DividendsCalls.plan)
    schedule_plan = _Async(_DividendsCalls.schedule_plan)
    settle = _Async(_DividendsCalls.settle)
    settlement = _Async(_DividendsCalls.settlement)
    member = _Async(_DividendsCalls.member)
    members = _AsyncList(_DividendsCalls.members)
    grants = _AsyncList(_DividendsCalls.grants)
    input = _Async(_DividendsCalls.input)
    inputs = _AsyncList(_DividendsCalls.inputs)
    register_webhook = _Async(_DividendsCalls.register_webhook)
    webhooks = _AsyncList(_DividendsCalls.webhooks)
    webhook = _Async(_DividendsCalls.webhook)
    delete_webhook = _Async(_DividendsCalls.delete_webhook)
    webhook_deliveries = _AsyncList(_DividendsCalls.webhook_deliveries)
    webhook_delivery = _Async(_DividendsCalls.webhook_delivery)
    redeliver = _Async(_DividendsCalls.redeliver)
    ping_webhook = _Async(_DividendsCalls.ping_webhook)


# ------------------------------------------------------------------ sync namespaces


class _SyncService(_SyncNamespace):
    sync = _Blocking(_Calls.sync)
    parked = _BlockingList(_Calls.parked)
    discard_parked = _Blocking(_Calls.discard_parked)


class Referrals(_SyncService):
    """Referrals: registration, the sponsor tree, spend, team performance, stars."""

    register_member = _Blocking(_ReferralsCalls.register_member)
    register_members = _Blocking(_ReferralsCalls.register_members)
    member = _Blocking(_ReferralsCalls.member)
    members = _BlockingList(_ReferralsCalls.members)
    referrals_of = _BlockingList(_ReferralsCalls.referrals_of)


class Orders(_SyncService):
    """Orders: create, pay, refund, read; paid orders in bulk; sales."""

    create_order = _Blocking(_OrdersCalls.create_order)
    pay_order = _Blocking(_OrdersCalls.pay_order)
    refund_order = _Blocking(_OrdersCalls.refund_order)
    delete_order = _Blocking(_OrdersCalls.delete_order)
    order = _Blocking(_OrdersCalls.order)
    member_orders = _BlockingList(_OrdersCalls.member_orders)
    create_orders_batch = _Blocking(_OrdersCalls.create_orders_batch)
    sales = _Blocking(_OrdersCalls.sales)

    def wait_verdict(
        self, order_id: str, *, timeout: float = 30.0, poll_seconds: float = 0.05
    ) -> Order:
        """The order once it is no longer ``pending`` (paid, refused, …); TimeoutError
        after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (order := self.order(order_id)).status == "pending":
            if time.monotonic() > deadline:
                raise TimeoutError(f"order {order_id} still pending after {timeout} s")
            time.sleep(poll_seconds)
        return order


class Wallet(_SyncService):
    """The wallet: balances, statements, releases, trade requests, adjustments."""

    balances = _Blocking(_WalletCalls.balances)
    all_balances = _BlockingList(_WalletCalls.all_balances)
    platform_accounts = _Blocking(_WalletCalls.platform_accounts)
    statement = _BlockingList(_WalletCalls.statement)
    releases = _BlockingList(_WalletCalls.releases)
    submit_request = _Blocking(_WalletCalls.submit_request)
    adjust = _Blocking(_WalletCalls.adjust)
    request = _Blocking(_WalletCalls.request)
    day_releases = _BlockingList(_WalletCalls.day_releases)


class Dividends(_SyncService):
    """Dividends, the rules engine: state, plans, settlements, members, the input log."""

    state = _Blocking(_DividendsCalls.state)
    plan = _Blocking(_DividendsCalls.plan)
    schedule_plan = _Blocking(_DividendsCalls.schedule_plan)
    settle = _Blocking(_DividendsCalls.settle)
    settlement = _Blocking(_DividendsCalls.settlement)
    member = _Blocking(_DividendsCalls.member)
    members = _BlockingList(_DividendsCalls.members)
    grants = _BlockingList(_DividendsCalls.grants)
    input = _Blocking(_DividendsCalls.input)
    inputs = _BlockingList(_DividendsCalls.inputs)
    register_webhook = _Blocking(_DividendsCalls.register_webhook)
    webhooks = _BlockingList(_DividendsCalls.webhooks)
    webhook = _Blocking(_DividendsCalls.webhook)
    delete_webhook = _Blocking(_DividendsCalls.delete_webhook)
    webhook_deliveries = _BlockingList(_DividendsCalls.webhook_deliveries)
    webhook_delivery = _Blocking(_DividendsCalls.webhook_delivery)
    redeliver = _Blocking(_DividendsCalls.redeliver)
    ping_webhook = _Blocking(_DividendsCalls.ping_webhook)


# ------------------------------------------------------------------ the clients


def gateway_urls(url: str) -> dict[str, str]:
    """The four services at one origin (``tokenmall gateway``): ``{url}/{service}``."""
    return {service: f"{url.rstrip('/')}/{service}" for service in SERVICES}


AsyncTokenSource = str | Callable[[], str | Awaitable[str]]
TokenSource = str | Callable[[], str]


def _base_urls(urls: Mapping[str, str]) -> dict[str, str]:
    return {name: url.rstrip("/") for name, url in urls.items()}


def _mounts(urls: dict[str, str], transports: Mapping[str, T]) -> dict[str, T]:
    """httpx mounts for a transport per service (by its base URL's scheme, host, port)."""
    mounts: dict[str, T] = {}
    for service, transport in transports.items():
        if service not in urls:
            raise ValueError(f"a transport for {service!r}, which has no URL")
        parts = urlsplit(urls[service])
        mounts[f"{parts.scheme}://{parts.netloc}"] = transport
    return mounts


def _authorized(kwargs: dict[str, Any], token: str | None) -> dict[str, Any]:
    if token is None:
        return kwargs
    headers = dict(kwargs.get("headers") or {})
    headers["Authorization"] = f"Bearer {token}"
    return {**kwargs, "headers": headers}


class AsyncClient:
    """The platform's API, async: ``referrals``, ``orders``, ``wallet``, ``dividends``.

    ``urls``: each service's base URL; ``token``: a bearer token, or a callable (sync or
    async) giving one, asked again once when a request is answered 401; ``transport``:
    an httpx transport, or one per service (tests: ``httpx.ASGITransport`` of each
    service's app)."""

    def __init__(
        self,
        urls: Mapping[str, str],
        *,
        token: AsyncTokenSource | None = None,
        timeout: float | httpx.Timeout = 30.0,
        transport: httpx.AsyncBaseTransport | Mapping[str, httpx.AsyncBaseTransport] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.urls = _base_urls(urls)
        if isinstance(transport, Mapping):
            mounts = _mounts(self.urls, transport)
            self.http = httpx.AsyncClient(timeout=timeout, mounts=mounts, headers=headers)
        else:
            self.http = httpx.AsyncClient(timeout=timeout, transport=transport, headers=headers)
        self._source = token
        self._token: str | None = token if isinstance(token, str) else None
        self._token_lock = asyncio.Lock()
        self.referrals = AsyncReferrals(self, _ReferralsCalls("referrals"))
        self.orders = AsyncOrders(self, _OrdersCalls("orders"))
        self.wallet = AsyncWallet(self, _WalletCalls("wallet"))
        self.dividends = AsyncDividends(self, _DividendsCalls("dividends"))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    def url(self, service: str, path: str) -> str:
        try:
            return self.urls[service] + path
        except KeyError:
            raise ValueError(f"no URL for the {service} service") from None

    async def _renewed(self, stale: str | None) -> str | None:
        """A token from the source (the first, or a new one for ``stale``); concurrent
        requests that were refused the same token ask the source once."""
        source = self._source
        if source is None or isinstance(source, str):
            return source
        async with self._token_lock:
            if self._token is None or self._token == stale:
                value = source()
                self._token = await value if inspect.isawaitable(value) else value
            return self._token

    async def request(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request to ``service`` (``kwargs``: httpx's), with the token; any
        answer is returned as it is (a 401 asks a token source once more first)."""
        url = self.url(service, path)
        token = self._token if self._token is not None else await self._renewed(None)
        response = await self.http.request(method, url, **_authorized(kwargs, token))
        if response.status_code == 401 and callable(self._source):
            token = await self._renewed(token)
            response = await self.http.request(method, url, **_authorized(kwargs, token))
        return response

    async def send(self, call: Call[T]) -> T:
        """Send one ``Call`` and read its answer (``ApiError`` on 4xx/5xx)."""
        response = await self.request(
            call.service,
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            headers=call.headers,
        )
        return call.answer(response)

    def pages(
        self,
        service: str,
        path: str,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        params: Params | None = None,
        keyset: str | None = None,
    ) -> AsyncIterator[Page[dict[str, Any]]]:
        """Every page of any list (``{items, total, offset, limit}``), items as dicts;
        ``keyset``: page by ``after_<keyset>`` of the last item instead of offsets."""
        listing = Listing(service, path, RawPage, page_size, dict(params or {}), keyset)
        return AsyncItems(self, listing).pages()


class Client:
    """The platform's API, sync: ``referrals``, ``orders``, ``wallet``, ``dividends``.

    ``urls``: each service's base URL; ``token``: a bearer token, or a callable giving
    one, asked again once when a request is answered 401; ``transport``: an httpx
    transport, or one per service."""

    def __init__(
        self,
        urls: Mapping[str, str],
        *,
        token: TokenSource | None = None,
        timeout: float | httpx.Timeout = 30.0,
        transport: httpx.BaseTransport | Mapping[str, httpx.BaseTransport] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.urls = _base_urls(urls)
        if isinstance(transport, Mapping):
            mounts = _mounts(self.urls, transport)
            self.http = httpx.Client(timeout=timeout, mounts=mounts, headers=headers)
        else:
            self.http = httpx.Client(timeout=timeout, transport=transport, headers=headers)
        self._source = token
        self._token: str | None = token if isinstance(token, str) else None
        self._token_lock = threading.Lock()
        self.referrals = Referrals(self, _ReferralsCalls("referrals"))
        self.orders = Orders(self, _OrdersCalls("orders"))
        self.wallet = Wallet(self, _WalletCalls("wallet"))
        self.dividends = Dividends(self, _DividendsCalls("dividends"))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def url(self, service: str, path: str) -> str:
        try:
            return self.urls[service] + path
        except KeyError:
            raise ValueError(f"no URL for the {service} service") from None

    def _renewed(self, stale: str | None) -> str | None:
        source = self._source
        if source is None or isinstance(source, str):
            return source
        with self._token_lock:
            if self._token is None or self._token == stale:
                self._token = source()
            return self._token

    def request(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request to ``service`` (``kwargs``: httpx's), with the token; any
        answer is returned as it is (a 401 asks a token source once more first)."""
        url = self.url(service, path)
        token = self._token if self._token is not None else self._renewed(None)
        response = self.http.request(method, url, **_authorized(kwargs, token))
        if response.status_code == 401 and callable(self._source):
            token = self._renewed(token)
            response = self.http.request(method, url, **_authorized(kwargs, token))
        return response

    def send(self, call: Call[T]) -> T:
        """Send one ``Call`` and read its answer (``ApiError`` on 4xx/5xx)."""
        response = self.request(
            call.service,
            call.method,
            call.path,
            params=call.params,
            json=call.json,
            headers=call.headers,
        )
        return call.answer(response)

    def pages(
        self,
        service: str,
        path: str,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        params: Params | None = None,
        keyset: str | None = None,
    ) -> Iterator[Page[dict[str, Any]]]:
        """Every page of any list (``{items, total, offset, limit}``), items as dicts;
        ``keyset``: page by ``after_<keyset>`` of the last item instead of offsets."""
        listing = Listing(service, path, RawPage, page_size, dict(params or {}), keyset)
        return Items(self, listing).pages()
