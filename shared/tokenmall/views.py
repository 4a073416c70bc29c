"""Read views of the engine's state: the result document's parts (SCENARIOS.md).

Shared by the simulator (``tokenmall simulate``) and the dividends service API, so
both describe members, the equity pool and the platform with the same code.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenmall.engine import Engine
from tokenmall.engine import settlement as st
from tokenmall.money import format_cents, format_ratio_down, format_units


def equity_view(engine: Engine) -> dict[str, Any]:
    price = None
    if engine.plan.equity is not None:
        ratio = engine.price()
        price = format_ratio_down(ratio.numerator, ratio.denominator, 8)
    return {
        "price": price,
        "pool": format_cents(engine.pool),
        "circulating": format_units(engine.circulating),
        "treasury": format_units(engine.treasury),
        "minted": format_units(engine.minted),
    }


def platform_view(engine: Engine) -> dict[str, str]:
    platform = engine.ledger.platform
    return {
        "retained": format_cents(platform["cny"]["retained"] + platform["stable"]["retained"]),
        "rounding": format_cents(platform["cny"]["rounding"] + platform["stable"]["rounding"]),
        "sales": format_cents(engine.sales_total),
    }


@dataclass(frozen=True)
class _Forest:
    """The whole-forest columns a member view reads, and the state they were computed on."""

    key: tuple[Any, ...]
    plan: Any  # the plan object itself (held: an id could be reused by the next plan)
    shares: np.ndarray
    contribution: np.ndarray
    performance: np.ndarray
    star: np.ndarray


# per engine: a page of members reads the forest computed for the page before it while
# nothing changed (a client paging 1M members would otherwise pay a whole-forest pass
# per page)
_forests: weakref.WeakKeyDictionary[Engine, _Forest] = weakref.WeakKeyDictionary()


def _forest(engine: Engine) -> _Forest:
    inp = engine.day_input()
    # what the columns depend on: the members (sponsors never change), their spend, the
    # plan's weights and team rules
    spend = np.ascontiguousarray(inp.spend)
    key = (len(engine.names), hashlib.blake2b(spend.tobytes(), digest_size=16).digest())
    cached = _forests.get(engine)
    if cached is not None and cached.key == key and cached.plan is engine.plan:
        return cached
    shares, contribution = st.member_weights(inp.parent, inp.spend, engine.plan.weights)
    performance = st.team_performance(inp.parent, inp.depth, inp.spend)
    star = st.star_levels(performance, engine.plan.team)
    forest = _Forest(key, engine.plan, shares, contribution, performance, star)
    _forests[engine] = forest
    return forest


def member_views(engine: Engine, start: int = 0, stop: int | None = None) -> dict[str, Any]:
    """Members ``start..stop`` (registration order) as in the result document."""
    forest = _forest(engine)
    shares, contribution = forest.shares, forest.contribution
    performance, star = forest.performance, forest.star
    ledger = engine.ledger
    cny, stable, points = ledger.members["cny"], ledger.members["stable"], ledger.members["equity"]
    released = engine.released
    names = engine.names[start:stop]
    views: dict[str, Any] = {}
    for m, name in enumerate(names, start):
        views[name] = {
            "cny": format_cents(cny[m]),
            "stable": format_cents(stable[m]),
            "equity": format_units(points[m]),
            "quota_remaining": format_cents(engine.quota[m]),
            "spend": format_cents(engine.spend[m]),
            "shares": int(shares[m]),
            "contribution": int(contribution[m]),
            "star": int(star[m]),
            "team_performance": format_cents(int(performance[m])),
            "released": {
                k: format_cents(int(v[m])) for k, v in released.items() if m < v.size and v[m] != 0
            },
        }
    return views


def result_document(engine: Engine) -> dict[str, Any]:
    return {
        "day": engine.day,
        "equity": equity_view(engine),
        "platform": platform_view(engine),
        "members": member_views(engine),
    }
