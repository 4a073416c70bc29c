"""The fan-out of a settlement in the metrics: members released and release lines booked
as counters, the settlement's phases (engine, publish, book) as one histogram — each
counted once per settlement, after its commit, never for a redelivered batch."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from fastapi import FastAPI

from tests.unit.services import test_wallet
from tests.unit.services.test_day_boundaries import dividends_app, metric
from tests.unit.services.test_release_chunks import BOUND, MEMBERS, settled_population
from tokenmall import contracts
from tokenmall.testing import FakeBroker, MemoryPublisher, drain, member_registered, running


def phase_count(text: str, phase: str) -> float:
    prefix = "tokenmall_settlement_phase_seconds_count{"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and f'phase="{phase}"' in line
    )


def test_dividends_counts_members_released_and_times_engine_and_publish(tmp_path: Path) -> None:
    async def go() -> None:
        app, _ = dividends_app(tmp_path, day_watermarks=[])
        async with running(app) as client:
            broker: FakeBroker = app.state.svc.broker
            plan = {"plan": {"preset": "points"}, "activate_now": True}
            assert (await client.post("/v1/plan", json=plan)).status_code == 202
            joins = [member_registered(f"m{i}", f"m{i // 2}" if i else None) for i in range(30)]
            await broker.deliver_batch(contracts.MEMBERS, joins)
            orders = [
                contracts.OrderPaid(order_id=f"o{i}", member=f"m{i}", amount=Decimal("3000"))
                for i in range(30)
            ]
            await broker.deliver_batch(contracts.ORDERS, orders)
            settled = (await client.post("/v1/settlements/1")).json()
            await drain(app)
            text = (await client.get("/metrics")).text
            released = settled["members_released"]
            assert released > 0
            assert metric(text, "tokenmall_members_released_total") == released
            assert phase_count(text, "engine") == 1
            assert phase_count(text, "publish") == 1
            # a settlement asked again settles nothing and counts nothing
            await client.post("/v1/settlements/1")
            text = (await client.get("/metrics")).text
            assert metric(text, "tokenmall_members_released_total") == released
            assert phase_count(text, "engine") == 1

    asyncio.run(go())


def test_the_wallet_counts_lines_booked_once_and_times_the_booking(tmp_path: Path) -> None:
    _, events = settled_population(BOUND)
    releases = [e for e in events if isinstance(e, contracts.ReleaseComputed)]

    async def body(app: FastAPI, client: test_wallet.Client, _: MemoryPublisher) -> None:
        settled = [e for e in events if isinstance(e, contracts.DaySettled)]
        assert len(settled) == 1 and settled[0].batches == len(releases)
        for event in releases[:-1]:
            await test_wallet.deliver(app, event)
        await test_wallet.deliver(app, settled[0])
        text = (await client.get("/metrics")).text
        assert phase_count(text, "book") == 0  # a batch is still missing
        await test_wallet.deliver(app, releases[-1])
        for event in releases[:3]:
            await test_wallet.deliver(app, event)  # redelivered: booked and counted once
        text = (await client.get("/metrics")).text
        assert metric(text, "tokenmall_release_lines_booked_total") == MEMBERS
        assert phase_count(text, "book") == 1

    test_wallet.run(tmp_path, body)
