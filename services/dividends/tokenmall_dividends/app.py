"""The dividends service: FastAPI + FastStream, wired by ``tokenmall.servicekit``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI
from pydantic import Field

from tokenmall import contracts
from tokenmall.messaging import Publisher
from tokenmall.servicekit import (
    HTTP_KEEP_ALIVE_SECONDS,
    Service,
    ServiceSettings,
    Subscription,
    create_app,
)
from tokenmall.webhooks import Webhooks
from tokenmall_dividends.adapters import tables
from tokenmall_dividends.entrypoints import input_log, plans, settlements, state
from tokenmall_dividends.service_layer import closing, handlers, phases, snapshots, webhooks
from tokenmall_dividends.service_layer.host import EngineHost

DEFAULT_PORT = 8103


class DividendsSettings(ServiceSettings):
    plan_file: str = ""  # TOKENMALL_PLAN_FILE: the first plan (YAML/JSON), base plan if empty
    # TOKENMALL_DAY_WATERMARKS (JSON list): the topics whose "day closed" markers a
    # settlement waits for — every producer of day-stamped inputs.  [] settles at once
    # (dividends alone, in tests).
    day_watermarks: list[str] = Field(default_factory=lambda: list(contracts.DAY_STAMPED_TOPICS))
    # TOKENMALL_MAX_MESSAGE_BYTES: no release message is larger (a bucket of members that
    # would not fit is split into chunks); keep it below the broker's message.max.bytes
    # (1,048,588 by default) and the consumers' max.partition.fetch.bytes (1 MiB)
    max_message_bytes: int = Field(default=900_000, ge=8192, le=64 * 1024 * 1024)
    # how long POST /v1/settlements/{day} waits for the settlement before answering 202
    settle_wait_seconds: float = Field(default=30.0, ge=0, le=3600)
    # a requested settlement still missing markers asks the producers again (DayClosing)
    # this often: a DayClosing lost or dead-lettered (a producer restarting, one of an
    # older version) never leaves the day stuck; a repeated POST asks again at once
    day_reask_seconds: float = Field(default=10.0, gt=0, le=3600)


def load_plan(path: str) -> dict[str, Any]:
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text())
    plan = data.get("plan", data) if isinstance(data, dict) else None
    if not isinstance(plan, dict):
        raise ValueError(f"{path}: not a plan mapping")
    return plan


def build_app(
    settings: DividendsSettings | None = None,
    *,
    broker_factory: Callable[[Service], Any] | None = None,
    publisher_factory: Callable[[Service], Publisher] | None = None,
) -> FastAPI:
    settings = settings or DividendsSettings()
    # the engine has one writer: one active process, the others hot standbys (lease)
    svc = Service("dividends", settings, tables.metadata, tables.messaging, singleton=True)
    host = svc.state["host"] = EngineHost(max_message_bytes=settings.max_message_bytes)
    svc.state["day_metrics"] = closing.DayMetrics(svc)
    svc.state["snapshots"] = snapshots.SnapshotWriter(svc)
    svc.state["phases"] = phases.SettlementPhases(svc)
    closer = svc.state["closer"] = closing.DayCloser(svc)
    svc.park_day = lambda event: closing.park_day(svc, event)
    svc.webhooks = Webhooks(tables.webhook_tables, webhooks.KINDS, webhooks.notifications_of)
    svc.exclusive = host.lock  # consumers take the engine's lock before any database write

    def bound(fn: Any) -> Any:
        return partial(fn, svc=svc)

    subscriptions = [
        # batched like the others: a handler that fails after moving the engine reloads
        # it (svc.memory_epoch), and the run starts over on the reloaded engine
        Subscription(
            contracts.MEMBERS,
            bound(handlers.on_member_registered),
            "dividends-members",
            bulk=bound(handlers.on_members_registered),
        ),
        Subscription(
            contracts.ORDERS,
            bound(handlers.on_order),
            "dividends-orders",
            bulk=bound(handlers.on_orders),
        ),
        Subscription(
            contracts.WALLET_REQUESTS, bound(handlers.on_wallet_request), "dividends-requests"
        ),
    ]

    async def on_startup(service: Service) -> None:
        await handlers.start(service, load_plan(settings.plan_file))
        await closer.start()  # a settlement requested before a restart goes on

    return create_app(
        svc,
        [plans.router, settlements.router, state.router, input_log.router],
        subscriptions,
        on_startup=on_startup,
        broker_factory=broker_factory,
        publisher_factory=publisher_factory,
    )


def main() -> None:  # pragma: no cover - process entry point
    import uvicorn

    settings = DividendsSettings()
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port or DEFAULT_PORT,
        log_level=settings.log_level.lower(),
        timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,
    )
