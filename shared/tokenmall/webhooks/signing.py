"""Webhook signatures: HMAC-SHA256 over ``"<timestamp>." + body`` with the endpoint's
secret, sent as ``Tokenmall-Signature: t=<unix seconds>,v1=<hex>``.

A receiver checks it with :func:`verify` (or the same three lines in any language):
the timestamp bounds replays of a captured delivery; the body is the exact bytes
received, before any JSON parsing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SIGNATURE_HEADER = "Tokenmall-Signature"
EVENT_ID_HEADER = "Tokenmall-Event-Id"
EVENT_TYPE_HEADER = "Tokenmall-Event-Type"
DELIVERY_HEADER = "Tokenmall-Delivery"
DEFAULT_TOLERANCE_SECONDS = 300
SECRET_PREFIX = "whsec_"


class SignatureError(ValueError):
    """The delivery is not signed by the secret, or its timestamp is out of tolerance."""


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> int:
    """The delivery's timestamp if ``header`` signs ``body`` with ``secret`` within
    ``tolerance`` seconds of ``now``; else :class:`SignatureError`.  Several ``v1=``
    values (a secret being rotated) pass if any matches."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError(f"{SIGNATURE_HEADER} needs t=<unix seconds> and v1=<hex>")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError(f"timestamp {timestamp} is more than {tolerance:g} s from now")
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise SignatureError("the signature does not match the body")
    return timestamp
