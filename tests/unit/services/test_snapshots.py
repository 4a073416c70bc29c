"""Dividends' engine snapshots: written after a settlement (not inside its transaction),
in the snapshot format, the newest two kept; a restart loads the newest that loads and
replays the input log after it — equal to ``simulate`` whatever it finds."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from tests.unit.services.test_dividends import SCENARIOS, feed, make_app, owned_fields
from tokenmall.engine import Engine, snapshot
from tokenmall.scenario import load_scenario, result_document, run_steps
from tokenmall.testing import by_member, running
from tokenmall_dividends.adapters.tables import inputs, snapshots
from tokenmall_dividends.service_layer.snapshots import writer_of

SCENARIO = SCENARIOS / "rules-plan-change.yaml"  # settlements and a plan change
EXTRA_DAYS = 2  # settled after the scenario: four settlements in all


async def snapshot_rows(app: Any) -> list[Any]:
    async with app.state.svc.sessions() as session:
        rows = await session.execute(
            select(snapshots.c.seq, snapshots.c.day, snapshots.c.state).order_by(snapshots.c.seq)
        )
        return list(rows)


async def state_of(client: Any) -> dict[str, Any]:
    state = (await client.get("/v1/state")).json()
    members = by_member((await client.get("/v1/members")).json())
    return {"day": state["day"], "equity": state["equity"], "members": members}


def fed(tmp_path: Path) -> tuple[dict[str, Any], list[Any], list[int]]:
    async def go() -> tuple[dict[str, Any], list[Any], list[int]]:
        app = make_app(tmp_path)
        async with running(app) as client:
            await feed(app, client, SCENARIO)
            for _ in range(EXTRA_DAYS):
                day = (await client.get("/v1/state")).json()["day"]
                assert (await client.post(f"/v1/settlements/{day}")).status_code == 200
            await writer_of(app.state.svc).flush()
            async with app.state.svc.sessions() as session:
                settles = await session.execute(
                    select(inputs.c.seq).where(inputs.c.kind == "settle").order_by(inputs.c.seq)
                )
                settle_seqs = [int(s) for s in settles.scalars()]
            return await state_of(client), await snapshot_rows(app), settle_seqs

    return asyncio.run(go())


def restarted(tmp_path: Path, change: Any = None) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        if change is not None:
            app = make_app(tmp_path)
            async with running(app), app.state.svc.sessions() as session:
                await change(session)
                await session.commit()
        app = make_app(tmp_path)
        async with running(app) as client:
            return await state_of(client)

    return asyncio.run(go())


def expected() -> dict[str, Any]:
    """``simulate`` of the same steps: the scenario's, then the extra days."""
    scenario = load_scenario(SCENARIO)
    engine = Engine(scenario.plan)
    run_steps(engine, scenario.steps)
    for _ in range(EXTRA_DAYS):
        engine.settle()
    return result_document(engine)


def test_the_newest_two_snapshots_are_kept_in_the_snapshot_format(tmp_path: Path) -> None:
    before, rows, settle_seqs = fed(tmp_path)
    assert len(settle_seqs) >= 3, "the scenario settles several days"
    assert [row.seq for row in rows] == settle_seqs[-2:]  # one per settlement, pruned
    assert all(snapshot.is_snapshot(row.state) for row in rows)
    assert owned_fields(before) == owned_fields(expected())
    assert before["equity"] == expected()["equity"]
    after = restarted(tmp_path)
    assert after == before


def test_a_damaged_newest_snapshot_falls_back_to_the_one_before(tmp_path: Path) -> None:
    before, rows, _ = fed(tmp_path)

    async def damage(session: Any) -> None:
        await session.execute(
            update(snapshots).where(snapshots.c.seq == rows[-1].seq).values(state=b"TMSNAP\x01")
        )

    assert restarted(tmp_path, damage) == before


def test_no_snapshot_at_all_replays_the_whole_log(tmp_path: Path) -> None:
    before, _, _ = fed(tmp_path)

    async def drop(session: Any) -> None:
        await session.execute(snapshots.delete())

    assert restarted(tmp_path, drop) == before


def test_a_pickled_snapshot_of_an_older_version_still_loads(tmp_path: Path) -> None:
    before, rows, _ = fed(tmp_path)
    engine = snapshot.loads(rows[-1].state)

    async def downgrade(session: Any) -> None:
        await session.execute(
            update(snapshots)
            .where(snapshots.c.seq == rows[-1].seq)
            .values(state=pickle.dumps(engine, protocol=pickle.HIGHEST_PROTOCOL))
        )

    assert restarted(tmp_path, downgrade) == before
