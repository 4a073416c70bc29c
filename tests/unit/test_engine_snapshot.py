"""The engine's snapshot format (tokenmall.engine.snapshot): a restored engine is the
engine — the same observable state, the same answers to every later input, the same
bytes when written again — and a snapshot that is not ours, newer, or damaged is
refused instead of half-loaded."""

from __future__ import annotations

import json
import pickle
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.strategies import scenarios
from tests.unit.test_engine_properties import snapshot as observe
from tokenmall.bench import build_population
from tokenmall.engine import Engine, Refused, snapshot
from tokenmall.scenario import apply_step, parse_scenario, result_document


def applied(engine: Engine, step: Any) -> Any:
    try:
        return ("ok", repr(apply_step(engine, step)))
    except Refused as exc:
        return ("refused", str(exc))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios(), st.data())
def test_a_restored_engine_goes_on_exactly_like_the_original(
    doc: dict[str, Any], data: st.DataObject
) -> None:
    scenario = parse_scenario(doc)
    engine = Engine(scenario.plan)
    cut = data.draw(st.integers(0, len(scenario.steps)))
    for step in scenario.steps[:cut]:
        applied(engine, step)
    written = snapshot.dumps(engine)
    restored = snapshot.loads(written)
    assert snapshot.dumps(restored) == written  # nothing lost, nothing changed
    assert observe(restored) == observe(engine)
    # the points column is the ledger's (one object, as in the engine): still shared
    assert restored.points is restored.ledger.members["equity"]
    for step in scenario.steps[cut:]:
        assert applied(restored, step) == applied(engine, step), step.number
    assert result_document(restored) == result_document(engine)
    assert observe(restored) == observe(engine)


def test_a_large_population_is_compact_and_round_trips() -> None:
    engine, _ = build_population(20_000, 50, seed=3)
    for i in range(0, 20_000, 3):
        engine.order(engine.names[i], 10_000 + i, order_id=f"o{i}")
    engine.refund("o9")
    engine.settle()
    written = snapshot.dumps(engine)
    restored = snapshot.loads(written)
    assert observe(restored) == observe(engine)
    assert (
        restored.orders["o9"].refunded and restored.orders["o3"].grant == engine.orders["o3"].grant
    )
    # a few bytes per member and order, well under what pickle takes
    assert len(written) < len(pickle.dumps(engine, protocol=pickle.HIGHEST_PROTOCOL)) / 2
    restored.settle()
    engine.settle()
    assert result_document(restored) == result_document(engine)


def header_of(data: bytes) -> tuple[int, dict[str, Any], bytes]:
    _, version, length = struct.unpack_from("<6sHI", data)
    return version, json.loads(data[12 : 12 + length]), data[12 + length :]


def rebuilt(version: int, header: dict[str, Any], rest: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<6sHI", b"TMSNAP", version, len(raw)) + raw + rest


def test_what_is_not_a_snapshot_of_ours_is_refused() -> None:
    engine, _ = build_population(50, 5, seed=1)
    data = snapshot.dumps(engine)
    version, header, rest = header_of(data)
    with pytest.raises(snapshot.SnapshotError, match="not a tokenmall snapshot"):
        snapshot.loads(b"\x80\x05not ours")
    with pytest.raises(snapshot.SnapshotError, match="newer"):
        snapshot.loads(rebuilt(version + 1, header, rest))
    with pytest.raises(snapshot.SnapshotError, match="damaged"):
        snapshot.loads(data[:-5])
    with pytest.raises(snapshot.SnapshotError):
        snapshot.loads(data + b"x")
    # no class from outside the engine is ever built from a snapshot
    header["tree"] = {"$obj": "os:system", "a": {}}
    with pytest.raises(snapshot.SnapshotError, match="not the engine's"):
        snapshot.loads(rebuilt(version, header, rest))
    header["tree"] = {"$obj": "tokenmall.engine.core:Engine.__init__.__globals__", "a": {}}
    with pytest.raises(snapshot.SnapshotError):
        snapshot.loads(rebuilt(version, header, rest))


def test_a_state_holding_something_else_is_not_written() -> None:
    engine = Engine(build_population(5, 2, seed=1)[0].plan)
    engine.names.append(object())  # type: ignore[arg-type]
    with pytest.raises(snapshot.SnapshotError, match=r"builtins\.object"):
        snapshot.dumps(engine)


def test_blocks_are_compressed() -> None:
    engine, _ = build_population(5_000, 20, seed=2)
    captured = snapshot.capture(engine)
    sealed = snapshot.seal(captured)
    assert len(sealed) < captured.raw_bytes
    _, header, rest = header_of(sealed)
    assert sum(size for _, _, size in header["blocks"]) == len(rest)
    assert zlib.decompress(rest[: header["blocks"][0][2]]) == captured.blocks[0][2]
