"""The wallet's hold API, as the orders service uses it.

Before an order with a stable-point part is marked paid, the wallet reserves
(holds) that many stable points of the member: ``POST {wallet_url}/v1/holds``
with ``{hold_id, member, asset, amount}``.  The hold id is the order id, so a
repeated pay (a retry after a crash between the hold and the commit) asks for
the same hold again and the wallet can answer it without holding twice.
Deleting an unpaid order releases its hold, if any:
``POST {wallet_url}/v1/holds/{hold_id}/release``.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import quote

import httpx

from tokenmall.money import format_cents
from tokenmall.registry import ServiceClient


class WalletError(Exception):
    """The wallet answered something unexpected, or could not be reached."""


class WalletUnavailable(WalletError):
    """No answer from the wallet (network error, timeout, 5xx): try again later."""


class InsufficientFunds(WalletError):
    """The wallet refused the hold (409): the member holds fewer points than asked."""


class Wallet(Protocol):
    async def hold(self, *, hold_id: str, member: str, asset: str, amount_cents: int) -> None:
        """Reserve ``amount_cents`` of ``asset`` for ``hold_id``; raise InsufficientFunds if
        the member holds fewer, WalletUnavailable/WalletError if the wallet fails."""

    async def release(self, hold_id: str) -> None:
        """Give a hold back if it is still held; an unknown hold is not an error."""


class HttpWallet(ServiceClient):
    """httpx client of the wallet service."""

    async def hold(self, *, hold_id: str, member: str, asset: str, amount_cents: int) -> None:
        body = {
            "hold_id": hold_id,
            "member": member,
            "asset": asset,
            "amount": format_cents(amount_cents),
        }
        try:
            response = await self._http().post("/v1/holds", json=body)
        except httpx.HTTPError as exc:
            raise WalletUnavailable(f"wallet unreachable: {exc!r}") from exc
        if response.status_code in (200, 201):
            return
        detail = _detail(response)
        if response.status_code in (404, 409):  # 404: the wallet knows no such member
            raise InsufficientFunds(detail)
        if response.status_code >= 500:
            raise WalletUnavailable(f"wallet failed ({response.status_code}): {detail}")
        raise WalletError(f"wallet refused the hold ({response.status_code}): {detail}")

    async def release(self, hold_id: str) -> None:
        path = f"/v1/holds/{quote(hold_id, safe='')}/release"
        try:
            response = await self._http().post(path)
        except httpx.HTTPError as exc:
            raise WalletUnavailable(f"wallet unreachable: {exc!r}") from exc
        if response.status_code in (200, 404):  # released (now or before), or never held
            return
        detail = _detail(response)
        if response.status_code >= 500:
            raise WalletUnavailable(f"wallet failed ({response.status_code}): {detail}")
        raise WalletError(f"wallet refused to release the hold ({response.status_code}): {detail}")


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(data, dict) and "message" in data:  # the error body (tokenmall.http_errors)
        return str(data["message"])[:500]
    return str(data)[:500]
