"""Plan versions: effective from the next business day (RULES §6)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from tokenmall_dividends.entrypoints.deps import ServiceDep
from tokenmall_dividends.service_layer import handlers
from tokenmall_dividends.service_layer.handlers import host_of

router = APIRouter(prefix="/v1/plan", tags=["plan"])


class PlanCreate(BaseModel):
    plan: dict[str, Any]
    activate_now: bool = False  # only before anything happened: the platform's first plan


class PlanPublic(BaseModel):
    day: int
    current: dict[str, Any]
    pending: dict[str, Any] | None


@router.get("")
async def get_plan(svc: ServiceDep) -> PlanPublic:
    engine = host_of(svc).engine
    pending = engine.pending_plan.raw if engine.pending_plan else None
    return PlanPublic(day=engine.day, current=engine.plan.raw, pending=pending)


@router.post("", status_code=202)
async def post_plan(body: PlanCreate, svc: ServiceDep) -> dict[str, Any]:
    outcome = await handlers.schedule_plan(svc, body.plan, body.activate_now)
    if not outcome.accepted:
        status = 422 if (outcome.reason or "").startswith("plan:") else 409
        raise HTTPException(status, outcome.reason)
    engine = host_of(svc).engine
    return {"accepted": True, "effective_day": engine.day if body.activate_now else engine.day + 1}
