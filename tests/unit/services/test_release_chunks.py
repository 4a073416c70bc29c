"""Release messages stay under the configured size: a partition bucket that would not
fit in one message is split into chunks, and the wallet books the chunks exactly."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.unit.services import test_wallet
from tokenmall import contracts
from tokenmall.testing import MemoryPublisher
from tokenmall_dividends.service_layer.host import EngineHost, chunk_bounds
from tokenmall_wallet.adapters.tables import release_lines

BOUND = 8192
MEMBERS = 1500


def settled_population(max_bytes: int) -> tuple[EngineHost, list[contracts.Event]]:
    """MEMBERS members with phone-number ids, each with a paid order, one settlement."""
    host = EngineHost({"preset": "points"}, max_message_bytes=max_bytes)
    engine = host.engine
    for i in range(MEMBERS):
        sponsor = None if i < 10 else f"+861380000{i // 10:04d}"  # a forest, gen-1 releases
        engine.join(f"+861380000{i:04d}", sponsor)
        engine.order(f"+861380000{i:04d}", 3000_00 + 7 * i)
    engine.take_outputs()
    report = engine.settle(1)
    return host, host.settlement_events(1, report, plan_changed=False)


def test_a_bucket_larger_than_the_bound_is_split_into_chunks_under_it() -> None:
    _, events = settled_population(BOUND)
    releases = [e for e in events if isinstance(e, contracts.ReleaseComputed)]
    sizes = [len(contracts.encode(e)) for e in releases]
    assert max(sizes) <= BOUND, sizes
    assert len(releases) > contracts.PARTITIONS  # some bucket needed several chunks
    per_bucket: dict[int, list[contracts.ReleaseComputed]] = {}
    for release in releases:
        per_bucket.setdefault(release.bucket, []).append(release)
    for chunks in per_bucket.values():
        assert [c.chunk for c in chunks] == list(range(len(chunks)))
        assert {c.chunks for c in chunks} == {len(chunks)}
        assert len({c.partition_key for c in chunks}) == 1  # one partition, in order
        assert len({c.event_id for c in chunks}) == len(chunks)
    # the same releases as one message per bucket, member for member
    _, whole = settled_population(64 * 1024 * 1024)

    def lines(items: list[contracts.Event]) -> dict[str, tuple[int, ...]]:
        out = {}
        for e in items:
            if isinstance(e, contracts.ReleaseComputed):
                for i, m in enumerate(e.members):
                    out[m] = tuple(e.amounts[k][i] for k in sorted(e.amounts))
        return out

    assert lines(releases) == lines(whole)
    assert len([e for e in whole if isinstance(e, contracts.ReleaseComputed)]) <= 6
    [settled] = [e for e in events if isinstance(e, contracts.DaySettled)]
    assert settled.batches == len(releases)


def test_the_wallet_books_every_chunk_exactly(tmp_path: Path) -> None:
    _, events = settled_population(BOUND)
    releases = [e for e in events if isinstance(e, contracts.ReleaseComputed)]
    expected = sum(sum(sum(col) for col in e.amounts.values()) for e in releases)

    async def body(app: FastAPI, client: object, _: MemoryPublisher) -> None:
        for event in events:
            await test_wallet.deliver(app, event)
        for event in releases[:3]:
            await test_wallet.deliver(app, event)  # redelivered chunks: booked once
        booked = await test_wallet.scalar(app, select(func.count()).select_from(release_lines))
        assert booked == sum(len(e.members) for e in releases) == MEMBERS
        total = await test_wallet.scalar(app, select(func.sum(release_lines.c.total)))
        assert total == expected
        assert all(v == 0 for v in (await test_wallet.sums_by_asset(app)).values())
        assert app.state.svc.broker.dead_letters == []

    test_wallet.run(tmp_path, body)


@given(
    st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=300),
    st.integers(min_value=1, max_value=2000),
)
def test_chunks_cover_every_row_once_and_stay_within_the_budget(
    sizes: list[int], budget: int
) -> None:
    bounds = chunk_bounds(np.asarray(sizes, dtype=np.int64), budget)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(sizes)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    for start, end in bounds:
        assert end > start
        assert sum(sizes[start:end]) <= budget or end - start == 1
        # greedy: the next row would not have fitted
        if end < len(sizes):
            assert sum(sizes[start : end + 1]) > budget
