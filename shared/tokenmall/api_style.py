"""The platform's HTTP API style, as the types every service's routes are built from.

One style for the four services (README, "API style"; checked over every OpenAPI
document by tests/unit/services/test_api_style.py):

- **Money, points and rates are decimal strings**, in responses and in requests: a
  JSON number is refused for them (``DecimalString``) — a float has lost its decimals
  before any code sees it, and one accepted form is easier to get right than two.
  Counts (days, shares, stars, totals) are integers.
- **Every list is a page** (``Page``): ``items``, ``total`` (of the whole list),
  ``offset`` and ``limit``; ``?offset=&limit=`` with one cap, ``MAX_LIMIT``, everywhere.
  A list inside a resource is either bounded (``maxItems`` in the schema) or a page of
  its own.
- **Timestamps** are ISO-8601 in UTC (``...Z``), named for the event (``created_at``,
  ``paid_at``, ``booked_at``, ``decided_at``), beside the business ``day`` they count in.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, BeforeValidator, Field, ValidationInfo, WithJsonSchema

from tokenmall.ids import MAX_OFFSET as MAX_OFFSET  # a page's offset: tokenmall.ids
from tokenmall.ids import Offset as Offset

MAX_LIMIT = 10_000  # items per page, on every list of every service
DEFAULT_LIMIT = 100

DECIMAL_PATTERN = r"^[+-]?[0-9]+(\.[0-9]+)?$"
_DECIMAL = re.compile(DECIMAL_PATTERN)
MAX_DECIMAL_LENGTH = 40  # digits enough for any amount the engine takes, and its sign


def _decimal_string(value: Any, info: ValidationInfo) -> Decimal:
    name = info.field_name or "the value"
    if isinstance(value, bool) or not isinstance(value, str):
        shown = "a JSON number" if isinstance(value, int | float) else "not a string"
        raise ValueError(f'{name} must be a decimal string such as "10.50" ({shown})')
    if len(value) > MAX_DECIMAL_LENGTH or not _DECIMAL.match(value):
        raise ValueError(f'{name} must be a decimal string such as "10.50", got {value[:48]!r}')
    return Decimal(value)


DecimalString = Annotated[
    Decimal,
    BeforeValidator(_decimal_string),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DECIMAL_PATTERN,
            "maxLength": MAX_DECIMAL_LENGTH,
            "examples": ["10.50"],
        }
    ),
]
"""A decimal in a request: a JSON string (``"10.50"``), never a JSON number."""

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"items per page, 1-{MAX_LIMIT}")]

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: ``items`` from ``offset`` on, at most ``limit`` of them."""

    items: list[T]
    total: int = Field(description="items in the whole list")
    offset: int = Field(description="items skipped before this page")
    limit: int = Field(description="the most items a page of this request holds")


def as_utc(moment: datetime | None) -> datetime | None:
    """The moment in UTC; a naive value (SQLite drops the zone) is UTC already."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso_utc(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC with ``Z``; a naive value (SQLite drops the zone) is UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
