"""``GET /v1/inputs``: the engine's input log, in the order the engine applied it.

``tokenmall.inputlog.scenario_from_inputs`` turns it into a scenario whose ``simulate``
equals this service's state (replay and the reordering tests compare the two).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from tokenmall_dividends.adapters.tables import inputs
from tokenmall_dividends.entrypoints.deps import ServiceDep

router = APIRouter(prefix="/v1", tags=["state"])
MAX_PAGE = 10_000


class LoggedInput(BaseModel):
    seq: int = Field(description="position in the log (ascending, gaps allowed)")
    input_id: str
    kind: str
    payload: dict[str, Any] = Field(description="the arguments of the engine call")
    accepted: bool
    reason: str | None
    day: int = Field(description="the business day it was applied on")


class InputLog(BaseModel):
    items: list[LoggedInput]
    total: int
    offset: int
    limit: int


@router.get("/inputs", response_model=InputLog)
async def input_log(
    svc: ServiceDep,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
    after_seq: Annotated[
        int | None,
        Query(
            ge=0,
            le=2**63 - 1,
            description="only inputs after this seq (the last one read): a page costs the "
            "same wherever it is, where an offset reads everything before it again",
        ),
    ] = None,
) -> InputLog:
    assert svc.sessions is not None
    async with svc.sessions() as session:
        total = (await session.execute(select(func.count()).select_from(inputs))).scalar_one()
        stmt = select(inputs).order_by(inputs.c.seq)
        if after_seq is not None:
            stmt = stmt.where(inputs.c.seq > after_seq)
        rows = await session.execute(stmt.offset(offset).limit(limit))
        items = [
            LoggedInput(
                seq=r.seq,
                input_id=r.input_id,
                kind=r.kind,
                payload=json.loads(r.payload),
                accepted=r.accepted,
                reason=r.reason,
                day=r.day,
            )
            for r in rows
        ]
    return InputLog(items=items, total=int(total), offset=offset, limit=limit)
