"""Read side: the equity pool, the business day, members' quotas, weights and releases."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field
from sqlalchemy import select

from tokenmall.api_style import DEFAULT_LIMIT, Limit, Page
from tokenmall.http_errors import ApiError, ErrorBody
from tokenmall.ids import INPUT_ID_MAX_LENGTH, MemberPath, Offset
from tokenmall.money import format_cents
from tokenmall.views import equity_view, member_views
from tokenmall_dividends.adapters.tables import inputs
from tokenmall_dividends.entrypoints.deps import ServiceDep
from tokenmall_dividends.service_layer.handlers import host_of

router = APIRouter(prefix="/v1", tags=["state"])

# an input id, or a bare client id (``o-11``): that one gets a 404 saying what to ask
InputOrClientId = Annotated[
    str,
    Path(
        pattern=r"^([a-z_]{1,16}:)?\+?[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        min_length=1,
        max_length=INPUT_ID_MAX_LENGTH,
        description="<kind>:<id>, e.g. order:o-1, refund:o-1, request:r-1, join:A",
    ),
]

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}}


class EquityPublic(BaseModel):
    price: str | None = Field(description="pool ÷ circulating points; null without equity")
    pool: str
    circulating: str
    treasury: str
    minted: str


class StatePublic(BaseModel):
    day: int = Field(description="the open business day")
    member_count: int = Field(description="members the engine knows")
    order_count: int = Field(description="orders the engine applied")
    equity: EquityPublic


class MemberViewPublic(BaseModel):
    """A member as the rules see it (RULES.md): the engine's balances, quota and weights."""

    member: str
    cny: str
    stable: str
    equity: str
    quota_remaining: str
    spend: str
    shares: int
    contribution: int
    star: int
    team_performance: str
    released: dict[str, str] = Field(description="the open day's releases by kind, non-zero")


class MemberDetailPublic(MemberViewPublic):
    grant_count: int = Field(description="quota grants (GET /v1/members/{member}/grants)")


class GrantPublic(BaseModel):
    seq: int = Field(description="the grant's number among all grants, in creation order")
    quota: str
    remaining: str


class InputPublic(BaseModel):
    input_id: str
    seq: int = Field(description="the order the engine applied inputs in")
    kind: str
    accepted: bool
    reason: str | None = Field(description="why the rules refused it")
    day: int | None


@router.get("/state", response_model=StatePublic)
async def state(svc: ServiceDep) -> StatePublic:
    engine = host_of(svc).engine
    return StatePublic(
        day=engine.day,
        member_count=len(engine.names),
        equity=EquityPublic(**equity_view(engine)),
        order_count=len(engine.orders),
    )


@router.get("/members", response_model=Page[MemberViewPublic])
async def members(
    svc: ServiceDep, offset: Offset = 0, limit: Limit = DEFAULT_LIMIT
) -> Page[MemberViewPublic]:
    """Members in registration order (the whole-forest weights are computed once while
    nothing changes, not per page)."""
    engine = host_of(svc).engine
    views = member_views(engine, offset, offset + limit)
    return Page(
        items=[MemberViewPublic(member=name, **view) for name, view in views.items()],
        total=len(engine.names),
        offset=offset,
        limit=limit,
    )


def _member_index(svc: ServiceDep, member: str) -> int:
    m = host_of(svc).engine.index.get(member)
    if m is None:
        raise ApiError(404, f"unknown member {member!r}", field="member")
    return int(m)


@router.get("/members/{member}", response_model=MemberDetailPublic, responses=NOT_FOUND)
async def member(member: MemberPath, svc: ServiceDep) -> MemberDetailPublic:
    engine = host_of(svc).engine
    m = _member_index(svc, member)
    view = member_views(engine, m, m + 1)[member]
    return MemberDetailPublic(member=member, **view, grant_count=len(engine.member_grants[m]))


@router.get("/members/{member}/grants", response_model=Page[GrantPublic], responses=NOT_FOUND)
async def grants(
    member: MemberPath, svc: ServiceDep, offset: Offset = 0, limit: Limit = DEFAULT_LIMIT
) -> Page[GrantPublic]:
    """The member's quota grants in creation order: the quota each granted and what of
    it remains to be released."""
    engine = host_of(svc).engine
    owned = engine.member_grants[_member_index(svc, member)]
    items = [
        GrantPublic(
            seq=g,
            quota=format_cents(int(engine.grant_quota[g])),
            remaining=format_cents(int(engine.grant_remaining[g])),
        )
        for g in owned[offset : offset + limit]
    ]
    return Page(items=items, total=len(owned), offset=offset, limit=limit)


@router.get("/inputs/{input_id}", response_model=InputPublic, responses=NOT_FOUND)
async def input_status(input_id: InputOrClientId, svc: ServiceDep) -> InputPublic:
    """An input by its id in the engine's log: ``<kind>:<id>`` (``order:o-11``)."""
    assert svc.sessions is not None
    async with svc.sessions() as session:
        row = (await session.execute(select(inputs).where(inputs.c.input_id == input_id))).first()
    if row is None:
        _, sep, _ = input_id.partition(":")
        if not sep:
            raise ApiError(
                404,
                f"no input {input_id!r}: input ids are <kind>:<id>, e.g. 'order:{input_id}' "
                f"(an order's verdict is also GET /v1/orders/{input_id} on orders, a "
                f"request's GET /v1/requests/{input_id} on the wallet)",
                field="input_id",
            )
        raise ApiError(404, f"input {input_id!r} not applied (yet)", field="input_id")
    return InputPublic(
        input_id=input_id,
        seq=row.seq,
        kind=row.kind,
        accepted=row.accepted,
        reason=row.reason,
        day=row.day,
    )
