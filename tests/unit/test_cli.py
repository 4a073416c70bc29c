"""The ``tokenmall`` command line: ``simulate`` (summary, --json, --plot, exit codes) and
``bench engine``.

The installed console script is run as a subprocess (the real entry point); most
cases also go through typer's CliRunner on ``tokenmall.cli.app``, which is faster.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tokenmall.cli import app

TOKENMALL = Path(sys.executable).parent / "tokenmall"
SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
ALL_SCENARIOS = sorted(SCENARIOS.glob("*.yaml"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

runner = CliRunner()


def tokenmall(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert TOKENMALL.is_file(), f"console script missing: {TOKENMALL}"
    return subprocess.run(
        [str(TOKENMALL), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def invoke(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Collapse whitespace (rich may wrap long lines)."""
    return " ".join(text.split())


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def lookup(doc: Any, path: str) -> Any:
    """Dotted path into the result document (member names here contain no dots)."""
    node = doc
    parts = path.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif i == len(parts) - 1 and i > 0 and parts[i - 1] == "released":
            return "0"
        else:
            raise KeyError(path)
    return node


# ---------------------------------------------------------------- passing scenarios


def test_console_script_summary_for_a_passing_scenario() -> None:
    proc = tokenmall("simulate", SCENARIOS / "seed-points-release.yaml")
    assert proc.returncode == 0, proc.stderr
    out = flat(proc.stdout)
    assert "seed-points-release" in out
    assert "day 3, 7 steps" in out
    assert "platform: sales 15000.00 retained 0.00 rounding 0.00" in out
    assert "checks: 5/5 passed" in out
    # one row per member with its values
    assert "34284.00" in out and "7428.00" in out
    assert "base=180.00 gen1=36.00" in out
    assert "check failed" not in proc.stderr
    assert not proc.stdout.lstrip().startswith("{")  # a summary, not JSON


def test_summary_shows_equity_line_only_with_the_equity_module() -> None:
    with_equity = invoke("simulate", SCENARIOS / "rules-exchange-merchant.yaml")
    assert with_equity.exit_code == 0, with_equity.stderr
    out = flat(with_equity.stdout)
    assert "equity: price 1.68067226 pool 60.00 circulating 35.33500000" in out
    assert "treasury 0.36500000 minted 35.70000000" in out
    without = invoke("simulate", SCENARIOS / "seed-points-release.yaml")
    assert without.exit_code == 0
    assert "equity: price" not in without.stdout


@pytest.mark.parametrize("path", ALL_SCENARIOS, ids=[p.stem for p in ALL_SCENARIOS])
def test_every_shipped_scenario_passes_and_its_json_meets_its_checks(path: Path) -> None:
    checks = yaml.safe_load(path.read_text(encoding="utf-8")).get("checks") or []
    summary = invoke("simulate", path)
    assert summary.exit_code == 0, summary.stderr
    if checks:
        assert f"checks: {len(checks)}/{len(checks)} passed" in flat(summary.stdout)
    as_json = invoke("simulate", "--json", path)
    assert as_json.exit_code == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    # the checks, evaluated independently of the CLI's own checker
    for check in checks:
        actual = lookup(doc, check["path"])
        if "equals" in check:
            if check["equals"] is None:
                assert actual is None, check
            else:
                assert Decimal(str(actual)) == Decimal(str(check["equals"])), (check, actual)
        else:
            diff = abs(Decimal(str(actual)) - Decimal(str(check["approx"])))
            assert diff <= Decimal(str(check["tol"])), (check, actual)


# ---------------------------------------------------------------- --json document

MEMBER_AMOUNTS = ("cny", "stable", "equity", "quota_remaining", "spend", "team_performance")
MEMBER_INTS = ("shares", "contribution", "star")


def assert_document_shape(doc: dict[str, Any]) -> None:
    assert isinstance(doc["day"], int) and doc["day"] >= 1
    for key in ("price", "pool", "circulating", "treasury", "minted"):
        assert key in doc["equity"]
    for key in ("retained", "rounding", "sales"):
        Decimal(doc["platform"][key])  # a decimal string
        assert isinstance(doc["platform"][key], str)
    assert doc["members"], "no members"
    for member in doc["members"].values():
        for key in MEMBER_AMOUNTS:
            assert isinstance(member[key], str), key
            Decimal(member[key])
        for key in MEMBER_INTS:
            assert isinstance(member[key], int), key
        assert isinstance(member["released"], dict)
        for value in member["released"].values():
            Decimal(value)


def test_console_script_json_document() -> None:
    proc = tokenmall("simulate", "--json", SCENARIOS / "rules-exchange-merchant.yaml")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # nothing but the document on stdout
    assert_document_shape(doc)
    assert doc["day"] == 1  # no settlement
    assert abs(Decimal(doc["equity"]["price"]) - Decimal("1.68067226")) <= Decimal("1e-8")
    assert Decimal(doc["equity"]["treasury"]) == Decimal("0.365")
    assert Decimal(doc["equity"]["minted"]) == Decimal("35.7")
    assert sorted(doc["members"]) == ["A", "B", "M"]
    m = doc["members"]["M"]
    assert Decimal(m["equity"]) == Decimal("19.635")
    assert Decimal(m["stable"]) == 7
    assert Decimal(doc["members"]["A"]["quota_remaining"]) == Decimal("166.38")


def test_json_without_equity_module_and_with_settlements() -> None:
    result = invoke("simulate", "--json", SCENARIOS / "seed-points-release.yaml")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert_document_shape(doc)
    assert doc["day"] == 3  # two settlements
    assert doc["equity"]["price"] is None
    assert all(
        Decimal(doc["equity"][k]) == 0 for k in ("pool", "circulating", "treasury", "minted")
    )
    a = doc["members"]["A"]
    assert Decimal(a["released"]["base"]) == 180 and Decimal(a["released"]["gen1"]) == 36
    assert Decimal(a["spend"]) == 12000 and a["shares"] == 12 and a["star"] == 0
    assert Decimal(doc["platform"]["sales"]) == 15000


def test_json_with_team_module_reports_star_and_team_performance() -> None:
    result = invoke("simulate", "--json", SCENARIOS / "seed-team-differential.yaml")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert_document_shape(doc)
    assert any(m["star"] > 0 for m in doc["members"].values())
    assert any(Decimal(m["team_performance"]) > 0 for m in doc["members"].values())


def test_json_for_several_files_is_keyed_by_path() -> None:
    a, b = SCENARIOS / "seed-points-release.yaml", SCENARIOS / "rules-exchange-merchant.yaml"
    result = invoke("simulate", "--json", a, b)
    assert result.exit_code == 0, result.stderr
    docs = json.loads(result.stdout)
    assert set(docs) == {str(a), str(b)}
    assert docs[str(a)]["day"] == 3 and docs[str(b)]["day"] == 1


# ---------------------------------------------------------------- failing checks

WRONG_CHECKS = """\
plan: {preset: points}
steps:
  - join: {member: A}
  - join: {member: B, sponsor: A}
  - order: {member: A, amount: 3000}
  - order: {member: B, amount: 3000}
  - settle: {}
checks:
  - {path: members.B.released.base, equals: "36.00"}
  - {path: members.A.released.gen1, equals: "18.01"}
  - {path: members.A.quota_remaining, approx: "7400", tol: "10"}
  - {path: members.Q.cny, equals: "0"}
"""


def test_console_script_wrong_check_exits_1_and_names_it(tmp_path: Path) -> None:
    path = write(tmp_path, WRONG_CHECKS)
    proc = tokenmall("simulate", path)
    assert proc.returncode == 1
    err = flat(proc.stderr)
    assert "members.A.released.gen1" in err and "got 18.00" in err
    assert "members.A.quota_remaining" in err and "got 7446.00" in err
    assert "members.Q.cny" in err and "no such path" in err
    assert "members.B.released.base" not in err  # that one passed
    assert "checks: 1/4 passed" in flat(proc.stdout)


def test_wrong_check_with_json_still_prints_the_document(tmp_path: Path) -> None:
    result = invoke("simulate", "--json", write(tmp_path, WRONG_CHECKS))
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert Decimal(doc["members"]["A"]["released"]["gen1"]) == 18
    assert "members.A.released.gen1" in flat(result.stderr)


def test_one_failing_file_among_several_fails_the_run(tmp_path: Path) -> None:
    result = invoke(
        "simulate", SCENARIOS / "seed-points-release.yaml", write(tmp_path, WRONG_CHECKS)
    )
    assert result.exit_code == 1
    assert "checks: 5/5 passed" in flat(result.stdout)  # the good file still ran


# ---------------------------------------------------------------- bad files


def test_console_script_unreadable_file_exits_2(tmp_path: Path) -> None:
    proc = tokenmall("simulate", tmp_path / "missing.yaml")
    assert proc.returncode == 2
    assert "cannot read" in flat(proc.stderr)
    assert "missing.yaml" in proc.stderr
    assert proc.stdout == ""


def test_console_script_refused_step_exits_1_with_step_number(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        steps:
          - join: {member: "m{i}"}
            repeat: 3
          - order: {member: m1, amount: 100}
          - order: {member: ghost, amount: 100}
        """,
    )
    proc = tokenmall("simulate", "--json", path)
    assert proc.returncode == 1
    err = flat(proc.stderr)
    assert "step 5 (order)" in err and "unknown member 'ghost'" in err
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""  # no document for a run that did not finish


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps:\n  - join: {member: A\n", "invalid YAML"),
        ("steps:\n  - join: {member: A}\n  - fly: {member: A}\n", "unknown step 'fly'"),
        (
            "steps:\n  - join: {member: A}\n  - order: {member: A, amount: 1, tip: 2}\n",
            "unknown field(s) ['tip'] for order",
        ),
        (
            "steps:\n  - join: {member: A}\n  - order: {member: A, amount: ten}\n",
            "step 2 (order): amount is not a number",
        ),
        ("plan: {preset: nope}\n", "unknown preset"),
    ],
    ids=["invalid-yaml", "unknown-step", "unknown-field", "non-numeric", "unknown-preset"],
)
def test_unreadable_scenario_exits_2(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text, "bad.yaml")
    result = invoke("simulate", path)
    assert result.exit_code == 2
    err = flat(result.stderr)
    assert err.startswith("error ") and "bad.yaml" in err
    assert expected in err
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (
            "  - join: {member: A}\n  - join: {member: A}\n",
            "step 2 (join): refused: member 'A' already exists",
        ),
        (
            "  - join: {member: A}\n  - order: {member: A, amount: '1.005'}\n",
            "step 2 (order): refused: amount has more than 2 decimal places",
        ),
        (
            "  - join: {member: A}\n  - order: {member: A, amount: 0}\n  - settle: {}\n",
            "step 2 (order): refused: order amount must be > 0",
        ),
        (
            "  - join: {member: A}\n  - order: {member: A, amount: 5, id: o}\n"
            "  - refund: {order: o}\n    repeat: 2\n",
            "step 4 (refund): refused: order 'o' is already refunded",
        ),
        (
            "  - join: {member: A}\n  - join: {member: B}\n    refused: true\n",
            "step 2 (join): expected to be refused, but it was accepted",
        ),
    ],
    ids=["duplicate-member", "three-decimals", "zero-amount", "second-refund", "flag-accepted"],
)
def test_refused_step_exits_1(tmp_path: Path, steps: str, expected: str) -> None:
    result = invoke("simulate", write(tmp_path, "plan: {preset: equity}\nsteps:\n" + steps))
    assert result.exit_code == 1
    assert expected in flat(result.stderr)


# ---------------------------------------------------------------- --plot


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_console_script_plot_writes_a_png(tmp_path: Path) -> None:
    target = tmp_path / "plots" / "out.png"
    proc = tokenmall("simulate", "--plot", target, SCENARIOS / "seed-equity-wine-sell.yaml")
    assert proc.returncode == 0, proc.stderr
    data = target.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
    width, height = png_size(data)
    assert width >= 400 and height >= 300
    assert f"plot written to {target}" in flat(proc.stdout)


def test_plot_for_several_files_and_with_json(tmp_path: Path) -> None:
    target = tmp_path / "t.png"
    a, b = SCENARIOS / "seed-points-release.yaml", SCENARIOS / "seed-cycle-pools.yaml"
    result = invoke("simulate", "--json", "--plot", target, a, b)
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)  # --json keeps stdout pure JSON
    for stem in (a.stem, b.stem):
        data = (tmp_path / f"t-{stem}.png").read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert not target.exists()


# ---------------------------------------------------------------- bench


def test_console_script_bench_engine_json() -> None:
    proc = tokenmall("bench", "engine", "--members", "2000", "--orders", "2000", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["members"] == 2000
    assert result["orders"] == 2000
    assert isinstance(result["settle_seconds"], (int, float)) and result["settle_seconds"] >= 0
    assert isinstance(result["orders_per_second"], int) and result["orders_per_second"] > 0
    assert result["members_released"] > 0


# ---------------------------------------------------------------- known bugs

MARKUP_CASES = [
    # (steps, expected exit code, text that must reach the terminal as written)
    ("  - join: {member: A}\n  - order: {member: '[/b]', amount: 1}\n", 1, "unknown member '[/b]'"),
    ("  - join: {member: A}\n  - order: {member: '[b]X', amount: 1}\n", 1, "unknown member '[b]X'"),
    ("  - join: {member: '[/i]'}\n", 0, "[/i]"),
]


@pytest.mark.parametrize(
    ("steps", "code", "shown"),
    MARKUP_CASES,
    ids=["closing-tag-in-error", "tag-in-error", "closing-tag-in-summary"],
)
def test_text_that_looks_like_markup_is_printed_verbatim(
    tmp_path: Path, steps: str, code: int, shown: str
) -> None:
    result = invoke("simulate", write(tmp_path, "steps:\n" + steps))
    assert result.exit_code == code
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert shown in result.stdout + result.stderr


def test_free_port_never_hands_out_a_kernel_picked_port_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tokenmall import devenv

    kernel_picks = iter([40001, 40001, 40002])  # the kernel reuses a just-closed port

    class FakeSocket:
        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            self.port = address[1] or next(kernel_picks)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(devenv.socket, "socket", FakeSocket)
    monkeypatch.setattr(devenv, "_handed_out", set())
    assert [devenv.free_port(0), devenv.free_port(0)] == [40001, 40002]
    assert devenv.free_port(8101) == 8101  # a free preferred port is reused on purpose
