"""One-time SMS codes: issuing, checking and rate limiting, and the senders.

The logic (:class:`SmsCodes`) is pure: it takes the state a service keeps per phone
(the pending code, the times of recent sends) and the current time, and returns the
new state to store.  Keeping the state out of this module is what lets the limits
hold across processes: the service keeps it in its database and applies one
decision per row lock or serialised transaction.

How a code is stored, and why: only ``HMAC-SHA256(server key, phone ∥ code)``.  A
six-digit code has only 10^6 values, so any *unkeyed* hash — argon2 included — is
reversed by trying them all within seconds once the table leaks; a key kept out of
the database is what makes a stored value useless on its own.  argon2 would also
spend tens of milliseconds of CPU on an unauthenticated endpoint per guess, a cheap
lever for denial of service, for no gain.  Binding the phone into the MAC means a
stored value cannot be moved to another phone's row.

What limits guessing: a code lives 5 minutes, allows 5 attempts and is void after
the first success; sends are limited per key (a phone, or a client address) over
sliding windows, by default 1 a minute, 5 an hour and 10 a day — so one phone gets
at most 50 guesses a day out of a million codes.

Senders (:class:`SmsSender`): :class:`LogSender` for development (the code in the
``tokenmall.sms`` log and the last code per phone in memory, for
``tokenmall dev sms PHONE``) and :class:`HttpSender` for a provider's HTTP API.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final, Protocol
from urllib.parse import urlsplit

import httpx

CODE_DIGITS: Final = 6
MIN_KEY_BYTES: Final = 32  # an HMAC-SHA256 key shorter than the hash weakens it
DEFAULT_TEXT: Final = "【TokenMall】您的验证码是{code}，{minutes}分钟内有效，请勿泄露给他人。"

log = logging.getLogger("tokenmall.sms")


@dataclass(frozen=True)
class RateLimit:
    """At most ``max_events`` in any ``window_seconds`` (a sliding window)."""

    max_events: int
    window_seconds: float

    def __post_init__(self) -> None:
        if self.max_events < 1 or self.window_seconds <= 0:
            raise ValueError("a rate limit allows at least one event in a positive window")


def retry_after(sent_at: Sequence[float], now: float, limits: Sequence[RateLimit]) -> float | None:
    """Seconds until one more event is allowed by every limit, or None if it is now.

    ``sent_at`` holds the times of earlier events (any order); ones older than every
    window do not matter.  A limit that is full frees up when its oldest event inside
    the window leaves it; the answer is the longest such wait (``Retry-After``).
    """
    wait = 0.0
    for limit in limits:
        inside = sorted(t for t in sent_at if now - limit.window_seconds < t <= now)
        if len(inside) >= limit.max_events:
            # the event that must leave the window before there is room for one more
            oldest_needed = inside[len(inside) - limit.max_events]
            wait = max(wait, oldest_needed + limit.window_seconds - now)
    return wait if wait > 0 else None


def recent(sent_at: Sequence[float], now: float, limits: Sequence[RateLimit]) -> tuple[float, ...]:
    """The events any limit still counts: what to keep stored, oldest first."""
    horizon = max((limit.window_seconds for limit in limits), default=0.0)
    return tuple(sorted(t for t in sent_at if now - horizon < t <= now))


DEFAULT_SEND_LIMITS: Final = (
    RateLimit(1, 60),
    RateLimit(5, 3600),
    RateLimit(10, 86400),
)


@dataclass(frozen=True)
class SmsPolicy:
    ttl_seconds: float = 300.0  # 5 minutes
    max_attempts: int = 5  # then the code is void
    send_limits: tuple[RateLimit, ...] = DEFAULT_SEND_LIMITS

    def __post_init__(self) -> None:
        if self.ttl_seconds <= 0 or self.max_attempts < 1:
            raise ValueError("a code must live a while and allow at least one attempt")


@dataclass(frozen=True)
class PendingCode:
    """What is stored for a phone's outstanding code: never the code itself."""

    phone: str
    code_mac: str  # hex HMAC-SHA256, see the module docstring
    issued_at: float
    attempts: int = 0


class SmsRateLimited(Exception):
    """Too many codes sent; ``retry_after`` seconds until the next is allowed (429)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many codes sent; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


class Outcome(StrEnum):
    OK = "ok"
    WRONG = "wrong"  # counted as an attempt
    EXPIRED = "expired"
    EXHAUSTED = "exhausted"  # the attempts are used up; the code is void
    NO_CODE = "no_code"  # none sent, or already used


@dataclass(frozen=True)
class Issued:
    code: str  # to hand to the sender, then forget
    pending: PendingCode  # to store, replacing any earlier code for the phone
    sent_at: tuple[float, ...]  # the phone's send times to store


@dataclass(frozen=True)
class Checked:
    outcome: Outcome
    pending: PendingCode | None  # to store; None means delete the phone's code
    attempts_left: int

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


class SmsCodes:
    """Issues and checks codes for phones under a policy, with a server-side MAC key.

    ``phone`` is expected normalised already (one phone, one spelling), since it is
    part of the MAC and the rate-limit key.
    """

    def __init__(self, key: bytes, policy: SmsPolicy | None = None) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the SMS code key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self.policy = policy or SmsPolicy()

    def _mac(self, phone: str, code: str) -> str:
        # NUL cannot occur in a phone number, so ("1", "23…") and ("12", "3…") differ
        message = f"{phone}\x00{code}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def issue(self, phone: str, sent_at: Sequence[float], now: float) -> Issued:
        """A new code for ``phone``, or :class:`SmsRateLimited`.

        The new code replaces any pending one (its attempts start afresh, which the
        send limits bound).  ``sent_at`` is the phone's stored send times; a service
        that also limits per client address calls :func:`retry_after` for that key.
        """
        wait = retry_after(sent_at, now, self.policy.send_limits)
        if wait is not None:
            raise SmsRateLimited(wait)
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        pending = PendingCode(phone=phone, code_mac=self._mac(phone, code), issued_at=now)
        return Issued(code, pending, recent([*sent_at, now], now, self.policy.send_limits))

    def check(self, pending: PendingCode | None, phone: str, code: str, now: float) -> Checked:
        """Checks ``code`` against the phone's pending code; see :class:`Outcome`.

        A success consumes the code (single use).  A wrong code uses an attempt; the
        last wrong attempt leaves the code void, so even the right code after it is
        ``EXHAUSTED``.
        """
        max_attempts = self.policy.max_attempts
        if pending is None or pending.phone != phone:
            return Checked(Outcome.NO_CODE, pending, 0)
        if now >= pending.issued_at + self.policy.ttl_seconds:
            return Checked(Outcome.EXPIRED, None, 0)
        if pending.attempts >= max_attempts:
            return Checked(Outcome.EXHAUSTED, None, 0)
        # compare MACs in constant time; a malformed guess still uses an attempt
        guess = code.strip() if isinstance(code, str) else ""
        if hmac.compare_digest(self._mac(phone, guess), pending.code_mac):
            return Checked(Outcome.OK, None, 0)
        used = replace(pending, attempts=pending.attempts + 1)
        return Checked(Outcome.WRONG, used, max_attempts - used.attempts)


def mask_phone(phone: str) -> str:
    """``+8613812345678`` → ``+86138****5678``: enough to tell phones apart in a log."""
    if len(phone) <= 7:
        return "*" * len(phone)
    return (
        f"{phone[:-8]}{phone[-8:-4].translate(str.maketrans('0123456789', '*' * 10))}{phone[-4:]}"
    )


def sms_text(code: str, ttl_seconds: float, template: str = DEFAULT_TEXT) -> str:
    return template.format(code=code, minutes=max(1, round(ttl_seconds / 60)))


class SmsSender(Protocol):
    """Delivers a code to a phone; raises :class:`SmsSendError` if it could not."""

    async def send_code(self, phone: str, code: str, ttl_seconds: float) -> None: ...


class SmsSendError(Exception):
    """The provider did not accept the message (the code must then not count as sent)."""


class LogSender:
    """Development sender: logs the code and remembers the last one per phone.

    The phone is masked in the log (the log is not a place for phone numbers, and
    the masked form still tells them apart); :meth:`last_code` has the full number.
    Only the newest ``max_phones`` phones are remembered, so a long-running dev
    service does not grow without bound.
    """

    def __init__(self, max_phones: int = 10_000) -> None:
        self._last: OrderedDict[str, str] = OrderedDict()
        self._max_phones = max_phones

    async def send_code(self, phone: str, code: str, ttl_seconds: float) -> None:
        log.info("SMS code for %s: %s (valid %.0f s)", mask_phone(phone), code, ttl_seconds)
        self._last[phone] = code
        self._last.move_to_end(phone)
        while len(self._last) > self._max_phones:
            self._last.popitem(last=False)

    def last_code(self, phone: str) -> str | None:
        return self._last.get(phone)


_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1"})


class HttpSender:
    """Posts ``{"phone", "text"}`` as JSON to a provider URL with a bearer key.

    The URL must be https (the bearer key and the code travel in the request),
    except on the loopback interface, where a local relay or a test double may
    listen.  Pass ``client`` to share a connection pool (or a mock transport in
    tests); otherwise the sender owns one and :meth:`aclose` closes it.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout_seconds: float = 10.0,
        template: str = DEFAULT_TEXT,
    ) -> None:
        parts = urlsplit(url)
        if not (
            parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)
        ):
            raise ValueError("the SMS provider URL must be https (http only on loopback)")
        if not api_key:
            raise ValueError("the SMS provider key is required")
        self.url = url
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout_seconds)
        self._timeout = timeout_seconds
        self._template = template

    async def send_code(self, phone: str, code: str, ttl_seconds: float) -> None:
        body = {"phone": phone, "text": sms_text(code, ttl_seconds, self._template)}
        try:
            response = await self._client.post(
                self.url, json=body, headers=self._headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            # the exception names the URL and the error, never the key or the code
            raise SmsSendError(f"SMS provider unreachable: {type(exc).__name__}") from exc
        if not response.is_success:
            raise SmsSendError(f"SMS provider answered {response.status_code}")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
