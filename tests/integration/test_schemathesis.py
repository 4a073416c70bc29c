"""schemathesis against every service's OpenAPI on the running platform (SQLite and
PostgreSQL): every check (``--checks all``), a fixed seed, every phase (coverage,
fuzzing, stateful) → no server error, no response that differs from the documented
schema, no failure of any kind.  tests/integration/schemathesis.toml says why a 422 may
answer schema-valid data (the rules decide what the schema cannot say)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.integration.conftest import Platforms

HERE = Path(__file__).parent
CONFIG = HERE / "schemathesis.toml"
SEED = 1
MAX_EXAMPLES = int(os.environ.get("TOKENMALL_SCHEMATHESIS_EXAMPLES", "40"))


def run_schemathesis(url: str, report: Path) -> dict[str, object]:
    st = Path(sys.executable).with_name("schemathesis")
    command = [
        str(st),
        "--config-file",
        str(CONFIG),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    result: dict[str, object] = json.loads(report.read_text()) if report.exists() else {}
    result["output"] = done.stdout[-6000:] + done.stderr[-2000:]
    result["returncode"] = done.returncode
    return result


def test_schemathesis_finds_nothing_on_any_service(platforms: Platforms, tmp_path: Path) -> None:
    run = platforms.launch()
    urls = platforms.urls(run)
    summary = {}
    problems = []
    for service, url in sorted(urls.items()):
        result = run_schemathesis(url, tmp_path / f"{service}.json")
        cases = result.get("test_cases") or {}
        summary[service] = cases
        if result["returncode"] != 0 or result.get("failures") or result.get("errors"):
            problems.append(f"--- {service} ---\n{result['output']}")
    print(json.dumps(summary, indent=1))  # shown with -s: test cases per service
    assert problems == [], "\n".join(problems) + "\n" + platforms.log_tail(run)

    for service, url in urls.items():  # every service still up after the fuzzing
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200, service
