"""Timeline plots of a simulated scenario (``tokenmall simulate --plot``)."""

from __future__ import annotations

from pathlib import Path

from tokenmall.scenario import RunResult


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
            ax.text(
                0.5,
                0.5,
                "no data (no settlement, or no equity module)",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=9,
                color="grey",
            )
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
