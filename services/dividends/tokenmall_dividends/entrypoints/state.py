"""Read side: the equity pool, the business day, members' quotas, weights and releases."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select

from tokenmall.http_errors import ApiError
from tokenmall.ids import InputIdPath, MemberPath, Offset
from tokenmall.views import equity_view, member_views
from tokenmall_dividends.adapters.tables import inputs
from tokenmall_dividends.entrypoints.deps import ServiceDep
from tokenmall_dividends.service_layer.handlers import host_of

router = APIRouter(prefix="/v1", tags=["state"])


@router.get("/state")
async def state(svc: ServiceDep) -> dict[str, Any]:
    engine = host_of(svc).engine
    return {
        "day": engine.day,
        "members": len(engine.names),
        "equity": equity_view(engine),
        "orders": len(engine.orders),
    }


@router.get("/members")
async def members(
    svc: ServiceDep,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> dict[str, Any]:
    engine = host_of(svc).engine
    return {"members": member_views(engine, offset, offset + limit), "total": len(engine.names)}


@router.get("/members/{member}")
async def member(member: MemberPath, svc: ServiceDep) -> dict[str, Any]:
    engine = host_of(svc).engine
    m = engine.index.get(member)
    if m is None:
        raise ApiError(404, f"unknown member {member!r}", field="member")
    view: dict[str, Any] = member_views(engine, m, m + 1)[member]
    view["grants"] = [
        {"grant": g, "quota": engine.grant_quota[g], "remaining": engine.grant_remaining[g]}
        for g in engine.member_grants[m]
    ]
    return view


@router.get("/inputs/{input_id}")
async def input_status(input_id: InputIdPath, svc: ServiceDep) -> dict[str, Any]:
    assert svc.sessions is not None
    async with svc.sessions() as session:
        row = (await session.execute(select(inputs).where(inputs.c.input_id == input_id))).first()
    if row is None:
        raise ApiError(404, f"input {input_id!r} not applied (yet)", field="input_id")
    return {
        "input_id": input_id,
        "seq": row.seq,
        "kind": row.kind,
        "accepted": row.accepted,
        "reason": row.reason,
        "day": row.day,
    }
