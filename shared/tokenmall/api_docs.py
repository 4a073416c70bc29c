"""Swagger UI (``/docs``) and ReDoc (``/redoc``) from the package's own copies
(``docs_assets/``, see its README): no page loads anything from a CDN.  Used by every
service (servicekit.create_app) and by the gateway for the merged document."""

from __future__ import annotations

from pathlib import Path

from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

ASSETS = Path(__file__).resolve().parent / "docs_assets"
ASSETS_PATH = "/docs-assets"


def routes(title: str, openapi_url: str = "/openapi.json") -> list[Route | Mount]:
    """``/docs``, ``/redoc`` and the assets they load, for a document at ``openapi_url``.
    Asset URLs are relative to the page's mount (``root_path``): behind the gateway a
    service's pages still find their assets."""

    def prefix(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def swagger(request: Request) -> HTMLResponse:
        base = prefix(request)
        return get_swagger_ui_html(
            openapi_url=base + openapi_url,
            title=f"{title} — Swagger UI",
            swagger_js_url=f"{base}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{base}{ASSETS_PATH}/favicon-32x32.png",
        )

    async def redoc(request: Request) -> HTMLResponse:
        base = prefix(request)
        return get_redoc_html(
            openapi_url=base + openapi_url,
            title=f"{title} — ReDoc",
            redoc_js_url=f"{base}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{base}{ASSETS_PATH}/favicon-32x32.png",
            with_google_fonts=False,
        )

    return [
        Route("/docs", swagger, methods=["GET"], include_in_schema=False),
        Route("/redoc", redoc, methods=["GET"], include_in_schema=False),
        Mount(ASSETS_PATH, app=StaticFiles(directory=ASSETS), name="docs-assets"),
    ]


def install(app: Starlette, title: str, openapi_url: str = "/openapi.json") -> None:
    app.router.routes.extend(routes(title, openapi_url))
