"""Every scenario replayed through the four services on the real broker gives the same
result document as ``tokenmall simulate``, to the last decimal, and passes its checks —
on SQLite and on PostgreSQL.

Each scenario gets a fresh platform; a few platforms run at once (replay waits on the
broker, not the CPU), so starting one overlaps replaying another."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.integration.conftest import Platforms
from tokenmall.replay import Platform, replay
from tokenmall.scenario import load_scenario, simulate

REPO_SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
PUBLIC_SCENARIOS = Path(__file__).resolve().parents[3] / "shared" / "scenarios"
CONCURRENT_PLATFORMS = 3


def scenario_files() -> list[Path]:
    files = {p.name: p for p in sorted(REPO_SCENARIOS.glob("*.yaml"))}
    if PUBLIC_SCENARIOS.is_dir():  # the reference folder wins where both have a file
        files.update({p.name: p for p in sorted(PUBLIC_SCENARIOS.glob("*.yaml"))})
    # the longest first, so the pool is not left waiting on one long file at the end
    return sorted(files.values(), key=lambda p: -p.stat().st_size)


def first_difference(expected: Any, actual: Any, path: str = "") -> str:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual), key=str):
            if expected.get(key) != actual.get(key):
                return first_difference(expected.get(key), actual.get(key), f"{path}.{key}")
    return f"{path.lstrip('.')}: simulate {json.dumps(expected)} / replay {json.dumps(actual)}"


async def replay_one(platforms: Platforms, path: Path) -> str | None:
    """None when the file replays identically and passes its checks, else why not."""
    scenario = load_scenario(path)
    expected = simulate(scenario).document
    run = await asyncio.to_thread(platforms.launch)
    platform = Platform(platforms.urls(run))
    try:
        result = await replay(scenario, platform)
    except Exception as exc:
        return f"{path.name}: {type(exc).__name__}: {exc}\n{platforms.log_tail(run)}"
    finally:
        await platform.close()
        await asyncio.to_thread(platforms.stop, run)
    if result.document != expected:
        return f"{path.name} differs: {first_difference(expected, result.document)}"
    if result.failures:
        return f"{path.name} checks failed: {result.failures}"
    return None


async def replay_all(platforms: Platforms, files: list[Path]) -> list[str]:
    slots = asyncio.Semaphore(CONCURRENT_PLATFORMS)

    async def guarded(path: Path) -> str | None:
        async with slots:
            return await replay_one(platforms, path)

    outcomes = await asyncio.gather(*(guarded(p) for p in files))
    return [o for o in outcomes if o is not None]


def test_every_scenario_replays_exactly_like_simulate(platforms: Platforms) -> None:
    files = scenario_files()
    assert len(files) >= 20
    failures = asyncio.run(replay_all(platforms, files))
    assert failures == [], "\n\n".join(failures)
