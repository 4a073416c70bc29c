"""``/v1/members``: registration and the member views (money as decimal strings)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from tokenmall.api_style import DEFAULT_LIMIT, Limit, Page, as_utc
from tokenmall.http_errors import ApiError, ErrorBody
from tokenmall.ids import MEMBER_DOC, MemberId, MemberPath, Offset
from tokenmall.money import format_cents
from tokenmall.servicekit import Service
from tokenmall_referrals.service_layer import handlers

router = APIRouter(prefix="/v1/members", tags=["members"])

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
    registered_at: datetime | None


class MemberPublic(MemberSummaryPublic):
    referral_count: int = Field(
        description="direct referrals (the list: GET /v1/members/{member}/referrals)"
    )


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
        registered_at=as_utc(view.registered_at),
    )


def _detail(view: handlers.MemberDetail) -> MemberPublic:
    return MemberPublic(**_summary(view).model_dump(), referral_count=view.referral_count)


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


class MemberBatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    members: list[MemberCreate] = Field(
        min_length=1,
        max_length=handlers.MAX_BATCH,
        description="registered in this order: a sponsor may come earlier in the batch",
    )


class MemberBatchItem(BaseModel):
    member: str
    status: Literal["created", "exists", "refused"] = Field(
        description="created; exists (registered before with the same sponsor and merchant "
        "flag: sending a batch again is harmless); refused (see error)"
    )
    seq: int | None = Field(description="registration order (created, exists)")
    error: str | None = Field(description="why it was refused")


class MemberBatchResult(BaseModel):
    items: list[MemberBatchItem] = Field(description="one per member of the batch, in order")
    created: int
    existing: int
    refused: int


async def _register_batch(
    svc: Service, cmds: list[handlers.RegisterMember], atomic: bool
) -> list[handlers.BatchItemResult]:
    """One transaction; again if a concurrent registration took a member or a seq (the
    retry then sees it)."""
    for _ in range(REGISTER_ATTEMPTS - 1):
        try:
            async with svc.uow() as uow:
                return await handlers.register_members(cmds, uow, atomic)
        except IntegrityError:
            continue
    async with svc.uow() as uow:
        return await handlers.register_members(cmds, uow, atomic)


@router.post(
    ":batch",
    response_model=MemberBatchResult,
    responses={
        422: {
            "model": ErrorBody,
            "description": "bad body; with atomic=true: a refused item (field names it), "
            "nothing registered",
        }
    },
)
async def register_batch(
    body: MemberBatch,
    request: Request,
    atomic: Annotated[
        bool,
        Query(description="all or nothing: one refused item and none is registered (422)"),
    ] = False,
) -> MemberBatchResult:
    """Register up to 10,000 members in one call (one transaction, one event each)."""
    svc = _service(request)
    cmds = [handlers.RegisterMember(m.member, m.sponsor, m.merchant) for m in body.members]
    results = await _register_batch(svc, cmds, atomic)
    refused = [(i, r) for i, r in enumerate(results) if r.status == "refused"]
    if atomic and refused:
        index, first = refused[0]
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"item {index} (member '{first.member}'): {first.error}; nothing was registered "
            f"({len(refused)} of {len(results)} refused)",
            field=f"body.members[{index}].{first.field}",
        )
    created = sum(1 for r in results if r.status == "created")
    if created:
        svc.committed()
    return MemberBatchResult(
        items=[
            MemberBatchItem(member=r.member, status=r.status, seq=r.seq, error=r.error)  # type: ignore[arg-type]
            for r in results
        ],
        created=created,
        existing=sum(1 for r in results if r.status == "exists"),
        refused=len(refused),
    )


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


@router.get("", response_model=Page[MemberSummaryPublic])
async def list_members(
    request: Request, offset: Offset = 0, limit: Limit = DEFAULT_LIMIT
) -> Page[MemberSummaryPublic]:
    """Every member in registration order."""
    async with _service(request).uow() as uow:
        views, total = await handlers.list_members(uow, offset, limit)
    return Page(items=[_summary(v) for v in views], total=total, offset=offset, limit=limit)


@router.get(
    "/{member}/referrals",
    response_model=Page[MemberSummaryPublic],
    responses={404: {"model": ErrorBody, "description": "unknown member"}},
)
async def list_referrals(
    member: MemberPath, request: Request, offset: Offset = 0, limit: Limit = DEFAULT_LIMIT
) -> Page[MemberSummaryPublic]:
    """The member's direct referrals in registration order (one level of the downline:
    a tree is walked a page of children at a time)."""
    async with _service(request).uow() as uow:
        try:
            views, total = await handlers.list_members(uow, offset, limit, sponsor=member)
        except handlers.UnknownMember as exc:
            raise ApiError(status.HTTP_404_NOT_FOUND, str(exc), field="member") from None
    return Page(items=[_summary(v) for v in views], total=total, offset=offset, limit=limit)
