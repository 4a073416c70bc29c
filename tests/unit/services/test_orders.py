"""The orders service with fakes: no broker, no wallet service, a SQLite file per test."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from tokenmall import contracts
from tokenmall.contracts import Event, InputApplied, OrderPaid, OrderRefunded
from tokenmall.testing import (
    FakeBroker,
    MemoryPublisher,
    MemoryRegistry,
    drain,
    member_registered,
    running,
)
from tokenmall_orders.adapters import tables
from tokenmall_orders.adapters.wallet import (
    HttpWallet,
    InsufficientFunds,
    WalletError,
    WalletUnavailable,
)
from tokenmall_orders.app import OrdersSettings, build_app

Client = httpx.AsyncClient


class FakeWallet:
    """Stable-point balances in cents; a hold moves points out of the balance, once per id."""

    def __init__(self, **stable_cents: int) -> None:
        self.stable = dict(stable_cents)
        self.holds: dict[str, tuple[str, str, int]] = {}
        self.calls = 0

    async def hold(self, *, hold_id: str, member: str, asset: str, amount_cents: int) -> None:
        self.calls += 1
        if hold_id in self.holds:
            return
        if self.stable.get(member, 0) < amount_cents:
            raise InsufficientFunds(f"{member} holds {self.stable.get(member, 0)} cents")
        self.stable[member] -= amount_cents
        self.holds[hold_id] = (member, asset, amount_cents)

    async def release(self, hold_id: str) -> None:
        if hold_id in self.holds:
            member, _, amount_cents = self.holds.pop(hold_id)
            self.stable[member] += amount_cents


def make_app(tmp_path: Path, wallet: Any = None, registry: Any = None) -> FastAPI:
    settings = OrdersSettings(database_url=f"sqlite:///{tmp_path}/orders.db")
    return build_app(
        settings,
        broker_factory=lambda svc: FakeBroker(),
        publisher_factory=lambda svc: MemoryPublisher(),
        wallet=wallet if wallet is not None else FakeWallet(),
        registry=registry if registry is not None else MemoryRegistry(),
    )


def run(
    tmp_path: Path,
    scenario: Callable[[FastAPI, Client], Awaitable[None]],
    wallet: Any = None,
    members: tuple[str, ...] = ("A",),
) -> None:
    async def main() -> None:
        app = make_app(tmp_path, wallet)
        async with running(app) as client:
            for member in members:
                await app.state.svc.broker.deliver(
                    contracts.MEMBERS, member_registered(member=member)
                )
            try:
                await scenario(app, client)
            finally:
                await stop_relay()

    asyncio.run(main())


async def stop_relay() -> None:
    """Cancel the outbox relay's task until it ends, before the kit's lifespan does.

    On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives just as
    the awaited event fires (the relay was woken by a commit), and the relay's loop
    then never ends: the lifespan's shutdown would wait for it forever.
    """
    for task in asyncio.all_tasks():
        if task.get_name() == "orders-relay":
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)


async def published(app: FastAPI, topic: str = contracts.ORDERS) -> list[Event]:
    """Events published so far, once each (the relay is at-least-once)."""
    await drain(app)
    seen: dict[str, Event] = {}
    for event in app.state.svc.relay.publisher.events(topic):
        seen.setdefault(event.event_id, event)
    return list(seen.values())


async def count_rows(app: FastAPI) -> dict[str, int]:
    counts = {}
    async with app.state.svc.sessions() as session:
        for table in (tables.orders, tables.idempotency, tables.messaging_tables.outbox):
            counts[table.name] = (
                await session.execute(select(func.count()).select_from(table))
            ).scalar_one()
    return counts


async def verdict(app: FastAPI, order_id: str, reason: str | None = None) -> None:
    """The rules' answer to the order as dividends publishes it: accepted unless a reason."""
    await app.state.svc.broker.deliver(
        contracts.DIVIDENDS,
        InputApplied(
            input_id=f"order:{order_id}", member="A", accepted=reason is None, reason=reason
        ),
    )


async def pay(app: FastAPI, client: Client, order_id: str) -> httpx.Response:
    """Pay and let the rules accept it."""
    r = await client.post(f"/v1/orders/{order_id}/pay")
    assert r.status_code == 202, r.text
    await verdict(app, order_id)
    return r


async def create(client: Client, **body: Any) -> httpx.Response:
    return await client.post("/v1/orders", json={"member": "A", "amount": "10", **body})


def test_create_and_pay_emits_order_paid_with_envelope(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        r = await create(client, amount="123.45", order_id="o-1")
        assert r.status_code == 201, r.text
        created_at = r.json().pop("created_at")
        assert r.json() == {
            "order_id": "o-1",
            "member": "A",
            "amount": "123.45",
            "stable": "0.00",
            "status": "created",
            "reason": None,
            "day": None,  # counted in no day until paid
            "created_at": created_at,
            "paid_at": None,
            "decided_at": None,
            "refunded_at": None,
        }
        assert created_at.endswith("Z") and datetime.fromisoformat(created_at).tzinfo
        assert await published(app) == []

        r = await client.post("/v1/orders/o-1/pay")
        assert r.status_code == 202, r.text  # accepted; the rules decide
        assert r.json()["status"] == "pending"
        assert r.json()["day"] == 1  # the business day it was paid on
        assert r.json()["created_at"] == created_at <= r.json()["paid_at"]
        assert (await client.get("/v1/orders/o-1")).json()["status"] == "pending"
        assert (await client.get("/v1/sales")).json()["sales"] == "0.00"
        await verdict(app, "o-1")
        order = (await client.get("/v1/orders/o-1")).json()
        assert order["status"] == "paid" and order["paid_at"] <= order["decided_at"]
        assert (await client.get("/v1/sales")).json()["sales"] == "123.45"

        [event] = await published(app)
        assert isinstance(event, OrderPaid)
        assert (event.order_id, event.member) == ("o-1", "A")
        assert event.amount == Decimal("123.45") and str(event.amount) == "123.45"
        assert event.stable == Decimal("0.00")
        assert event.producer == "orders"
        assert event.causation_id == "o-1"
        assert event.day == 1
        assert event.schema_version == contracts.SCHEMA_VERSION
        assert event.event_id and event.occurred_at.tzinfo is not None
        [(topic, key, value, _)] = app.state.svc.relay.publisher.messages[:1]
        assert (topic, key) == (contracts.ORDERS, "A")
        assert json.loads(value)["amount"] == "123.45"  # a decimal string on the wire

    run(tmp_path, scenario)


def test_default_order_id_and_amounts_are_decimal_strings(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        r = await create(client, amount="10.1", stable="0.1")
        assert r.status_code == 201, r.text
        body = r.json()
        assert len(body["order_id"]) == 36 and (body["amount"], body["stable"]) == ("10.10", "0.10")
        r = await create(client, amount="999999999999.99")
        assert r.status_code == 201 and r.json()["amount"] == "999999999999.99"
        # a JSON number is refused, whatever it is (a float has lost its decimals already)
        for amount in (b"10.1000000000000001", b"10", b"1e3", b"true"):
            r = await client.post(
                "/v1/orders",
                content=b'{"member": "A", "amount": ' + amount + b"}",
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 422, r.text
            assert r.json()["field"] == "body.amount" and "decimal string" in r.json()["message"]
        for amount in ("1e3", "0x10", " 1", "1.", "", "NaN"):
            r = await create(client, amount=amount)
            assert (r.status_code, r.json()["field"]) == (422, "body.amount"), (amount, r.text)
        r = await create(client, amount="1000000000000")
        assert r.status_code == 201 and r.json()["amount"] == "1000000000000.00"
        assert (await client.get("/v1/members/A/orders")).json()["total"] == 3

    run(tmp_path, scenario)


def test_idempotent_create_and_pay(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        headers = {"Idempotency-Key": "k-create"}
        body = {"member": "A", "amount": "50.00"}
        first = await client.post("/v1/orders", json=body, headers=headers)
        again = await client.post("/v1/orders", json=body, headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()  # the same generated order id
        order_id = first.json()["order_id"]
        assert (await client.get("/v1/members/A/orders")).json()["total"] == 1

        # the same key on a different request is refused
        r = await client.post("/v1/orders", json={**body, "amount": "51"}, headers=headers)
        assert r.status_code == 422 and "Idempotency-Key" in r.json()["message"]

        pay = {"Idempotency-Key": "k-pay"}
        first = await client.post(f"/v1/orders/{order_id}/pay", headers=pay)
        again = await client.post(f"/v1/orders/{order_id}/pay", headers=pay)
        assert first.status_code == again.status_code == 202
        assert first.json() == again.json() and first.json()["status"] == "pending"
        assert len(await published(app)) == 1

        r = await client.post(f"/v1/orders/{order_id}/pay", headers=headers)  # a create key
        assert r.status_code == 422
        counts = await count_rows(app)
        assert counts == {"orders": 1, "idempotency": 2, "outbox": 1}

    run(tmp_path, scenario)


def test_a_keyed_pay_whose_twin_committed_after_its_replay_check_replays_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL each statement reads what is committed when it starts: a twin request
    with the same key can commit between this request's replay check and its read of the
    order.  The order is then pending, and the stored answer is what to return — not a
    409 "already paid" (seen once in 64 concurrent keyed pays)."""
    from tokenmall_orders.service_layer import handlers

    real_replay = handlers._replay

    async def scenario(app: FastAPI, client: Client) -> None:
        for stable in ("0", "1"):
            order_id = f"o-{stable}"
            await create(client, order_id=order_id, stable=stable)
            key = {"Idempotency-Key": f"pay-{order_id}"}
            first = await client.post(f"/v1/orders/{order_id}/pay", headers=key)
            assert first.status_code == 202, first.text
            missed: list[bool] = []

            async def replay_missing_the_twin_once(*args: Any, missed: list[bool] = missed) -> Any:
                if not missed:  # read just before the twin committed
                    missed.append(True)
                    return None
                return await real_replay(*args)

            monkeypatch.setattr(handlers, "_replay", replay_missing_the_twin_once)
            again = await client.post(f"/v1/orders/{order_id}/pay", headers=key)
            monkeypatch.setattr(handlers, "_replay", real_replay)
            assert missed and (again.status_code, again.json()) == (202, first.json())
        assert len(await published(app)) == 2

    run(tmp_path, scenario, wallet=FakeWallet(A=500))


def test_paying_twice_and_refunding_unpaid_are_conflicts(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        await create(client, order_id="o-1")
        r = await client.post("/v1/orders/o-1/refund")
        assert r.status_code == 409 and r.json()["message"] == "order 'o-1' is not paid"
        assert (await client.post("/v1/orders/o-1/pay")).status_code == 202
        r = await client.post("/v1/orders/o-1/pay")
        assert r.status_code == 409 and r.json()["message"] == "order 'o-1' is already paid"
        r = await client.post("/v1/orders/o-1/refund")  # before the verdict
        assert r.status_code == 409 and "awaits the rules' verdict" in r.json()["message"]
        await verdict(app, "o-1")
        r = await client.post("/v1/orders/o-1/pay")
        assert r.status_code == 409 and r.json()["message"] == "order 'o-1' is already paid"
        assert len(await published(app)) == 1
        assert (await client.get("/v1/orders/o-1")).json()["status"] == "paid"

        for path in ("/v1/orders/nope/pay", "/v1/orders/nope/refund", "/v1/orders/nope"):
            r = (await client.get(path)) if path.endswith("nope") else await client.post(path)
            assert r.status_code == 404 and r.json()["message"] == "order 'nope' not found"

    run(tmp_path, scenario)


def test_refund_emits_order_refunded_once(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        await create(client, order_id="o-1", amount="99.99")
        await pay(app, client, "o-1")
        r = await client.post("/v1/orders/o-1/refund")
        assert r.status_code == 200 and r.json()["status"] == "refunded"
        r = await client.post("/v1/orders/o-1/refund")
        assert r.status_code == 409 and "already refunded" in r.json()["message"]
        r = await client.post("/v1/orders/o-1/pay")
        assert r.status_code == 409 and "is already paid" in r.json()["message"]

        paid, refunded = await published(app)
        assert isinstance(paid, OrderPaid) and isinstance(refunded, OrderRefunded)
        assert (refunded.order_id, refunded.member) == ("o-1", "A")
        assert refunded.amount == Decimal("99.99") and refunded.producer == "orders"
        assert refunded.event_id != paid.event_id

    run(tmp_path, scenario)


def test_stable_part_is_held_in_the_wallet(tmp_path: Path) -> None:
    wallet = FakeWallet(A=500)

    async def scenario(app: FastAPI, client: Client) -> None:
        await create(client, order_id="big", amount="10", stable="6")
        r = await client.post("/v1/orders/big/pay")
        assert r.status_code == 409
        assert r.json()["message"] == "member 'A' holds fewer stable points than 6.00"
        assert (await client.get("/v1/orders/big")).json()["status"] == "created"
        assert await published(app) == []
        assert wallet.stable == {"A": 500} and wallet.holds == {}

        r = await create(client, order_id="ok", amount="10", stable="5")
        assert r.json()["stable"] == "5.00"
        r = await client.post("/v1/orders/ok/pay", headers={"Idempotency-Key": "pay-ok"})
        assert r.status_code == 202 and r.json()["stable"] == "5.00"
        assert wallet.holds == {"ok": ("A", "stable", 500)} and wallet.stable == {"A": 0}
        calls = wallet.calls
        again = await client.post("/v1/orders/ok/pay", headers={"Idempotency-Key": "pay-ok"})
        assert (again.status_code, again.json()) == (202, r.json())
        assert wallet.calls == calls  # a replay does not ask the wallet again
        [event] = await published(app)
        assert isinstance(event, OrderPaid)
        assert (event.amount, event.stable) == (Decimal("10.00"), Decimal("5.00"))

        r = await create(client, order_id="all", amount="3", stable="3")  # stable == amount
        assert r.status_code == 201

    run(tmp_path, scenario, wallet=wallet)


class DeletingWallet(FakeWallet):
    """While the first pay's hold is in flight, the order is deleted (its release finds no
    hold yet), and, once, created again under its id: a concurrent delete racing the pay."""

    def __init__(self, recreate: dict[str, str] | None = None, **stable_cents: int) -> None:
        super().__init__(**stable_cents)
        self.client: Client | None = None
        self.recreate = recreate

    async def hold(self, *, hold_id: str, member: str, asset: str, amount_cents: int) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            assert (await client.delete(f"/v1/orders/{hold_id}")).status_code == 204
            if self.recreate is not None:
                assert (await create(client, order_id=hold_id, **self.recreate)).status_code == 201
        await super().hold(hold_id=hold_id, member=member, asset=asset, amount_cents=amount_cents)


def test_a_pay_racing_a_delete_leaves_no_hold_behind(tmp_path: Path) -> None:
    """The delete released the hold before the pay placed it: the pay releases it."""
    for recreate, status, held in (
        (None, 404, {}),  # deleted: nothing to pay
        ({"amount": "2", "stable": "1"}, 409, {}),  # another order under the id
        ({"amount": "3", "stable": "0.50"}, 409, {"o": ("A", "stable", 50)}),  # the same hold
    ):
        wallet = DeletingWallet(recreate, A=500)

        async def scenario(
            app: FastAPI, client: Client, wallet: DeletingWallet = wallet, status: int = status
        ) -> None:
            await create(client, order_id="o", amount="1", stable="0.50")
            wallet.client = client
            r = await client.post("/v1/orders/o/pay")
            assert r.status_code == status, r.text
            assert await published(app) == []

        folder = tmp_path / str(status) / str(len(held))
        folder.mkdir(parents=True)
        run(folder, scenario, wallet=wallet)
        assert wallet.holds == held
        assert wallet.stable == {"A": 500 - sum(h[2] for h in held.values())}


def test_an_unpaid_order_can_be_deleted_and_its_id_reused(tmp_path: Path) -> None:
    """As replay does after a refused pay: the scenario's next order takes the same id."""
    wallet = FakeWallet(B=10000)  # 100.00: fewer than the 200 asked

    async def scenario(app: FastAPI, client: Client) -> None:
        await create(client, order_id="order-4", member="B", amount="500", stable="200")
        assert (await client.post("/v1/orders/order-4/pay")).status_code == 409
        r = await client.delete("/v1/orders/order-4")
        assert r.status_code == 204 and r.content == b""
        assert (await client.get("/v1/orders/order-4")).status_code == 404
        assert (await client.delete("/v1/orders/order-4")).status_code == 404
        assert (await create(client, order_id="order-4", amount="2000")).status_code == 201
        assert (await client.post("/v1/orders/order-4/pay")).status_code == 202
        r = await client.delete("/v1/orders/order-4")
        assert (
            r.status_code == 409
            and r.json()["message"] == "order 'order-4' is pending: it cannot be deleted"
        )
        [event] = await published(app)
        assert isinstance(event, OrderPaid) and (event.member, event.amount) == (
            "A",
            Decimal("2000.00"),
        )

        # a hold left by a pay that failed after the wallet answered is released
        await create(client, order_id="held", member="B", amount="1", stable="0.50")
        await wallet.hold(hold_id="held", member="B", asset="stable", amount_cents=50)
        assert wallet.stable["B"] == 9950
        assert (await client.delete("/v1/orders/held")).status_code == 204
        assert wallet.stable["B"] == 10000 and wallet.holds == {}

    run(tmp_path, scenario, wallet=wallet, members=("A", "B"))


def test_bad_input_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        cases: list[tuple[Any, int]] = [
            ({"member": "nobody", "amount": "10"}, 404),
            ({"member": "A", "amount": "-1"}, 422),
            ({"member": "A", "amount": "0"}, 422),
            ({"member": "A", "amount": 0}, 422),
            ({"member": "A", "amount": "1000000000000.01"}, 422),
            ({"member": "A", "amount": "1e30"}, 422),
            ({"member": "A", "amount": "1e5000"}, 422),
            ({"member": "A", "amount": "10.123"}, 422),
            ({"member": "A", "amount": 10.123}, 422),
            ({"member": "A", "amount": "abc"}, 422),
            ({"member": "A", "amount": "NaN"}, 422),
            ({"member": "A", "amount": True}, 422),
            ({"member": "A"}, 422),
            ({"member": "A", "amount": "10", "stable": "-1"}, 422),
            ({"member": "A", "amount": "10", "stable": "10.01"}, 422),
            ({"member": "A", "amount": "10", "stable": "0.001"}, 422),
            ({"member": "A", "amount": "10", "order_id": "has space"}, 422),
            ({"member": "A", "amount": "10", "extra": 1}, 422),
            ({"member": "", "amount": "10"}, 422),
            ([1, 2], 422),
        ]
        for body, status in cases:
            r = await client.post("/v1/orders", json=body, headers={"Idempotency-Key": "k"})
            assert r.status_code == status, (body, r.text)
            detail = r.json()["message"]
            assert isinstance(detail, str) and detail, body
        r = await client.post(
            "/v1/orders",
            content=b'{"member": "A", "amount": ',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422 and r.json()["message"]
        r = await client.post(
            "/v1/orders", json={"member": "A", "amount": "10"}, headers={"Idempotency-Key": ""}
        )
        assert r.status_code == 422

        r = await create(client, amount="10.123")
        assert r.json()["message"] == "amount has more than 2 decimal places: '10.123'"
        r = await create(client, member="nobody")
        assert r.json()["message"] == "member 'nobody' is not registered"

        assert await count_rows(app) == {"orders": 0, "idempotency": 0, "outbox": 0}
        assert (await client.get("/v1/members/A/orders")).json() == {
            "items": [],
            "total": 0,
            "offset": 0,
            "limit": 100,
        }
        assert (await client.get("/v1/members/nobody/orders")).status_code == 404

        # a refused request is not remembered: the same key then works
        r = await client.post(
            "/v1/orders", json={"member": "A", "amount": "10"}, headers={"Idempotency-Key": "k"}
        )
        assert r.status_code == 201

        # an existing order id
        await create(client, order_id="dup")
        r = await create(client, order_id="dup", amount="20")
        assert r.status_code == 409 and r.json()["message"] == "order 'dup' already exists"
        assert (await client.get("/v1/orders/dup")).json()["amount"] == "10.00"

    run(tmp_path, scenario)


def test_sales_totals_and_member_orders(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        assert (await client.get("/v1/sales")).json() == {
            "paid": "0.00",
            "refunded": "0.00",
            "sales": "0.00",
        }
        for order_id, amount, member in [
            ("o1", "100.10", "A"),
            ("o2", "50", "B"),
            ("o3", "0.01", "A"),
            ("o4", "7", "B"),
        ]:
            assert (
                await create(client, order_id=order_id, amount=amount, member=member)
            ).status_code == 201
        for order_id in ("o1", "o2", "o3"):
            await pay(app, client, order_id)
        await client.post("/v1/orders/o2/refund")
        r = await client.get("/v1/sales")
        assert r.json() == {"paid": "150.11", "refunded": "50.00", "sales": "100.11"}

        r = await client.get("/v1/members/A/orders")
        assert [(o["order_id"], o["status"]) for o in r.json()["items"]] == [
            ("o1", "paid"),
            ("o3", "paid"),
        ]
        r = await client.get("/v1/members/B/orders", params={"limit": 1, "offset": 1})
        assert [o["order_id"] for o in r.json()["items"]] == ["o4"]
        assert (r.json()["total"], r.json()["offset"], r.json()["limit"]) == (2, 1, 1)

    run(tmp_path, scenario, members=("A", "B"))


def test_member_registered_is_applied_once(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        broker = app.state.svc.broker
        event = member_registered(member="B")
        await broker.deliver(contracts.MEMBERS, event)
        await broker.deliver(contracts.MEMBERS, event)  # redelivered
        await broker.deliver(contracts.MEMBERS, member_registered(member="B"))  # registered again
        await broker.deliver(contracts.MEMBERS, b"not an event")
        assert (await create(client, member="B")).status_code == 201
        assert [topic for topic, _, _ in broker.dead_letters] == [
            contracts.dead_letter_topic(contracts.MEMBERS)
        ]

    run(tmp_path, scenario)


def test_http_wallet_speaks_the_hold_api() -> None:
    seen: list[tuple[str, Any]] = []
    answers = iter([201, 200, 409, 404, 503, 422, 200, 404, 409, 500])

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        seen.append((request.url.raw_path.decode(), json.loads(request.content or b"null")))
        return httpx.Response(
            next(answers), json={"code": "conflict", "message": "no", "field": None}
        )

    async def expect(error: type[Exception], call: Awaitable[None]) -> None:
        try:
            await call
        except error:
            return
        raise AssertionError(f"expected {error.__name__}")  # pragma: no cover

    async def main() -> None:
        wallet = HttpWallet("http://wallet/", transport=httpx.MockTransport(handler))
        hold: dict[str, Any] = {
            "hold_id": "o-1",
            "member": "A",
            "asset": "stable",
            "amount_cents": 550,
        }
        await wallet.hold(**hold)  # 201
        await wallet.hold(**hold)  # 200: the same hold again
        await expect(InsufficientFunds, wallet.hold(**hold))  # 409
        await expect(InsufficientFunds, wallet.hold(**hold))  # 404: no such member there
        await expect(WalletUnavailable, wallet.hold(**hold))
        await expect(WalletError, wallet.hold(**hold))
        await wallet.release("o 1")  # 200
        await wallet.release("o-1")  # 404: never held
        await expect(WalletError, wallet.release("o-1"))  # 409: captured
        await expect(WalletUnavailable, wallet.release("o-1"))
        await wallet.aclose()

    asyncio.run(main())
    assert seen[0] == (
        "/v1/holds",
        {"hold_id": "o-1", "member": "A", "asset": "stable", "amount": "5.50"},
    )
    assert seen[6] == ("/v1/holds/o%201/release", None)


def test_pay_answers_503_when_the_wallet_is_down(tmp_path: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    wallet = HttpWallet("http://wallet", transport=httpx.MockTransport(down))

    async def scenario(app: FastAPI, client: Client) -> None:
        await create(client, order_id="o-1", stable="1")
        r = await client.post("/v1/orders/o-1/pay", headers={"Idempotency-Key": "p"})
        assert r.status_code == 503 and "wallet" in r.json()["message"]
        assert (await client.get("/v1/orders/o-1")).json()["status"] == "created"
        assert await count_rows(app) == {"orders": 1, "idempotency": 0, "outbox": 0}

    run(tmp_path, scenario, wallet=wallet)


def test_an_order_the_rules_refuse_ends_refused_and_never_counts(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        await create(client, order_id="o-1", amount="40")
        await create(client, order_id="o-2", amount="60")
        assert (await client.post("/v1/orders/o-1/pay")).status_code == 202
        assert (await client.post("/v1/orders/o-2/pay")).status_code == 202
        # other answers on the dividends topic are not the orders service's
        await app.state.svc.broker.deliver(
            contracts.DIVIDENDS,
            InputApplied(input_id="request:o-2", member="A", accepted=False, reason="no"),
        )
        await verdict(app, "o-1")
        await verdict(app, "o-2", reason="member 'A' holds fewer stable points than 60.00")
        await verdict(app, "o-2")  # a late, contradicting answer changes nothing
        refused = (await client.get("/v1/orders/o-2")).json()
        assert refused["status"] == "refused"
        assert refused["reason"] == "member 'A' holds fewer stable points than 60.00"
        assert (await client.get("/v1/sales")).json() == {
            "paid": "40.00",
            "refunded": "0.00",
            "sales": "40.00",
        }
        r = await client.post("/v1/orders/o-2/refund")
        assert r.status_code == 409 and "refused by the rules" in r.json()["message"]
        r = await client.post("/v1/orders/o-2/pay")
        assert r.status_code == 409 and "was refused" in r.json()["message"]
        assert (await client.delete("/v1/orders/o-2")).status_code == 409
        statuses = [
            (o["order_id"], o["status"])
            for o in (await client.get("/v1/members/A/orders")).json()["items"]
        ]
        assert statuses == [("o-1", "paid"), ("o-2", "refused")]

    run(tmp_path, scenario)


def test_a_member_registered_a_moment_ago_can_be_ordered_for_at_once(tmp_path: Path) -> None:
    """Read-your-writes: the registration event has not reached orders yet; the registry
    (referrals) answers, with the result the event gives later."""
    registry = MemoryRegistry()
    registry.register("fresh")

    async def main() -> None:
        app = make_app(tmp_path, registry=registry)
        async with running(app) as client:
            r = await create(client, member="fresh", order_id="o-1")
            assert r.status_code == 201, r.text
            assert (await create(client, member="fresh", order_id="o-2")).status_code == 201
            assert registry.lookups == ["fresh"]  # recorded: asked once
            # the event arrives later: nothing changes, nothing is refused
            await app.state.svc.broker.deliver(contracts.MEMBERS, member_registered("fresh"))
            assert (await client.get("/v1/members/fresh/orders")).json()["total"] == 2
            r = await create(client, member="nobody")  # registered nowhere: still a 404
            assert r.status_code == 404 and "not registered" in r.json()["message"]
            await stop_relay()

    asyncio.run(main())
