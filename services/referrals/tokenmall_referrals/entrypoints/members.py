"""``/v1/members``: registration and the member views (money as decimal strings)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from tokenmall.http_errors import ApiError, ErrorBody
from tokenmall.ids import MEMBER_DOC, MemberId, MemberPath, Offset
from tokenmall.money import format_cents
from tokenmall.servicekit import Service
from tokenmall_referrals.service_layer import handlers

router = APIRouter(prefix="/v1/members", tags=["members"])

MAX_PAGE = 10_000
REGISTER_ATTEMPTS = 3  # a concurrent registration can take our seq: try again


class MemberCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    member: MemberId = Field(description=MEMBER_DOC)
    sponsor: MemberId | None = Field(None, description="a registered member, fixed for good")
    merchant: bool = False


class MemberSummaryPublic(BaseModel):
    member: str
    sponsor: str | None
    merchant: bool
    spend: str = Field(description="own paid orders net of refunds, decimal string")
    team_performance: str = Field(description="spend of everyone below, decimal string")
    star: int
    seq: int = Field(description="registration order (ascending, gaps allowed)")


class MemberPublic(MemberSummaryPublic):
    referrals: list[str] = Field(description="direct referrals, in registration order")


class MemberList(BaseModel):
    members: list[MemberSummaryPublic]
    total: int


def _service(request: Request) -> Service:
    svc: Service = request.app.state.svc
    return svc


async def _register(svc: Service, cmd: handlers.RegisterMember) -> handlers.MemberDetail:
    """One transaction; again if a concurrent registration took the same seq (the retry
    then answers 409 if it was the same member)."""
    for _ in range(REGISTER_ATTEMPTS - 1):
        try:
            async with svc.uow() as uow:
                return await handlers.register_member(cmd, uow)
        except IntegrityError:
            continue
    async with svc.uow() as uow:
        return await handlers.register_member(cmd, uow)


def _summary(view: handlers.MemberSummary) -> MemberSummaryPublic:
    return MemberSummaryPublic(
        member=view.member,
        sponsor=view.sponsor,
        merchant=view.merchant,
        spend=format_cents(view.spend_cents),
        team_performance=format_cents(view.team_performance_cents),
        star=view.star,
        seq=view.seq,
    )


def _detail(view: handlers.MemberDetail) -> MemberPublic:
    return MemberPublic(**_summary(view).model_dump(), referrals=view.referrals)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=MemberPublic,
    responses={
        409: {"model": ErrorBody, "description": "member already exists"},
        422: {"model": ErrorBody, "description": "unknown sponsor, self-sponsoring, bad body"},
    },
)
async def register(body: MemberCreate, request: Request) -> MemberPublic:
    svc = _service(request)
    cmd = handlers.RegisterMember(body.member, body.sponsor, body.merchant)
    try:
        view = await _register(svc, cmd)
    except handlers.MemberExists as exc:
        raise ApiError(status.HTTP_409_CONFLICT, str(exc), field="body.member") from None
    except handlers.ReferralError as exc:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc), field="body.sponsor"
        ) from None
    svc.committed()
    return _detail(view)


@router.get(
    "/{member}",
    response_model=MemberPublic,
    responses={404: {"model": ErrorBody, "description": "unknown member"}},
)
async def get_member(member: MemberPath, request: Request) -> MemberPublic:
    async with _service(request).uow() as uow:
        try:
            view = await handlers.get_member(uow, member)
        except handlers.UnknownMember as exc:
            raise ApiError(status.HTTP_404_NOT_FOUND, str(exc), field="member") from None
    return _detail(view)


@router.get("", response_model=MemberList)
async def list_members(
    request: Request,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
) -> MemberList:
    async with _service(request).uow() as uow:
        views, total = await handlers.list_members(uow, offset, limit)
    return MemberList(members=[_summary(v) for v in views], total=total)
