"""POST /v1/orders:batch: paid orders in bulk — one write transaction, one OrdersPaid for
the batch (bounded in size), per item refused, idempotent per order id, each verdict
readable like a single order's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event as sa_event

from tests.unit.services.test_orders import (
    Client,
    FakeWallet,
    count_rows,
    make_app,
    published,
    run,
    verdict,
)
from tokenmall import contracts
from tokenmall.contracts import OrdersPaid, PaidOrder
from tokenmall.imports import BadRow, import_orders, progress_path
from tokenmall.testing import MemoryRegistry
from tokenmall_orders.adapters.wallet import WalletUnavailable


async def paid_orders(app: FastAPI) -> dict[str, tuple[PaidOrder, int | None]]:
    """Every order the batches published, with its batch's day (each order once)."""
    found: dict[str, tuple[PaidOrder, int | None]] = {}
    for event in await published(app):
        if isinstance(event, OrdersPaid):
            assert event.key == contracts.ORDER_BATCHES_KEY
            for order in event.orders:
                assert order.order_id not in found, f"{order.order_id} paid twice"
                found[order.order_id] = (order, event.day)
    return found


def item(order_id: str, member: str = "A", amount: str = "100.00", **more: Any) -> dict[str, Any]:
    return {"order_id": order_id, "member": member, "amount": amount, **more}


async def batch(client: Client, *items: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/v1/orders:batch", json={"orders": list(items)})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_batch_is_one_write_and_one_orders_paid(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        statements: list[str] = []

        def record(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
            statements.append(statement.split("(")[0].strip())

        engine = app.state.svc.engine.sync_engine
        sa_event.listen(engine, "before_cursor_execute", record)
        result = await batch(client, *(item(f"o{i}", amount=f"{i + 1}.50") for i in range(300)))
        sa_event.remove(engine, "before_cursor_execute", record)
        assert (result["accepted"], result["existing"], result["refused"]) == (300, 0, 0)
        assert [r["order_id"] for r in result["items"]] == [f"o{i}" for i in range(300)]
        assert {r["order"]["status"] for r in result["items"]} == {"pending"}
        assert result["items"][7]["order"]["amount"] == "8.50"
        # SQLite: multi-row inserts of 999 parameters (eight columns: 124 rows each)
        assert statements.count("INSERT INTO orders") == 3
        assert statements.count("INSERT INTO outbox") == 1
        batches = [e for e in await published(app) if isinstance(e, OrdersPaid)]
        assert len(batches) == 1 and batches[0].day == 1
        assert [o.order_id for o in batches[0].orders] == [f"o{i}" for i in range(300)]
        assert str(batches[0].orders[7].amount) == "8.50"
        # each verdict is readable like a single order's
        await verdict(app, "o7")
        await verdict(app, "o8", reason="a rule refused it")
        o7 = (await client.get("/v1/orders/o7")).json()
        o8 = (await client.get("/v1/orders/o8")).json()
        assert (o7["status"], o8["status"], o8["reason"]) == (
            "paid",
            "refused",
            "a rule refused it",
        )
        assert (await client.get("/v1/sales")).json()["paid"] == "8.50"

    run(tmp_path, scenario, members=("A",))


def test_sending_a_batch_again_changes_nothing(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        items = [item("o1"), item("o2", amount="3")]
        first = await batch(client, *items)
        before = await count_rows(app)
        again = await batch(client, *items, item("o3"))
        assert [r["status"] for r in again["items"]] == ["exists", "exists", "accepted"]
        assert again["items"][1]["order"] == first["items"][1]["order"]
        after = await count_rows(app)
        assert after["orders"] == before["orders"] + 1
        assert sorted(await paid_orders(app)) == ["o1", "o2", "o3"]  # once each

    run(tmp_path, scenario)


def test_bad_items_are_refused_alone_with_the_field(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        r = await client.post(
            "/v1/orders", json={"order_id": "taken", "member": "A", "amount": "5"}
        )
        assert r.status_code == 201
        result = await batch(
            client,
            item("ok1"),
            item("cents", amount="1.001"),
            item("zero", amount="0"),
            item("over", amount="10", stable="11"),
            item("ok1", amount="2"),  # twice in one batch
            item("nobody", member="Z"),
            item("taken", amount="6"),  # another order has that id
            item("ok2", amount="7"),
        )
        by_id = [(r["order_id"], r["status"], r["code"], r["field"]) for r in result["items"]]
        assert by_id == [
            ("ok1", "accepted", None, None),
            ("cents", "refused", 422, "body.orders[1].amount"),
            ("zero", "refused", 422, "body.orders[2].amount"),
            ("over", "refused", 422, "body.orders[3].stable"),
            ("ok1", "refused", 422, "body.orders[4].order_id"),
            ("nobody", "refused", 404, "body.orders[5].member"),
            ("taken", "refused", 409, "body.orders[6].order_id"),
            ("ok2", "accepted", None, None),
        ]
        assert "1.001" in result["items"][1]["error"]
        assert (await client.get("/v1/orders/taken")).json()["amount"] == "5.00"
        assert (await client.get("/v1/orders/cents")).status_code == 404
        assert sorted(await paid_orders(app)) == ["ok1", "ok2"]

    run(tmp_path, scenario)


def test_a_created_order_is_paid_by_the_batch(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        r = await client.post("/v1/orders", json={"order_id": "c1", "member": "A", "amount": "5"})
        assert r.status_code == 201
        result = await batch(client, item("c1", amount="5"))
        assert result["items"][0]["status"] == "accepted"
        assert (await client.get("/v1/orders/c1")).json()["status"] == "pending"

    run(tmp_path, scenario)


def test_stable_parts_are_held_and_a_refused_hold_refuses_its_order(tmp_path: Path) -> None:
    wallet = FakeWallet(A=1000)  # 10.00 stable points

    async def scenario(app: FastAPI, client: Client) -> None:
        result = await batch(
            client,
            item("s1", amount="20", stable="6"),
            item("s2", amount="20", stable="6"),  # only 4.00 left
            item("s3", amount="20", stable="4"),
            item("cash", amount="20"),
        )
        # a member's holds in the batch's order, as one create + pay after the other
        statuses = [r["status"] for r in result["items"]]
        assert statuses == ["accepted", "refused", "accepted", "accepted"]
        refused = next(r for r in result["items"] if r["status"] == "refused")
        assert (refused["code"], refused["field"]) == (
            409,
            f"body.orders[{result['items'].index(refused)}].stable",
        )
        assert wallet.stable["A"] == 0
        assert set(wallet.holds) == {"s1", "s2", "s3"} - {refused["order_id"]}
        assert str((await paid_orders(app))["s3"][0].stable) == "4.00"
        # the same batch again: no second hold, nothing paid twice
        again = await batch(client, item("s3", amount="20", stable="4"))
        assert again["items"][0]["status"] == "exists"
        assert wallet.stable["A"] == 0

    run(tmp_path, scenario, wallet=wallet)


def test_a_wallet_that_does_not_answer_refuses_only_the_stable_orders(tmp_path: Path) -> None:
    class DownWallet(FakeWallet):
        async def hold(self, **_: Any) -> None:
            raise WalletUnavailable("connection refused")

    async def scenario(app: FastAPI, client: Client) -> None:
        result = await batch(client, item("s1", stable="1"), item("cash"))
        assert [(r["status"], r["code"]) for r in result["items"]] == [
            ("refused", 503),
            ("accepted", None),
        ]
        # sent again once the wallet is back: the refused one goes, the other exists
        app.state.svc.state["wallet"] = FakeWallet(A=100)
        again = await batch(client, item("s1", stable="1"), item("cash"))
        assert [r["status"] for r in again["items"]] == ["accepted", "exists"]

    run(tmp_path, scenario, wallet=DownWallet())


def test_a_member_registered_a_moment_ago_is_learned_from_the_registry(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        app.state.svc.state["registry"].register("fresh")
        result = await batch(client, item("f1", member="fresh"), item("f2", member="ghost"))
        assert [r["status"] for r in result["items"]] == ["accepted", "refused"]

    run(tmp_path, scenario)


def test_the_batch_size_is_bounded(tmp_path: Path) -> None:
    async def scenario(app: FastAPI, client: Client) -> None:
        r = await client.post(
            "/v1/orders:batch", json={"orders": [item(f"o{i}") for i in range(1001)]}
        )
        assert r.status_code == 422
        assert (await client.post("/v1/orders:batch", json={"orders": []})).status_code == 422
        assert (await count_rows(app))["orders"] == 0

    run(tmp_path, scenario)


def test_an_atomic_batch_is_paid_whole_or_not_at_all(tmp_path: Path) -> None:
    wallet = FakeWallet(A=500)

    async def scenario(app: FastAPI, client: Client) -> None:
        items = [item("a1", stable="5"), item("a2", amount="1.001"), item("a3")]
        r = await client.post("/v1/orders:batch", params={"atomic": "true"}, json={"orders": items})
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["field"] == "body.orders[1].amount"
        assert "nothing was paid" in body["message"] and "1.001" in body["message"]
        r = await client.post(
            "/v1/orders:batch",
            params={"atomic": "true"},
            json={"orders": [item("a1", stable="5"), item("a3", stable="0.01")]},
        )
        assert r.status_code == 422 and r.json()["field"] == "body.orders[1].stable"
        assert wallet.stable["A"] == 500 and not wallet.holds  # a1's hold given back
        assert (await count_rows(app))["orders"] == 0
        assert not await paid_orders(app)
        fixed = [item("a1", stable="5"), item("a3")]
        r = await client.post("/v1/orders:batch", params={"atomic": "true"}, json={"orders": fixed})
        assert r.status_code == 200 and r.json()["accepted"] == 2

    run(tmp_path, scenario, wallet=wallet)


def write_orders(path: Path, rows: list[str]) -> Path:
    path.write_text("order_id,member,amount,stable\n" + "".join(r + "\n" for r in rows))
    return path


def test_import_orders_in_batches_resumes_after_a_bad_row(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    for member in ("A", "B"):
        registry.register(member)
    wallet = FakeWallet(B=200_000)
    rows = [f"o{i},{'AB'[i % 2]},{i % 90 + 1}.25,{'1' if i % 2 else ''}" for i in range(2500)]
    rows[1502] = "o1502,ghost,5,"  # line 1504 of the file
    path = write_orders(tmp_path / "orders.csv", rows)
    with TestClient(make_app(tmp_path, wallet, registry)) as service:
        sent: list[int] = []
        service.event_hooks["request"] = [lambda request: sent.append(len(request.content))]
        with pytest.raises(BadRow, match=r"line 1504: .*member 'ghost' is not registered"):
            import_orders(path, service, batch=1000)
        assert len(sent) == 2
        assert json.loads(progress_path(path).read_text())["rows_done"] == 1000
        assert service.get("/v1/orders/o999").json()["status"] == "pending"
        assert service.get("/v1/orders/o1000").status_code == 404  # its batch: nothing
        assert len(wallet.holds) == 500  # the odd ones of the first thousand only

        rows[1502] = "o1502,A,5,"
        write_orders(path, rows)
        sent.clear()
        report = import_orders(path, service, batch=1000)
        assert len(sent) == 2
        assert (report.rows, report.skipped, report.created) == (2500, 1000, 1500)
        assert report.as_json()["orders_per_second"] > 0
        assert len(wallet.holds) == 1250
        assert service.get("/v1/orders/o2499").json()["stable"] == "1.00"
        sent.clear()
        assert import_orders(path, service).skipped == 2500 and sent == []


def test_import_orders_names_the_line_of_a_malformed_row(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path)) as service:
        cases = [
            (["a,A,5,", "b,A,1.001,"], r"line 3: amount .*1\.001"),
            (["a,A,5,", "b,A,5,6"], r"line 3: amount must be > 0 and stable"),
            (["a b,A,5,"], r"line 2: order_id 'a b' is not an id"),
            (["a,A,0,"], r"line 2: amount must be > 0"),
        ]
        for rows, message in cases:
            path = write_orders(tmp_path / "o.csv", rows)
            with pytest.raises(BadRow, match=message):
                import_orders(path, service, batch=10)
            assert service.get("/v1/orders/a").status_code == 404
        path = tmp_path / "h.csv"
        path.write_text("order,who\nx,y\n")
        with pytest.raises(BadRow, match=r"line 1: a header"):
            import_orders(path, service)


@pytest.mark.parametrize("bulk", [True, False])
def test_a_batch_of_verdicts_decides_each_order(tmp_path: Path, bulk: bool) -> None:
    """InputsApplied (dividends' answer to an OrdersPaid) makes each of its orders paid or
    refused with its reason on the batch's day, as one InputApplied each would; a later
    verdict of a decided order changes nothing."""

    async def scenario(app: FastAPI, client: Client) -> None:
        if not bulk:
            for sub in app.state.svc.subscriptions.values():
                sub.bulk = None
        await batch(client, item("o1"), item("o2"), item("o3"))

        def answer(order_id: str, reason: str | None = None) -> contracts.AppliedInput:
            return contracts.AppliedInput(
                input_id=f"order:{order_id}", member="A", accepted=reason is None, reason=reason
            )

        answers = contracts.InputsApplied(
            inputs=[answer("o1"), answer("o2", "a rule refused it"), answer("o3")], day=1
        )
        late = contracts.InputsApplied(inputs=[answer("o1", "too late")], day=1)
        await app.state.svc.broker.deliver_batch(contracts.DIVIDENDS, [answers, late])
        views = [(await client.get(f"/v1/orders/o{i}")).json() for i in (1, 2, 3)]
        assert [(v["status"], v["reason"], v["day"]) for v in views] == [
            ("paid", None, 1),
            ("refused", "a rule refused it", 1),
            ("paid", None, 1),
        ]
        assert (await client.get("/v1/sales")).json()["paid"] == "200.00"

    run(tmp_path, scenario, members=("A",))
