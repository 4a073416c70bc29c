"""One-time SMS codes: expiry, attempts, single use, send limits, and the senders."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenmall.identity.sms import (
    HttpSender,
    LogSender,
    Outcome,
    PendingCode,
    RateLimit,
    SmsCodes,
    SmsPolicy,
    SmsRateLimited,
    SmsSendError,
    mask_phone,
    recent,
    retry_after,
    sms_text,
)

KEY = b"k" * 32
PHONE = "+8613812345678"
T0 = 1_800_000_000.0


@pytest.fixture
def codes() -> SmsCodes:
    return SmsCodes(KEY)


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_a_code_is_six_digits_and_only_its_mac_is_kept(codes: SmsCodes) -> None:
    issued = codes.issue(PHONE, (), T0)
    assert len(issued.code) == 6 and issued.code.isdigit()
    assert issued.code not in repr(issued.pending)
    assert len(issued.pending.code_mac) == 64  # hex SHA-256
    assert issued.pending == PendingCode(PHONE, issued.pending.code_mac, T0, 0)
    assert issued.sent_at == (T0,)


def test_codes_are_random(codes: SmsCodes) -> None:
    assert len({codes.issue(PHONE, (), T0).code for _ in range(50)}) > 40


def test_a_code_is_single_use(codes: SmsCodes) -> None:
    issued = codes.issue(PHONE, (), T0)
    checked = codes.check(issued.pending, PHONE, issued.code, T0 + 10)
    assert checked.ok and checked.pending is None
    # the service stored None: the same code again finds nothing
    assert codes.check(checked.pending, PHONE, issued.code, T0 + 11).outcome is Outcome.NO_CODE


def test_a_code_expires_after_five_minutes(codes: SmsCodes) -> None:
    issued = codes.issue(PHONE, (), T0)
    assert codes.check(issued.pending, PHONE, issued.code, T0 + 299.9).ok
    expired = codes.check(issued.pending, PHONE, issued.code, T0 + 300)
    assert expired.outcome is Outcome.EXPIRED and expired.pending is None


def test_five_attempts_then_the_code_is_void(codes: SmsCodes) -> None:
    issued = codes.issue(PHONE, (), T0)
    pending = issued.pending
    for left in (4, 3, 2, 1, 0):
        checked = codes.check(pending, PHONE, wrong(issued.code), T0 + 1)
        assert (checked.outcome, checked.attempts_left) == (Outcome.WRONG, left)
        assert checked.pending is not None
        pending = checked.pending
    assert pending.attempts == 5
    exhausted = codes.check(pending, PHONE, issued.code, T0 + 2)  # even the right code
    assert exhausted.outcome is Outcome.EXHAUSTED and exhausted.pending is None


def test_the_fifth_attempt_may_be_right(codes: SmsCodes) -> None:
    issued = codes.issue(PHONE, (), T0)
    pending = issued.pending
    for _ in range(4):
        result = codes.check(pending, PHONE, wrong(issued.code), T0 + 1)
        assert result.pending is not None
        pending = result.pending
    assert codes.check(pending, PHONE, f" {issued.code}\n", T0 + 1).ok


@pytest.mark.parametrize("guess", ["", "12345", "1234567", "abcdef", "１２３４５６"])
def test_malformed_guesses_use_an_attempt(codes: SmsCodes, guess: str) -> None:
    issued = codes.issue(PHONE, (), T0)
    checked = codes.check(issued.pending, PHONE, guess, T0 + 1)
    assert checked.outcome is Outcome.WRONG and checked.attempts_left == 4


def test_a_code_belongs_to_its_phone_and_key(codes: SmsCodes) -> None:
    issued = codes.issue(PHONE, (), T0)
    other_phone = "+8613900000000"
    assert codes.check(issued.pending, other_phone, issued.code, T0).outcome is Outcome.NO_CODE
    # a stored MAC moved to another phone's row does not verify there
    moved = PendingCode(other_phone, issued.pending.code_mac, T0)
    assert codes.check(moved, other_phone, issued.code, T0).outcome is Outcome.WRONG
    # nor with another server key
    other_key = SmsCodes(b"x" * 32)
    assert other_key.check(issued.pending, PHONE, issued.code, T0).outcome is Outcome.WRONG


def test_a_new_code_replaces_the_old(codes: SmsCodes) -> None:
    first = codes.issue(PHONE, (), T0)
    second = codes.issue(PHONE, first.sent_at, T0 + 61)
    if first.code != second.code:
        assert codes.check(second.pending, PHONE, first.code, T0 + 62).outcome is Outcome.WRONG
    assert codes.check(second.pending, PHONE, second.code, T0 + 62).ok


def test_the_key_must_be_long_enough() -> None:
    with pytest.raises(ValueError):
        SmsCodes(b"short")


def test_sends_per_phone_per_hour() -> None:
    codes = SmsCodes(KEY, SmsPolicy(send_limits=(RateLimit(3, 3600),)))
    sent: tuple[float, ...] = ()
    for t in (T0, T0 + 100, T0 + 200):
        sent = codes.issue(PHONE, sent, t).sent_at
    with pytest.raises(SmsRateLimited) as caught:
        codes.issue(PHONE, sent, T0 + 300)
    assert caught.value.retry_after == pytest.approx(3300)  # when the first send leaves
    with pytest.raises(SmsRateLimited):
        codes.issue(PHONE, sent, T0 + 3599)
    assert codes.issue(PHONE, sent, T0 + 3600).sent_at == (T0 + 100, T0 + 200, T0 + 3600)


def test_default_limits_one_a_minute_five_an_hour(codes: SmsCodes) -> None:
    sent = codes.issue(PHONE, (), T0).sent_at
    with pytest.raises(SmsRateLimited) as caught:
        codes.issue(PHONE, sent, T0 + 20)
    assert caught.value.retry_after == pytest.approx(40)
    for i in range(1, 5):
        sent = codes.issue(PHONE, sent, T0 + 60 * i).sent_at
    with pytest.raises(SmsRateLimited) as caught:
        codes.issue(PHONE, sent, T0 + 300)  # a sixth inside the hour
    assert caught.value.retry_after == pytest.approx(3300)


def test_recent_keeps_only_what_a_limit_counts() -> None:
    limits = (RateLimit(1, 60), RateLimit(5, 3600))
    assert recent([T0 - 4000, T0 - 3599, T0 - 10, T0], T0, limits) == (T0 - 3599, T0 - 10, T0)


@settings(max_examples=100, deadline=None)
@given(
    # whole seconds, so that "retry exactly when told" is exact arithmetic
    gaps=st.lists(st.integers(0, 2000), min_size=1, max_size=60),
    max_events=st.integers(1, 5),
    window=st.integers(1, 5000),
)
def test_retry_after_never_lets_a_window_overflow(
    gaps: list[int], max_events: int, window: int
) -> None:
    """Greedy senders, retrying exactly when told: no window ever holds too many."""
    limits = (RateLimit(max_events, window),)
    now, sent = T0, list[float]()
    for gap in gaps:
        now += gap
        wait = retry_after(sent, now, limits)
        if wait is not None:
            assert wait > 0
            now += wait
            assert retry_after(sent, now, limits) is None  # the wait was enough
        sent.append(now)
    for start in sent:
        assert sum(start <= t < start + window for t in sent) <= max_events


def test_mask_phone() -> None:
    assert mask_phone("+8613812345678") == "+86138****5678"
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("A") == "*"


def test_sms_text() -> None:
    assert (
        sms_text("123456", 300) == "【TokenMall】您的验证码是123456，5分钟内有效，请勿泄露给他人。"
    )
    assert sms_text("000001", 90, "code {code} ({minutes} min)") == "code 000001 (2 min)"


def test_log_sender_logs_and_remembers(caplog: pytest.LogCaptureFixture) -> None:
    sender = LogSender(max_phones=2)
    with caplog.at_level(logging.INFO, logger="tokenmall.sms"):
        asyncio.run(sender.send_code(PHONE, "123456", 300))
        asyncio.run(sender.send_code(PHONE, "654321", 300))
    records = [r for r in caplog.records if r.name == "tokenmall.sms"]
    assert len(records) == 2
    assert "654321" in records[-1].getMessage()
    assert "+86138****5678" in records[-1].getMessage()
    assert PHONE not in records[-1].getMessage()
    assert sender.last_code(PHONE) == "654321"
    assert sender.last_code("+8613900000000") is None

    asyncio.run(sender.send_code("+8613900000001", "111111", 300))
    asyncio.run(sender.send_code("+8613900000002", "222222", 300))
    assert sender.last_code(PHONE) is None  # the oldest phone was forgotten
    assert sender.last_code("+8613900000002") == "222222"


def test_http_sender_posts_the_message() -> None:
    seen: list[httpx.Request] = []

    def provider(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"id": "msg-1"})

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(provider)) as client:
            sender = HttpSender("https://sms.example/v1/send", "key-123", client=client)
            await sender.send_code(PHONE, "042137", 300)
            await sender.aclose()  # a shared client stays open
            assert not client.is_closed

    asyncio.run(go())
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == "https://sms.example/v1/send"
    assert request.headers["authorization"] == "Bearer key-123"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"phone": PHONE, "text": sms_text("042137", 300)}


@pytest.mark.parametrize("status", [400, 401, 429, 500])
def test_http_sender_raises_when_the_provider_refuses(status: int) -> None:
    async def go() -> None:
        transport = httpx.MockTransport(lambda request: httpx.Response(status))
        async with httpx.AsyncClient(transport=transport) as client:
            sender = HttpSender("https://sms.example/send", "key-123", client=client)
            with pytest.raises(SmsSendError, match=str(status)) as caught:
                await sender.send_code(PHONE, "042137", 300)
            assert "key-123" not in str(caught.value) and "042137" not in str(caught.value)

    asyncio.run(go())


def test_http_sender_raises_when_the_provider_is_unreachable() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(down)) as client:
            sender = HttpSender("https://sms.example/send", "key-123", client=client)
            with pytest.raises(SmsSendError, match="unreachable"):
                await sender.send_code(PHONE, "042137", 300)

    asyncio.run(go())


def test_http_sender_needs_https_and_a_key() -> None:
    with pytest.raises(ValueError, match="https"):
        HttpSender("http://sms.example/send", "key")
    with pytest.raises(ValueError, match="https"):
        HttpSender("ftp://sms.example/send", "key")
    with pytest.raises(ValueError, match="key"):
        HttpSender("https://sms.example/send", "")

    async def loopback() -> None:
        sender = HttpSender("http://127.0.0.1:9/send", "key")  # owns its client
        await sender.aclose()

    asyncio.run(loopback())
