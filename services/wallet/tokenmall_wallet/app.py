"""The wallet service: build the app (``build_app``) or run it (``main``, port 8102)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tokenmall import business_day
from tokenmall.contracts import DIVIDENDS, MEMBERS, WALLET_REQUESTS, Event, ReleaseComputed
from tokenmall.http_errors import error_response
from tokenmall.messaging import Publisher, UnitOfWork
from tokenmall.registry import HttpMemberRegistry, MemberRegistry, RegistryUnavailable
from tokenmall.servicekit import (
    HTTP_KEEP_ALIVE_SECONDS,
    Service,
    ServiceSettings,
    Subscription,
    create_app,
    rows_per_event,
)
from tokenmall_wallet.adapters import tables
from tokenmall_wallet.entrypoints import balances, holds, requests
from tokenmall_wallet.service_layer import handlers
from tokenmall_wallet.service_layer.fanout import ReleaseFanout
from tokenmall_wallet.service_layer.handlers import WalletError

DEFAULT_PORT = 8102


def build_app(
    settings: ServiceSettings | None = None,
    *,
    broker_factory: Callable[[Service], Any] | None = None,
    publisher_factory: Callable[[Service], Publisher] | None = None,
    registry: MemberRegistry | None = None,
) -> FastAPI:
    svc = Service(
        name="wallet",
        settings=settings or ServiceSettings(),
        metadata=tables.metadata,
        tables=tables.messaging,
    )
    if registry is None:
        own = HttpMemberRegistry(svc.settings.referrals_url)
        svc.closers.append(own.aclose)
        registry = own
    svc.state["registry"] = registry  # read-your-writes: ask referrals for a new member

    async def on_dividends(event: Event, uow: UnitOfWork) -> None:
        started = time.perf_counter()
        # day closing: the watermark of the requests this wallet sends (tokenmall.business_day)
        if await business_day.on_day_event(
            event, uow, tables.business_days, WALLET_REQUESTS, svc.partition_count
        ):
            return
        await handlers.on_dividends(event, uow)
        if isinstance(event, ReleaseComputed) and event.members:
            elapsed = max(time.perf_counter() - started, 1e-9)
            svc.metrics.fanout.labels(svc.name).set(len(event.members) / elapsed)

    fanout = ReleaseFanout(svc)
    subscriptions = [
        Subscription(
            MEMBERS,
            handlers.on_members,
            "wallet-members",
            bulk=rows_per_event(handlers.member_rows, handlers.write_members),
        ),
        # InputApplied, ReleaseComputed (batches keyed onto their partition), DaySettled
        Subscription(
            DIVIDENDS,
            on_dividends,
            "wallet-dividends",
            bulk=handlers.orders_decided,
            on_applied=fanout.applied,
        ),
    ]
    app = create_app(
        svc,
        [holds.router, requests.router, balances.router],
        subscriptions,
        publisher_factory=publisher_factory,
        broker_factory=broker_factory,
    )

    async def refused(_: Request, exc: Exception) -> JSONResponse:
        status = exc.status_code if isinstance(exc, WalletError) else 400
        return error_response(status, str(exc))

    app.add_exception_handler(WalletError, refused)

    async def registry_down(_: Request, exc: Exception) -> JSONResponse:
        message = f"the member registry is unavailable, try again: {exc}"
        return error_response(503, message, headers={"Retry-After": "1"})

    app.add_exception_handler(RegistryUnavailable, registry_down)
    return app


def main() -> None:
    import uvicorn

    settings = ServiceSettings()
    logging.basicConfig(level=settings.log_level.upper())
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port or DEFAULT_PORT,
        log_level=settings.log_level.lower(),
        timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,
    )


if __name__ == "__main__":
    main()
