"""The platform bench's own parts: its population is what the issue asks for (phone
numbers, sponsors first, a forest to depth 50) and its Kafka floor produces exactly the
messages the import publishes."""

from __future__ import annotations

from tokenmall import contracts
from tokenmall.platform_bench import import_messages, per_order, population


def test_the_population_is_a_phone_number_forest_to_depth_50() -> None:
    people = population(5000, seed=3)
    position = {member: i for i, (member, _) in enumerate(people)}
    assert len(position) == 5000
    assert all(m.startswith("+86138") and len(m) == 14 for m in position)
    depth: dict[str, int] = {}
    for member, sponsor in people:
        if sponsor is not None:
            assert position[sponsor] < position[member]  # sponsors register first
        depth[member] = 0 if sponsor is None else depth[sponsor] + 1
    assert max(depth.values()) <= 50
    assert population(5000, seed=3) == people  # reproducible


def test_the_floor_messages_are_the_imports_batches() -> None:
    people = population(12_000, seed=1)
    messages = import_messages(people, batch=5000)
    events = [contracts.decode(m) for m in messages]
    assert all(isinstance(e, contracts.MembersRegistered) for e in events)
    registered = [
        (r.member, r.sponsor, r.seq)
        for e in events
        if isinstance(e, contracts.MembersRegistered)
        for r in e.members
    ]
    assert registered == [(m, s, i + 1) for i, (m, s) in enumerate(people)]
    # 5,000 + 5,000 + 2,000 members, each HTTP batch cut at 2,000 per event
    assert len(messages) == 3 + 3 + 1
    assert max(len(m) for m in messages) < 1_000_000


def test_cpu_per_order_is_per_kind_in_milliseconds() -> None:
    before = {"services": 1.0, "kafka": 2.0}
    after = {"services": 3.0, "kafka": 2.5}
    assert per_order(before, after, 1000) == {"services": 2.0, "kafka": 0.5}
