"""Events of different keys in any order, on the real platform (SQLite and PostgreSQL).

Dividends is killed (SIGKILL); while it is down, sponsor/referral pairs register (the
referral right after its sponsor: other keys, other partitions of the members topic)
and every referral pays an order (the orders topic).  Dividends then restarts onto the
whole backlog, reading six partitions of two topics at once: referrals overtake their
sponsors and orders their members.  In the end every member and every order is in the
engine, nothing is parked or dead-lettered anywhere, every order is paid, and the
engine's state equals ``simulate`` of its own input log (``GET /v1/inputs``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx

from tests.integration.conftest import Platforms
from tests.integration.kafka_tools import metric, read_dead_letters
from tokenmall import contracts, devenv
from tokenmall.inputlog import scenario_from_inputs
from tokenmall.replay import SERVICES, Platform
from tokenmall.scenario import parse_scenario, simulate
from tokenmall.testing import by_member

PAIRS = 30
CONCURRENCY = 8
MEMBER_KEYS = ("quota_remaining", "shares", "contribution", "released", "equity", "spend")


def amount_of(i: int) -> str:
    return f"{100 + 7 * i}.{i % 100:02d}"


async def register_pair(client: httpx.AsyncClient, referrals: str, i: int) -> None:
    for body in ({"member": f"s-{i}"}, {"member": f"r-{i}", "sponsor": f"s-{i}"}):
        created = await client.post(referrals + "/v1/members", json=body)
        assert created.status_code == 201, (body, created.status_code, created.text)


async def order_and_pay(client: httpx.AsyncClient, orders: str, i: int) -> None:
    body = {"member": f"r-{i}", "amount": amount_of(i), "order_id": f"o-{i}"}
    deadline = time.monotonic() + 30
    while True:  # orders hears of the member from Kafka (a 404 until then)
        created = await client.post(orders + "/v1/orders", json=body)
        if created.status_code != 404 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert created.status_code == 201, created.text
    paid = await client.post(f"{orders}/v1/orders/o-{i}/pay")
    # 200 paid, or 202 while the engine's verdict is pending (dividends is down)
    assert paid.status_code in (200, 202), paid.text


def kill(run: dict[str, Any], name: str) -> None:
    pid = run["services"][name]["pid"]
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while devenv._alive(pid):
        assert time.monotonic() < deadline, f"{name} survived SIGKILL"
        time.sleep(0.02)


def test_dividends_restarted_onto_a_backlog_of_pairs_and_orders_loses_nothing_and_equals_simulate(
    platforms: Platforms,
) -> None:
    run = platforms.launch()
    urls = platforms.urls(run)
    prefix = run["run"]["prefix"]
    members = {f"{kind}-{i}" for i in range(PAIRS) for kind in ("s", "r")}
    orders = {f"o-{i}": amount_of(i) for i in range(PAIRS)}

    async def while_down() -> None:
        limit = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(timeout=60) as client:

            async def pair(i: int) -> None:
                async with limit:
                    await register_pair(client, urls["referrals"], i)
                    await order_and_pay(client, urls["orders"], i)

            await asyncio.gather(*(pair(i) for i in range(PAIRS)))

    async def after_restart() -> dict[str, Any]:
        platform = Platform(urls, timeout=120)
        try:
            await platform.wait_quiet()  # no lag, no outbox, nothing parked: everywhere
            client = platform.client
            got: dict[str, Any] = {
                "parked_total": await metric(
                    client, urls["dividends"], "tokenmall_events_parked_total"
                ),
                "log": (await platform.json("dividends", "/v1/inputs?limit=10000"))["items"],
                "state": await platform.json("dividends", "/v1/state"),
                "members": by_member(await platform.json("dividends", "/v1/members?limit=10000")),
                "parked": {s: (await platform.json(s, "/v1/parked"))["total"] for s in SERVICES},
                "orders": {o: await platform.json("orders", f"/v1/orders/{o}") for o in orders},
                "spend": {
                    f"r-{i}": (await platform.json("referrals", f"/v1/members/r-{i}"))["spend"]
                    for i in range(PAIRS)
                },
            }
            got["dead"] = {
                topic: await read_dead_letters(
                    platforms.bootstrap, prefix + contracts.dead_letter_topic(topic), timeout=0
                )
                for topic in contracts.TOPICS
            }
            return got
        finally:
            await platform.close()

    kill(run, "dividends")
    asyncio.run(while_down())
    devenv.restart_service(run, "dividends")
    got = asyncio.run(after_restart())

    assert got["parked"] == dict.fromkeys(SERVICES, 0)
    assert all(not letters for letters in got["dead"].values()), got["dead"]
    # every member and every order reached the engine and was accepted
    assert set(got["members"]) == members
    assert got["state"]["member_count"] == len(members)
    accepted = {row["input_id"] for row in got["log"] if row["accepted"]}
    assert {f"join:{m}" for m in members} <= accepted
    assert {f"order:{o}" for o in orders} <= accepted
    assert all(row["accepted"] for row in got["log"]), [r for r in got["log"] if not r["accepted"]]
    # the backlog did arrive out of order across keys (referral before sponsor, order
    # before member) and was parked, then applied
    assert got["parked_total"] > 0
    # the other services agree: each order paid once, each referral's spend its order
    assert {o: v["status"] for o, v in got["orders"].items()} == dict.fromkeys(orders, "paid")
    assert got["spend"] == {f"r-{i}": orders[f"o-{i}"] for i in range(PAIRS)}
    for i in range(PAIRS):
        assert got["members"][f"r-{i}"]["spend"] == orders[f"o-{i}"]
    # and the engine equals simulate of its own input log
    expected = simulate(parse_scenario(scenario_from_inputs(got["log"]))).document
    assert got["state"]["day"] == expected["day"]
    assert got["state"]["equity"] == expected["equity"]
    assert {m: {k: v[k] for k in MEMBER_KEYS} for m, v in got["members"].items()} == {
        m: {k: v[k] for k in MEMBER_KEYS} for m, v in expected["members"].items()
    }
