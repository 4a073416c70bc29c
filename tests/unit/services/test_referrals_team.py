"""Team performance kept on the members' rows (``members.team_cents``): after any
registrations, paid orders, refunds and refusals, every member's team performance and
star equal what the engine's ``team_performance`` and ``star_levels`` compute over the
whole forest; reading one member reads no more than that member's rows; and revision
0005 computes the column for the rows that existed before it."""

from __future__ import annotations

import asyncio
import random
import re
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
from alembic import command
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import column, create_engine, insert, select, table
from sqlalchemy import event as sa_event

from tokenmall import contracts, migrations
from tokenmall.engine.plan import Plan
from tokenmall.engine.settlement import star_levels, team_performance
from tokenmall.servicekit import ServiceSettings
from tokenmall.testing import FakeBroker, MemoryPublisher, running
from tokenmall_referrals.adapters.tables import members as members_table
from tokenmall_referrals.app import build_app

TEAM_LEVELS = [{"threshold": "300", "rate": "0.10"}, {"threshold": "900.50", "rate": "0.20"}]


def referrals_app(database: Path) -> FastAPI:
    return build_app(
        ServiceSettings(database_url=f"sqlite:///{database}"),
        broker_factory=lambda svc: FakeBroker(),
        publisher_factory=lambda svc: MemoryPublisher(),
    )


def decimal_of(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


def text_of(cents: int) -> str:
    return f"{decimal_of(cents):.2f}"


# ------------------------------------------------------------------ the model


@dataclass
class Forest:
    """What the service was told, as plain data: members in registration order (a sponsor
    before their referrals), orders and whether each still counts."""

    sponsors: list[int | None]  # index of each member's sponsor
    orders: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (member, cents)
    counting: set[str] = field(default_factory=set)  # paid, neither refunded nor refused

    def name(self, index: int) -> str:
        return f"m{index}"

    def sampled(self) -> list[str]:
        """The roots (the largest teams) and every third member: whom to read one by one."""
        return [self.name(i) for i, s in enumerate(self.sponsors) if s is None or i % 3 == 0]

    def spend(self) -> list[int]:
        spend = [0] * len(self.sponsors)
        for order_id in self.counting:
            member, cents = self.orders[order_id]
            spend[member] += cents
        return spend

    def expected(self, plan: Plan | None) -> dict[str, tuple[str, str, int]]:
        """(spend, team performance, star) per member, by the old whole-forest computation."""
        parent = np.asarray([-1 if s is None else s for s in self.sponsors], dtype=np.int64)
        depth = np.zeros(parent.size, dtype=np.int64)
        for i, sponsor in enumerate(self.sponsors):
            if sponsor is not None:
                depth[i] = depth[sponsor] + 1
        spend = np.asarray(self.spend(), dtype=np.int64)
        performance = team_performance(parent, depth, spend)
        stars = star_levels(performance, plan.team if plan else None)
        return {
            self.name(i): (text_of(int(spend[i])), text_of(int(performance[i])), int(stars[i]))
            for i in range(parent.size)
        }


@st.composite
def forests(draw: st.DrawFn) -> tuple[Forest, list[list[tuple[str, contracts.Event]]]]:
    """A random forest and polls of order events for it: paid orders (some order ids paid
    twice), refunds and refusals of orders paid before (some twice), a team plan at a
    random moment."""
    size = draw(st.integers(1, 20))
    sponsors: list[int | None] = []
    for i in range(size):
        root = i == 0 or draw(st.integers(0, 3)) == 0  # a quarter of them start a tree
        # anyone before, or the one just before (long chains, deep uplines)
        sponsors.append(None if root else draw(st.integers(0, i - 1) | st.just(i - 1)))
    forest = Forest(sponsors)
    events: list[tuple[str, contracts.Event]] = []
    paid: list[str] = []
    for step in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(["pay", "pay", "pay", "refund", "refuse", "plan"]))
        if kind == "pay" or not paid:
            order_id = (
                draw(st.sampled_from(paid)) if paid and draw(st.integers(0, 9)) == 0 else None
            )
            if order_id is None:
                order_id = f"o{step}"
                member = draw(st.integers(0, size - 1))
                cents = draw(st.integers(0, 10**9))
                forest.orders[order_id] = (member, cents)
                forest.counting.add(order_id)
                paid.append(order_id)
            member, cents = forest.orders[order_id]  # paid again: counted once
            order = contracts.OrderPaid(
                order_id=order_id, member=forest.name(member), amount=decimal_of(cents)
            )
            events.append((contracts.ORDERS, order))
        elif kind == "plan":
            levels = TEAM_LEVELS[: draw(st.integers(0, len(TEAM_LEVELS)))]
            plan = contracts.PlanActivated(day=step, plan={"team": {"levels": levels}})
            events.append((contracts.DIVIDENDS, plan))
        else:
            order_id = draw(st.sampled_from(paid))
            member, cents = forest.orders[order_id]
            forest.counting.discard(order_id)  # the first of the two takes it out
            if kind == "refund":
                refund = contracts.OrderRefunded(
                    order_id=order_id, member=forest.name(member), amount=decimal_of(cents)
                )
                events.append((contracts.ORDERS, refund))
            else:
                refused = contracts.InputApplied(
                    input_id=f"order:{order_id}",
                    member=forest.name(member),
                    accepted=False,
                    reason="refused by the rules",
                )
                events.append((contracts.DIVIDENDS, refused))
    # consecutive events of one topic in polls of random sizes (the batched runs)
    polls: list[list[tuple[str, contracts.Event]]] = []
    for topic, event in events:
        if polls and polls[-1][0][0] == topic and draw(st.integers(0, 2)):
            polls[-1].append((topic, event))
        else:
            polls.append([(topic, event)])
    # some runs of consecutive paid orders as one OrdersPaid (an orders:batch)
    return forest, [_batched(poll) if draw(st.booleans()) else poll for poll in polls]


def _batched(poll: list[tuple[str, contracts.Event]]) -> list[tuple[str, contracts.Event]]:
    out: list[tuple[str, contracts.Event]] = []
    run: list[contracts.OrderPaid] = []

    def flush() -> None:
        if len(run) > 1:
            orders = [
                contracts.PaidOrder(order_id=o.order_id, member=o.member, amount=o.amount)
                for o in run
            ]
            out.append((contracts.ORDERS, contracts.OrdersPaid(orders=orders)))
        else:
            out.extend((contracts.ORDERS, o) for o in run)
        run.clear()

    for topic, event in poll:
        if isinstance(event, contracts.OrderPaid) and event.order_id not in {
            o.order_id for o in run
        }:
            run.append(event)
            continue
        flush()
        if isinstance(event, contracts.OrderPaid):
            run.append(event)
        else:
            out.append((topic, event))
    flush()
    return out


def last_plan(polls: list[list[tuple[str, contracts.Event]]]) -> Plan | None:
    plans = [e for poll in polls for _, e in poll if isinstance(e, contracts.PlanActivated)]
    return Plan.from_mapping(plans[-1].plan) if plans else None


# ------------------------------------------------------------------ the property


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=forests())
def test_team_performance_and_stars_equal_the_whole_forest_computation(
    tmp_path: Path, case: tuple[Forest, list[list[tuple[str, contracts.Event]]]]
) -> None:
    forest, polls = case

    async def go() -> None:
        app = referrals_app(tmp_path / f"{uuid.uuid4()}.db")
        async with running(app) as client:
            batch = [
                {"member": forest.name(i), "sponsor": None if s is None else forest.name(s)}
                for i, s in enumerate(forest.sponsors)
            ]
            registered = await client.post("/v1/members:batch", json={"members": batch})
            assert registered.json()["created"] == len(batch), registered.text
            broker: FakeBroker = app.state.svc.broker
            for poll in polls:
                await broker.deliver_batch(poll[0][0], [event for _, event in poll])
            assert broker.dead_letters == []
            assert (await client.get("/v1/parked")).json()["total"] == 0

            expected = forest.expected(last_plan(polls))
            listed = (await client.get("/v1/members", params={"limit": 100})).json()
            assert listed["total"] == len(expected)
            assert {
                m["member"]: (m["spend"], m["team_performance"], m["star"]) for m in listed["items"]
            } == expected
            for name in forest.sampled():
                spend, performance, star = expected[name]
                one = (await client.get(f"/v1/members/{name}")).json()
                assert (one["spend"], one["team_performance"], one["star"]) == (
                    spend,
                    performance,
                    star,
                )

    asyncio.run(go())


# ------------------------------------------------------------------ what a read reads


def on_members(statements: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    # (the relay's statements on the outbox come and go meanwhile)
    return [(s, p) for s, p in statements if re.search(r"\bmembers\b", s)]


def query_plans(database: Path, statements: list[tuple[str, Any]]) -> list[str]:
    """SQLite's plan of each statement: one line per table it reads ("SCAN t": all of
    it; "SEARCH t USING … INDEX (col=?)": the rows the key names)."""
    details: list[str] = []
    with sqlite3.connect(database) as conn:
        for statement, parameters in on_members(statements):
            rows = conn.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
            details.extend(str(row[-1]) for row in rows)
    return details


def full_scans_of_members(plans: list[str]) -> list[str]:
    # the members table under any of the names the statements give it
    return [p for p in plans if re.match(r"SCAN (members|below|above)\b", p)]


def test_reading_one_member_reads_their_rows_not_the_whole_table(tmp_path: Path) -> None:
    database = tmp_path / "r.db"

    async def go() -> None:
        app = referrals_app(database)
        async with running(app) as client:
            rng = random.Random(7)
            batch = [
                {"member": f"m{i}", "sponsor": f"m{rng.randrange(i)}" if i else None}
                for i in range(2000)
            ]
            assert (await client.post("/v1/members:batch", json={"members": batch})).json()[
                "created"
            ] == 2000
            broker: FakeBroker = app.state.svc.broker
            plan = contracts.PlanActivated(day=1, plan={"team": {"levels": TEAM_LEVELS}})
            await broker.deliver(contracts.DIVIDENDS, plan)
            engine = app.state.svc.engine.sync_engine
            statements: list[tuple[str, Any]] = []

            def record(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
                statements.append((statement, parameters))

            # an order deep in the tree: its upline is found key by key
            sa_event.listen(engine, "before_cursor_execute", record)
            order = contracts.OrderPaid(order_id="o1", member="m1999", amount=Decimal("950"))
            await broker.deliver(contracts.ORDERS, order)
            sa_event.remove(engine, "before_cursor_execute", record)
            assert any("upline" in s for s, _ in statements)
            assert full_scans_of_members(query_plans(database, statements)) == []

            statements.clear()
            sa_event.listen(engine, "before_cursor_execute", record)
            root = (await client.get("/v1/members/m0")).json()
            sa_event.remove(engine, "before_cursor_execute", record)
            assert (root["team_performance"], root["star"]) == ("950.00", 2)
            plans = query_plans(database, statements)
            assert any(p.startswith("SEARCH members") for p in plans)  # it did read
            assert full_scans_of_members(plans) == []
            assert len(on_members(statements)) == 2  # the member, how many referrals

    asyncio.run(go())


# ------------------------------------------------------------------ revision 0005


def test_revision_0005_computes_team_performance_of_the_existing_rows(tmp_path: Path) -> None:
    """A database at 0004 with a random forest and a long chain, their spends set: after
    the upgrade every row's team_cents is the whole-forest computation's."""
    url = f"sqlite:///{tmp_path}/referrals.db"
    rng = random.Random(5)
    sponsors: list[int | None] = []
    for i in range(1500):
        if i < 1000:  # a bushy forest with several roots
            sponsors.append(None if i % 300 == 0 else rng.randrange(i))
        else:  # a chain hanging from member 999
            sponsors.append(i - 1)
    spend = [rng.choice([0, 0, 1, 99, 10**9, 123_456_789_012]) for _ in sponsors]
    depth = [0] * len(sponsors)
    for i, sponsor in enumerate(sponsors):
        if sponsor is not None:
            depth[i] = depth[sponsor] + 1
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(migrations.config("referrals", conn), "0004")
        now = datetime.now(UTC)
        rows = [
            {
                "member": f"m{i}",
                "sponsor": None if s is None else f"m{s}",
                "merchant": False,
                "seq": i + 1,
                "depth": depth[i],
                "spend_cents": spend[i],
                "registered_at": now,
            }
            for i, s in enumerate(sponsors)
        ]
        # the columns of 0004 only (today's table would add team_cents' default)
        members_0004 = table("members", *(column(name) for name in rows[0]))
        conn.execute(insert(members_0004), rows)
    engine.dispose()
    assert migrations.upgrade("referrals", url).applied == ["0005"]
    engine = create_engine(url)
    with engine.connect() as conn:
        found = dict(conn.execute(select(members_table.c.member, members_table.c.team_cents)).all())
    engine.dispose()
    expected = team_performance(
        np.asarray([-1 if s is None else s for s in sponsors], dtype=np.int64),
        np.asarray(depth, dtype=np.int64),
        np.asarray(spend, dtype=np.int64),
    )
    assert found == {f"m{i}": int(cents) for i, cents in enumerate(expected)}
