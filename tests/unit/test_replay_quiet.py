"""Replay's quiescence barrier: two quiet rounds count only if nothing moved in between."""

from __future__ import annotations

import asyncio
from typing import Any

from tokenmall.replay import SERVICES, Platform


def scripted(rounds: list[dict[str, int]]) -> tuple[Platform, list[int]]:
    """A platform whose /v1/sync answers follow ``rounds`` (per round: service → progress;
    a negative progress: that service still has a backlog)."""
    platform = Platform({s: f"http://{s}" for s in SERVICES}, timeout=5)
    asked = [0]

    async def json(service: str, path: str) -> Any:
        assert path == "/v1/sync"
        index = min(asked[0] // len(SERVICES), len(rounds) - 1)
        asked[0] += 1
        progress = rounds[index].get(service, 0)
        return {
            "pid": 1,
            "progress": abs(progress),
            "outbox_backlog": 1 if progress < 0 else 0,
            "consumer_lag": 0,
            "parked": 0,
            "ready": True,
        }

    platform.json = json  # type: ignore[method-assign]
    return platform, asked


def rounds_taken(rounds: list[dict[str, int]]) -> int:
    async def go() -> int:
        platform, asked = scripted(rounds)
        try:
            await platform.wait_quiet()
        finally:
            await platform.close()
        return asked[0] // len(SERVICES)

    return asyncio.run(go())


def test_two_quiet_rounds_with_the_same_progress_are_enough() -> None:
    assert rounds_taken([{"orders": 3}, {"orders": 3}]) == 2


def test_quiet_rounds_between_which_something_moved_do_not_count() -> None:
    # an event hid between two answers of round 1 and moved on during round 2: the
    # progress changed, so a third round (with the same progress) is needed
    assert (
        rounds_taken([{"orders": 3}, {"orders": 3, "dividends": 1}, {"orders": 3, "dividends": 1}])
        == 3
    )


def test_a_busy_round_starts_the_count_again() -> None:
    assert rounds_taken([{"orders": 3}, {"wallet": -2}, {"wallet": 2}, {"wallet": 2}]) == 4
