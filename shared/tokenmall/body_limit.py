"""Request bodies above a documented size are refused with 413, before they are parsed.

A plain ASGI middleware (like servicekit's HttpMetrics, for the same reason: it sits on
every request).  A ``Content-Length`` above the limit is answered at once, without
reading the body; a body sent without one (chunked) is counted as it arrives and
refused the moment it crosses the limit — the route never sees it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenmall.http_errors import error_response

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024  # a 10,000-item batch of the longest ids fits


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _refusal(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes (TOKENMALL_MAX_BODY_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error_response(413, self._refusal(), field="body")(scope, receive, send)
            return
        received = 0
        answered = False  # the 413 went out: what the app sends after it is dropped

        async def counting() -> Message:
            nonlocal received, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # answered here, not by an exception: the framework turns an error
                    # while reading the body into its own 400
                    refusal = error_response(413, self._refusal(), field="body")
                    await refusal(scope, receive, send)
                    answered = True
                    return {"type": "http.disconnect"}  # the app stops reading
            return message

        async def sending(message: Message) -> None:
            if not answered:
                await send(message)

        await self.app(scope, counting, sending)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
