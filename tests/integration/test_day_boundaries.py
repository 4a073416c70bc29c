"""Day boundaries on the real platform (SQLite and PostgreSQL): an order in flight while
its day is settled counts in that day.

1. Dividends is frozen (SIGSTOP) while members order and pay: their ``OrderPaid``
   (stamped day 1) wait in Kafka, unconsumed.
2. Orders is frozen too, once its outbox is empty; dividends resumes onto the backlog
   and day 1's settlement is requested at once.  The settlement cannot happen without
   the orders' markers: the call answers 202, naming the topic it waits for.
3. Orders resumes: it closes its day (markers on every partition) while more orders are
   paid concurrently — each stamped day 1 or day 2, whichever it was accepted on.
4. Day 1 settles.  Every order counts in the day orders stamped it with (the engine's
   input log and the order's ``day`` agree), every day-1 order comes before the
   settlement in the input log, none was late, and the engine equals ``simulate`` of
   its own input log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx

from tests.integration.conftest import Platforms
from tests.integration.kafka_tools import metric
from tokenmall.inputlog import scenario_from_inputs
from tokenmall.replay import Platform
from tokenmall.scenario import parse_scenario, simulate
from tokenmall.testing import by_member

MEMBERS = 12
BEFORE = 40  # paid while dividends is frozen
DURING = 24  # paid while orders closes its day
CONCURRENCY = 8
MEMBER_KEYS = ("quota_remaining", "shares", "contribution", "released", "equity", "spend")


def freeze(run: dict[str, Any], name: str, sig: signal.Signals) -> None:
    os.killpg(run["services"][name]["pid"], sig)


async def order_and_pay(client: httpx.AsyncClient, orders: str, n: int) -> dict[str, Any]:
    body = {"member": f"m-{n % MEMBERS}", "amount": f"{100 + n}.25", "order_id": f"o-{n}"}
    created = await client.post(orders + "/v1/orders", json=body)
    assert created.status_code == 201, created.text
    paid = await client.post(f"{orders}/v1/orders/o-{n}/pay")
    assert paid.status_code == 202, paid.text
    return dict(paid.json())


async def until(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await probe()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_an_order_in_flight_while_its_day_is_settled_counts_in_that_day(
    platforms: Platforms,
) -> None:
    run = platforms.launch_with({"dividends": {"TOKENMALL_SETTLE_WAIT_SECONDS": "1"}})
    urls = platforms.urls(run)

    async def go() -> dict[str, Any]:
        platform = Platform(urls, timeout=120)
        client = platform.client
        limit = asyncio.Semaphore(CONCURRENCY)

        async def pay(n: int) -> dict[str, Any]:
            async with limit:
                return await order_and_pay(client, urls["orders"], n)

        try:
            for i in range(MEMBERS):  # a sponsor chain: the releases walk the tree
                body: dict[str, Any] = {"member": f"m-{i}"}
                if i:
                    body["sponsor"] = f"m-{i - 1}"
                assert (await client.post(urls["referrals"] + "/v1/members", json=body)).is_success
            await platform.wait_quiet()

            freeze(run, "dividends", signal.SIGSTOP)
            try:
                before = await asyncio.gather(*(pay(n) for n in range(BEFORE)))

                async def orders_published() -> bool:
                    sync = (await client.get(urls["orders"] + "/v1/sync")).json()
                    return bool(sync["outbox_backlog"] == 0)

                await until(orders_published, 30, "orders' outbox to be published")
                freeze(run, "orders", signal.SIGSTOP)
            finally:
                freeze(run, "dividends", signal.SIGCONT)
            try:
                asked = await client.post(urls["dividends"] + "/v1/settlements/1")
                waiting = asked.json()
                state = (await client.get(urls["dividends"] + "/v1/state")).json()
            finally:
                freeze(run, "orders", signal.SIGCONT)
            during = await asyncio.gather(*(pay(n) for n in range(BEFORE, BEFORE + DURING)))

            async def settled() -> dict[str, Any] | None:
                got = await client.get(urls["dividends"] + "/v1/settlements/1")
                return dict(got.json()) if got.status_code == 200 else None

            report = await until(settled, 60, "day 1 to settle")
            await platform.wait_quiet()
            total = BEFORE + DURING
            return {
                "asked": (asked.status_code, waiting),
                "state_when_asked": state,
                "report": report,
                "paid_days": [p["day"] for p in before + during],
                "orders": [
                    await platform.json("orders", f"/v1/orders/o-{n}") for n in range(total)
                ],
                "log": (await platform.json("dividends", "/v1/inputs?limit=10000"))["items"],
                "state": await platform.json("dividends", "/v1/state"),
                "members": by_member(await platform.json("dividends", "/v1/members?limit=1000")),
                "late": await metric(client, urls["dividends"], "tokenmall_late_inputs_total"),
                "waits": await metric(
                    client, urls["dividends"], "tokenmall_settlement_wait_seconds_count"
                ),
            }
        finally:
            await platform.close()

    got = asyncio.run(go())
    status, waiting = got["asked"]
    # orders was frozen: the settlement waited for its markers, and said so
    assert status == 202, waiting
    assert waiting["status"] == "waiting"
    assert "tokenmall.orders" in waiting["waiting_for"]["markers"], waiting
    assert got["state_when_asked"]["day"] == 1
    assert got["report"]["day"] == 1 and got["waits"] == 1

    log = got["log"]
    position = {row["input_id"]: i for i, row in enumerate(log)}
    counted = {row["input_id"]: row["day"] for row in log}
    settle_at = position["settle:1"]
    assert got["paid_days"][:BEFORE] == [1] * BEFORE  # accepted on day 1 …
    for order in got["orders"]:
        assert order["status"] == "paid", order
        input_id = f"order:{order['order_id']}"
        # … and counted in the day orders stamped it with: none moved, none was late
        assert counted[input_id] == order["day"], (order, counted[input_id])
        assert (position[input_id] < settle_at) == (order["day"] == 1), order
    assert set(got["paid_days"]) <= {1, 2}
    assert got["late"] == 0
    assert got["state"]["day"] == 2

    expected = simulate(parse_scenario(scenario_from_inputs(log))).document
    assert got["state"]["equity"] == expected["equity"]
    assert {m: {k: v[k] for k in MEMBER_KEYS} for m, v in got["members"].items()} == {
        m: {k: v[k] for k in MEMBER_KEYS} for m, v in expected["members"].items()
    }
