"""Hypothesis strategies: random but rule-rich scenario documents (SCENARIOS.md shape).

Populations are small (so the pure-Python oracle stays fast) and parameters are
chosen to make the interesting rules fire: tier boundaries, caps that bite,
stars and peers in shallow trees, forced exits, supply caps, refunds after release.
Numbers are decimal strings, never floats.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

AMOUNTS = [
    "0.01",
    "99.99",
    "100",
    "250.50",
    "1000",
    "2999.99",
    "3000",
    "5000",
    "9000",
    "12345.67",
    "51000",
]
RATES = ["0", "0.01", "0.05", "0.1", "0.2", "0.3", "0.5"]


def _levels() -> st.SearchStrategy[list[dict[str, Any]]]:
    @st.composite
    def build(draw: st.DrawFn) -> list[dict[str, Any]]:
        count = draw(st.integers(1, 4))
        thresholds = sorted(
            draw(
                st.lists(
                    st.sampled_from([0, 500, 1000, 3000, 5000, 9000, 20000]),
                    min_size=count,
                    max_size=count,
                    unique=True,
                )
            )
        )
        rates = sorted(
            draw(
                st.lists(
                    st.sampled_from(["0.05", "0.1", "0.1", "0.2", "0.26", "0.5"]),
                    min_size=count,
                    max_size=count,
                )
            )
        )
        return [{"threshold": t, "rate": r} for t, r in zip(thresholds, rates, strict=True)]

    return build()


@st.composite
def plans(draw: st.DrawFn) -> dict[str, Any]:
    preset = draw(st.sampled_from(["equity", "cycle", "points", "mixed"]))
    plan: dict[str, Any] = {"preset": "points" if preset == "mixed" else preset}
    if draw(st.booleans()):
        plan["release_to"] = draw(st.sampled_from(["stable", "cny"]))
    if draw(st.booleans()):
        tiers = [{"threshold": 0, "multiple": draw(st.sampled_from(["0.3", "0.5", "1", "2"]))}]
        if draw(st.booleans()):
            tiers.append(
                {"threshold": 3000, "multiple": draw(st.sampled_from(["1.5", "2.5", "3"]))}
            )
        daily = draw(st.sampled_from([None, "0.01", "0.05", "0.1", "0.012"]))
        plan["grants"] = {"tiers": tiers, "daily_rate": daily}
    if (preset in ("equity", "mixed") and draw(st.booleans())) or preset == "mixed":
        grant_rate = draw(st.sampled_from(["0.5", "0.7", "0.9"]))
        plan["equity"] = {
            "pool_rate": draw(st.sampled_from(["0.1", "0.3", "0.5"])),
            "grant_rate": grant_rate,
            "issue_price": draw(st.sampled_from(["1", "0.5", "2.345"])),
            "total_supply": draw(st.sampled_from(["100000000", "50", "120.5"])),
            "sell_fee_rate": draw(st.sampled_from(["0", "0.1", "0.25"])),
            "referral_grant_rate": draw(st.sampled_from(["0", "0.1"])),
        }
    if preset in ("cycle", "mixed") or draw(st.booleans()):
        unit = draw(st.sampled_from([100, 1000]))
        plan["weights"] = {
            "share_unit": unit,
            "referral_share_rate": draw(st.sampled_from(["0", "0.5"])),
            "contribution_unit": draw(st.sampled_from([100, 500])),
            "referral_contribution_rate": draw(st.sampled_from(["0", "0.2"])),
        }
        pools: list[dict[str, Any]] = []
        for i in range(draw(st.integers(0, 3))):
            weight = draw(st.sampled_from(["shares", "contribution", "equity_points"]))
            if draw(st.booleans()):
                pools.append(
                    {
                        "name": f"p{i}",
                        "rate": draw(st.sampled_from(RATES)),
                        "split": "pro_rata",
                        "weight": weight,
                    }
                )
            else:
                pools.append(
                    {
                        "name": f"p{i}",
                        "split": "tiers",
                        "weight": weight,
                        "tiers": [
                            {
                                "name": "T1",
                                "min": 1,
                                "max": draw(st.sampled_from([5, 10, "10.5"])),
                                "rate": draw(st.sampled_from(RATES)),
                            },
                            {
                                "name": "T2",
                                "min": 11,
                                "max": draw(st.sampled_from([50, None])),
                                "rate": draw(st.sampled_from(RATES)),
                            },
                        ],
                    }
                )
        plan["pools"] = pools
    if preset in ("points", "mixed"):
        plan["referral"] = {
            "gen1_rate": draw(st.sampled_from(["0", "0.1", "0.5"])),
            "gen2_rate": draw(st.sampled_from(["0", "0.3"])),
        }
        plan["team"] = {
            "levels": draw(_levels()),
            "peer_rate": draw(st.sampled_from(["0", "0.03"])),
            "max_depth": draw(st.sampled_from([None, 1, 2, 3])),
        }
    return plan


@st.composite
def plan_changes(draw: st.DrawFn) -> dict[str, Any]:
    return draw(
        st.sampled_from(
            [
                {"grants": {"daily_rate": "0.05"}},
                {"grants": {"tiers": [{"threshold": 0, "multiple": "0.5"}]}},
                {
                    "pools": [
                        {"name": "late", "rate": "0.2", "split": "pro_rata", "weight": "shares"}
                    ]
                },
                {"referral": {"gen1_rate": "0.2", "gen2_rate": "0"}},
                {"release_to": "cny"},
                {"team": {"max_depth": 1}},
            ]
        )
    )


@st.composite
def scenarios(
    draw: st.DrawFn, max_steps: int = 30, with_adjust_equity: bool = True
) -> dict[str, Any]:
    """A scenario document with joins first, then random steps (some the rules refuse)."""
    names = [f"M{i}" for i in range(draw(st.integers(2, 6)))]
    steps: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        join: dict[str, Any] = {"member": name}
        if i and draw(st.integers(0, 3)):
            join["sponsor"] = names[draw(st.integers(0, i - 1))]
        if draw(st.integers(0, 7)) == 0:
            join["merchant"] = True
        steps.append({"join": join})
    member = st.sampled_from(names)
    orders = 0
    for _ in range(draw(st.integers(1, max_steps))):
        kind = draw(
            st.sampled_from(
                ["order"] * 5
                + ["settle"] * 3
                + [
                    "refund",
                    "sell",
                    "sell",
                    "exchange",
                    "merchant_exchange",
                    "adjust",
                    "plan",
                    "join",
                ]
            )
        )
        if kind == "order":
            order: dict[str, Any] = {
                "member": draw(member),
                "amount": draw(st.sampled_from(AMOUNTS)),
            }
            if draw(st.integers(0, 4)) == 0:
                order["stable"] = draw(st.sampled_from(["1", "10", "50.5"]))
            orders += 1
            steps.append({"order": order})
        elif kind == "settle":
            steps.append({"settle": {}})
        elif kind == "refund":
            steps.append({"refund": {"order": f"order-{draw(st.integers(1, max(1, orders)))}"}})
        elif kind == "sell":
            points = draw(st.sampled_from(["all", "0.5", "1", "3.3333", "10"]))
            steps.append({"sell": {"member": draw(member), "points": points}})
        elif kind == "exchange":
            steps.append(
                {
                    "exchange": {
                        "member": draw(member),
                        "points": draw(st.sampled_from(["0.1", "1", "2.5"])),
                    }
                }
            )
        elif kind == "merchant_exchange":
            steps.append(
                {
                    "merchant_exchange": {
                        "member": draw(member),
                        "stable": draw(st.sampled_from(["1", "5", "20"])),
                    }
                }
            )
        elif kind == "adjust":
            assets = ["cny", "stable", "equity"] if with_adjust_equity else ["cny", "stable"]
            asset = draw(st.sampled_from(assets))
            amount = draw(st.sampled_from(["-5", "-0.5", "1", "25", "100"]))
            steps.append(
                {
                    "adjust": {
                        "member": draw(member),
                        "asset": asset,
                        "amount": amount,
                        "reason": "test",
                    }
                }
            )
        elif kind == "plan":
            steps.append({"plan": draw(plan_changes())})
        else:
            steps.append({"join": {"member": draw(st.sampled_from([*names, "late"]))}})
    if draw(st.booleans()):
        steps.append({"settle": {}})
    return {"name": "generated", "plan": draw(plans()), "steps": steps}
