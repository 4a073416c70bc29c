"""The member views (tokenmall.views): a page reads the whole-forest columns computed for
the page before it only while nothing they depend on changed."""

from __future__ import annotations

import copy

from tokenmall.engine import Engine, Plan
from tokenmall.views import member_views


def fresh(engine: Engine) -> dict[str, object]:
    """The views of a copy of the engine: computed anew, nothing cached for it."""
    return member_views(copy.deepcopy(engine))


def test_pages_are_the_whole_list_cut_and_follow_every_change() -> None:
    engine = Engine(Plan.from_mapping({"preset": "points"}))
    engine.join("a")
    engine.join("b", "a")
    engine.join("c", "b")
    engine.order("c", 100_000, "o1")
    whole = member_views(engine)
    assert member_views(engine, 0, 2) | member_views(engine, 2) == whole
    assert whole["a"]["team_performance"] == "1000.00"

    engine.order("b", 50_000, "o2")  # spend changes: the cached forest is stale
    assert member_views(engine) == fresh(engine)
    assert member_views(engine)["a"]["team_performance"] == "1500.00"

    engine.join("d", "c")  # a member joins
    engine.order("d", 20_000, "o3")
    assert member_views(engine, 3) == {"d": fresh(engine)["d"]}
    assert member_views(engine)["a"]["team_performance"] == "1700.00"

    engine.refund("o1")  # a refund lowers a spend
    assert member_views(engine) == fresh(engine)
    assert member_views(engine)["a"]["team_performance"] == "700.00"
