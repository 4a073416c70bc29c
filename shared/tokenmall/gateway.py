"""The platform at one origin: ``/{service}/...`` forwarded to that service's ``/...``,
the merged OpenAPI document at ``/openapi.json`` with Swagger UI (``/docs``) and ReDoc
(``/redoc``) from local assets, and ``/health`` of all four.  ``tokenmall gateway``.

A thin reverse proxy (httpx, streamed both ways): it holds no state and decides
nothing — every service still checks what it is sent — so any number can run.  The
console (issue 16) is served from the same origin later.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tokenmall import api_docs, openapi
from tokenmall.http_errors import error_response

# not forwarded: they describe one hop, not the request (RFC 9110 §7.6.1)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",  # httpx sets it (or chunks) for the body it streams
    }
)
DOCUMENT_TTL_SECONDS = 10.0  # the merged document is rebuilt at most this often


def build_gateway(
    urls: Mapping[str, str],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: float = 60.0,
) -> Starlette:
    """``urls``: each service's base URL (``tokenmall.devenv.service_urls()``)."""
    urls = {name: url.rstrip("/") for name, url in urls.items()}
    state: dict[str, Any] = {"client": None, "document": None, "built": 0.0}

    def client() -> httpx.AsyncClient:
        if state["client"] is None:
            state["client"] = httpx.AsyncClient(
                transport=transport, timeout=timeout, follow_redirects=False
            )
        found: httpx.AsyncClient = state["client"]
        return found

    async def document(request: Request) -> Response:
        """The services' live documents merged (a service that does not answer is left
        out, and the document says so in its description)."""
        if state["document"] is None or time.monotonic() - state["built"] > DOCUMENT_TTL_SECONDS:
            answers = await asyncio.gather(
                *(client().get(f"{url}/openapi.json") for url in urls.values()),
                return_exceptions=True,
            )
            docs, missing = {}, []
            for name, answer in zip(urls, answers, strict=True):
                if isinstance(answer, httpx.Response) and answer.status_code == 200:
                    docs[name] = answer.json()
                else:
                    missing.append(name)
            merged = openapi.merge(docs, server_url=str(request.base_url).rstrip("/") or "/")
            if missing:
                merged["info"]["description"] += f" Not answering now: {', '.join(missing)}."
            else:  # a complete one is kept a while; an incomplete one is asked again
                state["document"], state["built"] = merged, time.monotonic()
            return JSONResponse(merged)
        return JSONResponse(state["document"])

    async def health(_: Request) -> Response:
        async def one(url: str) -> str:
            try:
                answer = await client().get(f"{url}/health", timeout=5.0)
            except httpx.HTTPError:
                return "unreachable"
            return "ok" if answer.status_code == 200 else f"http {answer.status_code}"

        states = await asyncio.gather(*(one(url) for url in urls.values()))
        services = dict(zip(urls, states, strict=True))
        healthy = all(s == "ok" for s in states)
        body = {"status": "ok" if healthy else "degraded", "services": services}
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def forward(request: Request) -> Response:
        service = request.path_params["service"]
        base = urls.get(service)
        if base is None:
            known = ", ".join(f"/{name}/" for name in urls)
            return error_response(404, f"no service {service!r} here: {known}", field="path")
        path = request.path_params["path"]
        target = httpx.URL(f"{base}/{path}", query=request.url.query.encode())
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        client_host = request.client.host if request.client else ""
        headers += [
            ("x-forwarded-for", client_host),
            ("x-forwarded-proto", request.url.scheme),
            ("x-forwarded-host", request.headers.get("host", "")),
            ("x-forwarded-prefix", f"/{service}"),
        ]
        body = request.stream() if request.method not in ("GET", "HEAD") else None
        outgoing = client().build_request(request.method, target, headers=headers, content=body)
        try:
            answer = await client().send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            return error_response(502, f"{service} did not answer: {type(exc).__name__}")
        out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            headers=out_headers,
            background=BackgroundTask(answer.aclose),
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        if state["client"] is not None:
            await state["client"].aclose()

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes: list[Any] = [
        Route("/openapi.json", document, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        *api_docs.routes(openapi.TITLE),
        Route("/{service}/{path:path}", forward, methods=methods),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
