"""The webhook API of a hosting service: register, list, delete endpoints; read an
endpoint's delivery log; redeliver; ping.  Operator routes (identity decides who)."""

# no ``from __future__ import annotations``: the request model is built per service (its
# kinds as the enum) inside build_router, and FastAPI resolves a route's annotations
# from the module's globals, where a local class is not

import socket
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokenmall.api_style import DEFAULT_LIMIT, Limit, Page
from tokenmall.http_errors import ApiError, ErrorBody
from tokenmall.ids import Offset
from tokenmall.webhooks.dispatcher import public_address
from tokenmall.webhooks.host import Webhooks

MAX_URL_LENGTH = 2000
EndpointId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^wh_[0-9a-f]{1,37}$")]
DeliveryId = Annotated[int, Path(ge=1, le=2**63 - 1)]
DeliveryStatus = Literal["pending", "delivered", "failed", "cancelled"]


class WebhookPublic(BaseModel):
    id: str
    url: str
    description: str | None
    events: list[str] = Field(max_length=64, description="the event kinds it receives")
    active: bool
    created_at: datetime


class WebhookCreated(WebhookPublic):
    secret: str = Field(
        description="the signing secret: shown here once, never again (keep it; "
        "Tokenmall-Signature is HMAC-SHA256 over '<t>.' + body with it)"
    )


class DeliveryPublic(BaseModel):
    id: int
    endpoint_id: str
    event_id: str = Field(description="the receiver's deduplication key")
    type: str
    status: DeliveryStatus
    attempts: int
    next_try_at: datetime | None = Field(description="while pending: when it is tried next")
    created_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None = Field(description="the last answer's HTTP status, if any")
    last_error: str | None


class AttemptPublic(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryDetail(DeliveryPublic):
    payload: dict[str, Any] = Field(description="the body every attempt sends")
    attempt_log: list[AttemptPublic] = Field(max_length=10_000)


NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such webhook endpoint or delivery"}
}


def internal_host(host: str) -> bool:
    """Whether ``host`` names this machine or a non-public network by itself: localhost,
    or an address in any notation the resolver takes (``127.1``, ``2130706433``,
    ``0x7f000001``, ``[::ffff:10.0.0.1]``) that is not globally routable.  A name that
    resolves to such an address is refused when a delivery is sent (the dispatcher)."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:  # numeric forms only: no DNS lookup here
        infos = socket.getaddrinfo(name, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return False
    return any(not public_address(str(info[4][0])) for info in infos)


def build_router(kinds: dict[str, str], *, allow_private: bool = False) -> APIRouter:
    """The routes, with ``kinds`` (this service's event kinds) as the registration's enum;
    ``allow_private``: URLs on this machine or a private network are accepted."""
    Kind = Literal[tuple(kinds)]  # type: ignore[valid-type]

    class WebhookCreate(BaseModel):
        model_config = ConfigDict(extra="forbid")

        url: str = Field(
            max_length=MAX_URL_LENGTH,
            description="where deliveries are POSTed (https, or http for a local receiver)",
            examples=["https://mall.example.com/hooks/tokenmall"],
        )
        events: list[Kind] = Field(  # type: ignore[valid-type]
            min_length=1,
            max_length=len(kinds),
            description="; ".join(f"{kind}: {what}" for kind, what in kinds.items()),
        )
        description: str | None = Field(None, max_length=500)

        @field_validator("url")
        @classmethod
        def _web_url(cls, url: str) -> str:
            parts = urlsplit(url)
            if parts.scheme not in ("https", "http") or not parts.hostname:
                raise ValueError("url must be an absolute http(s) URL such as https://host/path")
            if parts.username or parts.password:
                raise ValueError("url must not carry credentials (deliveries are signed)")
            if not allow_private and internal_host(parts.hostname):
                raise ValueError(
                    f"url must not point at a loopback or private address ({parts.hostname}); "
                    "TOKENMALL_WEBHOOK_ALLOW_PRIVATE_TARGETS allows it"
                )
            return url

    router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

    def hooks(request: Request) -> Webhooks:
        webhooks: Webhooks | None = request.app.state.svc.webhooks
        assert webhooks is not None
        return webhooks

    async def existing(webhooks: Webhooks, endpoint_id: str) -> dict[str, Any]:
        found = await webhooks.endpoint(endpoint_id)
        if found is None:
            raise ApiError(404, f"no webhook endpoint {endpoint_id!r}", field="webhook_id")
        return found

    @router.post("", status_code=201, response_model=WebhookCreated)
    async def register_webhook(body: WebhookCreate, request: Request) -> WebhookCreated:
        """Register an endpoint for some event kinds.  The answer shows the signing
        secret, once.  Deliveries are at least once: dedup by ``Tokenmall-Event-Id``."""
        view, secret = await hooks(request).register(body.url, body.events, body.description)
        return WebhookCreated(**view, secret=secret)

    @router.get("", response_model=Page[WebhookPublic])
    async def list_webhooks(
        request: Request, offset: Offset = 0, limit: Limit = DEFAULT_LIMIT
    ) -> Page[WebhookPublic]:
        """The registered endpoints, oldest first (their secrets are not shown)."""
        return Page[WebhookPublic](**await hooks(request).endpoints(offset, limit))

    @router.get("/{webhook_id}", response_model=WebhookPublic, responses=NOT_FOUND)
    async def get_webhook(webhook_id: EndpointId, request: Request) -> WebhookPublic:
        return WebhookPublic(**await existing(hooks(request), webhook_id))

    @router.delete("/{webhook_id}", status_code=204, responses=NOT_FOUND)
    async def delete_webhook(webhook_id: EndpointId, request: Request) -> Response:
        """Stop the endpoint: nothing more is queued for it; what waits is cancelled."""
        if not await hooks(request).delete(webhook_id):
            raise ApiError(404, f"no webhook endpoint {webhook_id!r}", field="webhook_id")
        return Response(status_code=204)

    @router.get(
        "/{webhook_id}/deliveries", response_model=Page[DeliveryPublic], responses=NOT_FOUND
    )
    async def list_deliveries(
        webhook_id: EndpointId,
        request: Request,
        status: Annotated[DeliveryStatus | None, Query()] = None,
        offset: Offset = 0,
        limit: Limit = DEFAULT_LIMIT,
    ) -> Page[DeliveryPublic]:
        """The endpoint's delivery log, newest first (``status`` filters)."""
        webhooks = hooks(request)
        await existing(webhooks, webhook_id)
        page = await webhooks.deliveries(webhook_id, offset, limit, status)
        return Page[DeliveryPublic](**page)

    @router.get(
        "/{webhook_id}/deliveries/{delivery_id}",
        response_model=DeliveryDetail,
        responses=NOT_FOUND,
    )
    async def get_delivery(
        webhook_id: EndpointId, delivery_id: DeliveryId, request: Request
    ) -> DeliveryDetail:
        """One delivery: the body it sends and every attempt with its answer."""
        found = await hooks(request).delivery(webhook_id, delivery_id)
        if found is None:
            raise ApiError(404, f"no delivery {delivery_id} to {webhook_id!r}", field="delivery_id")
        return DeliveryDetail(**found)

    @router.post(
        "/{webhook_id}/deliveries/{delivery_id}/redeliver",
        status_code=202,
        response_model=DeliveryDetail,
        responses={
            **NOT_FOUND,
            409: {"model": ErrorBody, "description": "it is being sent this moment"},
        },
    )
    async def redeliver(
        webhook_id: EndpointId, delivery_id: DeliveryId, request: Request
    ) -> DeliveryDetail:
        """Send it again now (whatever its status), with a fresh retry window."""
        webhooks = hooks(request)
        await existing(webhooks, webhook_id)
        outcome, found = await webhooks.redeliver(webhook_id, delivery_id)
        if outcome == "missing" or found is None:
            raise ApiError(404, f"no delivery {delivery_id} to {webhook_id!r}", field="delivery_id")
        if outcome == "in_flight":
            raise ApiError(
                409,
                f"delivery {delivery_id} is being sent right now: ask again once it is recorded",
                field="delivery_id",
            )
        return DeliveryDetail(**found)

    @router.post(
        "/{webhook_id}/ping", status_code=202, response_model=DeliveryDetail, responses=NOT_FOUND
    )
    async def ping(webhook_id: EndpointId, request: Request) -> DeliveryDetail:
        """Queue a ``webhook.ping`` to this endpoint: a receiver's first test."""
        webhooks = hooks(request)
        await existing(webhooks, webhook_id)
        found = await webhooks.ping(webhook_id)
        assert found is not None
        return DeliveryDetail(**found)

    return router
