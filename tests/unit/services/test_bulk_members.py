"""Bulk registration: ``POST /v1/members:batch`` (referrals) and ``tokenmall import
members FILE.csv`` on top of it — per-item results, sponsors earlier in the batch,
idempotent re-sending, all-or-nothing batches for the import (a bad row names its line,
nothing of its batch is half-imported) and resuming after the rows done."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tokenmall import contracts
from tokenmall.imports import BadRow, import_members, progress_path
from tokenmall.servicekit import ServiceSettings
from tokenmall.testing import FakeBroker, MemoryPublisher, drain, running
from tokenmall_referrals.app import build_app


def referrals(tmp_path: Path) -> tuple[Any, MemoryPublisher]:
    publisher = MemoryPublisher()
    app = build_app(
        ServiceSettings(database_url=f"sqlite:///{tmp_path}/r.db"),
        broker_factory=lambda svc: FakeBroker(),
        publisher_factory=lambda svc: publisher,
    )
    return app, publisher


def test_a_batch_registers_in_order_with_per_item_results(tmp_path: Path) -> None:
    async def go() -> None:
        app, publisher = referrals(tmp_path)
        async with running(app) as client:
            assert (await client.post("/v1/members", json={"member": "root"})).status_code == 201
            items = [
                {"member": "a", "sponsor": "root"},
                {"member": "b", "sponsor": "a", "merchant": True},  # sponsor just above
                {"member": "root"},  # the same registration again: exists
                {"member": "c", "sponsor": "nobody"},
                {"member": "d", "sponsor": "d"},
                {"member": "a", "sponsor": "root"},  # twice in the batch
                {"member": "e", "sponsor": "c"},  # its sponsor was refused
            ]
            answer = await client.post("/v1/members:batch", json={"members": items})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            statuses = [(i["member"], i["status"]) for i in body["items"]]
            assert statuses == [
                ("a", "created"),
                ("b", "created"),
                ("root", "exists"),
                ("c", "refused"),
                ("d", "refused"),
                ("a", "refused"),
                ("e", "refused"),
            ]
            assert (body["created"], body["existing"], body["refused"]) == (2, 1, 4)
            errors = [i["error"] for i in body["items"]]
            assert "unknown sponsor 'nobody'" in errors[3]
            assert "cannot sponsor themselves" in errors[4]
            assert "twice" in errors[5]
            seqs = [i["seq"] for i in body["items"][:3]]
            assert seqs[0] < seqs[1] and seqs[2] == 1
            b = (await client.get("/v1/members/b")).json()
            assert (b["sponsor"], b["merchant"]) == ("a", True)
            below = (await client.get("/v1/members/root/referrals")).json()
            assert [m["member"] for m in below["items"]] == ["a"]
            await drain(app)
            published = publisher.events(contracts.MEMBERS)
            # root one by one, then the batch's members as one MembersRegistered in order
            assert [e.type for e in published] == ["MemberRegistered", "MembersRegistered"]
            batch = published[1]
            assert isinstance(batch, contracts.MembersRegistered)
            assert batch.key == contracts.REGISTRATIONS_KEY
            assert [(r.member, r.sponsor, r.merchant, r.seq) for r in batch.members] == [
                ("a", "root", False, seqs[0]),
                ("b", "a", True, seqs[1]),
            ]
            # the same batch again: nothing new
            again = (await client.post("/v1/members:batch", json={"members": items[:3]})).json()
            assert [i["status"] for i in again["items"]] == ["exists"] * 3
            assert [i["seq"] for i in again["items"]] == seqs

    asyncio.run(go())


def test_an_atomic_batch_with_a_refused_item_registers_nothing(tmp_path: Path) -> None:
    async def go() -> None:
        app, _ = referrals(tmp_path)
        async with running(app) as client:
            items = [
                {"member": "a"},
                {"member": "b", "sponsor": "a"},
                {"member": "c", "sponsor": "x"},
            ]
            answer = await client.post(
                "/v1/members:batch", params={"atomic": "true"}, json={"members": items}
            )
            assert answer.status_code == 422, answer.text
            assert answer.json()["field"] == "body.members[2].sponsor"
            assert "unknown sponsor 'x'" in answer.json()["message"]
            assert (await client.get("/v1/members")).json()["total"] == 0

    asyncio.run(go())


@pytest.mark.parametrize(
    "body",
    [
        {"members": []},
        {"members": [{"member": "a b"}]},
        {"members": [{"member": "a", "extra": 1}]},
        {"members": [{"member": "a"}] * 10_001},
        {"members": "a"},
    ],
)
def test_a_bad_batch_is_refused_whole(tmp_path: Path, body: dict[str, Any]) -> None:
    async def go() -> None:
        app, _ = referrals(tmp_path)
        async with running(app) as client:
            answer = await client.post("/v1/members:batch", json=body)
            assert answer.status_code == 422, answer.text
            assert (await client.get("/v1/members")).json()["total"] == 0

    asyncio.run(go())


@pytest.fixture
def service(tmp_path: Path) -> Iterator[TestClient]:
    app, _ = referrals(tmp_path)
    with TestClient(app) as client:
        yield client


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("member,sponsor,merchant\n" + "".join(r + "\n" for r in rows))
    return path


def forest(n: int) -> list[str]:
    """Member i sponsored by i // 3 (sponsors come first)."""
    return ["m0,,"] + [f"m{i},m{i // 3},{'yes' if i % 7 == 0 else ''}" for i in range(1, n)]


def test_import_members_in_batches_and_resume_after_a_bad_row(
    tmp_path: Path, service: TestClient
) -> None:
    rows = forest(2500)
    rows[1502] = "m1502,ghost,"  # line 1504 of the file (after the header)
    path = write_csv(tmp_path / "members.csv", rows)
    sent: list[int] = []
    service.event_hooks["request"] = [lambda request: sent.append(len(request.content))]
    with pytest.raises(BadRow, match=r"line 1504: .*unknown sponsor 'ghost'"):
        import_members(path, service, batch=1000)
    assert len(sent) == 2
    assert service.get("/v1/members", params={"limit": 1}).json()["total"] == 1000
    assert json.loads(progress_path(path).read_text())["rows_done"] == 1000

    rows[1502] = "m1502,m500,"  # fixed (below the rows done: those still count)
    path = write_csv(path, rows)
    sent.clear()
    report = import_members(path, service, batch=1000)
    assert len(sent) == 2  # rows 1001-2500: the first thousand were not sent again
    assert (report.rows, report.skipped, report.created) == (2500, 1000, 1500)
    listing = service.get("/v1/members", params={"limit": 10_000}).json()
    assert listing["total"] == 2500
    member = service.get("/v1/members/m7").json()
    assert (member["sponsor"], member["merchant"]) == ("m2", True)

    # everything done: a third run sends nothing
    sent.clear()
    assert import_members(path, service, batch=1000).skipped == 2500 and sent == []


def test_import_names_the_line_of_a_malformed_row_and_sends_nothing_of_its_batch(
    tmp_path: Path, service: TestClient
) -> None:
    path = write_csv(tmp_path / "m.csv", ["a,,", "b,a,maybe", "c,a,"])
    with pytest.raises(BadRow, match=r"line 3: merchant 'maybe'"):
        import_members(path, service, batch=10)
    assert service.get("/v1/members").json()["total"] == 0
    path = write_csv(tmp_path / "n.csv", ["a,,", "b c,a,"])
    with pytest.raises(BadRow, match=r"line 3: member 'b c' is not a member id"):
        import_members(path, service, batch=10)
    path = tmp_path / "h.csv"
    path.write_text("id,parent\nx,\n")
    with pytest.raises(BadRow, match=r"line 1: a header"):
        import_members(path, service)


def test_resending_a_batch_that_was_registered_but_not_recorded_is_harmless(
    tmp_path: Path, service: TestClient
) -> None:
    path = write_csv(tmp_path / "m.csv", forest(30))
    import_members(path, service, batch=10)
    progress_path(path).unlink()  # as if interrupted before the progress was written
    report = import_members(path, service, batch=10)
    assert (report.created, report.existing) == (0, 30)
    assert service.get("/v1/members").json()["total"] == 30
