"""HTTP API of the orders service: create, pay, refund and read orders; all-time sales.

Amounts are decimal strings, in requests too (``tokenmall.api_style``: a JSON number
is refused); ``"10.123"`` is refused for its 3 decimals instead of being rounded
somewhere.  Errors answer the error body ``{"code", "message", "field"}``
(``tokenmall.http_errors``) and change nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar, cast

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tokenmall.api_style import DEFAULT_LIMIT, DecimalString, Limit, Offset, Page
from tokenmall.http_errors import ApiError, ErrorBody
from tokenmall.ids import ID_DOC, KEY_PATTERN, MEMBER_DOC, Id, IdPath, MemberId, MemberPath
from tokenmall.registry import MemberRegistry, RegistryUnavailable
from tokenmall.servicekit import Service
from tokenmall_orders.adapters.wallet import Wallet, WalletError, WalletUnavailable
from tokenmall_orders.service_layer import handlers
from tokenmall_orders.service_layer.handlers import (
    Conflict,
    CreateOrder,
    DeleteOrder,
    Idempotency,
    Invalid,
    NotFound,
    OrderError,
    PayOrder,
    RefundOrder,
    Reply,
)

router = APIRouter(prefix="/v1", tags=["orders"])


class OrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    member: MemberId = Field(description=MEMBER_DOC)
    amount: DecimalString = Field(description="> 0, at most 2 decimals, at most 1000000000000.00")
    stable: DecimalString = Field(
        Decimal(0), description="the part paid in stable points, ≤ amount"
    )
    order_id: Id | None = Field(None, description=f"{ID_DOC}; default: a uuid4")


class OrderPublic(BaseModel):
    order_id: str
    member: str
    amount: Decimal
    stable: Decimal
    status: Literal["created", "pending", "paid", "refused", "refunded"] = Field(
        description="created → pending (paid, awaiting the rules' verdict) → paid | refused; "
        "paid → refunded"
    )
    reason: str | None = Field(None, description="why the rules refused the order")
    day: int | None = Field(
        None,
        description="the business day the order counts in (from its payment on): the day "
        "it was paid; the next open day only if its payment reached the rules after its day "
        "was settled by force",
    )
    created_at: datetime | None = None
    paid_at: datetime | None = None
    decided_at: datetime | None = Field(None, description="when the rules' verdict arrived")
    refunded_at: datetime | None = None


class SalesPublic(BaseModel):
    paid: Decimal
    refunded: Decimal
    sales: Decimal


def get_service(request: Request) -> Service:
    return cast(Service, request.app.state.svc)


ServiceDep = Annotated[Service, Depends(get_service)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=KEY_PATTERN),
]

T = TypeVar("T")
STATUS: dict[type[OrderError], int] = {
    NotFound: 404,
    handlers.UnknownMember: 404,
    Conflict: 409,
    Invalid: 422,
}


async def _run(call: Awaitable[T]) -> T:
    """Run a handler; its refusals become HTTP errors (the error body)."""
    try:
        return await call
    except OrderError as exc:
        raise ApiError(STATUS.get(type(exc), 400), str(exc), field=_field(exc)) from None
    except WalletUnavailable as exc:
        raise ApiError(503, f"the wallet is unavailable, try again: {exc}") from None
    except RegistryUnavailable as exc:
        raise ApiError(503, f"the member registry is unavailable, try again: {exc}") from None
    except WalletError as exc:
        raise ApiError(502, str(exc)) from None


# the handlers' refusals of one field start with its name
FIELDS = {"amount": "body.amount", "stable": "body.stable", "Idempotency-Key": "Idempotency-Key"}


def _field(exc: OrderError) -> str | None:
    first = str(exc).split(" ", 1)[0]
    return FIELDS.get(first) if isinstance(exc, Invalid) else None


def _idempotency(key: str | None, request: Request) -> Idempotency | None:
    return None if key is None else Idempotency(key, request.method, request.url.path)


def _answer(reply: Reply, svc: Service) -> JSONResponse:
    if reply.emitted:
        svc.committed()  # the relay publishes what the transaction emitted at once
    return JSONResponse(reply.body, status_code=reply.status_code)


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (404, 409, 422)}


@router.post("/orders", status_code=201, response_model=OrderPublic, responses=ERRORS)
async def create_order(
    body: OrderCreate, request: Request, svc: ServiceDep, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """Create an order (status ``created``) for a registered member."""
    cmd = CreateOrder(
        member=body.member,
        amount=body.amount,
        stable=body.stable,
        order_id=body.order_id,
        idempotency=_idempotency(idempotency_key, request),
    )
    registry = cast(MemberRegistry | None, svc.state.get("registry"))
    return _answer(await _run(handlers.create_order(cmd, svc.uow(), registry)), svc)


@router.get("/orders/{order_id}", response_model=OrderPublic, responses=ERRORS)
async def get_order(order_id: IdPath, svc: ServiceDep) -> JSONResponse:
    return JSONResponse(await _run(handlers.get_order(order_id, svc.uow())))


@router.post(
    "/orders/{order_id}/pay",
    status_code=202,
    response_model=OrderPublic,
    responses={**ERRORS, 502: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def pay_order(
    order_id: IdPath, request: Request, svc: ServiceDep, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """Pay: hold the stable part in the wallet (if any), publish OrderPaid; 202 with status
    ``pending``.  The order becomes ``paid`` (or ``refused``, with the reason, its stable
    hold released) once the rules decided — poll ``GET /v1/orders/{id}``."""
    wallet = cast(Wallet, svc.state["wallet"])
    cmd = PayOrder(order_id, _idempotency(idempotency_key, request))
    return _answer(await _run(handlers.pay_order(cmd, svc.uow(), wallet)), svc)


@router.post("/orders/{order_id}/refund", response_model=OrderPublic, responses=ERRORS)
async def refund_order(
    order_id: IdPath, request: Request, svc: ServiceDep, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """Refund a paid order, publish OrderRefunded."""
    cmd = RefundOrder(order_id, _idempotency(idempotency_key, request))
    return _answer(await _run(handlers.refund_order(cmd, svc.uow())), svc)


@router.delete("/orders/{order_id}", status_code=204, responses=ERRORS)
async def delete_order(order_id: IdPath, svc: ServiceDep) -> Response:
    """Delete an order that was never paid (e.g. after a refused pay); its id is free again."""
    wallet = cast(Wallet, svc.state["wallet"])
    await _run(handlers.delete_order(DeleteOrder(order_id), svc.uow(), wallet))
    return Response(status_code=204)


@router.get("/sales", response_model=SalesPublic)
async def sales(svc: ServiceDep) -> JSONResponse:
    """All-time totals: every paid order amount, the refunded ones, and paid − refunded."""
    return JSONResponse(await handlers.sales(svc.uow()))


@router.get("/members/{member}/orders", response_model=Page[OrderPublic], responses=ERRORS)
async def member_orders(
    member: MemberPath, svc: ServiceDep, limit: Limit = DEFAULT_LIMIT, offset: Offset = 0
) -> JSONResponse:
    """A member's orders, oldest first."""
    views, total = await _run(handlers.member_orders(member, svc.uow(), limit=limit, offset=offset))
    return JSONResponse({"items": views, "total": total, "offset": offset, "limit": limit})


class PaidOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: Id = Field(description=f"{ID_DOC}; the mall's order id (idempotency key)")
    member: MemberId = Field(description=MEMBER_DOC)
    amount: DecimalString = Field(description="> 0, at most 2 decimals, at most 1000000000000.00")
    stable: DecimalString = Field(
        Decimal(0), description="the part paid in stable points, ≤ amount"
    )


class PaidOrderBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    orders: list[PaidOrder] = Field(min_length=1, max_length=handlers.MAX_BATCH)


class PaidOrderResult(BaseModel):
    order_id: str
    status: Literal["accepted", "exists", "refused"] = Field(
        description="accepted: paid now, the rules' verdict follows (GET /v1/orders/{id}); "
        "exists: paid before with the same member, amount and stable part (sending a "
        "batch again is harmless); refused: nothing changed, see error"
    )
    order: OrderPublic | None = Field(None, description="the order as it stands")
    error: str | None = Field(None, description="why it was refused")
    code: int | None = Field(
        None, description="the HTTP status a single create + pay would have answered"
    )
    field: str | None = Field(None, description="the item's field at fault, if one is")


class PaidOrderBatchResult(BaseModel):
    items: list[PaidOrderResult] = Field(description="one per order of the batch, in order")
    accepted: int
    existing: int
    refused: int


@router.post(
    "/orders:batch",
    response_model=PaidOrderBatchResult,
    responses={
        422: {
            "model": ErrorBody,
            "description": "bad body; with atomic=true: a refused item (field names it), "
            "nothing paid",
        },
        503: {"model": ErrorBody, "description": "atomic=true: the wallet did not answer"},
    },
)
async def pay_orders(
    body: PaidOrderBatch,
    svc: ServiceDep,
    atomic: Annotated[
        bool, Query(description="all or nothing: one refused item and none is paid (422)")
    ] = False,
) -> PaidOrderBatchResult:
    """Up to 1,000 orders the mall's payment system has paid, each created and paid in
    one step (stable parts held in the wallet like a single pay), with one write
    transaction and one ``OrdersPaid``; idempotent per order id, refused per item."""
    items = [handlers.PaidOrderItem(o.order_id, o.member, o.amount, o.stable) for o in body.orders]
    wallet = cast(Wallet, svc.state["wallet"])
    registry = cast(MemberRegistry | None, svc.state.get("registry"))
    results, emitted = await handlers.pay_orders(items, svc.uow(), wallet, registry, atomic)
    refused = [(i, r) for i, r in enumerate(results) if r.status == "refused"]
    if atomic and refused:
        index, first = refused[0]
        raise ApiError(
            503 if first.code == 503 else 422,  # 503: the wallet, try again
            f"item {index} (order {first.order_id!r}): {first.error}; nothing was paid "
            f"({len(refused)} of {len(results)} refused)",
            field=f"body.orders[{index}]" + (f".{first.field}" if first.field else ""),
        )
    if emitted:
        svc.committed()  # the relay publishes what the transaction emitted at once
    return PaidOrderBatchResult(
        items=[
            PaidOrderResult(
                order_id=r.order_id,
                status=r.status,  # type: ignore[arg-type]
                order=None if r.order is None else OrderPublic(**r.order),
                error=r.error,
                code=r.code,
                field=None if r.field is None else f"body.orders[{i}].{r.field}",
            )
            for i, r in enumerate(results)
        ],
        accepted=sum(1 for r in results if r.status == "accepted"),
        existing=sum(1 for r in results if r.status == "exists"),
        refused=sum(1 for r in results if r.status == "refused"),
    )
