"""``tokenmall bench engine``: in-process engine throughput on a generated population.

Prints raw measurements plus a ceiling measured in the same run (one plain
NumPy pass over the same grant arrays), so ratios stay honest on a noisy machine.
"""

from __future__ import annotations

import gc
import platform
import time
from typing import Any

import numpy as np

from tokenmall.engine import Engine, Plan
from tokenmall.engine.plan import PRESETS

# Every module at once: grants with tiers and a daily base, the equity pool, pools
# by shares (pro rata and tiers), by contribution and by equity points, referral, team.
ALL_PRESETS_PLAN: dict[str, Any] = {
    "preset": "points",  # grants with amount tiers and a daily base, referral, team
    "grants": {
        "tiers": [{"threshold": 0, "multiple": 2}, *PRESETS["points"]["grants"]["tiers"]],
        "daily_rate": PRESETS["points"]["grants"]["daily_rate"],
    },
    "equity": PRESETS["equity"]["equity"],
    "weights": {
        "share_unit": 1000,
        "referral_share_rate": "0.5",
        "contribution_unit": 500,
        "referral_contribution_rate": "0.2",
    },
    "pools": [  # the cycle preset's pools, plus pools by contribution and by equity points
        *PRESETS["cycle"]["pools"],
        {"name": "contribution", "rate": "0.05", "split": "pro_rata", "weight": "contribution"},
        {"name": "dividend", "rate": "0.05", "split": "pro_rata", "weight": "equity_points"},
    ],
}

ORDER_AMOUNTS_CNY = np.array([100, 300, 500, 1000, 3000, 9000, 27000, 51000])
ORDER_AMOUNT_WEIGHTS = np.array([0.25, 0.2, 0.15, 0.15, 0.12, 0.08, 0.04, 0.01])


def random_forest(members: int, max_depth: int, rng: np.random.Generator) -> list[int]:
    """A random referral forest: each member's sponsor is an earlier member (1% are roots).

    Half the sponsors are any earlier member, half one of the last thousand to join,
    which grows long chains, so that many walks reach the depth limit.
    """
    index = np.arange(members)
    anyone = (rng.random(members) * index).astype(np.int64)
    recent = index - 1 - (rng.random(members) * np.minimum(index, 1000)).astype(np.int64)
    candidates = np.where(rng.random(members) < 0.5, anyone, np.maximum(recent, 0))
    roots = rng.random(members) < 0.01
    parent = [-1] * members
    depth = [0] * members
    cand = candidates.tolist()
    root = roots.tolist()
    for i in range(1, members):
        p = cand[i]
        if root[i] or depth[p] >= max_depth:
            continue
        parent[i] = p
        depth[i] = depth[p] + 1
    return parent


def build_population(members: int, max_depth: int, seed: int) -> tuple[Engine, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    plan = Plan.from_mapping(ALL_PRESETS_PLAN)
    parent = random_forest(members, max_depth, rng)
    probabilities = ORDER_AMOUNT_WEIGHTS / ORDER_AMOUNT_WEIGHTS.sum()
    amounts = rng.choice(ORDER_AMOUNTS_CNY, size=(members, 2), p=probabilities) * 100
    grant_member = np.repeat(np.arange(members), 2)
    flat = amounts.reshape(-1)
    quota = np.zeros_like(flat)
    for tier in plan.grants.tiers:
        hit = flat >= tier.threshold
        quota[hit] = flat[hit] * tier.multiple.numerator // tier.multiple.denominator
    # a grant is part released already: remaining between 20% and 100% of quota
    remaining = quota * rng.integers(20, 101, size=flat.size) // 100
    daily = plan.grants.daily_rate
    assert daily is not None
    base = flat * daily.numerator // daily.denominator
    spend = amounts.sum(axis=1)
    points = rng.integers(0, 50 * 10**8, size=members)  # up to 50 points each
    pool = int(points.sum()) * 4 // 10**6  # price about 4 CNY per point
    engine = Engine(plan)
    engine.bulk_load(
        names=[f"m{i}" for i in range(members)],
        parent=parent,
        spend=spend.tolist(),
        grant_member=grant_member.tolist(),
        grant_remaining=remaining.tolist(),
        grant_base=base.tolist(),
        points=points.tolist(),
        pool=pool,
    )
    engine.paid_today = int(spend.sum()) // 100  # the day's sales: 1% of lifetime spend
    depth = np.asarray(engine.depth)
    return engine, {
        "grants": int(flat.size),
        "max_tree_depth": int(depth.max()),
        "daily_sales_cny": engine.paid_today // 100,
    }


def bench_settlement(members: int, max_depth: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    engine, info = build_population(members, max_depth, seed)
    setup = time.perf_counter() - t0
    # ceiling: one plain NumPy pass over the same grant arrays (min + group sum)
    rem = np.asarray(engine.grant_remaining, dtype=np.int64)
    base = np.asarray(engine.grant_base, dtype=np.int64)
    owner = np.asarray(engine.grant_member, dtype=np.int64)
    t0 = time.perf_counter()
    released = np.minimum(base, rem)
    np.bincount(owner, weights=released, minlength=members)
    numpy_pass = time.perf_counter() - t0
    gc.collect()
    t0 = time.perf_counter()
    report = engine.settle()
    settle = time.perf_counter() - t0
    return {
        **info,
        "setup_seconds": round(setup, 3),
        "settle_seconds": round(settle, 3),
        "numpy_pass_seconds": round(numpy_pass, 4),
        "settle_to_numpy_pass_ratio": round(settle / numpy_pass, 1) if numpy_pass else None,
        "members_released": report.members_released,
        "members_released_per_second": round(report.members_released / settle),
        "released_cny": {k: v // 100 for k, v in report.released.items()},
        "forced_exits_at_settlement": len(report.exits),
    }


def bench_orders(orders: int, members: int, seed: int) -> dict[str, Any]:
    """Orders through the equity module (equity preset: forced exits on)."""
    rng = np.random.default_rng(seed + 1)
    engine = Engine(Plan.from_mapping({"preset": "equity"}))
    names = [f"b{i}" for i in range(members)]
    for i, name in enumerate(names):
        engine.join(name, names[i // 2] if i else None)
    buyers = rng.integers(0, members, size=orders).tolist()
    probabilities = ORDER_AMOUNT_WEIGHTS / ORDER_AMOUNT_WEIGHTS.sum()
    amounts = (rng.choice(ORDER_AMOUNTS_CNY, size=orders, p=probabilities) * 100).tolist()
    sells = set(rng.choice(orders, size=orders // 50, replace=False).tolist())
    gc.collect()
    t0 = time.perf_counter()
    for k, (b, amount) in enumerate(zip(buyers, amounts, strict=True)):
        engine.order(names[b], amount)
        if k in sells and engine.points[b] > 0:
            engine.sell(names[b], engine.points[b] // 2 or None)
    elapsed = time.perf_counter() - t0
    price = engine.price()
    return {
        "orders": orders,
        "order_members": members,
        "orders_seconds": round(elapsed, 3),
        "orders_per_second": round(orders / elapsed),
        "sells": len(sells),
        "forced_exits": len(engine.exits),
        "final_price": f"{float(price):.4f}",
    }


def bench_engine(
    members: int = 1_000_000, orders: int = 200_000, max_depth: int = 50, seed: int = 7
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "engine",
        "machine": {"python": platform.python_version(), "numpy": np.__version__},
        "members": members,
        "max_depth_limit": max_depth,
    }
    result.update(bench_settlement(members, max_depth, seed))
    result.update(bench_orders(orders, max(1000, min(members, 100_000)), seed))
    result["targets"] = {
        "settle_seconds_max": 10,
        "orders_per_second_min": 20000,
        "settle_ok": result["settle_seconds"] <= 10,
        "orders_ok": result["orders_per_second"] >= 20000,
    }
    return result


def bench_project(
    presets: tuple[str, ...] = ("points", "cycle", "equity"),
    members: int = 100_000,
    days: int = 730,
) -> dict[str, Any]:
    """``tokenmall project`` at its defaults for each preset: wall time against the 60 s bound.

    The same-run reference is the serial sum of the scenarios' own run times (what
    one process would take), so ``parallel_speedup`` is measured, not assumed.
    """
    import os

    from tokenmall import projection as pj

    result: dict[str, Any] = {
        "benchmark": "project",
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
        },
        "members": members,
        "days": days,
        "presets": {},
    }
    for preset in presets:
        t0 = time.perf_counter()
        runs = pj.project({"preset": preset}, pj.Population(members=members), pj.Sales(), days)
        wall = time.perf_counter() - t0
        serial = sum(r.seconds for r in runs.values())
        result["presets"][preset] = {
            "wall_seconds": round(wall, 2),
            "scenario_seconds": {n: round(r.seconds, 2) for n, r in runs.items()},
            "orders": {n: sum(r.orders) for n, r in runs.items()},
            "serial_seconds": round(serial, 2),
            "parallel_speedup": round(serial / wall, 2),
            "settlements_per_second": round(len(runs) * days / wall, 1),
        }
    worst = max(p["wall_seconds"] for p in result["presets"].values())
    result["targets"] = {"wall_seconds_max": 60, "ok": worst <= 60}
    return result
