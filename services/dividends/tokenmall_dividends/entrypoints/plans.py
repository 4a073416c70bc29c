"""Plan versions: effective from the next business day (RULES §6)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from tokenmall.engine.plan import plan_document
from tokenmall.http_errors import ApiError, ErrorBody
from tokenmall_dividends.entrypoints.deps import ServiceDep
from tokenmall_dividends.service_layer import handlers
from tokenmall_dividends.service_layer.handlers import host_of

router = APIRouter(prefix="/v1/plan", tags=["plan"])


class PlanCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: dict[str, Any] = Field(
        description="a (partial) plan mapping (SCENARIOS.md); numbers as decimal strings or "
        "integers (a JSON float is refused: it has already lost the decimal)"
    )
    activate_now: StrictBool = Field(
        False,
        description="only before anything happened (no member, day 1): merged into the newest "
        "plan version like any plan, and in force at once instead of from the next day",
    )


class PlanPublic(BaseModel):
    day: int
    current: dict[str, Any] = Field(
        description="the plan in force: amounts, rates and multiples as decimal strings, "
        "counts (a pool tier's min/max shares, the team's max_depth) as integers"
    )
    pending: dict[str, Any] | None = Field(description="the version in force from day + 1")


class PlanScheduledPublic(BaseModel):
    accepted: bool
    effective_day: int = Field(description="the business day the plan is in force from")


@router.get("", response_model=PlanPublic)
async def get_plan(svc: ServiceDep) -> PlanPublic:
    engine = host_of(svc).engine
    pending = plan_document(engine.pending_plan.raw) if engine.pending_plan else None
    return PlanPublic(day=engine.day, current=plan_document(engine.plan.raw), pending=pending)


@router.post(
    "",
    status_code=202,
    response_model=PlanScheduledPublic,
    responses={409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def post_plan(body: PlanCreate, svc: ServiceDep) -> PlanScheduledPublic:
    outcome = await handlers.schedule_plan(svc, body.plan, body.activate_now)
    if not outcome.accepted:
        reason = outcome.reason or "refused"
        if reason.startswith("plan:"):
            raise ApiError(422, reason, field="body.plan")
        raise ApiError(409, reason, field="body.activate_now" if body.activate_now else None)
    engine = host_of(svc).engine
    effective_day = engine.day if body.activate_now else engine.day + 1
    return PlanScheduledPublic(accepted=True, effective_day=effective_day)
