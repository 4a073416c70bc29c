"""Webhooks: registration, signed deliveries of the engine's results, retries with
backoff, the delivery log, redelivery, deletion, a second dispatcher, and a receiver
that never answers not holding up the consumer that caused the delivery.

The receiver is a real ASGI app reached through httpx (``Webhooks.transport``); it
checks every signature with the secret the registration showed."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import MetaData, select, update

from tokenmall import contracts
from tokenmall.db import make_engine, make_sessions
from tokenmall.testing import FakeBroker, MemoryPublisher, member_registered, running
from tokenmall.webhooks import (
    Notification,
    RetryPolicy,
    SignatureError,
    WebhookDispatcher,
    define,
    signature_header,
    verify,
)
from tokenmall.webhooks import store as webhook_store
from tokenmall.webhooks.routes import internal_host
from tokenmall_dividends.app import DividendsSettings, build_app
from tokenmall_dividends.service_layer import webhooks as notifications

# --------------------------------------------------------------------------- signing


def test_a_signature_verifies_and_any_change_or_a_stale_timestamp_fails() -> None:
    body = b'{"id":"e1","type":"order.verdict"}'
    header = signature_header("whsec_k", 1_700_000_000, body)
    assert verify("whsec_k", header, body, now=1_700_000_010) == 1_700_000_000
    with pytest.raises(SignatureError, match="does not match"):
        verify("whsec_k", header, body + b" ", now=1_700_000_010)
    with pytest.raises(SignatureError, match="does not match"):
        verify("whsec_other", header, body, now=1_700_000_010)
    with pytest.raises(SignatureError, match="more than 300 s"):
        verify("whsec_k", header, body, now=1_700_000_000 + 301)
    with pytest.raises(SignatureError, match="no Tokenmall-Signature"):
        verify("whsec_k", None, body)
    with pytest.raises(SignatureError, match="needs t="):
        verify("whsec_k", "v1=abc", body)
    with pytest.raises(SignatureError, match="needs t="):  # a digit, but not an ASCII one
        verify("whsec_k", "t=\u00b2,v1=abc", body)
    # a secret being rotated: either value passes
    rotated = header + ",v1=" + "0" * 64
    assert verify("whsec_k", rotated, body, now=1_700_000_000) == 1_700_000_000


def test_the_default_retries_go_on_for_more_than_a_day_with_growing_gaps() -> None:
    policy = RetryPolicy()
    offsets = policy.schedule(1000)
    assert offsets[-1] >= 24 * 3600  # the floor: at least 24 h of retries
    assert offsets[-1] <= policy.window_seconds
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert gaps == sorted(gaps) and gaps[0] == policy.base_seconds
    assert max(gaps) == policy.max_delay_seconds
    # jitter stays within ±10 %
    assert policy.delay(3, rng=lambda: 0.0) == pytest.approx(40 * 0.9)
    assert policy.delay(3, rng=lambda: 1.0) == pytest.approx(40 * 1.1)


def test_a_retry_window_shorter_than_a_day_is_refused() -> None:
    with pytest.raises(ValidationError, match="webhook_retry_window_seconds"):
        DividendsSettings(webhook_retry_window_seconds=3600)


# --------------------------------------------------------------------------- what is sent


def test_notifications_of_the_engines_events() -> None:
    verdict = contracts.InputApplied(
        input_id="order:o-1",
        member="A",
        accepted=True,
        day=3,
        facts=[
            {
                "type": "QuotaGranted",
                "order_id": "o-1",
                "member": "A",
                "grant": 0,
                "quota": 40_000,
                "daily_base": 40,
            },
            {
                "type": "PointsGranted",
                "order_id": "o-1",
                "member": "A",
                "units": 2 * 10**8,
                "referral": False,
            },
            {
                "type": "PointsGranted",
                "order_id": "o-1",
                "member": "S",
                "units": 10**8,
                "referral": True,
            },
            {
                "type": "PointsSold",
                "member": "Z",
                "units": 5 * 10**8,
                "payout": 1234,
                "quota_used": 0,
                "forced": True,
            },
        ],
    )
    notes = list(notifications.notifications_of(verdict))
    assert [n.kind for n in notes] == ["order.verdict", "member.forced_exit"]
    order, exited = notes
    assert order.data["order_id"] == "o-1" and order.data["day"] == 3
    assert (order.data["quota"], order.data["points"]) == ("400.00", "2.00000000")
    assert order.data["links"]["order"] == "/orders/v1/orders/o-1"
    assert (exited.data["member"], exited.data["points"], exited.data["payout"]) == (
        "Z",
        "5.00000000",
        "12.34",
    )
    # the same fact in another event (a redelivery, a batch) keeps its id
    again = verdict.model_copy(update={"event_id": "another"})
    assert next(iter(notifications.notifications_of(again))).event_id == order.event_id

    refused = contracts.InputsApplied(
        day=4,
        inputs=[
            contracts.AppliedInput(
                input_id="order:o-2", member="B", accepted=False, reason="no such member"
            ),
            contracts.AppliedInput(input_id="request:r-1", member="B", accepted=True),
            contracts.AppliedInput(input_id="join:B", member="B", accepted=True),
        ],
    )
    o2, r1 = notifications.notifications_of(refused)
    assert (o2.kind, o2.data["accepted"], o2.data["reason"], o2.data["quota"]) == (
        "order.verdict",
        False,
        "no such member",
        None,
    )
    assert (r1.kind, r1.data["request_id"], r1.data["day"]) == ("request.decided", "r-1", 4)

    line = contracts.PostingLine
    settled = contracts.DaySettled(
        day=7,
        released={"base": Decimal("10.00"), "team": Decimal("2.50")},
        members_released=1_000_000,
        batches=120,
        forced_exits=1,
        exit_postings=[
            line(
                asset="equity", debit="m:Q", credit="burn", amount=Decimal("3"), kind="forced_exit"
            ),
            line(
                asset="cny", debit="pool", credit="m:Q", amount=Decimal("9.90"), kind="forced_exit"
            ),
        ],
    )
    day, exit_q = notifications.notifications_of(settled)
    # one delivery for the day, whatever the number of members: totals and a link
    assert day.kind == "day.settled"
    assert day.data["released"] == {"base": "10.00", "team": "2.50"}
    assert day.data["members_released"] == 1_000_000
    assert day.data["links"]["releases"] == "/wallet/v1/days/7/releases"
    assert len(day.body()) < 1000
    assert (exit_q.data["member"], exit_q.data["points"], exit_q.data["payout"]) == (
        "Q",
        "3",
        "9.90",
    )
    # one batch forcing the same member out twice (two orders, two price rises): two facts
    sold = {
        "type": "PointsSold",
        "member": "Z",
        "units": 1,
        "payout": 1,
        "quota_used": 0,
        "forced": True,
    }
    twice = contracts.InputsApplied(
        day=5,
        inputs=[
            contracts.AppliedInput(input_id=f"order:t-{i}", member="Y", accepted=True, facts=[sold])
            for i in range(2)
        ],
    )
    exits = [n for n in notifications.notifications_of(twice) if n.kind == "member.forced_exit"]
    assert len({n.event_id for n in exits}) == 2
    [plan] = notifications.notifications_of(
        contracts.PlanActivated(day=8, plan={"daily_rate": "0.001"})
    )
    assert plan.kind == "plan.activated" and plan.data["day"] == 8


# --------------------------------------------------------------------------- a receiver


class Receiver:
    """An HTTP endpoint of a mall: answers with what ``answers`` says (by the count of
    deliveries so far), records every delivery with its verified signature."""

    def __init__(self) -> None:
        self.secret = ""
        self.received: list[dict[str, Any]] = []
        self.answers: Callable[[int], int] = lambda n: 200
        self.hang: asyncio.Event | None = None  # set: answer only once it is set

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.hang is not None:
            await self.hang.wait()
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        verified = True
        try:
            verify(self.secret, headers.get("tokenmall-signature"), body)
        except SignatureError:
            verified = False
        self.received.append(
            {"headers": headers, "body": body, "json": json.loads(body), "verified": verified}
        )
        status = self.answers(len(self.received))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"down"})


def dividends(tmp_path: Path, receiver: Receiver, **settings: Any) -> Any:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path}/dividends.db",
        "day_watermarks": [],
        "webhook_retry_base_seconds": 0.05,
        "webhook_retry_max_delay_seconds": 0.2,
        "webhook_poll_seconds": 0.05,
        "webhook_timeout_seconds": 2,
    } | settings
    pub = MemoryPublisher()
    app = build_app(
        DividendsSettings(**values),
        broker_factory=lambda svc: FakeBroker(),
        publisher_factory=lambda svc: pub,
    )
    app.state.svc.webhooks.transport = httpx.ASGITransport(app=receiver)
    return app


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def register(client: httpx.AsyncClient, receiver: Receiver, events: list[str]) -> str:
    answer = await client.post(
        "/v1/webhooks",
        json={"url": "https://mall.example/hooks", "events": events, "description": "mall"},
    )
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["secret"].startswith("whsec_") and created["events"] == sorted(events)
    receiver.secret = created["secret"]
    return str(created["id"])


async def paid_order(app: Any, client: httpx.AsyncClient, order_id: str, member: str) -> None:
    broker: FakeBroker = app.state.svc.broker
    await broker.deliver(contracts.MEMBERS, member_registered(member=member))
    await broker.deliver(
        contracts.ORDERS, contracts.OrderPaid(order_id=order_id, member=member, amount="3000")
    )


def test_registration_shows_the_secret_once_and_refuses_bad_input(tmp_path: Path) -> None:
    receiver = Receiver()

    async def run() -> None:
        app = dividends(tmp_path, receiver)
        async with running(app) as client:
            hook = await register(client, receiver, ["order.verdict", "day.settled"])
            shown = (await client.get(f"/v1/webhooks/{hook}")).json()
            assert "secret" not in shown and shown["events"] == ["day.settled", "order.verdict"]
            page = (await client.get("/v1/webhooks")).json()
            assert page["total"] == 1 and "secret" not in page["items"][0]
            for body, field in [
                ({"url": "ftp://x/y", "events": ["day.settled"]}, "url"),
                ({"url": "https://u:p@x/y", "events": ["day.settled"]}, "url"),
                ({"url": "https://x/y", "events": ["day.settledd"]}, "events"),
                ({"url": "https://x/y", "events": []}, "events"),
                ({"url": "https://x/y", "events": ["day.settled"], "extra": 1}, "extra"),
                # not a way into the platform's own network (SSRF)
                ({"url": "http://127.0.0.1:8104/v1/members", "events": ["day.settled"]}, "url"),
                ({"url": "http://169.254.169.254/latest", "events": ["day.settled"]}, "url"),
                ({"url": "http://[::ffff:10.0.0.1]/h", "events": ["day.settled"]}, "url"),
                ({"url": "https://localhost/h", "events": ["day.settled"]}, "url"),
                ({"url": "https://10.1.2.3/h", "events": ["day.settled"]}, "url"),
            ]:
                answer = await client.post("/v1/webhooks", json=body)
                assert answer.status_code == 422, body
                assert field in answer.text
            assert (await client.get("/v1/webhooks")).json()["total"] == 1
            assert (await client.get("/v1/webhooks/wh_0123")).status_code == 404
            refused = await client.post(
                "/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "events": ["day.settled"]}
            )
            assert "TOKENMALL_WEBHOOK_ALLOW_PRIVATE_TARGETS" in refused.json()["message"]
            assert (await client.post("/v1/webhooks/wh_0123/ping")).status_code == 404
            assert (await client.get("/v1/webhooks/nope")).status_code == 422

    asyncio.run(run())


def test_an_orders_verdict_is_delivered_signed_and_logged(tmp_path: Path) -> None:
    receiver = Receiver()

    async def run() -> None:
        app = dividends(tmp_path, receiver)
        async with running(app) as client:
            await client.post("/v1/plan", json={"plan": {"preset": "points"}, "activate_now": True})
            hook = await register(client, receiver, ["order.verdict"])
            await paid_order(app, client, "o-1", "A")

            async def delivered() -> bool:
                return len(receiver.received) == 1

            await eventually(delivered)
            [got] = receiver.received
            assert got["verified"]
            assert got["headers"]["tokenmall-event-id"] == got["json"]["id"]
            assert got["headers"]["tokenmall-event-type"] == "order.verdict"
            data = got["json"]["data"]
            assert (data["order_id"], data["member"], data["accepted"]) == ("o-1", "A", True)
            assert Decimal(data["quota"]) > 0 and isinstance(data["quota"], str)

            async def logged() -> bool:
                page = (await client.get(f"/v1/webhooks/{hook}/deliveries")).json()
                return page["total"] == 1 and page["items"][0]["status"] == "delivered"

            await eventually(logged)
            [item] = (await client.get(f"/v1/webhooks/{hook}/deliveries")).json()["items"]
            detail = (await client.get(f"/v1/webhooks/{hook}/deliveries/{item['id']}")).json()
            assert detail["payload"] == got["json"] and detail["attempts"] == 1
            assert [a["status_code"] for a in detail["attempt_log"]] == [200]
            metrics = (await client.get("/metrics")).text
            assert (
                'tokenmall_webhook_attempts_total{outcome="delivered",service="dividends"} 1.0'
                in metrics
            )

    asyncio.run(run())


def test_a_receiver_that_is_down_gets_the_same_delivery_again_until_it_answers(
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    receiver.answers = lambda n: 503 if n <= 2 else 200

    async def run() -> None:
        app = dividends(tmp_path, receiver)
        async with running(app) as client:
            await client.post("/v1/plan", json={"plan": {"preset": "points"}, "activate_now": True})
            hook = await register(client, receiver, ["order.verdict"])
            await paid_order(app, client, "o-1", "A")

            async def settled() -> bool:
                page = (await client.get(f"/v1/webhooks/{hook}/deliveries")).json()
                return page["items"] != [] and page["items"][0]["status"] == "delivered"

            await eventually(settled)
            assert len(receiver.received) == 3
            assert len({r["body"] for r in receiver.received}) == 1  # the same bytes each time
            assert all(r["verified"] for r in receiver.received)
            [item] = (await client.get(f"/v1/webhooks/{hook}/deliveries")).json()["items"]
            detail = (await client.get(f"/v1/webhooks/{hook}/deliveries/{item['id']}")).json()
            assert [a["status_code"] for a in detail["attempt_log"]] == [503, 503, 200]
            assert detail["attempt_log"][0]["error"].startswith("HTTP 503")
            first, second = (a["at"] for a in detail["attempt_log"][:2])
            assert second > first

            # the receiver lost it: redeliver sends the same event again
            answer = await client.post(f"/v1/webhooks/{hook}/deliveries/{item['id']}/redeliver")
            assert answer.status_code == 202

            async def again() -> bool:
                return len(receiver.received) == 4

            await eventually(again)
            assert receiver.received[-1]["json"]["id"] == receiver.received[0]["json"]["id"]
            missing = await client.post(f"/v1/webhooks/{hook}/deliveries/999/redeliver")
            assert missing.status_code == 404

    asyncio.run(run())


def test_a_receiver_that_never_answers_does_not_hold_up_the_consumer(tmp_path: Path) -> None:
    receiver = Receiver()
    receiver.hang = asyncio.Event()

    async def run() -> None:
        app = dividends(tmp_path, receiver, webhook_timeout_seconds=30)
        async with running(app) as client:
            await client.post("/v1/plan", json={"plan": {"preset": "points"}, "activate_now": True})
            await register(client, receiver, ["order.verdict"])
            started = time.monotonic()
            for i in range(5):
                await paid_order(app, client, f"o-{i}", f"M{i}")
            assert time.monotonic() - started < 10
            state = (await client.get("/v1/members/M4")).json()
            assert Decimal(state["quota_remaining"]) > 0
            receiver.hang.set()

            async def all_five() -> bool:
                return len(receiver.received) == 5

            await eventually(all_five)

    asyncio.run(run())


def test_a_deleted_endpoint_gets_nothing_more_and_what_waited_is_cancelled(
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    receiver.answers = lambda n: 500

    async def run() -> None:
        # the first retry is an hour away: the delivery waits, pending
        app = dividends(tmp_path, receiver, webhook_retry_base_seconds=3600)
        async with running(app) as client:
            await client.post("/v1/plan", json={"plan": {"preset": "points"}, "activate_now": True})
            hook = await register(client, receiver, ["order.verdict"])
            await paid_order(app, client, "o-1", "A")

            async def tried() -> bool:
                page = (await client.get(f"/v1/webhooks/{hook}/deliveries")).json()
                return page["items"] != [] and page["items"][0]["attempts"] == 1

            await eventually(tried)
            [item] = (await client.get(f"/v1/webhooks/{hook}/deliveries")).json()["items"]
            assert item["status"] == "pending" and item["next_try_at"] is not None
            assert (await client.delete(f"/v1/webhooks/{hook}")).status_code == 204
            assert (await client.get(f"/v1/webhooks/{hook}")).status_code == 404
            assert (await client.delete(f"/v1/webhooks/{hook}")).status_code == 404
            svc = app.state.svc
            deliveries = svc.webhooks.tables.deliveries
            async with svc.sessions() as session:
                statuses = (await session.execute(select(deliveries.c.status))).scalars().all()
            assert statuses == ["cancelled"]
            await paid_order(app, client, "o-2", "B")
            async with svc.sessions() as session:
                count = len((await session.execute(select(deliveries.c.id))).all())
            assert count == 1
            assert len(receiver.received) == 1

    asyncio.run(run())


def test_a_settled_day_is_one_delivery_with_its_totals_and_a_link(tmp_path: Path) -> None:
    receiver = Receiver()

    async def run() -> None:
        app = dividends(tmp_path, receiver)
        async with running(app) as client:
            await client.post("/v1/plan", json={"plan": {"preset": "points"}, "activate_now": True})
            hook = await register(client, receiver, ["day.settled", "plan.activated"])
            for i in range(30):
                await paid_order(app, client, f"o-{i}", f"M{i}")
            assert (await client.post("/v1/settlements/1")).status_code == 200
            settlement = (await client.get("/v1/settlements/1")).json()

            async def one() -> bool:
                return any(r["json"]["type"] == "day.settled" for r in receiver.received)

            await eventually(one)
            await asyncio.sleep(0.2)  # nothing more follows for the day
            days = [r for r in receiver.received if r["json"]["type"] == "day.settled"]
            assert len(days) == 1
            data = days[0]["json"]["data"]
            assert data["day"] == 1 and data["members_released"] == 30
            assert data["members_released"] == settlement["members_released"]
            assert data["links"] == {
                "settlement": "/dividends/v1/settlements/1",
                "releases": "/wallet/v1/days/1/releases",
            }
            assert sum(Decimal(v) for v in data["released"].values()) > 0
            page = (await client.get(f"/v1/webhooks/{hook}/deliveries")).json()
            assert "day.settled" in {item["type"] for item in page["items"]}

    asyncio.run(run())


def test_a_local_receiver_is_accepted_where_the_setting_allows_it(tmp_path: Path) -> None:
    receiver = Receiver()

    async def run() -> None:
        app = dividends(tmp_path, receiver, webhook_allow_private_targets=True)
        async with running(app) as client:
            answer = await client.post(
                "/v1/webhooks", json={"url": "http://127.0.0.1:9/h", "events": ["day.settled"]}
            )
            assert answer.status_code == 201, answer.text

    asyncio.run(run())


def test_a_ping_reaches_the_endpoint(tmp_path: Path) -> None:
    receiver = Receiver()

    async def run() -> None:
        app = dividends(tmp_path, receiver)
        async with running(app) as client:
            hook = await register(client, receiver, ["day.settled"])
            answer = await client.post(f"/v1/webhooks/{hook}/ping")
            assert answer.status_code == 202 and answer.json()["type"] == "webhook.ping"

            async def pinged() -> bool:
                return len(receiver.received) == 1

            await eventually(pinged)
            assert receiver.received[0]["json"]["data"] == {"endpoint_id": hook}

    asyncio.run(run())


# --------------------------------------------------------------------------- the dispatcher


async def _fresh(path: Path) -> tuple[Any, Any, Any]:
    metadata = MetaData()
    tables = define(metadata)
    engine = make_engine(f"sqlite:///{path}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return engine, make_sessions(engine), tables


def test_the_window_closes_then_failed_and_a_redelivery_reopens_it(tmp_path: Path) -> None:
    receiver = Receiver()
    receiver.answers = lambda n: 500

    async def run() -> None:
        engine, sessions, tables = await _fresh(tmp_path / "hooks.db")
        async with webhook_store.writing(sessions) as session:
            view, receiver.secret = await webhook_store.register(
                session, tables, "https://mall.example/h", ["day.settled"], None
            )
            note = Notification("n-1", "day.settled", {"day": 1})
            # the same notification twice (an effect retried): one delivery
            await webhook_store.queue(session, tables, [note, note])
        dispatcher = WebhookDispatcher(
            sessions,
            tables,
            policy=RetryPolicy(base_seconds=0.01, max_delay_seconds=0.02, window_seconds=0.15),
            transport=httpx.ASGITransport(app=receiver),
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                await dispatcher.dispatch_due()
                async with sessions() as session:
                    status = (await session.execute(select(tables.deliveries.c.status))).scalar()
                if status == "failed":
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            tries = len(receiver.received)
            assert tries >= 3 and all(r["verified"] for r in receiver.received)
            assert await dispatcher.dispatch_due() == 0  # nothing due once it gave up
            async with webhook_store.writing(sessions) as session:
                [delivery_id] = (await session.execute(select(tables.deliveries.c.id))).scalars()
                outcome = await webhook_store.redeliver(session, tables, view["id"], delivery_id)
                assert outcome == "queued"
            receiver.answers = lambda n: 200
            assert await dispatcher.dispatch_due() == 1
            async with sessions() as session:
                found = await webhook_store.delivery(session, tables, view["id"], delivery_id)
            assert found is not None
            assert (found["status"], found["attempts"]) == ("delivered", tries + 1)
            assert len(found["attempt_log"]) == tries + 1
        finally:
            await dispatcher.close()
            await engine.dispose()

    asyncio.run(run())


def test_two_dispatchers_send_each_delivery_once(tmp_path: Path) -> None:
    receiver = Receiver()

    async def run() -> None:
        engine, sessions, tables = await _fresh(tmp_path / "hooks.db")
        async with webhook_store.writing(sessions) as session:
            _, receiver.secret = await webhook_store.register(
                session, tables, "https://mall.example/h", ["order.verdict"], None
            )
            notes = [Notification(f"n-{i}", "order.verdict", {"i": i}) for i in range(120)]
            assert await webhook_store.queue(session, tables, notes) == 120
        make = [
            WebhookDispatcher(
                sessions, tables, batch=25, transport=httpx.ASGITransport(app=receiver)
            )
            for _ in range(2)
        ]
        try:
            while sum(await asyncio.gather(*(d.dispatch_due() for d in make))):
                pass
            ids = [r["json"]["id"] for r in receiver.received]
            assert sorted(ids) == sorted(f"n-{i}" for i in range(120))  # each once
            async with sessions() as session:
                rows = (await session.execute(select(tables.deliveries.c.status))).scalars()
                assert set(rows) == {"delivered"}
        finally:
            for dispatcher in make:
                await dispatcher.close()
            await engine.dispose()

    asyncio.run(run())


def test_a_claim_of_a_dispatcher_that_died_mid_send_is_taken_over(tmp_path: Path) -> None:
    receiver = Receiver()

    async def run() -> None:
        engine, sessions, tables = await _fresh(tmp_path / "hooks.db")
        async with webhook_store.writing(sessions) as session:
            _, receiver.secret = await webhook_store.register(
                session, tables, "https://mall.example/h", ["order.verdict"], None
            )
            await webhook_store.queue(session, tables, [Notification("n", "order.verdict", {})])
        dead = WebhookDispatcher(sessions, tables, transport=httpx.ASGITransport(app=receiver))
        claimed = await dead._claim()  # it took the delivery and died before sending
        assert len(claimed) == 1
        alive = WebhookDispatcher(sessions, tables, transport=httpx.ASGITransport(app=receiver))
        try:
            assert await alive.dispatch_due() == 0  # held: not due while in flight
            async with webhook_store.writing(sessions) as session:  # the in-flight window passes
                await session.execute(
                    update(tables.deliveries).values(next_try_at=claimed[0].retry_from)
                )
            assert await alive.dispatch_due() == 1
            assert [r["json"]["id"] for r in receiver.received] == ["n"]
        finally:
            await alive.close()
            await engine.dispose()

    asyncio.run(run())


def test_every_time_the_webhook_routes_show_is_utc_with_its_zone(tmp_path: Path) -> None:
    """SQLite gives back naive datetimes: the API still says they are UTC (``Z``)."""
    receiver = Receiver()
    receiver.answers = lambda n: 500

    async def run() -> None:
        app = dividends(tmp_path, receiver, webhook_retry_base_seconds=3600)
        async with running(app) as client:
            hook = await register(client, receiver, ["day.settled"])
            assert (await client.get(f"/v1/webhooks/{hook}")).json()["created_at"].endswith("Z")
            pinged = (await client.post(f"/v1/webhooks/{hook}/ping")).json()

            async def tried() -> bool:
                found = await client.get(f"/v1/webhooks/{hook}/deliveries/{pinged['id']}")
                return bool(found.json()["attempt_log"])

            await eventually(tried)
            detail = (await client.get(f"/v1/webhooks/{hook}/deliveries/{pinged['id']}")).json()
            times = [detail["created_at"], detail["next_try_at"], detail["attempt_log"][0]["at"]]
            assert all(t.endswith("Z") for t in times), times
            listed = (await client.get(f"/v1/webhooks/{hook}/deliveries")).json()["items"][0]
            assert listed["created_at"].endswith("Z") and listed["next_try_at"].endswith("Z")

    asyncio.run(run())


@pytest.mark.parametrize(
    ("host", "internal"),
    [
        ("127.0.0.1", True),
        ("127.1", True),
        ("2130706433", True),
        ("0x7f000001", True),
        ("0177.0.0.1", True),
        ("10.0.0.1", True),
        ("100.64.1.1", True),
        ("169.254.169.254", True),
        ("[::1]", True),
        ("[::ffff:10.0.0.1]", True),
        ("localhost", True),
        ("a.localhost", True),
        ("0.0.0.0", True),
        ("8.8.8.8", False),
        ("mall.example.com", False),
        ("[2001:4860:4860::8888]", False),
    ],
)
def test_internal_hosts_in_any_notation(host: str, internal: bool) -> None:
    assert internal_host(host) is internal


def test_the_dispatcher_does_not_send_to_an_internal_address_or_wait_on_a_trickle(
    tmp_path: Path,
) -> None:
    async def trickle(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(50):  # each byte within any read timeout, the whole far beyond it
            await send({"type": "http.response.body", "body": b".", "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b""})

    async def huge(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 5_000_000})

    async def run() -> None:
        engine, sessions, tables = await _fresh(tmp_path / "hooks.db")
        async with webhook_store.writing(sessions) as session:
            for url in ("http://127.0.0.1:9/h", "https://slow.example/h", "https://big.example/h"):
                await webhook_store.register(session, tables, url, ["day.settled"], None)
            await webhook_store.queue(session, tables, [Notification("n", "day.settled", {})])
        network = WebhookDispatcher(sessions, tables)  # no transport: the network
        slow = WebhookDispatcher(
            sessions, tables, timeout=0.5, transport=httpx.ASGITransport(app=trickle)
        )
        big = WebhookDispatcher(sessions, tables, transport=httpx.ASGITransport(app=huge))
        d, e = tables.deliveries, tables.endpoints
        try:

            async def only(url: str) -> None:  # park the other endpoints' deliveries
                async with webhook_store.writing(sessions) as session:
                    ids = select(e.c.id).where(e.c.url == url)
                    await session.execute(
                        update(d).where(d.c.endpoint_id.in_(ids)).values(status="pending")
                    )
                    await session.execute(
                        update(d).where(d.c.endpoint_id.not_in(ids)).values(status="held")
                    )

            async def error_of(url: str) -> str:
                async with sessions() as session:
                    return str(
                        (
                            await session.execute(
                                select(d.c.last_error)
                                .join(e, e.c.id == d.c.endpoint_id)
                                .where(e.c.url == url)
                            )
                        ).scalar_one()
                    )

            await only("http://127.0.0.1:9/h")
            assert await network.dispatch_due() == 1
            assert "non-public" in await error_of("http://127.0.0.1:9/h")
            await only("https://slow.example/h")
            started = time.monotonic()
            assert await slow.dispatch_due() == 1
            assert time.monotonic() - started < 2
            assert "no answer within 0.5 s" in await error_of("https://slow.example/h")
            await only("https://big.example/h")
            assert await big.dispatch_due() == 1
            assert len(await error_of("https://big.example/h")) < 1000
        finally:
            for dispatcher in (network, slow, big):
                await dispatcher.close()
            await engine.dispose()

    asyncio.run(run())


def test_a_delivery_being_sent_is_not_redelivered_until_its_claim_is_over(tmp_path: Path) -> None:
    async def run() -> None:
        engine, sessions, tables = await _fresh(tmp_path / "hooks.db")
        async with webhook_store.writing(sessions) as session:
            view, _ = await webhook_store.register(
                session, tables, "https://mall.example/h", ["order.verdict"], None
            )
            await webhook_store.queue(session, tables, [Notification("n", "order.verdict", {})])
        sender = WebhookDispatcher(sessions, tables, transport=httpx.ASGITransport(app=Receiver()))
        try:
            [taken] = await sender._claim()  # being sent
            async with webhook_store.writing(sessions) as session:
                assert await webhook_store.redeliver(session, tables, view["id"], taken.id) == (
                    "in_flight"
                )
                assert await webhook_store.redeliver(session, tables, view["id"], 999) == "missing"
                # the sender died: once its claim is over, a redelivery goes ahead
                await session.execute(
                    update(tables.deliveries).values(next_try_at=taken.retry_from)
                )
                assert await webhook_store.redeliver(session, tables, view["id"], taken.id) == (
                    "queued"
                )
        finally:
            await sender.close()
            await engine.dispose()

    asyncio.run(run())
