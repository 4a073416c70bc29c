"""Referrals' bulk path for a poll of paid orders on PostgreSQL (spends and every upline's
team performance moved by two ``unnest`` statements) gives exactly what SQLite's path
gives — and what the sums of the orders say — on a chain and a branch, with an order
delivered twice and a refund after."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_migrations_postgres import fresh_database
from tokenmall import contracts
from tokenmall.servicekit import ServiceSettings
from tokenmall.testing import FakeBroker, MemoryPublisher, running
from tokenmall_referrals.app import build_app

# root ← a ← b ← c, and a ← d
TREE = [("root", None), ("a", "root"), ("b", "a"), ("c", "b"), ("d", "a")]


def outcome(url: str) -> dict[str, tuple[str, str]]:
    app = build_app(
        ServiceSettings(database_url=url, migrate_on_start=True),
        broker_factory=lambda svc: FakeBroker(),
        publisher_factory=lambda svc: MemoryPublisher(),
    )

    def paid(order_id: str, member: str, amount: str) -> contracts.OrderPaid:
        return contracts.OrderPaid(order_id=order_id, member=member, amount=Decimal(amount))

    async def go() -> dict[str, tuple[str, str]]:
        async with running(app) as client:
            broker: Any = app.state.svc.broker
            assert isinstance(broker, FakeBroker)
            # referrals owns registration: members come by its API, not by an event
            registered = await client.post(
                "/v1/members:batch",
                json={"members": [{"member": m, "sponsor": s} for m, s in TREE]},
            )
            assert registered.status_code == 200, registered.text
            first = paid("o1", "c", "100.00")
            await broker.deliver_batch(
                contracts.ORDERS,
                [first, paid("o2", "b", "50.50"), paid("o3", "c", "10.00"), paid("o4", "d", "7")],
            )
            await broker.deliver_batch(
                contracts.ORDERS,
                [
                    first,
                    contracts.OrderRefunded(order_id="o3", member="c", amount=Decimal("10")),
                ],  # o1 again
            )
            views = {}
            for member, _ in TREE:
                view = (await client.get(f"/v1/members/{member}")).json()
                views[member] = (view["spend"], view["team_performance"])
            return views

    return asyncio.run(go())


@pytest.mark.parametrize("database", ["postgres", "sqlite"])
def test_a_poll_of_orders_moves_spends_and_uplines_exactly(
    database: str, postgres_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if database == "postgres":
        url = fresh_database(postgres_data, "referrals_bulk")
    else:
        url = f"sqlite:///{tmp_path}/referrals.db"
    assert outcome(url) == {
        "root": ("0.00", "157.50"),
        "a": ("0.00", "157.50"),
        "b": ("50.50", "100.00"),
        "c": ("100.00", "0.00"),
        "d": ("7.00", "0.00"),
    }
    assert "bulk call failed" not in caplog.text  # the bulk path itself, not the fallback
