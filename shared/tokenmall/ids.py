"""What every HTTP API accepts as an id, a free text or a paging integer: one definition.

Members are phone numbers (an optional leading ``+``) or short names like ``A``;
orders, requests and holds are client-chosen ids.  Both are ASCII letters, digits
and ``. _ -`` only, so every id stands in a URL path segment as it is, fits its
database column and can never carry a NUL byte or a control character (which
PostgreSQL refuses in text).  The types are used by path parameters (``*Path``),
query parameters and body fields alike; the patterns show in each OpenAPI schema.

The patterns end with ``$``: pydantic matches them with Rust's regex engine, where
``$`` is the end of the text (no newline before it), as in the JSON Schema dialect.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import StringConstraints

MEMBER_ID_PATTERN = r"^\+?[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MEMBER_ID_MAX_LENGTH = 65  # "+" and 64 characters
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ID_MAX_LENGTH = 128
# the dividends input log: "<kind>:<id>" (order:o-1, refund:o-1, request:r-1, join:+86…,
# plan:<uuid>, settle:3)
INPUT_ID_PATTERN = r"^[a-z_]{1,16}:\+?[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
INPUT_ID_MAX_LENGTH = 16 + 1 + 1 + 128
# free text (reasons, operators): no control characters
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
# Idempotency-Key header: printable ASCII
KEY_PATTERN = r"^[\x20-\x7e]{1,200}$"

MAX_OFFSET = 2**31 - 1  # paging offsets: 0 ≤ offset ≤ 2147483647
MAX_DAY = 2**31 - 1  # business days: 1 ≤ day ≤ 2147483647 (an int32 column)

MEMBER_DOC = "member id: an optional '+', then 1-64 of A-Z a-z 0-9 . _ - (first a letter or digit)"
ID_DOC = "1-128 of A-Z a-z 0-9 . _ - (first a letter or digit)"

MemberId = Annotated[
    str, StringConstraints(pattern=MEMBER_ID_PATTERN, max_length=MEMBER_ID_MAX_LENGTH)
]
"""A member id in a body field."""

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, max_length=ID_MAX_LENGTH)]
"""An order, request or hold id in a body field."""


Text1000 = Annotated[str, StringConstraints(pattern=TEXT_PATTERN, max_length=1000)]
"""Free text (a reason) of at most 1000 characters, without control characters."""

Text200 = Annotated[str, StringConstraints(pattern=TEXT_PATTERN, max_length=200)]
"""Free text (an operator's name) of at most 200 characters, without control characters."""


MemberPath = Annotated[
    str,
    Path(
        pattern=MEMBER_ID_PATTERN,
        min_length=1,
        max_length=MEMBER_ID_MAX_LENGTH,
        description=MEMBER_DOC,
    ),
]
IdPath = Annotated[
    str, Path(pattern=ID_PATTERN, min_length=1, max_length=ID_MAX_LENGTH, description=ID_DOC)
]
InputIdPath = Annotated[
    str,
    Path(
        pattern=INPUT_ID_PATTERN,
        min_length=3,
        max_length=INPUT_ID_MAX_LENGTH,
        description="<kind>:<id>, e.g. order:o-1, refund:o-1, request:r-1, join:A",
    ),
]
DayPath = Annotated[int, Path(ge=1, le=MAX_DAY, description=f"business day, 1-{MAX_DAY}")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"rows to skip, 0-{MAX_OFFSET}")]
