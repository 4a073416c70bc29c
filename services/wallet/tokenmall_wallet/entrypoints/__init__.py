"""HTTP entry points (one APIRouter per module) and what they share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

from fastapi import Request
from sqlalchemy.exc import IntegrityError

from tokenmall.engine.plan import MAX_CASH_CENTS, MAX_POINT_UNITS
from tokenmall.http_errors import ErrorBody, FieldError
from tokenmall.messaging import UnitOfWork
from tokenmall.money import AmountError, to_cents, to_units
from tokenmall.registry import learn_member
from tokenmall.servicekit import Service
from tokenmall_wallet.service_layer import handlers


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the refusals a route answers with (the error body)."""
    text = {404: "unknown member, hold or request", 409: "refused: see message"}
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


def get_service(request: Request) -> Service:
    svc: Service = request.app.state.svc
    return svc


T = TypeVar("T")


async def for_member(svc: Service, member: str, command: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    """Run a member's command in a transaction.  A member this wallet has not heard of
    yet (its registration event is on its way) is looked up in the registry and recorded
    first: read-your-writes for the mall, with the result the event would have given."""
    try:
        return await _run(svc, command)
    except handlers.UnknownMember:
        registry = svc.state.get("registry")
        if registry is None or not await learn_member(
            svc.uow(), registry, member, handlers.on_members
        ):
            raise
    return await _run(svc, command)


ATTEMPTS = 3


async def _run(svc: Service, command: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    """One transaction; again if a concurrent command inserted the same id first (a hold
    or request id is unique across members, whose row locks do not serialise them): the
    next attempt finds that row and answers like a repeat (its stored status, or 409 for
    another body) instead of a 500."""
    for _ in range(ATTEMPTS - 1):
        try:
            async with svc.uow() as uow:
                return await command(uow)
        except IntegrityError:
            continue
    async with svc.uow() as uow:
        return await command(uow)


def minor_amount(asset: str, value: Decimal, what: str) -> int:
    """``value`` in the asset's minor units, within the engine's limits (FieldError: 422
    naming the field ``what``)."""
    try:
        minor = to_units(value, what) if asset == "equity" else to_cents(value, what)
    except AmountError as exc:
        raise FieldError(what, str(exc)) from None
    if abs(minor) > (MAX_POINT_UNITS if asset == "equity" else MAX_CASH_CENTS):
        raise FieldError(what, f"{what} is above the limit")
    return minor
