"""Balances, platform accounts and statements (the wallet is their system of record)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from tokenmall.api_style import DEFAULT_LIMIT, Limit, Page
from tokenmall.ids import DayPath, MemberPath, Offset
from tokenmall.messaging import UnitOfWork
from tokenmall.servicekit import Service
from tokenmall_wallet.entrypoints import errors, for_member, get_service
from tokenmall_wallet.service_layer import handlers

router = APIRouter(tags=["balances"])


class MemberBalancePublic(BaseModel):
    member: str
    cny: str
    stable: str
    equity: str


class BalancesPublic(MemberBalancePublic):
    held: dict[str, str]  # active holds per asset
    available: dict[str, str]  # balance − held


class EntryPublic(BaseModel):
    id: int
    event_id: str
    asset: str
    debit: str
    credit: str
    amount: str
    change: str  # signed, for this member
    kind: str
    ref: str
    day: int | None = Field(description="the business day of the event that moved it")
    booked_at: datetime | None = Field(description="null: booked before the wallet kept it")


class ReleaseLinePublic(BaseModel):
    day: int
    asset: str
    amounts: dict[str, str]  # release kind -> amount
    total: str
    booked_at: datetime | None


class DayReleaseLinePublic(BaseModel):
    member: str
    asset: str
    amounts: dict[str, str]  # release kind -> amount
    total: str
    booked_at: datetime | None


Svc = Annotated[Service, Depends(get_service)]


@router.get("/v1/members/{member}/balances", response_model=BalancesPublic, responses=errors(404))
async def member_balances(member: MemberPath, svc: Svc) -> BalancesPublic:
    """A member registered a moment ago has zero balances here at once (read-your-writes)."""

    async def read(uow: UnitOfWork) -> BalancesPublic:
        return BalancesPublic(**await handlers.member_balances(uow.session, member))

    return await for_member(svc, member, read)


@router.get("/v1/balances", response_model=Page[MemberBalancePublic])
async def all_balances(
    svc: Svc, offset: Offset = 0, limit: Limit = DEFAULT_LIMIT
) -> Page[MemberBalancePublic]:
    """Members in registration order with their balances."""
    async with svc.uow() as uow:
        return Page[MemberBalancePublic](**await handlers.balance_page(uow.session, offset, limit))


@router.get("/v1/accounts/platform", response_model=dict[str, dict[str, str]])
async def platform_accounts(svc: Svc) -> dict[str, dict[str, str]]:
    """{asset: {account: balance}} for every platform account."""
    async with svc.uow() as uow:
        return await handlers.platform_accounts(uow.session)


@router.get(
    "/v1/members/{member}/statement", response_model=Page[EntryPublic], responses=errors(404)
)
async def statement(
    member: MemberPath, svc: Svc, offset: Offset = 0, limit: Limit = DEFAULT_LIMIT
) -> Page[EntryPublic]:
    """The member's journal entries, newest first (the daily releases: ``/releases``)."""

    async def read(uow: UnitOfWork) -> Page[EntryPublic]:
        return Page[EntryPublic](**await handlers.statement(uow.session, member, offset, limit))

    return await for_member(svc, member, read)


@router.get(
    "/v1/members/{member}/releases",
    response_model=Page[ReleaseLinePublic],
    responses=errors(404),
)
async def releases(
    member: MemberPath, svc: Svc, offset: Offset = 0, limit: Limit = DEFAULT_LIMIT
) -> Page[ReleaseLinePublic]:
    """The member's daily releases, newest day first: one line per day and asset with
    the amount of each release kind."""

    async def read(uow: UnitOfWork) -> Page[ReleaseLinePublic]:
        view = await handlers.release_lines_page(uow.session, member, offset, limit)
        return Page[ReleaseLinePublic](**view)

    return await for_member(svc, member, read)


@router.get("/v1/days/{day}/releases", response_model=Page[DayReleaseLinePublic])
async def day_releases(
    day: DayPath, svc: Svc, offset: Offset = 0, limit: Limit = DEFAULT_LIMIT
) -> Page[DayReleaseLinePublic]:
    """One business day's releases for every member, by member then asset: what a
    ``day.settled`` webhook links to.  Empty until the wallet booked that day (it books
    the dividends' ``ReleaseComputed`` messages after the settlement)."""
    async with svc.uow() as uow:
        view = await handlers.day_release_lines_page(uow.session, day, offset, limit)
    return Page[DayReleaseLinePublic](**view)
