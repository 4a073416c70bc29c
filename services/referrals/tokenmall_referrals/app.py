"""The referrals app: tables, routes and subscriptions wired by ``tokenmall.servicekit``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from tokenmall import contracts
from tokenmall.messaging import Publisher
from tokenmall.servicekit import (
    HTTP_KEEP_ALIVE_SECONDS,
    Service,
    ServiceSettings,
    Subscription,
    create_app,
)
from tokenmall_referrals.adapters import tables
from tokenmall_referrals.entrypoints import members
from tokenmall_referrals.service_layer import handlers

SERVICE = "referrals"
DEFAULT_PORT = 8104


def build_app(
    settings: ServiceSettings | None = None,
    *,
    broker_factory: Callable[[Service], Any] | None = None,
    publisher_factory: Callable[[Service], Publisher] | None = None,
) -> FastAPI:
    service = Service(
        name=SERVICE,
        settings=settings or ServiceSettings(),
        metadata=tables.metadata,
        tables=tables.messaging_tables,
    )
    subscriptions = [
        Subscription(
            contracts.ORDERS,
            handlers.on_order_event,
            consumer="referrals-orders",
            bulk=handlers.orders_paid,
        ),
        Subscription(contracts.DIVIDENDS, handlers.on_dividends_event, consumer="referrals-plans"),
    ]
    return create_app(
        service,
        [members.router],
        subscriptions,
        publisher_factory=publisher_factory,
        broker_factory=broker_factory,
    )


def main() -> None:
    import uvicorn

    settings = ServiceSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port or DEFAULT_PORT,
        log_level=settings.log_level.lower(),
        timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,
    )
