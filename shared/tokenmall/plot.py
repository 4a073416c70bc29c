"""Plots: a scenario's timeline (``simulate --plot``) and a projection (``project --plot``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenmall.projection import ScenarioRun
from tokenmall.scenario import RunResult


def _say_no_data(ax: Any, text: str) -> None:
    """A grey note in the middle of an empty panel."""
    ax.text(
        0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="grey"
    )


def plot_timeline(result: RunResult, target: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    points = result.timeline
    days = [p.day for p in points]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    series: list[tuple[str, list[float | None]]] = [
        (
            "equity price (CNY/point)",
            [float(p.price) if p.price is not None else None for p in points],
        ),
        ("equity pool (CNY)", [float(p.pool) for p in points]),
        ("outstanding quota (CNY)", [float(p.outstanding_quota) for p in points]),
        ("released that day (CNY)", [float(p.released) for p in points]),
        # floats only for drawing: the values themselves are exact decimals
    ]
    for ax, (title, values) in zip(axes.flat, series, strict=True):
        ax.set_title(title, fontsize=10)
        if days and any(v is not None for v in values):
            ax.plot(
                days,
                [v if v is not None else float("nan") for v in values],
                marker="o",
                markersize=3,
            )
        else:
            _say_no_data(ax, "no data (no settlement, or no equity module)")
        ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    for ax in axes[1]:
        ax.set_xlabel("day")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{result.scenario.name}: per settled day")
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def plot_projection(runs: Mapping[str, ScenarioRun], target: Path) -> Path:
    """``tokenmall project --plot``: one column per scenario, the same rows for each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    fig, axes = plt.subplots(
        5, len(names), figsize=(5 * len(names), 15), squeeze=False, sharey="row"
    )
    for col, name in enumerate(names):
        run = runs[name]
        days = run.day
        money = axes[0][col]
        # floats only for drawing: the values themselves are exact cents
        money.plot(days, [v / 100 for v in run.outstanding], label="outstanding quota")
        money.plot(days, [v / 100 for v in run.inflow], label="pool inflow (cum.)")
        money.plot(days, [v / 100 for v in run.pool], label="equity pool")
        top = ", ".join(
            f"{k.removeprefix('top_')} {v:.0%}" for k, v in run.top_share.items() if v is not None
        )
        title = f"{name}: {run.definition}" + (f"\nreleased to the top {top}" if top else "")
        money.set_title(title, fontsize=9)
        money.set_ylabel("CNY")
        money.legend(fontsize=7)
        ratios = axes[1][col]
        ratios.plot(
            days,
            [o / s if s else float("nan") for o, s in zip(run.outstanding, run.sales, strict=True)],
            label="outstanding ÷ day's sales",
        )
        ratios.plot(
            days,
            [
                o / i if i else float("nan")
                for o, i in zip(run.outstanding, run.inflow, strict=True)
            ],
            label="outstanding ÷ pool inflow",
        )
        ratios.plot(
            days,
            [
                (p + o) / i if i else float("nan")
                for p, o, i in zip(run.paid, run.outstanding, run.inflow, strict=True)
            ],
            label="(paid + outstanding) ÷ pool inflow",
        )
        ratios.set_yscale("log")
        ratios.set_ylabel("ratio (×)")
        ratios.legend(fontsize=7)
        payback = axes[2][col]
        for level, curve in run.payback_curves.items():
            payback.plot(range(len(curve)), curve, label=f"paid back {level}")
        payback.set_ylabel("share of buyers")
        payback.set_xlabel("days since first order")
        payback.legend(fontsize=7)
        price = axes[3][col]
        if any(p is not None for p in run.price):
            prices = [p[0] / p[1] if p is not None else float("nan") for p in run.price]
            price.plot(days, prices, label="equity price (CNY/point)")
            price.set_ylabel("CNY / point")
            price.legend(fontsize=7)
        else:
            _say_no_data(price, "no equity module: no price")
        flows = axes[4][col]
        flows.plot(days, [v / 100 for v in run.released], label="released that day")
        flows.plot(days, [v / 100 for v in run.retained], label="retained (cum.)")
        flows.plot(days, [v / 100 for v in run.rounding], label="rounding (cum.)")
        flows.set_yscale("symlog")
        flows.set_ylabel("CNY")
        flows.set_xlabel("day")
        flows.legend(fontsize=7)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=90)
    plt.close(fig)
    return target
