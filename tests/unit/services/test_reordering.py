"""Events of different keys in any order (fake broker): nothing is refused or lost, and
the service equals ``simulate`` of its own input log (``GET /v1/inputs``).

Every scenario's registrations and orders of one business day are delivered as Kafka
would with lagging partitions: each (topic, key) stream keeps its order, the streams are
interleaved at random — a referral before its sponsor, an order before its member.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from tokenmall import contracts
from tokenmall.inputlog import scenario_from_inputs
from tokenmall.scenario import load_scenario, parse_scenario, simulate
from tokenmall.testing import FakeBroker, MemoryPublisher, by_member, member_registered, running
from tokenmall_dividends.app import DividendsSettings, build_app

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
# scenarios whose steps are registrations, orders, refunds and settlements only
FILES = (
    "seed-team-differential.yaml",
    "seed-equity-wine.yaml",
    "seed-points-release.yaml",
    "rules-exit-order.yaml",
    "rules-team-walk.yaml",
)


def make_app(tmp_path: Path) -> Any:
    settings = DividendsSettings(
        database_url=f"sqlite:///{tmp_path}/dividends.db", day_watermarks=[]
    )
    pub = MemoryPublisher()
    return build_app(
        settings, broker_factory=lambda svc: FakeBroker(), publisher_factory=lambda svc: pub
    )


def shuffled(streams: dict[tuple[str, str], list[Any]], rng: random.Random) -> list[Any]:
    """A random interleaving that keeps each stream's own order."""
    queues = {k: list(v) for k, v in streams.items() if v}
    out: list[Any] = []
    while queues:
        key = rng.choice(sorted(queues))
        out.append((key[0], queues[key].pop(0)))
        if not queues[key]:
            del queues[key]
    return out


def days_of(path: Path) -> tuple[dict[str, Any], list[list[tuple[str, contracts.Event]]]]:
    """The scenario's events per business day, as the other services would publish them."""
    scenario = load_scenario(path)
    days: list[list[tuple[str, contracts.Event]]] = [[]]
    seq = 0
    for step in scenario.steps:
        f = step.fields
        if step.kind == "join":
            seq += 1
            event: contracts.Event = member_registered(
                str(f["member"]), f.get("sponsor"), bool(f.get("merchant")), seq=seq
            )
            days[-1].append((contracts.MEMBERS, event))
        elif step.kind == "order":
            oid = str(f.get("id") or f"o{step.number}")
            event = contracts.OrderPaid(
                order_id=oid, member=str(f["member"]), amount=f["amount"], stable=f.get("stable", 0)
            )
            days[-1].append((contracts.ORDERS, event))
        elif step.kind == "refund":
            order = next(
                e
                for _, e in (x for day in days for x in day)
                if isinstance(e, contracts.OrderPaid) and e.order_id == str(f["order"])
            )
            event = contracts.OrderRefunded(
                order_id=order.order_id, member=order.member, amount=order.amount
            )
            days[-1].append((contracts.ORDERS, event))
        elif step.kind == "settle":
            days.append([])
        else:
            raise AssertionError(f"{path.name}: {step.kind} is not driven here")
    return contracts.plain(scenario.plan.raw), days


async def drive(app: Any, client: Any, path: Path, rng: random.Random) -> dict[str, Any]:
    broker: FakeBroker = app.state.svc.broker
    plan, days = days_of(path)
    assert (await client.post("/v1/plan", json={"plan": plan, "activate_now": True})).is_success
    for number, events in enumerate(days, start=1):
        streams: dict[tuple[str, str], list[Any]] = {}
        for topic, event in events:
            streams.setdefault((topic, event.key), []).append(event)
        for topic, event in shuffled(streams, rng):
            await broker.deliver(topic, event)
        if number < len(days):
            assert (await client.post(f"/v1/settlements/{number}")).status_code == 200
    parked = (await client.get("/v1/parked")).json()
    assert parked["total"] == 0, parked
    assert broker.dead_letters == []
    metrics = (await client.get("/metrics")).text
    parked_total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("tokenmall_events_parked_total{")
    )
    log = (await client.get("/v1/inputs", params={"limit": 10_000})).json()["items"]
    state = (await client.get("/v1/state")).json()
    members = (await client.get("/v1/members", params={"limit": 10_000})).json()
    return {
        "log": log,
        "state": state,
        "members": by_member(members),
        "events": days,
        "parked": parked_total,
    }


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffled_cross_key_order_loses_nothing_and_equals_simulate_of_the_input_log(
    tmp_path: Path, name: str, seed: int
) -> None:
    async def run() -> dict[str, Any]:
        app = make_app(tmp_path)
        async with running(app) as client:
            return await drive(app, client, SCENARIOS / name, random.Random(seed))

    got = asyncio.run(run())
    joins = {e.member for day in got["events"] for _, e in day if e.type == "MemberRegistered"}
    orders = {e.order_id for day in got["events"] for _, e in day if e.type == "OrderPaid"}
    assert set(got["members"]) == joins  # every member present
    logged = {row["input_id"] for row in got["log"]}
    assert {f"order:{o}" for o in orders} <= logged  # every order reached the engine

    if name in ("seed-team-differential.yaml", "seed-equity-wine.yaml", "rules-team-walk.yaml"):
        assert got["parked"] > 0  # these interleavings did overtake a dependency
    expected = simulate(parse_scenario(scenario_from_inputs(got["log"]))).document
    assert got["state"]["day"] == expected["day"]
    assert got["state"]["equity"] == expected["equity"]
    keys = ("quota_remaining", "shares", "contribution", "released", "equity", "spend")
    assert {m: {k: v[k] for k in keys} for m, v in got["members"].items()} == {
        m: {k: v[k] for k in keys} for m, v in expected["members"].items()
    }
