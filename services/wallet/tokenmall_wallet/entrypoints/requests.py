"""Trade requests (sell, exchange, merchant exchange), admin adjustments, their status.

Each is validated and its value held here, then applied by dividends (which owns
the price); the answer comes back as ``InputApplied`` and finalises the request.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import uuid4

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenmall.api_style import DecimalString
from tokenmall.http_errors import FieldError
from tokenmall.ids import ID_DOC, MEMBER_DOC, Id, IdPath, MemberId, MemberPath, Text200, Text1000
from tokenmall.servicekit import Service
from tokenmall_wallet.entrypoints import (
    errors,
    for_member,
    get_service,
    minor_amount,
)
from tokenmall_wallet.service_layer import handlers

router = APIRouter(tags=["requests"])

RequestId = Annotated[
    Id, Field(default_factory=lambda: str(uuid4()), description=f"{ID_DOC}; default: a uuid4")
]


class RequestCreate(BaseModel):
    """sell / exchange: ``points`` (a decimal, or "all" = the whole available balance;
    required); merchant_exchange: ``stable``."""

    model_config = ConfigDict(extra="forbid")

    request_id: RequestId
    kind: Literal["sell", "exchange", "merchant_exchange"]
    points: DecimalString | Literal["all"] | None = None
    stable: DecimalString | None = None

    @model_validator(mode="after")
    def _fields(self) -> RequestCreate:
        if self.kind == "merchant_exchange":
            if self.points is not None:
                raise FieldError("points", "a merchant exchange takes stable, not points")
            if self.stable is None:
                raise FieldError("stable", "a merchant exchange needs stable")
            if minor_amount("stable", self.stable, "stable") <= 0:
                raise FieldError("stable", "stable must be > 0")
        else:
            if self.stable is not None:
                raise FieldError("stable", f"{self.kind} takes points, not stable")
            if self.points is None:
                raise FieldError("points", f'{self.kind} needs points (a decimal or "all")')
            if self.points != "all" and self._units() <= 0:
                raise FieldError("points", "points must be > 0")
        return self

    def _units(self) -> int:
        assert self.points is not None and self.points != "all"
        return minor_amount("equity", self.points, "points")

    def command(self, member: str) -> handlers.SubmitTrade:
        if self.kind == "merchant_exchange":
            assert self.stable is not None
            return handlers.SubmitTrade(
                self.request_id,
                member,
                self.kind,
                stable=minor_amount("stable", self.stable, "stable"),
            )
        points = None if self.points in (None, "all") else self._units()
        return handlers.SubmitTrade(self.request_id, member, self.kind, points=points)


class AdjustmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: RequestId
    member: MemberId = Field(description=MEMBER_DOC)
    asset: Literal["cny", "stable", "equity"]
    amount: DecimalString  # signed, != 0
    reason: Text1000
    operator: Text200

    @model_validator(mode="after")
    def _fields(self) -> AdjustmentCreate:
        if minor_amount(self.asset, self.amount, "amount") == 0:
            raise FieldError("amount", "adjustment amount must not be zero")
        if not self.reason.strip():
            raise FieldError("reason", "an adjustment needs a reason")
        if not self.operator.strip():
            raise FieldError("operator", "an adjustment needs an operator")
        return self

    def command(self) -> handlers.SubmitAdjustment:
        return handlers.SubmitAdjustment(
            self.request_id,
            self.member,
            self.asset,
            minor_amount(self.asset, self.amount, "amount"),
            self.reason.strip(),
            self.operator.strip(),
        )


class RequestPublic(BaseModel):
    request_id: str
    status: str  # pending | done | refused


class HeldPublic(BaseModel):
    asset: str
    amount: str


class PostingPublic(BaseModel):
    kind: str
    asset: str
    debit: str
    credit: str
    amount: str


class OutcomePublic(BaseModel):
    """What a done request moved (the fields its kind has; the others null)."""

    points: str | None = Field(None, description="equity points sold or exchanged, or bought")
    cny: str | None = Field(None, description="cny paid out for the points sold")
    stable: str | None = Field(None, description="stable points received or paid")
    quota_used: str | None = Field(None, description="quota the trade used up")
    amount: str | None = Field(None, description="an adjustment's amount (signed)")
    forced: bool | None = Field(None, description="a sale forced by an exit (出局)")


MAX_POSTINGS = 64  # an answer's posting lines: a handful per trade or adjustment


class RequestDetailPublic(BaseModel):
    """A request with the fields its client sent (the others null), its status and once
    decided what it moved.  ``refusal``: why the engine refused it."""

    request_id: str
    member: str
    kind: str
    status: str  # pending | done | refused
    day: int | None = Field(description="the business day it was accepted on")
    created_at: datetime
    decided_at: datetime | None
    points: str | None  # sell / exchange: a decimal or "all"
    stable: str | None  # merchant exchange
    asset: str | None  # adjustment
    amount: str | None  # adjustment, signed
    reason: str | None  # adjustment: the operator's reason
    operator: str | None  # adjustment
    held: HeldPublic | None
    refusal: str | None
    outcome: OutcomePublic | None
    postings: Annotated[list[PostingPublic], Field(max_length=MAX_POSTINGS)]


def _answer(outcome: handlers.Outcome, response: Response) -> RequestPublic:
    if outcome.replay:
        response.status_code = 200
    return RequestPublic(request_id=outcome.id, status=outcome.status)


# a request id seen before answers with what became of it: 200, not a second 202
REPEATED: dict[int | str, dict[str, Any]] = {
    200: {"model": RequestPublic, "description": "a repeated request_id: its stored status"}
}


@router.post(
    "/v1/members/{member}/requests",
    status_code=202,
    response_model=RequestPublic,
    responses={**REPEATED, **errors(404, 409)},
)
async def submit_request(
    body: RequestCreate,
    response: Response,
    member: MemberPath,
    svc: Annotated[Service, Depends(get_service)],
) -> RequestPublic:
    """202 pending (points or stable held, WalletRequest sent); 200 with the stored status
    for a repeated request_id; 404 unknown member; 422 bad fields; 409 not enough
    available, not a merchant, or the request_id exists with another body."""
    trade = body.command(member)
    outcome = await for_member(svc, member, lambda uow: handlers.submit_trade(uow, trade))
    if not outcome.replay:
        svc.committed()
    return _answer(outcome, response)


@router.post(
    "/v1/admin/adjustments",
    status_code=202,
    response_model=RequestPublic,
    responses={**REPEATED, **errors(404, 409)},
)
async def submit_adjustment(
    body: AdjustmentCreate, response: Response, svc: Annotated[Service, Depends(get_service)]
) -> RequestPublic:
    """202 pending (a removal is held); 200 for a repeated request_id; 404 unknown member;
    422 zero amount, empty reason or operator; 409 a removal that would go below zero."""
    cmd = body.command()
    outcome = await for_member(svc, cmd.member, lambda uow: handlers.submit_adjustment(uow, cmd))
    if not outcome.replay:
        svc.committed()
    return _answer(outcome, response)


@router.get("/v1/requests/{request_id}", response_model=RequestDetailPublic, responses=errors(404))
async def get_request(
    request_id: IdPath, svc: Annotated[Service, Depends(get_service)]
) -> RequestDetailPublic:
    async with svc.uow() as uow:
        view = await handlers.request_view(uow.session, request_id)
    return RequestDetailPublic(**view)
