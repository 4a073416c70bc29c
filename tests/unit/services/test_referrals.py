"""The referrals service with a fake broker and an in-memory publisher (no Kafka)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from tokenmall import contracts
from tokenmall.servicekit import ServiceSettings
from tokenmall.testing import FakeBroker, MemoryPublisher, drain, running
from tokenmall_referrals.app import build_app

Scenario = Callable[[FastAPI, httpx.AsyncClient], Awaitable[None]]

TEAM_PLAN: dict[str, Any] = {
    "team": {
        "levels": [
            {"threshold": 300, "rate": "0.10"},
            {"threshold": 900, "rate": "0.20"},
            {"threshold": 2000, "rate": "0.30"},
        ],
        "peer_rate": "0.03",
        "max_depth": None,
    }
}


def run(tmp_path: Path, scenario: Scenario) -> None:
    async def main() -> None:
        publisher = MemoryPublisher()
        app = build_app(
            ServiceSettings(database_url=f"sqlite:///{tmp_path}/r.db"),
            broker_factory=lambda svc: FakeBroker(),
            publisher_factory=lambda svc: publisher,
        )
        app.state.test_publisher = publisher
        async with running(app) as client:
            await scenario(app, client)

    asyncio.run(main())


def broker(app: FastAPI) -> FakeBroker:
    fake: FakeBroker = app.state.svc.broker
    return fake


async def published(app: FastAPI) -> list[tuple[str, str, contracts.Event]]:
    """(topic, key, event) published so far, once per event id (the relay is at-least-once)."""
    await drain(app)
    publisher: MemoryPublisher = app.state.test_publisher
    seen: set[str] = set()
    out = []
    for topic, key, value, _ in publisher.messages:
        event = contracts.decode(value)
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append((topic, key, event))
    return out


async def register(
    client: httpx.AsyncClient, member: str, sponsor: str | None = None, merchant: bool = False
) -> httpx.Response:
    return await client.post(
        "/v1/members", json={"member": member, "sponsor": sponsor, "merchant": merchant}
    )


async def deliver(app: FastAPI, topic: str, event: contracts.Event | bytes) -> None:
    await broker(app).deliver(topic, event)


def paid(order_id: str, member: str, amount: str) -> contracts.OrderPaid:
    return contracts.OrderPaid(order_id=order_id, member=member, amount=Decimal(amount))


def refunded(order_id: str, member: str, amount: str) -> contracts.OrderRefunded:
    return contracts.OrderRefunded(order_id=order_id, member=member, amount=Decimal(amount))


async def member(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """The member view, its registration time checked and left out (it is the clock's)."""
    response = await client.get(f"/v1/members/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body.pop("registered_at").endswith("Z")
    return body


async def referrals_of(client: httpx.AsyncClient, name: str) -> list[str]:
    """The member's direct referrals, page by page (two at a time: paging is tested)."""
    names: list[str] = []
    while True:
        response = await client.get(f"/v1/members/{name}/referrals?offset={len(names)}&limit=2")
        assert response.status_code == 200, response.text
        page = response.json()
        names += [m["member"] for m in page["items"]]
        if not page["items"]:
            assert len(names) == page["total"]
            count = (await member(client, name))["referral_count"]
            assert count == page["total"]
            return names


# ------------------------------------------------------------------ registration


def test_register_publishes_member_registered(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        first = await register(client, "13800000001")
        assert first.status_code == 201
        assert first.json()["registered_at"].endswith("Z")
        assert {k: v for k, v in first.json().items() if k != "registered_at"} == {
            "member": "13800000001",
            "sponsor": None,
            "merchant": False,
            "spend": "0.00",
            "team_performance": "0.00",
            "star": 0,
            "seq": 1,
            "referral_count": 0,
        }
        second = await client.post(
            "/v1/members",
            json={"member": "13800000002", "sponsor": "13800000001", "merchant": True},
        )
        assert second.status_code == 201
        assert second.json()["sponsor"] == "13800000001"
        assert second.json()["merchant"] is True
        third = await client.post("/v1/members", json={"member": "13800000003"})
        assert third.status_code == 201  # sponsor and merchant are optional

        events = await published(app)
        assert [(t, k) for t, k, _ in events] == [
            (contracts.MEMBERS, "13800000001"),
            (contracts.MEMBERS, "13800000002"),
            (contracts.MEMBERS, "13800000003"),
        ]
        registered = [e for _, _, e in events]
        assert all(isinstance(e, contracts.MemberRegistered) for e in registered)
        a, b, _ = registered
        assert isinstance(a, contracts.MemberRegistered)
        assert isinstance(b, contracts.MemberRegistered)
        assert (a.member, a.sponsor, a.merchant) == ("13800000001", None, False)
        assert (b.member, b.sponsor, b.merchant) == ("13800000002", "13800000001", True)
        assert [e.seq for e in registered] == [1, 2, 3]  # registration order, carried
        for event in registered:
            assert event.type == "MemberRegistered"
            assert event.producer == "referrals"
            assert event.schema_version == contracts.SCHEMA_VERSION
            assert event.causation_id is None
            assert str(uuid.UUID(event.event_id)) == event.event_id
            assert isinstance(event.occurred_at, datetime)
            assert event.occurred_at.tzinfo is not None
        assert len({e.event_id for e in registered}) == 3

        assert await referrals_of(client, "13800000001") == ["13800000002"]
        assert (await client.get("/v1/sync")).json()["outbox_backlog"] == 0

    run(tmp_path, scenario)


def test_duplicate_member_is_a_conflict_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        assert (await register(client, "a")).status_code == 201
        assert (await register(client, "b")).status_code == 201
        again = await register(client, "a", sponsor="b", merchant=True)
        assert again.status_code == 409
        assert again.json()["message"] == "member 'a' already exists"
        assert await member(client, "a") == {
            "member": "a",
            "sponsor": None,
            "merchant": False,
            "spend": "0.00",
            "team_performance": "0.00",
            "star": 0,
            "seq": 1,
            "referral_count": 0,
        }
        assert await referrals_of(client, "b") == []
        assert (await client.get("/v1/members")).json()["total"] == 2
        events = await published(app)
        assert [e.member for _, _, e in events if isinstance(e, contracts.MemberRegistered)] == [
            "a",
            "b",
        ]

    run(tmp_path, scenario)


def test_unknown_sponsor_and_self_sponsoring_are_refused(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        unknown = await register(client, "a", sponsor="nobody")
        assert unknown.status_code == 422
        assert unknown.json()["message"] == "unknown sponsor 'nobody'"
        itself = await register(client, "a", sponsor="a")
        assert itself.status_code == 422
        assert "cannot sponsor themselves" in itself.json()["message"]
        assert (await client.get("/v1/members/a")).status_code == 404
        assert (await client.get("/v1/members")).json() == {
            "items": [],
            "total": 0,
            "offset": 0,
            "limit": 100,
        }
        assert await published(app) == []

    run(tmp_path, scenario)


def test_malformed_requests_are_422(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        headers = {"content-type": "application/json"}
        assert (
            await client.post("/v1/members", content=b"{not json", headers=headers)
        ).status_code == 422
        bad_bodies: list[Any] = [
            {},
            [],
            "a",
            {"member": ""},
            {"member": "has space"},
            {"member": "tab\there"},
            {"member": "x" * 65},
            {"member": 13800000001},
            {"member": "a", "merchant": "yes"},
            {"member": "a", "sponsor": 5},
            {"member": "a", "unexpected": 1},
        ]
        for body in bad_bodies:
            response = await client.post("/v1/members", json=body)
            assert response.status_code == 422, body
            assert response.json()["code"] == "invalid", body
        assert (await register(client, "x" * 64)).status_code == 201  # the longest id
        assert (await client.get("/v1/members")).json()["total"] == 1
        assert (await client.get("/v1/members?limit=0")).status_code == 422
        assert (await client.get("/v1/members?offset=-1")).status_code == 422
        assert (await client.get("/v1/members/nobody")).json()[
            "message"
        ] == "unknown member 'nobody'"
        assert len(await published(app)) == 1

    run(tmp_path, scenario)


def test_list_is_in_registration_order_and_paged(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        names = ["m9", "m1", "m5", "m3"]
        for name in names:
            assert (await register(client, name)).status_code == 201
        everyone = (await client.get("/v1/members")).json()
        assert [m["member"] for m in everyone["items"]] == names
        assert everyone["total"] == 4
        page = (await client.get("/v1/members?offset=1&limit=2")).json()
        assert [m["member"] for m in page["items"]] == ["m1", "m5"]
        assert page["total"] == 4
        assert set(page["items"][0]) == {
            "member",
            "sponsor",
            "merchant",
            "spend",
            "team_performance",
            "star",
            "seq",
            "registered_at",
        }
        beyond = (await client.get("/v1/members?offset=10")).json()
        assert (beyond["items"], beyond["total"]) == ([], 4)
        unknown = await client.get("/v1/members/nobody/referrals")
        assert (unknown.status_code, unknown.json()["field"]) == (404, "member")

    run(tmp_path, scenario)


# ------------------------------------------------------------------ orders


def test_spend_follows_paid_and_refunded_orders_once(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        await register(client, "a")
        first = paid("o1", "a", "100.50")
        await deliver(app, contracts.ORDERS, first)
        await deliver(app, contracts.ORDERS, first)  # redelivered: the inbox drops it
        await deliver(app, contracts.ORDERS, paid("o1", "a", "100.50"))  # same order, new id
        assert (await member(client, "a"))["spend"] == "100.50"

        await deliver(app, contracts.ORDERS, paid("o2", "a", "20"))
        assert (await member(client, "a"))["spend"] == "120.50"

        refund = refunded("o1", "a", "100.50")
        await deliver(app, contracts.ORDERS, refund)
        await deliver(app, contracts.ORDERS, refund)
        await deliver(app, contracts.ORDERS, refunded("o1", "a", "100.50"))  # refunded already
        assert (await member(client, "a"))["spend"] == "20.00"
        await deliver(app, contracts.ORDERS, paid("o1", "a", "100.50"))  # a refunded order stays
        assert (await member(client, "a"))["spend"] == "20.00"
        await deliver(app, contracts.ORDERS, refunded("o2", "a", "20.00"))
        assert (await member(client, "a"))["spend"] == "0.00"
        assert broker(app).dead_letters == []
        assert [e.type for _, _, e in await published(app)] == ["MemberRegistered"]

    run(tmp_path, scenario)


# ------------------------------------------------------------------ tree and stars


def test_team_performance_and_star_levels(tmp_path: Path) -> None:
    # a ─┬─ b ─┬─ c          f (a root of its own)
    #    │     └─ e
    #    └─ d
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        for name, sponsor in [
            ("a", None),
            ("b", "a"),
            ("c", "b"),
            ("d", "a"),
            ("e", "b"),
            ("f", None),
        ]:
            assert (await register(client, name, sponsor)).status_code == 201
        spends = {
            "a": "10.00",
            "b": "200.00",
            "c": "300.00",
            "d": "400.00",
            "e": "50.25",
            "f": "1000.00",
        }
        for name, amount in spends.items():
            await deliver(app, contracts.ORDERS, paid(f"order-{name}", name, amount))

        # by hand: a = b + c + d + e, b = c + e, everyone else has nobody below
        expected = {
            "a": "950.25",
            "b": "350.25",
            "c": "0.00",
            "d": "0.00",
            "e": "0.00",
            "f": "0.00",
        }
        before = (await client.get("/v1/members")).json()["items"]
        assert {m["member"]: m["team_performance"] for m in before} == expected
        assert {m["member"]: m["spend"] for m in before} == spends
        assert {m["star"] for m in before} == {0}  # no plan known yet

        await deliver(app, contracts.DIVIDENDS, contracts.PlanActivated(day=1, plan=TEAM_PLAN))
        # thresholds 300 / 900 / 2000: a (950.25) is 2★, b (350.25) 1★
        stars = {"a": 2, "b": 1, "c": 0, "d": 0, "e": 0, "f": 0}
        listed = (await client.get("/v1/members")).json()["items"]
        assert {m["member"]: (m["team_performance"], m["star"]) for m in listed} == {
            name: (expected[name], stars[name]) for name in expected
        }
        a = await member(client, "a")
        assert (a["team_performance"], a["star"]) == ("950.25", 2)
        assert await referrals_of(client, "a") == ["b", "d"]
        assert await referrals_of(client, "b") == ["c", "e"]

        # other events on the dividends topic and an older plan are ignored
        await deliver(
            app,
            contracts.DIVIDENDS,
            contracts.DaySettled(day=1, released={}, members_released=0, batches=0),
        )
        await deliver(app, contracts.DIVIDENDS, contracts.PlanActivated(day=0, plan={}))
        assert (await member(client, "a"))["star"] == 2

        # a refund lowers the uplines' team performance: a 650.25 → 1★, b 50.25 → 0★
        await deliver(app, contracts.ORDERS, refunded("order-c", "c", "300.00"))
        assert [(await member(client, n))["team_performance"] for n in "abc"] == [
            "650.25",
            "50.25",
            "0.00",
        ]
        assert [(await member(client, n))["star"] for n in "abc"] == [1, 0, 0]

        # a member registered under the plan; a threshold-0 level gives everyone a star
        zero = {"team": {"levels": [{"threshold": 0, "rate": "0.05"}]}}
        await deliver(app, contracts.DIVIDENDS, contracts.PlanActivated(day=2, plan=zero))
        created = await register(client, "g", "c")
        assert created.json()["star"] == 1
        assert await referrals_of(client, "c") == ["g"]

        # a plan without the team module: no stars
        await deliver(
            app, contracts.DIVIDENDS, contracts.PlanActivated(day=3, plan={"preset": "cycle"})
        )
        assert {m["star"] for m in (await client.get("/v1/members")).json()["items"]} == {0}
        assert broker(app).dead_letters == []

    run(tmp_path, scenario)


# ------------------------------------------------------------------ dead letters


def test_what_cannot_be_parsed_or_applied_is_dead_lettered(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        await register(client, "a")
        await deliver(app, contracts.ORDERS, b"{not an event")
        await deliver(app, contracts.ORDERS, paid("o2", "a", "0.001"))
        await deliver(
            app,
            contracts.DIVIDENDS,
            contracts.PlanActivated(day=1, plan={"team": {"levels": "lots"}}),
        )

        letters = broker(app).dead_letters
        assert [topic for topic, _, _ in letters] == [
            contracts.dead_letter_topic(contracts.ORDERS)
        ] * 2 + [contracts.dead_letter_topic(contracts.DIVIDENDS)]
        reasons = [headers["reason"] for _, _, headers in letters]
        assert reasons[0].startswith("unparseable")
        assert "more than 2 decimal places" in reasons[1]
        assert "unusable plan" in reasons[2]
        assert all(headers["consumer"] == "referrals" for _, _, headers in letters)
        assert letters[0][1] == b"{not an event"

        assert (await member(client, "a"))["spend"] == "0.00"
        # a rejected message was not recorded as applied: fixed, it goes through
        await deliver(app, contracts.ORDERS, paid("o2", "a", "10.00"))
        assert (await member(client, "a"))["spend"] == "10.00"

    run(tmp_path, scenario)


def test_an_order_of_an_unknown_member_and_a_refund_of_an_unknown_order_are_parked(
    tmp_path: Path,
) -> None:
    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        await register(client, "a")
        await deliver(app, contracts.ORDERS, refunded("o1", "a", "10.00"))  # before its order
        await deliver(app, contracts.ORDERS, paid("o2", "a", "5.00"))  # needs nothing parked
        await deliver(app, contracts.ORDERS, paid("g1", "ghost", "7.00"))
        assert broker(app).dead_letters == []
        parked = (await client.get("/v1/parked")).json()
        assert parked["total"] == 2
        assert [(p["key"], p["waiting_for"]) for p in parked["items"]] == [
            ("a", "order:o1"),
            ("ghost", "member:ghost"),
        ]
        assert (await member(client, "a"))["spend"] == "5.00"

        # the order arrives: the refund follows at once
        await deliver(app, contracts.ORDERS, paid("o1", "a", "10.00"))
        assert (await member(client, "a"))["spend"] == "5.00"  # 5 + 10 − 10
        assert (await client.get("/v1/parked")).json()["total"] == 1

        # an operator discards the one that can never apply: dead-lettered with a reason
        [ghost] = (await client.get("/v1/parked")).json()["items"]
        gone = await client.delete(f"/v1/parked/{ghost['id']}")
        assert gone.status_code == 200, gone.text
        assert (await client.get("/v1/parked")).json()["total"] == 0
        [(topic, _, headers)] = broker(app).dead_letters
        assert topic == contracts.dead_letter_topic(contracts.ORDERS)
        assert "discarded by an operator" in headers["reason"]
        assert (await client.delete(f"/v1/parked/{ghost['id']}")).status_code == 404

        metrics = (await client.get("/metrics")).text
        assert (
            'tokenmall_events_parked_total{consumer="referrals-orders",service="referrals"} 2.0'
            in metrics
        )
        assert (
            'tokenmall_parked_events{consumer="referrals-orders",service="referrals"} 0.0'
            in metrics
        )

    run(tmp_path, scenario)


def test_an_orders_batch_counts_each_order_and_waits_whole(tmp_path: Path) -> None:
    """OrdersPaid (one by one here, as a retry or an unparked event goes): each of its
    orders counts once; a member not registered yet parks the batch whole, a refund of
    one of its orders waits for it; a malformed amount dead-letters the batch whole."""

    def batch(*orders: tuple[str, str, str]) -> contracts.OrdersPaid:
        return contracts.OrdersPaid(
            orders=[
                contracts.PaidOrder(order_id=o, member=m, amount=Decimal(a)) for o, m, a in orders
            ]
        )

    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        await register(client, "a")
        await deliver(app, contracts.ORDERS, refunded("b1", "a", "10.00"))  # before its batch
        await deliver(app, contracts.ORDERS, batch(("b1", "a", "10.00"), ("b2", "z", "4.00")))
        assert (await member(client, "a"))["spend"] == "0.00"  # none of it yet
        parked = (await client.get("/v1/parked")).json()["items"]
        assert sorted(p["waiting_for"] for p in parked) == ["member:z", "order:b1"]
        await register(client, "z", sponsor="a")
        await app.state.svc.unpark({"member:z"})  # as the sweeper's next retry does
        assert (await member(client, "z"))["spend"] == "4.00"
        assert (await member(client, "a"))["spend"] == "0.00"  # 10 − 10 (the refund came)
        assert (await member(client, "a"))["team_performance"] == "4.00"
        assert (await client.get("/v1/parked")).json()["total"] == 0
        again = batch(("b2", "z", "4.00"), ("b3", "a", "1.50"))  # b2 counted already
        await deliver(app, contracts.ORDERS, again)
        await deliver(app, contracts.ORDERS, again)  # delivered twice: once
        assert (await member(client, "z"))["spend"] == "4.00"
        assert (await member(client, "a"))["spend"] == "1.50"
        await deliver(app, contracts.ORDERS, batch(("c1", "a", "1.00"), ("c2", "a", "1.001")))
        [(_, _, headers)] = broker(app).dead_letters
        assert "c2" in headers["reason"]
        assert (await member(client, "a"))["spend"] == "1.50"

    run(tmp_path, scenario)


def test_an_order_the_rules_refuse_leaves_the_spend(tmp_path: Path) -> None:
    def refused(order_id: str) -> contracts.InputApplied:
        return contracts.InputApplied(
            input_id=f"order:{order_id}", member="a", accepted=False, reason="no stable points"
        )

    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        await register(client, "a")
        await deliver(app, contracts.ORDERS, paid("o1", "a", "10.00"))
        await deliver(app, contracts.ORDERS, paid("o2", "a", "5.00"))
        assert (await member(client, "a"))["spend"] == "15.00"
        await deliver(app, contracts.DIVIDENDS, refused("o1"))
        await deliver(app, contracts.DIVIDENDS, refused("o1"))  # the same answer again
        assert (await member(client, "a"))["spend"] == "5.00"
        # the verdict may overtake the order (another topic): it waits for it
        await deliver(app, contracts.DIVIDENDS, refused("o3"))
        assert (await client.get("/v1/parked")).json()["total"] == 1
        await deliver(app, contracts.ORDERS, paid("o3", "a", "7.00"))
        assert (await member(client, "a"))["spend"] == "5.00"
        assert (await client.get("/v1/parked")).json()["total"] == 0

    run(tmp_path, scenario)


def test_the_refused_orders_of_a_batch_of_answers_leave_the_spend(tmp_path: Path) -> None:
    def answer(order_id: str, accepted: bool) -> contracts.AppliedInput:
        return contracts.AppliedInput(input_id=f"order:{order_id}", member="a", accepted=accepted)

    async def scenario(app: FastAPI, client: httpx.AsyncClient) -> None:
        await register(client, "a")
        for order_id, amount in (("o1", "10.00"), ("o2", "5.00"), ("o3", "2.50")):
            await deliver(app, contracts.ORDERS, paid(order_id, "a", amount))
        answers = contracts.InputsApplied(
            inputs=[answer("o1", False), answer("o2", True), answer("o3", False)]
        )
        await deliver(app, contracts.DIVIDENDS, answers)
        await deliver(app, contracts.DIVIDENDS, answers)  # again: once
        assert (await member(client, "a"))["spend"] == "5.00"

    run(tmp_path, scenario)
