"""Balances, platform accounts and statements (the wallet is their system of record)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from tokenmall.ids import MemberPath, Offset
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


class BalancePagePublic(BaseModel):
    members: list[MemberBalancePublic]
    total: int


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


class ReleaseLinePublic(BaseModel):
    day: int
    asset: str
    amounts: dict[str, str]  # release kind -> amount
    total: str


class StatementPublic(BaseModel):
    member: str
    entries: list[EntryPublic]  # newest first
    releases: list[ReleaseLinePublic]  # newest day first


Svc = Annotated[Service, Depends(get_service)]


@router.get("/v1/members/{member}/balances", response_model=BalancesPublic, responses=errors(404))
async def member_balances(member: MemberPath, svc: Svc) -> BalancesPublic:
    """A member registered a moment ago has zero balances here at once (read-your-writes)."""

    async def read(uow: UnitOfWork) -> BalancesPublic:
        return BalancesPublic(**await handlers.member_balances(uow.session, member))

    return await for_member(svc, member, read)


@router.get("/v1/balances", response_model=BalancePagePublic)
async def all_balances(
    svc: Svc,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> BalancePagePublic:
    """Members in registration order with their balances."""
    async with svc.uow() as uow:
        return BalancePagePublic(**await handlers.balance_page(uow.session, offset, limit))


@router.get("/v1/accounts/platform", response_model=dict[str, dict[str, str]])
async def platform_accounts(svc: Svc) -> dict[str, dict[str, str]]:
    """{asset: {account: balance}} for every platform account."""
    async with svc.uow() as uow:
        return await handlers.platform_accounts(uow.session)


@router.get("/v1/members/{member}/statement", response_model=StatementPublic, responses=errors(404))
async def statement(
    member: MemberPath, svc: Svc, limit: Annotated[int, Query(ge=1, le=10000)] = 100
) -> StatementPublic:

    async def read(uow: UnitOfWork) -> StatementPublic:
        return StatementPublic(**await handlers.statement(uow.session, member, limit))

    return await for_member(svc, member, read)
