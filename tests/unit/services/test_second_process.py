"""A second process of a service on the same database: leases with fencing.

Dividends (the engine's single writer) is active in one process at a time; another
waits as a hot standby (503 + Retry-After) and takes over once the active one stops.
A process that lost its lease cannot commit (fencing).  Relays lead the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from tokenmall import contracts
from tokenmall.db import make_engine, make_sessions
from tokenmall.messaging import Lease, LeaseLost, define
from tokenmall.testing import FakeBroker, MemoryPublisher, member_registered, running
from tokenmall_dividends.adapters import tables
from tokenmall_dividends.app import DividendsSettings, build_app

LEASE = 0.6  # seconds: a standby takes over about this long after the holder stopped


def make_app(db: Path) -> Any:
    settings = DividendsSettings(
        database_url=f"sqlite:///{db}", lease_seconds=LEASE, day_watermarks=[]
    )
    pub = MemoryPublisher()
    return build_app(
        settings, broker_factory=lambda svc: FakeBroker(), publisher_factory=lambda svc: pub
    )


def test_a_lease_has_one_holder_and_a_takeover_fences_the_old_one(tmp_path: Path) -> None:
    from sqlalchemy import MetaData

    async def run() -> None:
        engine = make_engine(f"sqlite:///{tmp_path}/lease.db")
        messaging = define(MetaData())
        async with engine.begin() as conn:
            await conn.run_sync(messaging.leases.metadata.create_all)
        sessions = make_sessions(engine)
        # longer than the apps' lease: a loaded machine must not let it lapse between
        # two statements of this test
        lease = 2.0
        a = Lease(sessions, messaging, "engine", lease, holder="a")
        b = Lease(sessions, messaging, "engine", lease, holder="b")
        assert await a.acquire() and a.fence == 1
        assert not await b.acquire()
        assert await a.acquire() and a.fence == 1  # renewed, not taken over
        await asyncio.sleep(lease * 1.5)  # a stops renewing (hung)
        assert await b.acquire() and b.fence == 2
        async with sessions() as session:
            with pytest.raises(LeaseLost):
                await a.check(session)  # a wakes up: it may not commit
            await b.check(session)  # b may
        assert not await a.acquire() and not a.held
        await b.release()
        assert await a.acquire() and a.fence == 3  # released: taken at once
        await engine.dispose()

    asyncio.run(run())


def test_a_second_dividends_is_a_standby_and_takes_over_when_the_first_stops(
    tmp_path: Path,
) -> None:
    db = tmp_path / "dividends.db"

    async def run() -> None:
        first, second = make_app(db), make_app(db)
        async with contextlib.AsyncExitStack() as stack:
            one = await stack.enter_async_context(running(first))
            assert (await one.get("/health")).json()["role"] == "active"
            await one.post("/v1/plan", json={"plan": {"preset": "equity"}, "activate_now": True})
            broker: FakeBroker = first.state.svc.broker
            await broker.deliver(contracts.MEMBERS, member_registered("A"))
            paid = contracts.OrderPaid(order_id="o1", member="A", amount="100")
            await broker.deliver(contracts.ORDERS, paid)
            state = (await one.get("/v1/state")).json()
            async with running(second) as two:
                assert (await two.get("/health")).json()["role"] == "standby"
                answer = await two.get("/v1/state")
                assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
                assert answer.json()["code"] == "standby"
                assert (await two.get("/v1/sync")).json()["ready"] is False
                assert (await two.post("/v1/settlements/1")).status_code == 503
                await asyncio.sleep(LEASE * 1.5)
                assert (await two.get("/health")).json()["role"] == "standby"  # still renewed
                await stack.aclose()  # the first stops (a rolling deploy): the standby takes over
                started = time.monotonic()
                while (await two.get("/health")).json()["role"] != "active":
                    assert time.monotonic() - started < LEASE * 3, "no takeover"
                    await asyncio.sleep(0.05)
                assert (await two.get("/v1/state")).json() == state  # loaded from the database
                assert (await two.post("/v1/settlements/1")).status_code == 200

    asyncio.run(run())


def test_a_process_that_lost_the_lease_commits_nothing(tmp_path: Path) -> None:
    db = tmp_path / "dividends.db"
    lost: list[str] = []

    async def run() -> None:
        app = make_app(db)
        svc = app.state.svc

        def record(name: str) -> None:
            lost.append(name)

        svc.on_lease_lost = record
        async with running(app) as client:
            await client.post("/v1/plan", json={"plan": {"preset": "equity"}, "activate_now": True})
            await svc.broker.deliver(contracts.MEMBERS, member_registered("A"))
            async with svc.sessions() as session:  # another process took over meanwhile
                await session.execute(
                    update(tables.messaging.leases)
                    .where(tables.messaging.leases.c.name == "engine")
                    .values(
                        holder="elsewhere",  # and it keeps renewing
                        fence=tables.messaging.leases.c.fence + 1,
                        expires_at=datetime.now(UTC) + timedelta(hours=1),
                    )
                )
                await session.commit()
            before = (await client.get("/v1/inputs")).json()["total"]
            paid = contracts.OrderPaid(order_id="o1", member="A", amount="100")
            await svc.broker.deliver(contracts.ORDERS, paid)
            assert lost and lost[0] == "engine"
            log = (await client.get("/v1/inputs")).json()
            assert log["total"] == before, log

    asyncio.run(run())
