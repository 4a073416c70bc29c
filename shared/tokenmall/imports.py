"""Bulk imports into a running platform: ``tokenmall import members FILE.csv`` and
``tokenmall import orders FILE.csv``.

The CSV goes in batches to ``POST /v1/members:batch?atomic=true`` (referrals) or
``POST /v1/orders:batch?atomic=true`` (orders: paid orders): a batch is taken whole or
not at all, so a bad row stops the import with its line number and nothing of its batch
half-imported.  Progress is kept beside the file (``FILE.csv.progress``: the rows done);
run the same command again and it goes on after them.  A batch that was taken but not
yet recorded (an interruption just then) is sent again harmlessly: a member registered
again with the same sponsor and merchant flag, an order paid again with the same member
and amounts, answer ``exists``.
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

from tokenmall.ids import ID_DOC, ID_PATTERN, MEMBER_DOC, MEMBER_ID_PATTERN
from tokenmall.money import AmountError, to_cents

MEMBER_COLUMNS = ("member", "sponsor", "merchant")
ORDER_COLUMNS = ("order_id", "member", "amount", "stable")
TRUE = frozenset({"1", "true", "yes", "y", "t"})
FALSE = frozenset({"", "0", "false", "no", "n", "f"})
_MEMBER_ID = re.compile(MEMBER_ID_PATTERN)
_ID = re.compile(ID_PATTERN)


class BadRow(Exception):
    """A row the import cannot take (its line is in the message); nothing of its batch
    was imported."""


class Interrupted(Exception):
    """The platform did not answer: run the import again to go on."""


@dataclass
class ImportReport:
    unit: str = "members"
    rows: int = 0
    skipped: int = 0  # done by an earlier run (the progress file)
    created: int = 0  # registered, or paid (orders: accepted)
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
            f"{self.unit}_per_second": round(rate, 1),
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


def _rows_done_still_match(kind: _Kind, path: Path, rows_done: int, digest: str) -> bool:
    """The first ``rows_done`` rows are still those the last run imported (a row fixed
    further down keeps them; an edit among them starts over — harmless, see above)."""
    hasher = hashlib.sha256()
    seen = 0
    for _, item in kind.rows(path):
        if seen == rows_done:
            break
        hasher.update(_row_bytes(item))
        seen += 1
    return seen == rows_done and hasher.hexdigest() == digest


def _csv_rows(
    path: Path, columns: tuple[str, ...], required: int
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row with every column, stripped) per data row; the header must name
    the first ``required`` columns (the others are optional)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not set(columns[:required]) <= set(header):
            raise BadRow(f"{path}: line 1: a header with the columns {columns}")
        unknown = set(header) - set(columns)
        if unknown:
            raise BadRow(f"{path}: line 1: unknown columns {sorted(unknown)}")
        reader.fieldnames = header
        for row in reader:
            yield reader.line_num, {c: (row.get(c) or "").strip() for c in columns}


def member_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, member item) per data row; raises BadRow naming the line."""
    for line, row in _csv_rows(path, MEMBER_COLUMNS, required=1):
        member, sponsor = row["member"], row["sponsor"] or None
        merchant = row["merchant"].lower()
        for name, value in (("member", member), ("sponsor", sponsor)):
            if value is not None and not _MEMBER_ID.match(value):
                raise BadRow(
                    f"{path}: line {line}: {name} {value!r} is not a member id ({MEMBER_DOC})"
                )
        if merchant not in TRUE | FALSE:
            raise BadRow(f"{path}: line {line}: merchant {merchant!r} is not a yes/no value")
        yield line, {"member": member, "sponsor": sponsor, "merchant": merchant in TRUE}


def order_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, paid-order item) per data row; raises BadRow naming the line."""
    for line, row in _csv_rows(path, ORDER_COLUMNS, required=3):
        if not _ID.match(row["order_id"]):
            raise BadRow(
                f"{path}: line {line}: order_id {row['order_id']!r} is not an id ({ID_DOC})"
            )
        if not _MEMBER_ID.match(row["member"]):
            raise BadRow(
                f"{path}: line {line}: member {row['member']!r} is not a member id ({MEMBER_DOC})"
            )
        try:
            amount = to_cents(row["amount"], "amount")
            stable = to_cents(row["stable"] or "0", "stable")
        except AmountError as exc:
            raise BadRow(f"{path}: line {line}: {exc}") from None
        if amount <= 0 or not 0 <= stable <= amount:
            raise BadRow(
                f"{path}: line {line}: amount must be > 0 and stable between 0 and the amount, "
                f"got amount {row['amount']!r}, stable {row['stable'] or '0'!r}"
            )
        yield (
            line,
            {
                "order_id": row["order_id"],
                "member": row["member"],
                "amount": row["amount"],
                "stable": row["stable"] or "0",
            },
        )


@dataclass(frozen=True)
class _Kind:
    """What one CSV import sends where."""

    unit: str  # members | orders
    rows: Callable[[Path], Iterator[tuple[int, dict[str, Any]]]]
    endpoint: str
    taken: str  # the result's count of items taken now: created | accepted


MEMBERS = _Kind("members", member_rows, "/v1/members:batch", "created")
ORDERS = _Kind("orders", order_rows, "/v1/orders:batch", "accepted")
_ITEM = {kind.unit: re.compile(rf"^body\.{kind.unit}\[(\d+)\]") for kind in (MEMBERS, ORDERS)}


def count_rows(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as handle:
        return max(0, sum(1 for _ in csv.reader(handle)) - 1)


def import_members(
    path: Path,
    client: httpx.Client,
    batch: int = 5000,
    on_batch: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import the members CSV through ``client`` (its base URL: referrals).
    ``on_batch(rows)`` after each batch (a progress bar)."""
    return _import(MEMBERS, path, client, batch, on_batch)


def import_orders(
    path: Path,
    client: httpx.Client,
    batch: int = 1000,
    on_batch: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import the paid-orders CSV through ``client`` (its base URL: orders)."""
    return _import(ORDERS, path, client, batch, on_batch)


def _import(
    kind: _Kind,
    path: Path,
    client: httpx.Client,
    batch: int,
    on_batch: Callable[[int], None] | None,
) -> ImportReport:
    import time

    report = ImportReport(unit=kind.unit)
    started = time.monotonic()
    saved_rows, saved_digest = _read_progress(path)
    resume_at = (
        saved_rows
        if saved_rows and _rows_done_still_match(kind, path, saved_rows, saved_digest)
        else 0
    )
    done = resume_at
    hasher = hashlib.sha256()  # of the rows done, in order (the progress file keeps it)
    pending: list[tuple[int, dict[str, Any]]] = []

    def send() -> None:
        nonlocal done
        items = [item for _, item in pending]
        try:
            answer = client.post(kind.endpoint, params={"atomic": "true"}, json={kind.unit: items})
        except httpx.HTTPError as exc:
            raise Interrupted(f"the platform did not answer ({exc}); run again to go on") from exc
        if answer.status_code >= 500:
            raise Interrupted(f"the platform answered {answer.status_code}; run again to go on")
        if answer.status_code != 200:
            body = answer.json()
            found = _ITEM[kind.unit].match(body.get("field") or "")
            line = pending[int(found.group(1))][0] if found else pending[0][0]
            where = f"line {line}" if found else f"lines {pending[0][0]}-{pending[-1][0]}"
            raise BadRow(
                f"{path}: {where}: {body.get('message', answer.text)} "
                f"(nothing of lines {pending[0][0]}-{pending[-1][0]} was imported)"
            )
        result = answer.json()
        report.created += int(result[kind.taken])
        report.existing += int(result["existing"])
        report.batches += 1
        done += len(pending)
        for _, item in pending:
            hasher.update(_row_bytes(item))
        _write_progress(path, done, hasher.hexdigest())
        if on_batch is not None:
            on_batch(len(pending))
        pending.clear()

    for index, row in enumerate(kind.rows(path)):
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
