"""Bulk imports into a running platform: ``tokenmall import members FILE.csv``.

The CSV goes in batches to ``POST /v1/members:batch?atomic=true`` (referrals): a batch
is registered whole or not at all, so a bad row stops the import with its line number
and nothing of its batch half-imported.  Progress is kept beside the file
(``FILE.csv.progress``: the rows done); run the same command again and it goes on after
them.  A batch that was registered but not yet recorded (an interruption just then) is
sent again harmlessly: registering a member again with the same sponsor and merchant
flag answers ``exists``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tokenmall.ids import MEMBER_DOC, MEMBER_ID_PATTERN

MEMBER_COLUMNS = ("member", "sponsor", "merchant")
TRUE = frozenset({"1", "true", "yes", "y", "t"})
FALSE = frozenset({"", "0", "false", "no", "n", "f"})
_MEMBER_ID = re.compile(MEMBER_ID_PATTERN)
_ITEM = re.compile(r"^body\.members\[(\d+)\]")


class BadRow(Exception):
    """A row the import cannot take (its line is in the message); nothing of its batch
    was imported."""


class Interrupted(Exception):
    """The platform did not answer: run the import again to go on."""


@dataclass
class ImportReport:
    rows: int = 0
    skipped: int = 0  # done by an earlier run (the progress file)
    created: int = 0
    existing: int = 0
    batches: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        rate = (self.created + self.existing) / self.seconds if self.seconds else 0.0
        return {
            "rows": self.rows,
            "skipped": self.skipped,
            "created": self.created,
            "existing": self.existing,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "members_per_second": round(rate, 1),
        }


def progress_path(path: Path) -> Path:
    return path.with_name(path.name + ".progress")


def _read_progress(path: Path) -> tuple[int, str]:
    """(rows done, digest of those rows) by an earlier run of this file."""
    marker = progress_path(path)
    if not marker.exists():
        return 0, ""
    try:
        saved = json.loads(marker.read_text())
        return int(saved["rows_done"]), str(saved["digest"])
    except (ValueError, KeyError, TypeError):
        return 0, ""


def _write_progress(path: Path, rows_done: int, digest: str) -> None:
    marker = progress_path(path)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"rows_done": rows_done, "digest": digest}))
    tmp.replace(marker)  # atomic: an interruption never leaves half a progress file


def _row_bytes(item: dict[str, Any]) -> bytes:
    return json.dumps(item, sort_keys=True).encode() + b"\n"


def _rows_done_still_match(path: Path, rows_done: int, digest: str) -> bool:
    """The first ``rows_done`` rows are still those the last run imported (a row fixed
    further down keeps them; an edit among them starts over — harmless, see above)."""
    hasher = hashlib.sha256()
    seen = 0
    for _, item in member_rows(path):
        if seen == rows_done:
            break
        hasher.update(_row_bytes(item))
        seen += 1
    return seen == rows_done and hasher.hexdigest() == digest


def member_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, member item) per data row; raises BadRow naming the line."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "member" not in header:
            raise BadRow(f"{path}: line 1: a header with the columns {MEMBER_COLUMNS}")
        unknown = set(header) - set(MEMBER_COLUMNS)
        if unknown:
            raise BadRow(f"{path}: line 1: unknown columns {sorted(unknown)}")
        reader.fieldnames = header
        for row in reader:
            line = reader.line_num
            member = (row.get("member") or "").strip()
            sponsor = (row.get("sponsor") or "").strip() or None
            merchant = (row.get("merchant") or "").strip().lower()
            for name, value in (("member", member), ("sponsor", sponsor)):
                if value is not None and not _MEMBER_ID.match(value):
                    raise BadRow(
                        f"{path}: line {line}: {name} {value!r} is not a member id ({MEMBER_DOC})"
                    )
            if merchant not in TRUE | FALSE:
                raise BadRow(f"{path}: line {line}: merchant {merchant!r} is not a yes/no value")
            yield line, {"member": member, "sponsor": sponsor, "merchant": merchant in TRUE}


def count_rows(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


def import_members(
    path: Path,
    client: httpx.Client,
    batch: int = 5000,
    on_batch: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import the CSV through ``client`` (its base URL: referrals).  ``on_batch(rows)``
    after each batch (a progress bar)."""
    import time

    report = ImportReport()
    started = time.monotonic()
    saved_rows, saved_digest = _read_progress(path)
    resume_at = (
        saved_rows if saved_rows and _rows_done_still_match(path, saved_rows, saved_digest) else 0
    )
    done = resume_at
    hasher = hashlib.sha256()  # of the rows done, in order (the progress file keeps it)
    pending: list[tuple[int, dict[str, Any]]] = []

    def send() -> None:
        nonlocal done
        items = [item for _, item in pending]
        try:
            answer = client.post(
                "/v1/members:batch", params={"atomic": "true"}, json={"members": items}
            )
        except httpx.HTTPError as exc:
            raise Interrupted(f"the platform did not answer ({exc}); run again to go on") from exc
        if answer.status_code >= 500:
            raise Interrupted(f"the platform answered {answer.status_code}; run again to go on")
        if answer.status_code != 200:
            body = answer.json()
            found = _ITEM.match(body.get("field") or "")
            line = pending[int(found.group(1))][0] if found else pending[0][0]
            where = f"line {line}" if found else f"lines {pending[0][0]}-{pending[-1][0]}"
            raise BadRow(
                f"{path}: {where}: {body.get('message', answer.text)} "
                f"(nothing of lines {pending[0][0]}-{pending[-1][0]} was imported)"
            )
        result = answer.json()
        report.created += int(result["created"])
        report.existing += int(result["existing"])
        report.batches += 1
        done += len(pending)
        for _, item in pending:
            hasher.update(_row_bytes(item))
        _write_progress(path, done, hasher.hexdigest())
        if on_batch is not None:
            on_batch(len(pending))
        pending.clear()

    for index, row in enumerate(member_rows(path)):
        report.rows += 1
        if index < resume_at:
            report.skipped += 1  # imported by an earlier run
            hasher.update(_row_bytes(row[1]))
            continue
        if index == resume_at and resume_at and on_batch is not None:
            on_batch(resume_at)  # the bar starts where the last run stopped
        pending.append(row)
        if len(pending) >= batch:
            send()
    if pending:
        send()
    report.seconds = time.monotonic() - started
    return report
