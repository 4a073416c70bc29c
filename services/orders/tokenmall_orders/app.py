"""The orders service's app: its tables, router and subscription on the shared service kit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from tokenmall import business_day, contracts
from tokenmall.messaging import Publisher, UnitOfWork
from tokenmall.registry import HttpMemberRegistry, MemberRegistry
from tokenmall.servicekit import (
    HTTP_KEEP_ALIVE_SECONDS,
    Service,
    ServiceSettings,
    Subscription,
    create_app,
    rows_per_event,
)
from tokenmall_orders.adapters import tables
from tokenmall_orders.adapters.wallet import HttpWallet, Wallet
from tokenmall_orders.entrypoints.orders import router as orders_router
from tokenmall_orders.service_layer import handlers

NAME = "orders"


class OrdersSettings(ServiceSettings):
    """Adds TOKENMALL_WALLET_URL; the port defaults to 8101."""

    port: int = 8101
    wallet_url: str = "http://127.0.0.1:8102"


def own_registry(svc: Service) -> MemberRegistry:
    """The registry over HTTP (TOKENMALL_REFERRALS_URL), closed with the app."""
    registry = HttpMemberRegistry(str(svc.settings.referrals_url))
    svc.closers.append(registry.aclose)
    return registry


def build_app(
    settings: OrdersSettings | None = None,
    *,
    broker_factory: Callable[[Service], Any] | None = None,
    publisher_factory: Callable[[Service], Publisher] | None = None,
    wallet: Wallet | None = None,
    registry: MemberRegistry | None = None,
) -> FastAPI:
    settings = settings or OrdersSettings()
    svc = Service(
        name=NAME, settings=settings, metadata=tables.metadata, tables=tables.messaging_tables
    )
    own_wallet = HttpWallet(settings.wallet_url) if wallet is None else None
    svc.state["wallet"] = wallet if wallet is not None else own_wallet
    svc.state["registry"] = registry if registry is not None else own_registry(svc)

    async def on_dividends(event: contracts.Event, uow: UnitOfWork) -> None:
        """Day closing (the watermark: tokenmall.business_day) and the rules' verdicts."""
        if await business_day.on_day_event(
            event, uow, tables.business_days, contracts.ORDERS, svc.partition_count
        ):
            return
        await handlers.order_verdict(event, uow)

    subscriptions = [
        Subscription(
            contracts.MEMBERS,
            handlers.member_registered,
            consumer=f"{NAME}-members",
            bulk=rows_per_event(handlers.member_rows, handlers.write_members),
        ),
        Subscription(
            contracts.DIVIDENDS,
            on_dividends,
            consumer=f"{NAME}-verdicts",
            bulk=handlers.order_verdicts,
        ),
    ]
    app = create_app(
        svc,
        [orders_router],
        subscriptions,
        publisher_factory=publisher_factory,
        broker_factory=broker_factory,
    )
    if own_wallet is not None:
        svc.closers.append(own_wallet.aclose)
    return app


def main() -> None:
    import uvicorn

    settings = OrdersSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,
    )
