"""Read-your-writes for the services that learn about members from Kafka.

Orders and the wallet keep a read model of the members, filled from
``MemberRegistered``.  A mall that registered a member (201 from referrals) and orders
for it at once must not be told "unknown member" because that event is still on its
way: when their read model lacks a member, they ask referrals — the registry — and
record the answer exactly as the event would (the event, when it arrives, changes
nothing more).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import httpx

from tokenmall.contracts import Event, MemberRegistered
from tokenmall.messaging import UnitOfWork


class RegistryUnavailable(RuntimeError):
    """Referrals could not be asked (network error, timeout, 5xx): try again."""


@dataclass(frozen=True)
class RegisteredMember:
    member: str
    sponsor: str | None
    merchant: bool
    seq: int


class MemberRegistry(Protocol):
    async def lookup(self, member: str) -> RegisteredMember | None:
        """The member as referrals registered it, or None if it is not registered."""


class ServiceClient:
    """An httpx client of another service, made on first use (one pool per app)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.transport = transport
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url, timeout=self.timeout, transport=self.transport
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class HttpMemberRegistry(ServiceClient):
    """``GET {referrals_url}/v1/members/{member}``."""

    async def lookup(self, member: str) -> RegisteredMember | None:
        try:
            response = await self._http().get(f"/v1/members/{quote(member, safe='')}")
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"referrals unreachable: {exc!r}") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RegistryUnavailable(f"referrals answered {response.status_code}")
        data = response.json()
        return RegisteredMember(
            member=str(data["member"]),
            sponsor=data.get("sponsor"),
            merchant=bool(data.get("merchant")),
            seq=int(data["seq"]),
        )


async def learn_member(
    uow: UnitOfWork,
    registry: MemberRegistry,
    member: str,
    on_registered: Callable[[Event, UnitOfWork], Awaitable[None]],
) -> bool:
    """Ask the registry (outside any transaction) and apply its answer with the service's
    own ``MemberRegistered`` handler, in one transaction: exactly what the event does
    when it arrives (and then, idempotently, nothing more).  False: not registered."""
    found = await registry.lookup(member)
    if found is None:
        return False
    event = MemberRegistered(
        member=found.member, sponsor=found.sponsor, merchant=found.merchant, seq=found.seq
    )
    async with uow:
        await uow.begin_write()
        await on_registered(event, uow)
        await uow.commit()
    return True
