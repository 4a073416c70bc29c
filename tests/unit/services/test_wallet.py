"""The wallet service at unit level: the engine's postings booked as received, release
batches in bulk, holds, trade requests and adjustments (fake broker, memory publisher)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from tokenmall import contracts
from tokenmall.contracts import InputApplied, PostingLine
from tokenmall.servicekit import ServiceSettings
from tokenmall.testing import (
    FakeBroker,
    MemoryPublisher,
    MemoryRegistry,
    drain,
    member_registered,
    running,
)
from tokenmall_wallet.adapters.tables import balances, holds, journal, release_lines, requests
from tokenmall_wallet.app import build_app

Client = httpx.AsyncClient


def make_app(tmp_path: Path, registry: Any = None) -> tuple[FastAPI, MemoryPublisher]:
    publisher = MemoryPublisher()
    settings = ServiceSettings(database_url=f"sqlite:///{tmp_path}/wallet.db")
    app = build_app(
        settings,
        broker_factory=lambda svc: FakeBroker(),
        publisher_factory=lambda svc: publisher,
        registry=registry if registry is not None else MemoryRegistry(),
    )
    return app, publisher


def run(
    tmp_path: Path, body: Callable[[FastAPI, Client, MemoryPublisher], Awaitable[None]]
) -> None:
    async def main() -> None:
        app, publisher = make_app(tmp_path)
        async with running(app) as client:
            await body(app, client, publisher)

    asyncio.run(main())


async def deliver(
    app: FastAPI, event: contracts.Event | bytes, topic: str = contracts.DIVIDENDS
) -> None:
    await app.state.svc.broker.deliver(topic, event)


async def register(app: FastAPI, *names: str, merchant: bool = False) -> None:
    for name in names:
        await deliver(app, member_registered(member=name, merchant=merchant), contracts.MEMBERS)


def line(asset: str, debit: str, credit: str, amount: str, kind: str) -> PostingLine:
    return PostingLine.model_validate(
        {"asset": asset, "debit": debit, "credit": credit, "amount": amount, "kind": kind}
    )


def sent_requests(publisher: MemoryPublisher) -> list[contracts.WalletRequest]:
    events = publisher.events(contracts.WALLET_REQUESTS)
    assert all(isinstance(e, contracts.WalletRequest) for e in events)
    return [e for e in events if isinstance(e, contracts.WalletRequest)]


async def fund(app: FastAPI, member: str, asset: str, amount: str) -> None:
    source = {"cny": "external", "stable": "issuance", "equity": "issuance"}[asset]
    await deliver(
        app,
        InputApplied(
            input_id=f"fund-{member}-{asset}-{amount}",
            member=member,
            accepted=True,
            postings=[line(asset, source, f"m:{member}", amount, "fund")],
        ),
    )


async def scalar(app: FastAPI, stmt: Any) -> Any:
    async with app.state.svc.sessions() as session:
        return (await session.execute(stmt)).scalar_one()


async def sums_by_asset(app: FastAPI) -> dict[str, int]:
    async with app.state.svc.sessions() as session:
        rows = await session.execute(
            select(balances.c.asset, func.sum(balances.c.balance)).group_by(balances.c.asset)
        )
        return {asset: int(total) for asset, total in rows}


async def member(client: Client, name: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/members/{name}/balances")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


# ----------------------------------------------------------------- booking


def test_postings_change_balances_and_every_asset_sums_to_zero(tmp_path: Path) -> None:
    async def body(app: FastAPI, client: Client, _: MemoryPublisher) -> None:
        await register(app, "a", "b")
        await deliver(
            app,
            InputApplied(
                input_id="order:o1",
                member="a",
                accepted=True,
                postings=[
                    line("cny", "external", "sales", "100.00", "order"),
                    line("cny", "sales", "pool", "30.00", "contribution"),
                    line("equity", "issuance", "m:a", "21.00000000", "grant"),
                ],
            ),
        )
        await deliver(
            app,
            InputApplied(
                input_id="x1",
                member="a",
                accepted=True,
                postings=[
                    line("equity", "m:a", "m:b", "1.5", "transfer"),
                ],
            ),
        )
        a, b = await member(client, "a"), await member(client, "b")
        assert (a["equity"], a["cny"], a["stable"]) == ("19.50000000", "0.00", "0.00")
        assert b["equity"] == "1.50000000"
        platform = (await client.get("/v1/accounts/platform")).json()
        assert platform["cny"] == {"external": "-100.00", "pool": "30.00", "sales": "70.00"}
        assert platform["equity"] == {"issuance": "-21.00000000"}
        assert all(total == 0 for total in (await sums_by_asset(app)).values())
        statement = (await client.get("/v1/members/a/statement")).json()
        assert [(e["kind"], e["change"]) for e in statement["items"]] == [
            ("transfer", "-1.50000000"),
            ("grant", "21.00000000"),
        ]
        assert statement["total"] == 2
        assert all(e["booked_at"].endswith("Z") for e in statement["items"])
        second = (await client.get("/v1/members/a/statement?offset=1&limit=1")).json()
        assert (second["total"], [e["kind"] for e in second["items"]]) == (2, ["grant"])
        assert (await client.get("/v1/members/nobody/statement")).status_code == 404

    run(tmp_path, body)


def test_a_duplicate_delivery_books_once(tmp_path: Path) -> None:
    async def body(app: FastAPI, client: Client, _: MemoryPublisher) -> None:
        await register(app, "a")
        await register(app, "a", merchant=True)  # registered once, first registration wins
        event = InputApplied(
            input_id="order:o1",
            member="a",
            accepted=True,
            postings=[line("stable", "issuance", "m:a", "5.00", "order")],
        )
        await deliver(app, event)
        await deliver(app, event)
        assert (await member(client, "a"))["stable"] == "5.00"
        assert await scalar(app, select(func.count()).select_from(journal)) == 1
        listing = (await client.get("/v1/balances")).json()
        assert listing["total"] == 1

    run(tmp_path, body)


def test_release_batches_book_one_line_per_member_and_the_platform_legs(tmp_path: Path) -> None:
    async def body(app: FastAPI, client: Client, _: MemoryPublisher) -> None:
        await register(app, "a", "b", "c")
        batch = contracts.ReleaseComputed(
            day=3,
            bucket=1,
            buckets=6,
            asset="stable",
            partition_key="a",
            sources={"base": "issuance", "static": "pool:static"},
            members=["a", "b", "c"],
            amounts={"base": [100, 0, 50], "static": [10, 20, 0]},
        )
        await deliver(app, batch)
        await deliver(app, batch)  # redelivered: booked once
        assert [(await member(client, m))["stable"] for m in "abc"] == ["1.10", "0.20", "0.50"]
        assert await scalar(app, select(func.count()).select_from(release_lines)) == 3
        legs = await scalar(app, select(func.count()).select_from(journal))
        assert legs == 2  # one platform leg per release kind
        platform = (await client.get("/v1/accounts/platform")).json()
        assert platform["stable"] == {"issuance": "-1.50", "pool:static": "-0.30"}
        assert all(total == 0 for total in (await sums_by_asset(app)).values())
        releases = (await client.get("/v1/members/a/releases")).json()
        assert releases["total"] == 1
        (release,) = releases["items"]
        assert release.pop("booked_at").endswith("Z")
        assert release == {
            "day": 3,
            "asset": "stable",
            "total": "1.10",
            "amounts": {"base": "1.00", "static": "0.10"},
        }
        # the whole day, every member, paged: what a day.settled webhook links to
        day = (await client.get("/v1/days/3/releases", params={"limit": 2})).json()
        assert (day["total"], day["limit"]) == (3, 2)
        assert [(i["member"], i["total"]) for i in day["items"]] == [("a", "1.10"), ("b", "0.20")]
        rest = (await client.get("/v1/days/3/releases", params={"offset": 2})).json()
        assert [(i["member"], i["amounts"]) for i in rest["items"]] == [("c", {"base": "0.50"})]
        empty = (await client.get("/v1/days/4/releases")).json()
        assert (empty["total"], empty["items"]) == (0, [])
        assert (await client.get("/v1/days/0/releases")).status_code == 422

        broker: FakeBroker = app.state.svc.broker
        again = batch.model_copy(update={"event_id": "another-id"})
        await deliver(app, again)  # the same day booked twice under another id: refused
        bad = batch.model_copy(update={"event_id": "bad", "day": 4, "amounts": {"base": [1]}})
        await deliver(app, bad)
        reasons = [h["reason"] for _, _, h in broker.dead_letters]
        assert "already booked" in reasons[0] and "has 1 amounts for 3 members" in reasons[1]
        assert (await member(client, "a"))["stable"] == "1.10"

        settled = contracts.DaySettled(
            day=3,
            released={"base": Decimal("1.50")},
            members_released=3,
            batches=1,
            platform_postings=[line("cny", "sales", "pool:static", "3.00", "funding")],
            exit_postings=[line("cny", "pool", "m:c", "2.00", "forced_exit")],
        )
        await deliver(app, settled)
        assert (await member(client, "c"))["cny"] == "2.00"
        platform = (await client.get("/v1/accounts/platform")).json()
        assert platform["cny"] == {"pool": "-2.00", "pool:static": "3.00", "sales": "-3.00"}
        assert all(total == 0 for total in (await sums_by_asset(app)).values())
        # other types on the topic are not the wallet's
        await deliver(app, contracts.PlanActivated(day=1, plan={}))
        assert len(broker.dead_letters) == 2

    run(tmp_path, body)


# ----------------------------------------------------------------- holds


def test_holds(tmp_path: Path) -> None:
    async def body(app: FastAPI, client: Client, _: MemoryPublisher) -> None:
        await register(app, "a")
        await fund(app, "a", "stable", "50.00")
        h1 = {"hold_id": "h1", "member": "a", "asset": "stable", "amount": "30.00"}
        resp = await client.post("/v1/holds", json=h1)
        assert (resp.status_code, resp.json()) == (201, {"hold_id": "h1", "status": "held"})
        assert (await client.post("/v1/holds", json=h1)).status_code == 200  # idempotent
        resp = await client.post("/v1/holds", json={**h1, "amount": "31"})
        assert resp.status_code == 409 and "different body" in resp.json()["message"]
        resp = await client.post("/v1/holds", json={**h1, "hold_id": "h2"})
        assert resp.status_code == 409
        assert resp.json()["message"].startswith("member 'a' holds fewer stable points than 30.00")
        assert (
            await client.post("/v1/holds", json={**h1, "hold_id": "h2", "member": "zz"})
        ).status_code == 404
        for amount in ("0", "-1", "1.001", "abc", 1.5, "NaN", True):
            resp = await client.post("/v1/holds", json={**h1, "hold_id": "h3", "amount": amount})
            assert resp.status_code == 422, amount
        assert (await client.post("/v1/holds", json={**h1, "asset": "gold"})).status_code == 422
        a = await member(client, "a")
        assert (a["stable"], a["held"]["stable"], a["available"]["stable"]) == (
            "50.00",
            "30.00",
            "20.00",
        )

        assert (await client.post("/v1/holds/h1/release")).json()["status"] == "released"
        assert (await client.post("/v1/holds/h1/release")).status_code == 200
        assert (await client.post("/v1/holds/nope/release")).status_code == 404
        assert (await member(client, "a"))["held"]["stable"] == "0.00"
        # placed again after its release (an unpaid order deleted and created again):
        # held anew, not answered with the old status
        resp = await client.post("/v1/holds", json=h1)
        assert (resp.status_code, resp.json()["status"]) == (201, "held")
        assert (await member(client, "a"))["available"]["stable"] == "20.00"
        assert (await client.post("/v1/holds/h1/release")).json()["status"] == "released"

        # a hold answered by the engine (e.g. the stable part of an order) is captured
        order = {**h1, "hold_id": "order-1", "amount": "40"}
        assert (await client.post("/v1/holds", json=order)).status_code == 201
        await deliver(
            app,
            InputApplied(
                input_id="order:order-1",
                member="a",
                accepted=True,
                postings=[line("stable", "m:a", "sales", "40.00", "order")],
            ),
        )
        resp = await client.post("/v1/holds", json=order)
        assert resp.status_code == 409 and "already captured" in resp.json()["message"]
        assert (await client.post("/v1/holds/order-1/release")).status_code == 409
        a = await member(client, "a")
        assert (a["stable"], a["held"]["stable"]) == ("10.00", "0.00")

    run(tmp_path, body)


# ----------------------------------------------------------------- requests


def test_a_sell_holds_points_is_sent_and_finalised_by_the_engine(tmp_path: Path) -> None:
    async def body(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        await register(app, "a")
        await fund(app, "a", "equity", "21")
        resp = await client.post(
            "/v1/members/a/requests", json={"request_id": "r1", "kind": "sell", "points": "10"}
        )
        assert (resp.status_code, resp.json()) == (202, {"request_id": "r1", "status": "pending"})
        await drain(app)
        sent = publisher.events(contracts.WALLET_REQUESTS)
        assert len(sent) == 1 and isinstance(sent[0], contracts.WalletRequest)
        assert (sent[0].request_id, sent[0].member, sent[0].kind, sent[0].points) == (
            "r1",
            "a",
            "sell",
            Decimal("10"),
        )
        a = await member(client, "a")
        assert (a["held"]["equity"], a["available"]["equity"]) == ("10.00000000", "11.00000000")

        resp = await client.post("/v1/members/a/requests", json={"kind": "sell", "points": "12"})
        assert resp.status_code == 409
        assert resp.json()["message"].startswith("member 'a' holds fewer points than 12.00000000")
        again = await client.post(
            "/v1/members/a/requests", json={"request_id": "r1", "kind": "sell", "points": "10.0"}
        )
        assert (again.status_code, again.json()["status"]) == (200, "pending")
        other = await client.post(
            "/v1/members/a/requests", json={"request_id": "r1", "kind": "sell", "points": "9"}
        )
        assert other.status_code == 409
        assert (await drain(app)) == 0  # nothing more was sent

        await deliver(
            app,
            InputApplied(
                input_id="request:r1",
                member="a",
                accepted=True,
                postings=[
                    line("equity", "m:a", "issuance", "10", "sell"),
                    line("cny", "pool", "m:a", "12.85", "sell"),
                ],
                facts=[
                    {
                        "type": "PointsSold",
                        "member": "a",
                        "units": 1_000_000_000,
                        "payout": 1285,
                        "quota_used": 1285,
                        "forced": False,
                    }
                ],
            ),
        )
        done = (await client.get("/v1/requests/r1")).json()
        assert (done["status"], done["kind"], done["member"], done["refusal"]) == (
            "done",
            "sell",
            "a",
            None,
        )
        assert (done["points"], done["held"]) == (
            "10.00000000",
            {"asset": "equity", "amount": "10.00000000"},
        )
        assert done["outcome"] == {
            "points": "10.00000000",
            "cny": "12.85",
            "stable": None,
            "quota_used": "12.85",
            "amount": None,
            "forced": False,
        }
        assert [(p["kind"], p["asset"], p["amount"]) for p in done["postings"]] == [
            ("sell", "equity", "10.00000000"),
            ("sell", "cny", "12.85"),
        ]
        assert done["created_at"] <= done["decided_at"] and done["day"] == 1
        a = await member(client, "a")
        assert (a["equity"], a["held"]["equity"], a["cny"]) == (
            "11.00000000",
            "0.00000000",
            "12.85",
        )

        # "all" = the whole available balance; the engine refuses: the hold is released
        resp = await client.post(
            "/v1/members/a/requests", json={"request_id": "r2", "kind": "sell", "points": "all"}
        )
        assert resp.status_code == 202
        assert (await member(client, "a"))["held"]["equity"] == "11.00000000"
        resp = await client.post("/v1/members/a/requests", json={"kind": "sell", "points": "all"})
        assert resp.status_code == 409 and "holds no points" in resp.json()["message"]
        await drain(app)
        assert sent_requests(publisher)[-1].points == Decimal(11)
        await deliver(
            app,
            InputApplied(
                input_id="request:r2",
                member="a",
                accepted=False,
                reason="the equity module is not enabled",
            ),
        )
        refused = (await client.get("/v1/requests/r2")).json()
        assert (refused["status"], refused["refusal"], refused["outcome"]) == (
            "refused",
            "the equity module is not enabled",
            None,
        )
        a = await member(client, "a")
        assert (a["equity"], a["held"]["equity"]) == ("11.00000000", "0.00000000")
        assert (await client.get("/v1/requests/nope")).status_code == 404

    run(tmp_path, body)


def test_request_validation(tmp_path: Path) -> None:
    async def body(app: FastAPI, client: Client, _: MemoryPublisher) -> None:
        await register(app, "a")
        await fund(app, "a", "equity", "5")
        url = "/v1/members/a/requests"
        for bad in (
            {"kind": "exchange"},
            {"kind": "sell", "points": "0"},
            {"kind": "sell", "points": "-1"},
            {"kind": "sell", "points": "1.123456789"},
            {"kind": "sell", "points": "lots"},
            {"kind": "sell", "points": 1.5},
            {"kind": "sell", "stable": "1"},
            {"kind": "burn", "points": "1"},
            {"kind": "merchant_exchange"},
            {"kind": "merchant_exchange", "points": "1"},
            {"kind": "merchant_exchange", "stable": "0.001"},
            {"kind": "sell", "points": "1", "extra": 1},
        ):
            resp = await client.post(url, json=bad)
            assert resp.status_code == 422, (bad, resp.text)
        resp = await client.post(
            url, content=b"{not json", headers={"content-type": "application/json"}
        )
        assert resp.status_code == 422
        resp = await client.post("/v1/members/zz/requests", json={"kind": "sell", "points": "1"})
        assert resp.status_code == 404
        resp = await client.post(url, json={"kind": "exchange", "points": "5.00000001"})
        assert resp.status_code == 409
        assert (await client.get("/v1/balances?limit=0")).status_code == 422
        assert await scalar(app, select(func.count()).select_from(requests)) == 0
        assert await scalar(app, select(func.count()).select_from(holds)) == 0

    run(tmp_path, body)


def test_merchant_exchange(tmp_path: Path) -> None:
    async def body(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        await register(app, "a")
        await register(app, "shop", merchant=True)
        await fund(app, "a", "stable", "10")
        await fund(app, "shop", "stable", "10")
        req = {"kind": "merchant_exchange", "stable": "8"}
        resp = await client.post("/v1/members/a/requests", json=req)
        assert (resp.status_code, resp.json()["message"]) == (409, "member 'a' is not a merchant")
        resp = await client.post("/v1/members/shop/requests", json={**req, "stable": "10.01"})
        assert resp.status_code == 409
        assert resp.json()["message"].startswith("member 'shop' holds fewer stable points than")
        resp = await client.post("/v1/members/shop/requests", json={**req, "request_id": "m1"})
        assert resp.status_code == 202
        assert (await member(client, "shop"))["held"]["stable"] == "8.00"
        await drain(app)
        sent = publisher.events(contracts.WALLET_REQUESTS)[-1]
        assert isinstance(sent, contracts.WalletRequest)
        assert (sent.kind, sent.stable, sent.points) == ("merchant_exchange", Decimal(8), None)
        await deliver(
            app,
            InputApplied(
                input_id="request:m1",
                member="shop",
                accepted=True,
                postings=[
                    line("stable", "m:shop", "issuance", "8", "merchant_exchange"),
                    line("equity", "treasury", "m:shop", "4.4", "merchant_exchange"),
                ],
            ),
        )
        shop = await member(client, "shop")
        assert (shop["stable"], shop["equity"], shop["held"]["stable"]) == (
            "2.00",
            "4.40000000",
            "0.00",
        )

    run(tmp_path, body)


def test_adjustments(tmp_path: Path) -> None:
    async def body(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        await register(app, "a")
        await fund(app, "a", "cny", "5")
        adj = {"member": "a", "asset": "cny", "amount": "-2.5", "reason": "fix", "operator": "ops"}
        for bad in (
            {"amount": "0"},
            {"amount": "0.00"},
            {"reason": "  "},
            {"operator": ""},
            {"amount": "1.001"},
            {"asset": "gold"},
            {"amount": "x"},
        ):
            resp = await client.post("/v1/admin/adjustments", json={**adj, **bad})
            assert resp.status_code == 422, bad
        resp = await client.post("/v1/admin/adjustments", json={**adj, "amount": "-5.01"})
        assert resp.status_code == 409 and "would go below zero" in resp.json()["message"]
        resp = await client.post("/v1/admin/adjustments", json={**adj, "member": "zz"})
        assert resp.status_code == 404
        assert (await drain(app)) == 0  # nothing sent, nothing stored, nothing held
        assert await scalar(app, select(func.count()).select_from(requests)) == 0
        assert (await member(client, "a"))["held"]["cny"] == "0.00"

        resp = await client.post("/v1/admin/adjustments", json={**adj, "request_id": "adj1"})
        assert (resp.status_code, resp.json()["status"]) == (202, "pending")
        assert (await member(client, "a"))["available"]["cny"] == "2.50"
        resp = await client.post(
            "/v1/admin/adjustments", json={**adj, "amount": "7", "asset": "equity"}
        )
        assert resp.status_code == 202
        await drain(app)
        sent = sent_requests(publisher)
        assert [(e.kind, e.asset, e.amount, e.reason, e.operator) for e in sent] == [
            ("adjust", "cny", Decimal("-2.5"), "fix", "ops"),
            ("adjust", "equity", Decimal(7), "fix", "ops"),
        ]
        await deliver(
            app,
            InputApplied(
                input_id="request:adj1",
                member="a",
                accepted=True,
                postings=[line("cny", "m:a", "adjustments", "2.50", "adjust")],
            ),
        )
        adj1 = (await client.get("/v1/requests/adj1")).json()
        assert {k: adj1[k] for k in ("status", "asset", "amount", "reason", "operator")} == {
            "status": "done",
            "asset": "cny",
            "amount": "-2.50",
            "reason": "fix",
            "operator": "ops",
        }
        a = await member(client, "a")
        assert (a["cny"], a["held"]["cny"]) == ("2.50", "0.00")

    run(tmp_path, body)


# ----------------------------------------------------------------- listing, dead letters


def test_balance_listing_in_registration_order(tmp_path: Path) -> None:
    async def body(app: FastAPI, client: Client, _: MemoryPublisher) -> None:
        await register(app, "c", "a", "b")
        await fund(app, "a", "cny", "1")
        page = (await client.get("/v1/balances?offset=1&limit=1")).json()
        assert page == {
            "total": 3,
            "offset": 1,
            "limit": 1,
            "items": [{"member": "a", "cny": "1.00", "stable": "0.00", "equity": "0.00000000"}],
        }
        names = [m["member"] for m in (await client.get("/v1/balances")).json()["items"]]
        assert names == ["c", "a", "b"]
        assert (await client.get("/v1/members/zz/balances")).status_code == 404

    run(tmp_path, body)


def test_unusable_messages_are_dead_lettered_with_a_reason(tmp_path: Path) -> None:
    async def body(app: FastAPI, client: Client, publisher: MemoryPublisher) -> None:
        await register(app, "a")
        broker: FakeBroker = app.state.svc.broker
        await deliver(app, b"{not json")
        await deliver(
            app,
            InputApplied(
                input_id="order:o1",
                member="a",
                accepted=True,
                postings=[
                    line("stable", "issuance", "m:a", "1.00", "order"),
                    line("cny", "external", "m:a", "1.005", "order"),
                ],
            ),
        )
        (topic1, _, first), (topic2, _, second) = broker.dead_letters
        assert topic1 == topic2 == "tokenmall.dividends.dlq"
        assert first["reason"].startswith("unparseable")
        assert "more than 2 decimal places" in second["reason"]
        assert (await member(client, "a"))["stable"] == "0.00"  # nothing of it booked
        assert await scalar(app, select(func.count()).select_from(journal)) == 0

    run(tmp_path, body)


def test_a_member_registered_a_moment_ago_can_be_credited_at_once(tmp_path: Path) -> None:
    """Read-your-writes: an admin adjustment for a member whose registration event has
    not reached the wallet yet; the registry (referrals) answers."""
    registry = MemoryRegistry()
    registry.register("fresh", merchant=True)

    async def main() -> None:
        app, _ = make_app(tmp_path, registry=registry)
        async with running(app) as client:
            body = {
                "member": "fresh",
                "asset": "stable",
                "amount": "5.00",
                "reason": "welcome",
                "operator": "ops",
                "request_id": "adj-1",
            }
            r = await client.post("/v1/admin/adjustments", json=body)
            assert r.status_code == 202, r.text
            r = await client.post("/v1/admin/adjustments", json={**body, "member": "nobody"})
            assert r.status_code == 404
            assert registry.lookups == ["fresh", "nobody"]
            # the event arrives later: changes nothing
            await app.state.svc.broker.deliver(
                contracts.MEMBERS, member_registered("fresh", merchant=True)
            )
            r = await client.post("/v1/admin/adjustments", json={**body, "request_id": "adj-2"})
            assert r.status_code == 202 and registry.lookups == ["fresh", "nobody"]

    asyncio.run(main())


def test_a_member_registered_a_moment_ago_has_balances_and_a_statement_at_once(
    tmp_path: Path,
) -> None:
    """Read-your-writes for reads too: zero balances and an empty statement, not a 404,
    for a member whose registration event is still on its way."""
    registry = MemoryRegistry()
    registry.register("fresh")

    async def main() -> None:
        app, _ = make_app(tmp_path, registry=registry)
        async with running(app) as client:
            balances = await client.get("/v1/members/fresh/balances")
            assert balances.status_code == 200, balances.text
            assert balances.json()["available"] == {
                "cny": "0.00",
                "stable": "0.00",
                "equity": "0.00000000",
            }
            statement = await client.get("/v1/members/fresh/statement")
            assert statement.status_code == 200, statement.text
            assert statement.json()["items"] == []
            releases = await client.get("/v1/members/fresh/releases")
            assert (releases.status_code, releases.json()["items"]) == (200, [])
            assert (await client.get("/v1/members/nobody/balances")).status_code == 404
            assert registry.lookups == ["fresh", "nobody"]

    asyncio.run(main())


def _order_answers() -> list[contracts.AppliedInput]:
    """Answers to orders of members a, b: paid in cash, with a held stable part, refused."""
    return [
        contracts.AppliedInput(
            input_id="order:o1",
            member="a",
            accepted=True,
            postings=[
                line("cny", "external", "pool", "100.00", "order"),
                line("stable", "issuance", "m:a", "25.50", "grant"),
            ],
            facts=[{"type": "QuotaGranted", "order_id": "o1", "member": "a", "quota": 1}],
        ),
        contracts.AppliedInput(
            input_id="order:o2",
            member="b",
            accepted=True,
            postings=[line("stable", "m:b", "sales", "10.00", "order")],
        ),
        contracts.AppliedInput(input_id="order:o3", member="b", accepted=False, reason="no"),
    ]


def test_a_batch_of_answers_books_as_each_answer_alone(tmp_path: Path) -> None:
    """InputsApplied — through the bulk handler and through the handler alone — books
    what the InputApplied of each of its answers books: journal, balances, holds; an
    answer that is not an order's dead-letters the batch with nothing booked."""

    async def outcome(path: Path, how: str) -> dict[str, Any]:
        app, _ = make_app(path)
        async with running(app) as client:
            if how == "alone":
                for sub in app.state.svc.subscriptions.values():
                    sub.bulk = None
            await register(app, "a", "b")
            await fund(app, "b", "stable", "30.00")
            for hold_id, amount in (("o2", "10"), ("o3", "5")):
                hold = {"hold_id": hold_id, "member": "b", "asset": "stable", "amount": amount}
                assert (await client.post("/v1/holds", json=hold)).status_code == 201
            answers = _order_answers()
            if how == "each":
                events: list[contracts.Event] = [
                    InputApplied(**answer.model_dump(), day=1) for answer in answers
                ]
            else:
                events = [contracts.InputsApplied(inputs=answers, day=1)]
            await app.state.svc.broker.deliver_batch(contracts.DIVIDENDS, events)
            await app.state.svc.broker.deliver_batch(contracts.DIVIDENDS, events)  # again
            bad = contracts.InputsApplied(
                inputs=[
                    contracts.AppliedInput(
                        input_id="order:o9",
                        accepted=True,
                        postings=[line("cny", "external", "m:a", "1.00", "order")],
                    ),
                    contracts.AppliedInput(input_id="request:r1", accepted=True),
                ]
            )
            await deliver(app, bad)
            async with app.state.svc.sessions() as session:
                lines = sorted(
                    tuple(row)
                    for row in await session.execute(
                        select(
                            journal.c.asset,
                            journal.c.debit,
                            journal.c.credit,
                            journal.c.amount,
                            journal.c.kind,
                            journal.c.ref,
                        )
                    )
                )
                held = sorted(
                    tuple(r) for r in await session.execute(select(holds.c.hold_id, holds.c.status))
                )
            dead = [headers["reason"] for _, _, headers in app.state.svc.broker.dead_letters]
            return {
                "a": await member(client, "a"),
                "b": await member(client, "b"),
                "journal": lines,
                "holds": held,
                "dead": dead,
                "sums": await sums_by_asset(app),
            }

    async def go() -> None:
        each = await outcome(tmp_path / "each", "each")
        bulk = await outcome(tmp_path / "bulk", "bulk")
        alone = await outcome(tmp_path / "alone", "alone")
        assert bulk == each == alone
        assert each["holds"] == [("o2", "captured"), ("o3", "released")]
        assert (each["a"]["stable"], each["b"]["stable"]) == ("25.50", "20.00")
        assert each["b"]["held"]["stable"] == "0.00"
        assert len(each["journal"]) == 4  # the fund, o1's two, o2's: once each
        assert set(each["sums"].values()) == {0}
        [reason] = each["dead"]
        assert "request:r1" in reason  # the whole batch: o9 not booked either

    asyncio.run(go())
