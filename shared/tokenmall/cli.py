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
dev_app = typer.Typer(
    help="The platform on this machine: Kafka + the four services.", no_args_is_help=True
)
app.add_typer(dev_app, name="dev")

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


@app.command("lint")
def lint_command(
    file: Annotated[Path, typer.Argument(help="plan YAML file (or a scenario with plan:)")],
    as_json: Annotated[bool, typer.Option("--json", help="print the findings as JSON")] = False,
    payback_days: Annotated[
        int, typer.Option("--payback-days", min=1, help="warn when a quota takes longer")
    ] = 1000,
    funding_rate: Annotated[
        str | None,
        typer.Option(
            "--funding-rate",
            help="funding of plans without pools, fraction of sales "
            "(default: equity pool_rate, else 0.30)",
        ),
    ] = None,
) -> None:
    """Check a plan: pyramid levels, funding at flat sales, payback, pools and tiers.

    Exit 0 clean, 1 warnings only, 2 errors (a parameter the engine refuses, or a file
    that cannot be read).
    """
    from tokenmall.lint import Finding, error, exit_code, lint_plan, parse_rate
    from tokenmall.scenario import load_yaml

    findings: list[Finding]
    try:
        rate = None if funding_rate is None else parse_rate(funding_rate)
    except ValueError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    try:
        document = load_yaml(file.read_text(encoding="utf-8"))
    except OSError as exc:
        findings = [error("file", f"cannot read {file}: {exc.strerror}", "file")]
    except ScenarioError as exc:
        findings = [error("file", str(exc), "file")]
    else:
        findings = lint_plan(document, payback_days=payback_days, funding_rate=rate)
    code = exit_code(findings)
    if as_json:
        payload = {
            "file": str(file),
            "status": ("clean", "warnings", "errors")[code],
            "exit_code": code,
            "findings": [f.as_dict() for f in findings],
        }
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    else:
        _print_findings(file, findings)
    raise typer.Exit(code)


def _print_findings(path: Path, findings: list[Any]) -> None:
    errors = sum(f.severity == "error" for f in findings)
    warnings = len(findings) - errors
    if not findings:
        out.print(f"[green]clean[/green] {escape(str(path))}: no findings")
        return
    table = Table(show_edge=False, pad_edge=False, show_lines=True)
    for column in ("severity", "parameter", "reason", "rule"):
        table.add_column(column, overflow="fold")
    for f in findings:
        colour = "red" if f.severity == "error" else "yellow"
        table.add_row(
            Text(f.severity, style=colour), Text(f.parameter), Text(f.reason), Text(f.rule or "")
        )
    out.print(table)
    out.print(f"{escape(str(path))}: {errors} error(s), {warnings} warning(s)")


@app.command("project")
def project_command(
    file: Annotated[Path, typer.Argument(help="plan YAML file (or a scenario with plan:)")],
    members: Annotated[int, typer.Option(min=1, help="synthetic members")] = 100_000,
    days: Annotated[int, typer.Option(min=1, help="days to simulate")] = 730,
    scenario: Annotated[
        list[str] | None,
        typer.Option("--scenario", help="growing, flat, declining (repeatable; default all)"),
    ] = None,
    start_rate: Annotated[
        float, typer.Option("--start-rate", help="fraction of members ordering on day 1")
    ] = 0.005,
    growth: Annotated[float, typer.Option(help="growing: daily growth of that fraction")] = 0.01,
    decline: Annotated[float, typer.Option(help="declining: daily decline")] = 0.01,
    max_rate: Annotated[
        float | None,
        typer.Option("--max-rate", help="growing: cap of the daily fraction (default 2 × start)"),
    ] = None,
    tree: Annotated[str, typer.Option(help="referral tree: preferential, random, none")] = (
        "preferential"
    ),
    sponsored: Annotated[float, typer.Option(help="share of members with a sponsor")] = 0.9,
    order_sizes: Annotated[
        str,
        typer.Option(
            "--order-sizes", help="CNY:WEIGHT,… or lognormal:MEDIAN:SIGMA (order amounts)"
        ),
    ] = "3000:60,9000:25,27000:10,51000:5",
    funding_rate: Annotated[
        str | None,
        typer.Option(
            "--funding-rate",
            help="plans without pools: stated funding, fraction of sales (default 0.30)",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed of the population and orders")] = 1,
    workers: Annotated[
        int | None, typer.Option(min=1, help="processes (default: one per scenario, ≤ cores)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the projection as JSON")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="draw the scenarios side by side to this PNG")
    ] = None,
) -> None:
    """Project a plan: what it promises against what comes in, over a synthetic population.

    Runs the rules engine itself for every day under growing, flat and declining
    sales.  Exit 0 on success, 2 when the plan or a setting cannot be used.
    """
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from tokenmall import projection as pj
    from tokenmall.engine import Plan
    from tokenmall.engine.plan import PlanError
    from tokenmall.lint import parse_rate
    from tokenmall.scenario import load_yaml

    def fail(message: str) -> typer.Exit:
        err.print(f"[red]error[/red] {escape(message)}", highlight=False)
        return typer.Exit(2)

    names = scenario or list(pj.SCENARIOS)
    try:
        unknown = [n for n in names if n not in pj.SCENARIOS]
        if unknown:
            raise pj.ProjectionError(
                f"scenario: {', '.join(unknown)} (known: {', '.join(pj.SCENARIOS)})"
            )
        rate = None if funding_rate is None else parse_rate(funding_rate)
        pop = pj.Population(
            members=members,
            tree=tree,
            sponsored=sponsored,
            order_sizes=pj.OrderSizes.parse(order_sizes),
            seed=seed,
        )
        sales = pj.Sales(start_rate=start_rate, growth=growth, decline=decline, max_rate=max_rate)
        raw = pj.plan_mapping(load_yaml(file.read_text(encoding="utf-8")))
        Plan.from_mapping(raw)  # refused before any progress is drawn
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror}") from None
    except PlanError as exc:
        raise fail(f"plan: {exc}") from None
    except (ValueError, ScenarioError) as exc:
        raise fail(str(exc)) from None
    started = time.perf_counter()
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=as_json,
        disable=not err.is_terminal and as_json,
    )
    with progress:
        tasks = {n: progress.add_task(f"{n} (days)", total=days) for n in names}
        try:
            runs = pj.project(
                raw,
                pop,
                sales,
                days,
                scenarios=names,
                funding_rate=rate,
                workers=workers,
                on_progress=lambda n, day: progress.update(tasks[n], completed=day),
            )
        except pj.ProjectionError as exc:
            raise fail(str(exc)) from None
    seconds = time.perf_counter() - started
    document = {
        "file": str(file),
        "settings": pj.settings_document(pop, sales, days),
        "seconds": round(seconds, 3),
        "scenarios": {n: pj.scenario_document(r) for n, r in runs.items()},
    }
    if plot is not None:
        from tokenmall.plot import plot_projection

        plot_projection(runs, plot)
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    else:
        _print_projection(document)
        if plot is not None:
            out.print(f"plot written to {escape(str(plot))}")


def _print_projection(document: dict[str, Any]) -> None:
    from tokenmall.projection import table_days

    settings = document["settings"]
    out.print(
        f"[bold]{escape(document['file'])}[/bold]: {settings['members']:,} members, "
        f"{settings['days']} days, tree {settings['tree']} "
        f"({settings['sponsored']:.0%} sponsored), "
        f"orders {escape(settings['order_sizes'])} — {document['seconds']:.1f} s",
        highlight=False,
    )

    def ratio(value: float | None) -> str:
        return "—" if value is None else f"{value:,.2f}×"

    def money(text: str) -> str:  # whole CNY with thousands separators, for reading
        return f"{int(text.partition('.')[0]):,}"

    def share(value: float | None) -> str:
        return "—" if value is None else f"{value:.1%}"

    def days_text(value: int | str) -> str:
        return f"{value} days" if isinstance(value, int) else value

    for name, doc in document["scenarios"].items():
        series = doc["series"]
        stated = doc["inflow"].startswith("stated")
        has_price = any(p is not None for p in series["equity_price"])
        # (title, series key, formatter); money shown in whole CNY (floored), JSON is exact
        columns: list[tuple[str, str, Any]] = [
            ("day", "day", str),
            ("orders", "orders", "{:,}".format),
            ("sales (day)", "sales", money),
            ("outstanding quota", "outstanding_quota", money),
            ("÷ day's sales", "outstanding_to_daily_sales", ratio),
            ("stated funding (cum.)" if stated else "pool inflow (cum.)", "pool_inflow", money),
            ("÷ inflow", "outstanding_to_pool_inflow", ratio),
            ("(paid + owed) ÷ inflow", "promised_to_pool_inflow", ratio),
            ("released (day)", "released", money),
        ]
        if has_price:
            columns += [
                ("equity price", "equity_price", str),
                ("equity pool", "equity_pool", money),
            ]
        columns += [
            ("retained (cum.)", "retained", money),
            ("rounding (cum.)", "rounding", money),
        ]
        table = Table(title=f"{name}: {doc['definition']}", title_justify="left", show_edge=False)
        for title, _, _ in columns:
            table.add_column(title, justify="right", overflow="fold")
        for day in table_days(doc["days"]):
            table.add_row(*(show(series[key][day - 1]) for _, key, show in columns))
        out.print(table)
        parts = [
            f"{level} median {days_text(p['p50'])}, p90 {days_text(p['p90'])}"
            for level, p in doc["payback_days"].items()
        ]
        out.print(
            f"  payback from first order ({doc['buyers']:,} buyers): " + "; ".join(parts),
            highlight=False,
        )
        top = doc["top_share_of_released"]
        totals = doc["totals"]
        out.print(
            f"  released to the top 1% {share(top['top_1%'])}, top 10% {share(top['top_10%'])}; "
            f"sales {money(totals['sales'])}, paid out {money(totals['paid_out'])}, "
            f"retained: pools {money(totals['retained_pools'])}, "
            f"accelerations past quota {money(totals['retained_unfunded'])}; "
            f"forced exits {totals['forced_exits']:,}",
            highlight=False,
        )
        out.print(f"  inflow = {doc['inflow']}", highlight=False)
        for note in doc["notes"]:
            out.print(f"  [yellow]note[/yellow] {escape(note)}", highlight=False)


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


@bench_app.command("project")
def bench_project_command(
    members: Annotated[int, typer.Option(help="synthetic members")] = 100_000,
    days: Annotated[int, typer.Option(help="days")] = 730,
    preset: Annotated[
        list[str] | None, typer.Option("--preset", help="presets to project (default all three)")
    ] = None,
) -> None:
    """``tokenmall project`` at its defaults per preset: wall time against the 60 s bound."""
    from tokenmall.bench import bench_project

    presets = tuple(preset) if preset else ("points", "cycle", "equity")
    result = bench_project(presets, members=members, days=days)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


@bench_app.command("platform")
def bench_platform_command(
    members: Annotated[int, typer.Option(help="members imported (a forest to depth 50)")] = 20_000,
    orders_single: Annotated[
        int, typer.Option(help="orders created and paid one by one, 32 at a time")
    ] = 2_000,
    orders_batch: Annotated[int, typer.Option(help="orders through orders:batch")] = 20_000,
    postgres: Annotated[
        bool, typer.Option("--postgres/--sqlite", help="the platform to start when none runs")
    ] = True,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
    preset: Annotated[
        str, typer.Option(help="the plan preset activated first (points, cycle, equity)")
    ] = "points",
) -> None:
    """A mall's traffic through the dev platform, end to end (JSON): import, orders one by
    one and in batches, a settlement, CPU per process kind, the raw floors of Kafka and
    PostgreSQL measured in the same run, and whether the result equals simulate.  Uses the
    running dev platform (it must be fresh: `tokenmall dev reset`), or starts one and
    stops it after."""
    from tokenmall.platform_bench import bench_platform

    result = bench_platform(
        members,
        orders_single,
        orders_batch,
        seed=seed,
        postgres=postgres,
        preset=preset,
        on_phase=lambda phase: err.print(f"[dim]bench:[/dim] {escape(phase)}"),
    )
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    if not result["equal_to_simulate"] or result["error_count"]:
        raise typer.Exit(1)


@app.command("events")
def events_command(
    as_json: Annotated[bool, typer.Option("--json", help="topics and event JSON Schemas")] = False,
    as_asyncapi: Annotated[
        bool, typer.Option("--asyncapi", help="the AsyncAPI 3.0 document (JSON)")
    ] = False,
) -> None:
    """The event catalogue: topics, their flows and every event's fields."""
    from tokenmall.contracts import catalogue

    if as_asyncapi:
        from tokenmall.asyncapi import document

        sys.stdout.write(json.dumps(document(), indent=2) + "\n")
        return
    data = catalogue()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    for topic in data["topics"]:
        out.print(f"[bold]{topic['topic']}[/bold]  {escape(topic['flow'])}")
    envelope = {"type", "event_id", "causation_id", "producer", "schema_version", "occurred_at"}
    for name, schema in data["events"].items():
        fields = [f for f in schema.get("properties", {}) if f not in envelope]
        out.print(f"  {name}: {', '.join(fields)}")


@app.command("openapi")
def openapi_command(
    service: Annotated[
        str | None,
        typer.Option("--service", help="one service's own document instead of the merged one"),
    ] = None,
    server: Annotated[
        str, typer.Option("--server", help="the gateway's URL, the document's server")
    ] = "/",
) -> None:
    """The platform's OpenAPI 3.1 document (JSON): the four services merged under
    /{service}/..., as the gateway (`tokenmall gateway`) serves them at one origin."""
    from tokenmall import openapi

    if service is not None:
        if service not in openapi.SERVICES:
            raise typer.BadParameter(
                f"one of {', '.join(openapi.SERVICES)}", param_hint="--service"
            )
        doc = openapi.service_documents()[service]
    else:
        doc = openapi.platform_document(server)
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


@app.command("gateway")
def gateway_command(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8100,
) -> None:
    """Serve the platform at one origin: /{service}/... forwarded to that service, the
    merged OpenAPI document at /openapi.json, Swagger UI at /docs, ReDoc at /redoc.
    Services are found as every command finds them (TOKENMALL_<NAME>_URL, else the dev
    platform, else the default ports)."""
    import uvicorn

    from tokenmall.devenv import service_urls
    from tokenmall.gateway import build_gateway

    urls = service_urls()
    out.print("gateway: " + ", ".join(f"/{name}/ → {url}" for name, url in urls.items()))
    uvicorn.run(build_gateway(urls), host=host, port=port, log_level="warning")


@app.command("parked")
def parked_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="print the parked events as JSON")
    ] = False,
    limit: Annotated[
        int, typer.Option(min=1, max=1000, help="at most this many per service")
    ] = 100,
) -> None:
    """Events parked in each service until what they depend on arrives (oldest first).

    Exit 0 when nothing is parked, 1 when something is, 3 when a service cannot be asked.
    """
    import httpx

    from tokenmall.devenv import service_urls

    items: list[dict[str, Any]] = []
    totals: dict[str, int] = {}
    for name, url in service_urls().items():
        try:
            response = httpx.get(f"{url}/v1/parked", params={"limit": limit}, timeout=10)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            err.print(f"{name} at {url}: {exc}")
            raise typer.Exit(3) from None
        page = response.json()
        totals[name] = int(page["total"])
        items.extend(page["items"])
    if as_json:
        sys.stdout.write(json.dumps({"totals": totals, "items": items}, indent=2) + "\n")
    else:
        for name, total in totals.items():
            out.print(f"[bold]{name}[/bold]: {total} parked")
        for item in items:
            out.print(
                f"  #{item['id']} {item['service']} {item['consumer']} {item['event_type']} "
                f"key={escape(item['key'])} waiting for {escape(item['waiting_for'])} "
                f"since {item['parked_at']} (attempts {item['attempts']})"
            )
    raise typer.Exit(1 if any(totals.values()) else 0)


def _migration_targets(services: list[str], database_url: str | None) -> list[tuple[str, str]]:
    """(service, database URL) for ``tokenmall migrate``: ``--database-url`` (one service),
    else TOKENMALL_DATABASE_URL (one service), else the dev platform's databases."""
    import os

    from tokenmall import devenv, migrations

    for name in services:
        if name not in migrations.SERVICES:
            raise typer.BadParameter(f"one of {', '.join(migrations.SERVICES)}", param_hint=name)
    url = database_url or os.environ.get("TOKENMALL_DATABASE_URL") or None
    if url is not None:
        if len(services) != 1:
            raise typer.BadParameter(
                "a database URL is one service's: name exactly one SERVICE",
                param_hint="--database-url",
            )
        return [(services[0], url)]
    platform = devenv._platform(devenv.load_state())
    known = platform.get("services", {})
    wanted = services or list(migrations.SERVICES)
    missing = [name for name in wanted if not known.get(name, {}).get("database")]
    if missing:
        raise typer.BadParameter(
            f"no dev platform database for {', '.join(missing)} (tokenmall dev up): "
            "name one SERVICE and give its --database-url",
            param_hint="--database-url",
        )
    return [(name, str(known[name]["database"])) for name in wanted]


def _format_revision(path: Path) -> None:
    """ruff (from the venv, when there) tidies what Alembic wrote."""
    import subprocess

    ruff = Path(sys.executable).with_name("ruff")
    if ruff.exists():
        subprocess.run([str(ruff), "check", "--fix", "-q", str(path)], capture_output=True)
        subprocess.run([str(ruff), "format", "-q", str(path)], capture_output=True)


import_app = typer.Typer(help="Bulk imports into the running platform.", no_args_is_help=True)
app.add_typer(import_app, name="import")


@import_app.command("members")
def import_members_command(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="CSV with a header: member,sponsor,merchant (sponsors before their referrals)",
        ),
    ],
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="members per request")] = 5000,
    referrals_url: Annotated[
        str | None, typer.Option(help="referrals' base URL (default: the dev platform's)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Register the members of FILE in batches, each all or nothing; run it again after an
    interruption or a fixed row and it goes on after the rows done (FILE.progress)."""
    from tokenmall import devenv, imports

    url = referrals_url or devenv.service_urls()["referrals"]
    _run_import(imports.import_members, file, url, batch, json_out, "registered")


@import_app.command("orders")
def import_orders_command(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="CSV with a header: order_id,member,amount,stable (stable optional): "
            "orders the mall has been paid for",
        ),
    ],
    batch: Annotated[int, typer.Option(min=1, max=1000, help="orders per request")] = 1000,
    orders_url: Annotated[
        str | None, typer.Option(help="orders' base URL (default: the dev platform's)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Create and pay the orders of FILE in batches (POST /v1/orders:batch), each all or
    nothing; run it again after an interruption or a fixed row and it goes on after the
    rows done (FILE.progress).  The rules' verdicts follow on each order."""
    from tokenmall import devenv, imports

    url = orders_url or devenv.service_urls()["orders"]
    _run_import(imports.import_orders, file, url, batch, json_out, "paid")


def _run_import(run: Any, file: Path, url: str, batch: int, json_out: bool, taken: str) -> None:
    """A CSV import with a progress bar; exit 1 for a bad row, 2 when interrupted."""
    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from tokenmall.imports import BadRow, Interrupted, count_rows

    total = count_rows(file)
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with (
        httpx.Client(base_url=url, timeout=300) as client,
        Progress(*columns, console=err, transient=json_out) as bar,
    ):
        task = bar.add_task(file.name, total=total)
        try:
            report = run(file, client, batch, on_batch=lambda rows: bar.advance(task, rows))
        except BadRow as exc:
            err.print(f"[red]refused[/red] {escape(str(exc))}")
            raise typer.Exit(1) from None
        except Interrupted as exc:
            err.print(f"[yellow]interrupted[/yellow] {escape(str(exc))}")
            raise typer.Exit(2) from None
    doc = report.as_json()
    if json_out:
        out.print_json(data=doc)
    else:
        unit = report.unit
        out.print(
            f"{doc['created']:,} {unit} {taken}, {doc['existing']:,} there already, "
            f"{doc['skipped']:,} done before; {doc['seconds']} s "
            f"({doc[unit + '_per_second']:,} {unit}/s)",
            highlight=False,
        )


@app.command("migrate")
def migrate_command(
    services: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SERVICE",
            help="orders, wallet, dividends, referrals [default: all four]",
            show_default=False,
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="the database of the one SERVICE named "
            "[default: TOKENMALL_DATABASE_URL, else the dev platform's]",
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="change nothing: exit 1 unless every one is at head")
    ] = False,
    new: Annotated[
        str | None,
        typer.Option(
            "--new",
            metavar="MESSAGE",
            help="write SERVICE's next revision: its tables.py against its head "
            "(autogenerated on a scratch SQLite database, or on --database-url)",
        ),
    ] = None,
) -> None:
    """Upgrade each service's database to the head of its migrations and print what it did.

    Services refuse to start on a database that is not at head.  Exit 0: done (or at
    head); 1: a database not at head (--check) or a migration that failed; 2: bad usage.
    """
    from tokenmall import migrations

    names = list(services or [])
    if new is not None:
        if len(names) != 1 or check:
            raise typer.BadParameter("--new writes one service's revision: name one SERVICE")
        try:
            path = migrations.new_revision(names[0], new, database_url)
        except migrations.MigrationError as exc:
            err.print(f"[red]{names[0]}[/red]: {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None
        _format_revision(path)
        out.print(f"{names[0]}: wrote {escape(str(path))}", highlight=False)
        out.print(
            "  read it: autogenerate does not see sequences, data changes or server defaults; "
            "the schema test (tests/unit/test_migrations.py) checks it against tables.py",
            highlight=False,
        )
        return
    failed = False
    for name, url in _migration_targets(names, database_url):
        where = escape(migrations.shown(url))
        try:
            if check:
                state = migrations.status(name, url)
                verdict = "ok" if state.at_head else "[red]not at head[/red]"
                out.print(f"{name:<10} {where}  {state.describe()}: {verdict}", highlight=False)
                failed |= not state.at_head
            else:
                outcome = migrations.upgrade(name, url)
                out.print(f"{name:<10} {where}  {escape(outcome.describe())}", highlight=False)
        except Exception as exc:  # a database that cannot be reached or migrated
            err.print(f"[red]{name}[/red] {where}: {escape(str(exc))}", highlight=False)
            failed = True
    if failed:
        raise typer.Exit(1)


@app.command("replay")
def replay_command(
    files: Annotated[list[Path], typer.Argument(help="scenario YAML file(s)")],
    as_json: Annotated[
        bool, typer.Option("--json", help="print the result document as JSON")
    ] = False,
    reset: Annotated[bool, typer.Option(help="give each file a fresh platform (dev reset)")] = True,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare", help="also simulate and fail unless both documents are identical"
        ),
    ] = False,
) -> None:
    """Run scenario files through the running services (tokenmall dev up) and check them."""
    import asyncio

    import httpx

    from tokenmall import devenv
    from tokenmall.replay import Platform, PlatformError, replay

    documents: dict[str, Any] = {}
    failed = False
    for index, path in enumerate(files):
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            err.print(f"[red]error[/red] {escape(str(path))}: {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None
        has_dev_platform = bool(devenv.load_state().get("services"))
        if reset and has_dev_platform and (index > 0 or not _platform_is_fresh()):
            devenv.reset()

        async def run(scenario: Any = scenario) -> Any:
            platform = Platform(devenv.service_urls())
            try:
                return await replay(scenario, platform)
            finally:
                await platform.close()

        try:
            result = asyncio.run(run())
        except StepFailed as exc:
            err.print(f"[red]error[/red] {escape(str(path))}: {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None
        except (PlatformError, devenv.DevError, OSError, httpx.HTTPError) as exc:
            err.print(
                f"[red]platform error[/red] {escape(str(path))}: {escape(str(exc))}",
                highlight=False,
            )
            raise typer.Exit(3) from None
        documents[str(path)] = result.document
        if not as_json:
            out.print(
                f"[bold]{escape(scenario.name)}[/bold] replayed through the services in "
                f"{result.seconds:.1f} s"
            )
        for failure in result.failures:
            err.print(
                f"[red]check failed[/red] {escape(str(path))}: {escape(failure)}", highlight=False
            )
        failed |= not result.ok
        if compare:
            expected = simulate(scenario).document
            if expected != result.document:
                err.print(f"[red]differs from simulate[/red] {escape(str(path))}", highlight=False)
                failed = True
            elif not as_json:
                out.print("  identical to tokenmall simulate")
        if not as_json and scenario.checks:
            passed = len(scenario.checks) - len(result.failures)
            out.print(f"  checks: {passed}/{len(scenario.checks)} passed")
    if as_json:
        payload = next(iter(documents.values())) if len(files) == 1 else documents
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    if failed:
        raise typer.Exit(1)


def _platform_is_fresh() -> bool:
    import asyncio

    from tokenmall import devenv
    from tokenmall.replay import Platform

    async def check() -> bool:
        platform = Platform(devenv.service_urls())
        try:
            return await platform.is_fresh()
        except Exception:
            return False
        finally:
            await platform.close()

    return asyncio.run(check())


def _dev_failed(command: str, exc: Exception) -> typer.Exit:
    err.print(f"[red]dev {command} failed[/red]: {escape(str(exc))}", highlight=False)
    return typer.Exit(1)


def _dev_notes(state: dict[str, Any]) -> None:
    for note in state.get("notes", []):
        err.print(f"[yellow]note[/yellow]: {escape(note)}", highlight=False)


def _dev_summary(state: dict[str, Any], what: str) -> None:
    backend = "postgresql" if state["run"].get("postgres") else "sqlite"
    out.print(
        f"kafka {state['kafka']['bootstrap']}; run {state['run']['id']} {what} ({backend}, "
        f"topic prefix {state['run']['prefix']})"
    )
    from tokenmall import devenv

    for name, index, info in devenv.processes(state):
        label = name if index == 0 else f"{name} #{index}"
        out.print(f"  {label:<12} {info['url']}  pid {info['pid']}  log {escape(info['log'])}")


def _service_name(name: str) -> str:
    from tokenmall.replay import SERVICES

    if name not in SERVICES:
        raise typer.BadParameter(f"one of {', '.join(SERVICES)}", param_hint="NAME")
    return name


ServiceName = Annotated[
    str, typer.Argument(help="orders, wallet, dividends or referrals", callback=_service_name)
]
ProcessIndex = Annotated[
    int | None,
    typer.Option("--index", min=0, help="only process #I of a scaled service (0: the first)"),
]
Backend = Annotated[
    bool | None,
    typer.Option(
        "--postgres/--sqlite", help="PostgreSQL or SQLite [default: as the last run, else SQLite]"
    ),
]


@dev_app.command("up")
def dev_up(postgres: Backend = None) -> None:
    """Start Kafka and the four services in the background; returns when all are healthy.

    Resumes the last run when its databases exist (same databases, topic prefix and
    ports; after a crash or a dev down too); a new run only when there is none, its
    databases are gone or the database kind changes.  A failed up leaves nothing running.
    """
    from tokenmall import devenv

    try:
        state = devenv.up(postgres=postgres)
    except devenv.DevError as exc:
        raise _dev_failed("up", exc) from None
    _dev_notes(state)
    _dev_summary(state, "up")


@dev_app.command("reset")
def dev_reset(postgres: Backend = None) -> None:
    """A fresh run: new databases and a new topic prefix, on the run's ports, each service
    with as many processes as before (Kafka keeps running)."""
    from tokenmall import devenv

    try:
        state = devenv.reset(postgres=postgres)
    except devenv.DevError as exc:
        raise _dev_failed("reset", exc) from None
    _dev_notes(state)
    _dev_summary(state, "ready")


@dev_app.command("down")
def dev_down() -> None:
    """Stop the services, Kafka and PostgreSQL (the run is kept: dev up resumes it)."""
    from tokenmall import devenv

    devenv.down()
    out.print("stopped")


@dev_app.command("restart")
def dev_restart(name: ServiceName, index: ProcessIndex = None) -> None:
    """Restart one service (each of its processes, or --index I) on the same database,
    topics and port; returns when it is ready."""
    from tokenmall import devenv

    try:
        restarted = devenv.restart(name, index)
    except devenv.DevError as exc:
        raise _dev_failed("restart", exc) from None
    for info in restarted:
        out.print(f"{name} restarted: {info['url']}  pid {info['pid']}")


@dev_app.command("kill")
def dev_kill(name: ServiceName, index: ProcessIndex = None) -> None:
    """SIGKILL to one service (each of its processes, or --index I), for fault tests:
    dev status then reports it dead; dev restart or dev up brings it back."""
    from tokenmall import devenv

    try:
        pids = devenv.kill(name, index)
    except devenv.DevError as exc:
        raise _dev_failed("kill", exc) from None
    out.print(f"{name}: killed {', '.join(map(str, pids)) or 'nothing (not running)'}")


@dev_app.command("scale")
def dev_scale(
    name: ServiceName,
    count: Annotated[int, typer.Argument(help="how many processes (1-16)", min=1, max=16)],
) -> None:
    """Run COUNT processes of one service on the same database, topics and broker, each
    on its own port (new ones waited for; extra ones stopped)."""
    from tokenmall import devenv

    try:
        running = devenv.scale(name, count)
    except devenv.DevError as exc:
        raise _dev_failed("scale", exc) from None
    for index, info in enumerate(running):
        out.print(f"  {name} #{index}  {info['url']}  pid {info['pid']}")


@dev_app.command("status")
def dev_status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Every process of the platform (service, pid, url, alive, role), Kafka and
    PostgreSQL; exits 1 when anything is down or nothing runs."""
    from tokenmall import devenv

    report = devenv.status()
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        run = report["run"]
        if run is None:
            out.print("no platform (tokenmall dev up)")
        else:
            state = "stopped" if report["stopped"] else ("up" if report["ok"] else "DOWN")
            out.print(f"run {run['id']} (prefix {run['prefix']}): {state}")
        for part in ("kafka", "postgres"):
            if report[part]:
                where = report[part].get("bootstrap") or report[part].get("dir")
                alive = "alive" if report[part]["alive"] else "[red]dead[/red]"
                out.print(f"  {part:<10} {escape(str(where))}  {alive}")
        table = Table("service", "#", "pid", "url", "alive", "healthy", "role")
        for p in report["processes"]:
            table.add_row(
                p["service"],
                str(p["index"]),
                str(p["pid"] or "-"),
                p["url"],
                "yes" if p["alive"] else "[red]no[/red]",
                "yes" if p["healthy"] else "[red]no[/red]",
                p["role"] or "-",
            )
        if report["processes"]:
            out.print(table)
    if not report["ok"]:
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
