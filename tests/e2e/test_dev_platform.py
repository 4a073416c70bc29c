"""The README's path, end to end as a user runs it: ``tokenmall dev up`` (Kafka and the
four services in the background), ``tokenmall replay --compare`` on seed scenarios,
``tokenmall dev status`` and ``tokenmall dev down`` — on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
SEEDS = [REPO / "tests" / "scenarios" / n for n in ("seed-cycle-pools.yaml", "seed-team-peer.yaml")]


def tokenmall(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenmall.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )


def total_spend(referrals: str) -> Decimal:
    listed = httpx.get(referrals + "/v1/members", params={"limit": 10000}).json()
    assert listed["total"] <= 10000
    return sum((Decimal(m["spend"]) for m in listed["items"]), Decimal(0))


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_dev_up_replay_compare_and_down(tmp_path: Path, database: str) -> None:
    env = {**os.environ, "TOKENMALL_DEV_DIR": str(tmp_path / "dev")}
    up_args = ["dev", "up"] + (["--postgres"] if database == "postgres" else [])
    try:
        up = tokenmall(*up_args, env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        shown = tokenmall("dev", "status", "--json", env=env)
        status = json.loads(shown.stdout)
        assert shown.returncode == 0 and status["ok"]
        assert len(status["processes"]) == 4 and all(p["alive"] for p in status["processes"])
        assert status["run"]["postgres"] is (database == "postgres")

        replayed = tokenmall("replay", "--compare", *map(str, SEEDS), env=env)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert replayed.stdout.count("identical to tokenmall simulate") == len(SEEDS)

        as_json = tokenmall("replay", "--json", str(SEEDS[0]), env=env)
        simulated = tokenmall("simulate", "--json", str(SEEDS[0]), env=env)
        assert as_json.returncode == simulated.returncode == 0, as_json.stderr
        assert json.loads(as_json.stdout) == json.loads(simulated.stdout)

        # a mall's members from a CSV: every service knows each of them afterwards
        members = tmp_path / "members.csv"
        rows = ["member,sponsor,merchant", "+8613800000000,,"]
        rows += [
            f"+86138{i:08d},+86138{i // 4:08d},{'yes' if i % 9 == 0 else ''}"
            for i in range(1, 3000)
        ]
        members.write_text("\n".join(rows) + "\n")
        imported = tokenmall(
            "import", "members", str(members), "--batch", "1000", "--json", env=env
        )
        assert imported.returncode == 0, imported.stdout + imported.stderr
        report = json.loads(imported.stdout)
        assert (report["created"], report["batches"]) == (3000, 3), report
        again = tokenmall("import", "members", str(members), "--json", env=env)
        assert json.loads(again.stdout)["skipped"] == 3000  # resumed past everything
        urls = {p["service"]: p["url"] for p in status["processes"]}
        deadline = time.monotonic() + 60
        while True:  # every service consumed every registration (lag 0, nothing parked)
            syncs = [httpx.get(url + "/v1/sync").json() for url in urls.values()]
            if all(s["consumer_lag"] == 0 and s["outbox_backlog"] == 0 for s in syncs):
                break
            assert time.monotonic() < deadline, syncs
            time.sleep(0.2)
        last = httpx.get(urls["dividends"] + "/v1/members/+8613800002999")
        assert last.status_code == 200, last.text  # the engine has the last one

        # the mall's paid orders from a CSV: each one's verdict final in the orders service
        orders = tmp_path / "orders.csv"
        lines = ["order_id,member,amount"]
        lines += [f"csv-{i},+86138{i * 7 % 3000:08d},{i % 50 + 1}.10" for i in range(2000)]
        orders.write_text("\n".join(lines) + "\n")
        before = httpx.get(urls["orders"] + "/v1/sales").json()
        spends_before = total_spend(urls["referrals"])
        imported = tokenmall("import", "orders", str(orders), "--batch", "500", "--json", env=env)
        assert imported.returncode == 0, imported.stdout + imported.stderr
        assert json.loads(imported.stdout)["created"] == 2000
        expected = Decimal(before["paid"]) + sum(Decimal(f"{i % 50 + 1}.10") for i in range(2000))
        deadline = time.monotonic() + 60
        while Decimal(httpx.get(urls["orders"] + "/v1/sales").json()["paid"]) != expected:
            assert time.monotonic() < deadline, "the rules' verdicts did not all arrive"
            time.sleep(0.2)
        verdict = httpx.get(urls["orders"] + "/v1/orders/csv-1999").json()
        assert verdict["status"] == "paid", verdict
        # the batches (OrdersPaid, answered by InputsApplied) counted once each in
        # referrals' spends
        deadline = time.monotonic() + 60
        while True:
            syncs = [httpx.get(url + "/v1/sync").json() for url in urls.values()]
            if all(s["consumer_lag"] == 0 and s["outbox_backlog"] == 0 for s in syncs):
                break
            assert time.monotonic() < deadline, syncs
            time.sleep(0.2)
        spends = total_spend(urls["referrals"]) - spends_before
        assert spends == sum(Decimal(f"{i % 50 + 1}.10") for i in range(2000))
    finally:
        down = tokenmall("dev", "down", env=env)
    assert down.returncode == 0, down.stderr
    shown = tokenmall("dev", "status", "--json", env=env)
    status = json.loads(shown.stdout)
    assert shown.returncode == 1 and status["stopped"] and not status["kafka"]["alive"]
    assert not any(p["alive"] for p in status["processes"])
