"""Daily settlement, triggered per business day (a scheduler after midnight, or replay)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from tokenmall.http_errors import ApiError
from tokenmall.ids import DayPath
from tokenmall.money import format_cents
from tokenmall_dividends.adapters.tables import settlements
from tokenmall_dividends.entrypoints.deps import ServiceDep
from tokenmall_dividends.service_layer import handlers

router = APIRouter(prefix="/v1/settlements", tags=["settlements"])


@router.post("/{day}")
async def settle_day(day: DayPath, svc: ServiceDep) -> dict[str, Any]:
    """Settle ``day``; settling a settled day changes nothing and says so."""
    outcome = await handlers.settle(svc, day)
    if not outcome.accepted:
        raise ApiError(409, outcome.reason or "refused", field="day")
    report = outcome.result
    return {
        "day": day,
        "status": "completed",
        "already_settled": report.already_settled,
        "released": {k: format_cents(v) for k, v in report.released.items()},
        "members_released": report.members_released,
        "retained": format_cents(report.retained),
        "rounding": format_cents(report.rounding),
        "forced_exits": len(report.exits),
        "seconds": round(outcome.seconds, 4),
    }


@router.get("/{day}")
async def get_settlement(day: DayPath, svc: ServiceDep) -> dict[str, Any]:
    assert svc.sessions is not None
    async with svc.sessions() as session:
        row = (await session.execute(select(settlements).where(settlements.c.day == day))).first()
    if row is None:
        raise ApiError(404, f"day {day} is not settled", field="day")
    return {
        "day": day,
        "status": "completed",
        "members_released": row.members_released,
        "released": {k: format_cents(v) for k, v in json.loads(row.released).items()},
        "seconds": row.seconds,
    }
