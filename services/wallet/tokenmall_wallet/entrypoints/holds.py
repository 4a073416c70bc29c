"""Holds: reserve part of a member's available balance (e.g. the stable part of an order)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenmall.api_style import DecimalString
from tokenmall.http_errors import FieldError
from tokenmall.ids import ID_DOC, MEMBER_DOC, Id, IdPath, MemberId
from tokenmall.servicekit import Service
from tokenmall_wallet.entrypoints import (
    errors,
    for_member,
    get_service,
    minor_amount,
)
from tokenmall_wallet.service_layer import handlers

router = APIRouter(prefix="/v1/holds", tags=["holds"])


class HoldCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hold_id: Id = Field(description=ID_DOC)
    member: MemberId = Field(description=MEMBER_DOC)
    asset: Literal["cny", "stable", "equity"]
    amount: DecimalString

    @model_validator(mode="after")
    def _positive(self) -> HoldCreate:
        if minor_amount(self.asset, self.amount, "amount") <= 0:
            raise FieldError("amount", "amount must be > 0")
        return self

    def command(self) -> handlers.PlaceHold:
        return handlers.PlaceHold(
            self.hold_id, self.member, self.asset, minor_amount(self.asset, self.amount, "amount")
        )


class HoldPublic(BaseModel):
    hold_id: str
    status: str  # held | captured | released


@router.post(
    "",
    status_code=201,
    response_model=HoldPublic,
    responses={
        200: {"model": HoldPublic, "description": "the same hold exists already"},
        **errors(404, 409),
    },
)
async def place_hold(
    body: HoldCreate, response: Response, svc: Annotated[Service, Depends(get_service)]
) -> HoldPublic:
    """201 held; 200 when the same hold already exists; 404 unknown member;
    409 fewer available than the amount, or the hold_id exists with another body."""
    cmd = body.command()
    outcome = await for_member(svc, cmd.member, lambda uow: handlers.place_hold(uow, cmd))
    if outcome.replay:
        response.status_code = 200
    return HoldPublic(hold_id=outcome.id, status=outcome.status)


@router.post("/{hold_id}/release", response_model=HoldPublic, responses=errors(404, 409))
async def release_hold(
    hold_id: IdPath, svc: Annotated[Service, Depends(get_service)]
) -> HoldPublic:
    """200 released (also when it already was); 404 unknown; 409 captured or a request's hold."""
    async with svc.uow() as uow:
        outcome = await handlers.release_hold(uow, hold_id)
    return HoldPublic(hold_id=outcome.id, status="released")
