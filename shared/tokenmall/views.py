"""Read views of the engine's state: the result document's parts (SCENARIOS.md).

Shared by the simulator (``tokenmall simulate``) and the dividends service API, so
both describe members, the equity pool and the platform with the same code.
"""

from __future__ import annotations

from typing import Any

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


def member_views(engine: Engine, start: int = 0, stop: int | None = None) -> dict[str, Any]:
    """Members ``start..stop`` (registration order) as in the result document."""
    inp = engine.day_input()
    shares, contribution = st.member_weights(inp.parent, inp.spend, engine.plan.weights)
    performance = st.team_performance(inp.parent, inp.depth, inp.spend)
    star = st.star_levels(performance, engine.plan.team)
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
