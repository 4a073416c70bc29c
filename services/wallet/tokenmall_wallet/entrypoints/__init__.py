"""HTTP entry points (one APIRouter per module) and what they share."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import Request
from pydantic import BaseModel, BeforeValidator

from tokenmall.engine.plan import MAX_CASH_CENTS, MAX_POINT_UNITS
from tokenmall.money import AmountError, to_decimal
from tokenmall.servicekit import Service
from tokenmall_wallet.service_layer.handlers import to_minor


class ErrorPublic(BaseModel):
    detail: str


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the refusals a route answers with ``{"detail": "..."}``."""
    text = {404: "unknown member, hold or request", 409: "refused: see detail"}
    return {code: {"model": ErrorPublic, "description": text[code]} for code in codes}


def get_service(request: Request) -> Service:
    svc: Service = request.app.state.svc
    return svc


def _exact(value: Any) -> Decimal:
    """A decimal string or an integer; a JSON float has already lost the decimal."""
    try:
        return to_decimal(value)
    except AmountError as exc:
        raise ValueError(str(exc)) from None


ExactDecimal = Annotated[Decimal, BeforeValidator(_exact)]


def minor_amount(asset: str, value: Decimal, what: str) -> int:
    """``value`` in the asset's minor units, within the engine's limits (ValueError: 422)."""
    try:
        minor = to_minor(asset, value)
    except AmountError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if abs(minor) > (MAX_POINT_UNITS if asset == "equity" else MAX_CASH_CENTS):
        raise ValueError(f"{what} is above the limit")
    return minor
