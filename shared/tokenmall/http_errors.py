"""One error body for every refusal of every service: ``{"code", "message", "field"}``.

``install(app)`` (called by ``tokenmall.servicekit.create_app``) answers request
validation errors, ``HTTPException``s (FastAPI's and Starlette's: unknown path,
wrong method, unparseable body) and ``ApiError``s with an ``ErrorBody``, and
documents it in the app's OpenAPI: every operation gets a ``4XX`` response with that
schema, and FastAPI's ``HTTPValidationError`` is replaced by it.

- ``code``: machine-readable, from the status (``invalid`` 422, ``not_found`` 404,
  ``conflict`` 409, ``bad_request`` 400, ``method_not_allowed`` 405, …) unless the
  route chose one;
- ``message``: for people, names what is wrong (never a Python repr);
- ``field``: the one field at fault, as the client knows it — a path, query or header
  parameter by its name (``member``, ``offset``, ``Idempotency-Key``), a body field as
  ``body.<name>`` (``body.amount``, ``body.plan``, ``body.tiers[0].min``), the whole
  body as ``body``; ``null`` when no single field is at fault.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    """What every service answers on a 4xx (and on the 5xx it answers on purpose)."""

    code: str = Field(description="machine-readable: invalid, not_found, conflict, …")
    message: str = Field(description="what is wrong, for people")
    field: str | None = Field(
        None, description="the one field at fault (member, offset, body.amount), else null"
    )


class ApiError(HTTPException):
    """An HTTP refusal with the error body's ``code`` and ``field`` chosen by the route."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, message, headers=headers)
        self.code = code
        self.field = field


class FieldError(ValueError):
    """Raised by a model validator: ``field`` (a name inside the model) is at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def code_for(status: int) -> str:
    return CODES.get(status, "client_error" if status < 500 else "server_error")


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(code=code or code_for(status), message=message, field=field)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


# ------------------------------------------------------------------ validation errors

# pydantic names union members and validator wrappers in ``loc``: not field names
_TAG = re.compile(r"[\[\](),' ]")
_TYPE_TAGS = frozenset({"str", "int", "float", "decimal", "bool", "bytes", "list", "dict", "none"})


def _clean(loc: Sequence[int | str]) -> list[int | str]:
    out: list[int | str] = []
    for part in loc:
        if isinstance(part, str) and (_TAG.search(part) or part in _TYPE_TAGS):
            break  # a union member's tag: what follows is inside that member
        out.append(part)
    return out


def field_name(loc: Sequence[int | str], inner: str | None = None) -> str | None:
    """``("body", "tiers", 0, "min")`` → ``body.tiers[0].min``; ``("query", "offset")`` →
    ``offset``; ``inner`` is a name a validator gave (``FieldError``) below ``loc``."""
    parts = _clean(loc)
    if not parts:
        return None
    where, rest = parts[0], parts[1:]
    if inner:
        rest = [*rest, *inner.split(".")]
    if where == "body":
        if rest and isinstance(rest[0], int) and len(parts) == 2 and not inner:
            return "body"  # a JSON decode error's position
        name = "body"
        for part in rest:
            name += f"[{part}]" if isinstance(part, int) else f".{part}"
        return name
    if not rest:
        return str(where)
    name = str(rest[0])
    for part in rest[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


_PREFIXES = ("Value error, ", "Assertion failed, ")


def _message(error: dict[str, Any]) -> str:
    msg = str(error.get("msg", "invalid value"))
    for prefix in _PREFIXES:
        msg = msg.removeprefix(prefix)
    if error.get("type") == "json_invalid":
        detail = (error.get("ctx") or {}).get("error")
        return f"the body is not valid JSON: {detail}" if detail else "the body is not valid JSON"
    return msg


def validation_body(errors: Sequence[Any]) -> tuple[str, str | None]:
    """(message, field) for pydantic's errors of one request."""
    seen: dict[str | None, str] = {}
    for error in errors:
        exc = (error.get("ctx") or {}).get("error")
        inner = exc.field if isinstance(exc, FieldError) else None
        name = field_name(tuple(error.get("loc", ())), inner)
        if name in seen:
            continue  # one message per field (a union reports each of its members)
        msg = _message(error)
        if error.get("type") == "missing":
            msg = "is required"
        leaf = (name or "").rsplit(".", 1)[-1]
        seen[name] = msg if leaf and leaf in msg else f"{name}: {msg}" if name else msg
    if not seen:
        return "invalid request", None
    fields = list(seen)
    field = fields[0] if len(fields) == 1 else None
    return "; ".join(seen.values()), field


# ------------------------------------------------------------------ handlers


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, field = validation_body(exc.errors())
    return error_response(422, message, field=field)


def _allowed(request: Request) -> str:
    """Every method the path supports: Starlette's 405 names only the first route's."""
    methods: set[str] = set()
    path, root = request.scope["path"], request.scope.get("root_path", "")
    path = path.removeprefix(root) if root and path.startswith(root) else path
    for route in request.app.router.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed(request)}
    if isinstance(exc, ApiError):
        return error_response(
            exc.status_code, str(exc.detail), code=exc.code, field=exc.field, headers=headers
        )
    return error_response(exc.status_code, str(exc.detail), headers=headers)


# ------------------------------------------------------------------ OpenAPI

_REF = "#/components/schemas/ErrorBody"
_CONTENT = {"application/json": {"schema": {"$ref": _REF}}}


def _document(schema: dict[str, Any], text_paths: Sequence[str]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status, response in responses.items():
                if status[0] in "45" or status == "default":
                    response["content"] = dict(_CONTENT)
            if "422" in responses:
                responses["422"]["description"] = "invalid request: the error body names the field"
            responses.setdefault(
                "4XX", {"description": "refused: the error body says why", "content": _CONTENT}
            )
            if path in text_paths and "200" in responses:
                responses["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    return schema


def install(app: FastAPI, text_paths: Sequence[str] = ()) -> None:
    """Answer every refusal with ``ErrorBody`` and document it; ``text_paths``: operations
    whose 200 is plain text (``/metrics``), documented as such."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(build(), text_paths)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
