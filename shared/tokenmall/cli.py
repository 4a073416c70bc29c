"""The ``tokenmall`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tokenmall.scenario import RunResult, ScenarioError, StepFailed, load_scenario, simulate

app = typer.Typer(
    help="tokenmall: consumption-appreciation points platform.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks (print JSON).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

# Piped output (CI logs, files) gets a wide fixed width instead of rich's 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


@app.command("simulate")
def simulate_command(
    files: Annotated[list[Path], typer.Argument(help="scenario YAML file(s)", exists=False)],
    as_json: Annotated[
        bool, typer.Option("--json", help="print the result document as JSON")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="draw the timeline to this PNG")
    ] = None,
) -> None:
    """Run scenario files on the rules engine in one process and evaluate their checks."""
    documents: dict[str, Any] = {}
    failed = False
    for path in files:
        try:
            result = simulate(load_scenario(path))
        except ScenarioError as exc:
            err.print(f"[red]error[/red] {escape(str(path))}: {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None
        except StepFailed as exc:
            err.print(f"[red]error[/red] {escape(str(path))}: {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None
        documents[str(path)] = result.document
        if not as_json:
            _print_summary(path, result)
        for failure in result.failures:
            err.print(
                f"[red]check failed[/red] {escape(str(path))}: {escape(failure)}", highlight=False
            )
        failed |= not result.ok
        if plot is not None:
            target = (
                plot if len(files) == 1 else plot.with_name(f"{plot.stem}-{path.stem}{plot.suffix}")
            )
            from tokenmall.plot import plot_timeline

            plot_timeline(result, target)
            if not as_json:
                out.print(f"plot written to {escape(str(target))}")
    if as_json:
        payload = next(iter(documents.values())) if len(files) == 1 else documents
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    if failed:
        raise typer.Exit(1)


def _print_summary(path: Path, result: RunResult) -> None:
    doc = result.document
    eq, platform = doc["equity"], doc["platform"]
    out.print(
        f"[bold]{escape(result.scenario.name)}[/bold] ({escape(str(path))}) — day {doc['day']}, "
        f"{len(result.scenario.steps)} steps"
    )
    if eq["price"] is not None:
        out.print(
            f"  equity: price {eq['price']}  pool {eq['pool']}  circulating {eq['circulating']}"
            f"  treasury {eq['treasury']}  minted {eq['minted']}"
        )
    out.print(
        f"  platform: sales {platform['sales']}  retained {platform['retained']}"
        f"  rounding {platform['rounding']}"
    )
    members = doc["members"]
    if members:
        table = Table(show_edge=False, pad_edge=False)
        for column in (
            "member",
            "cny",
            "stable",
            "equity",
            "quota",
            "spend",
            "shares",
            "star",
            "released",
        ):
            table.add_column(
                column, justify="left" if column in ("member", "released") else "right"
            )
        shown = list(members.items())
        for name, m in shown[:40]:
            released = " ".join(f"{k}={v}" for k, v in m["released"].items())
            table.add_row(
                Text(name),
                m["cny"],
                m["stable"],
                m["equity"],
                m["quota_remaining"],
                m["spend"],
                str(m["shares"]),
                str(m["star"]),
                Text(released),
            )
        out.print(table)
        if len(shown) > 40:
            out.print(f"  … and {len(shown) - 40} more members (use --json for all)")
    checks = result.scenario.checks
    if checks:
        passed = len(checks) - len(result.failures)
        colour = "green" if result.ok else "red"
        out.print(f"  checks: [{colour}]{passed}/{len(checks)} passed[/{colour}]")


@bench_app.command("engine")
def bench_engine_command(
    members: Annotated[int, typer.Option(help="population size")] = 1_000_000,
    orders: Annotated[int, typer.Option(help="orders through the equity module")] = 200_000,
    max_depth: Annotated[int, typer.Option(help="deepest referral chain")] = 50,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (the default)")] = True,
) -> None:
    """In-process settlement of a generated population, and orders/s through the equity module."""
    from tokenmall.bench import bench_engine

    result = bench_engine(members=members, orders=orders, max_depth=max_depth, seed=seed)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
