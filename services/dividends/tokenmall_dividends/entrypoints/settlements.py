"""Daily settlement of a business day (a scheduler after its end, replay, an operator).

``POST /v1/settlements/{day}`` closes the day: orders and wallet stamp their later
inputs with the next day and send a marker after the day's last input on every
partition; the day is settled once every marker and every input of it has reached
the engine (service_layer/closing.py).  The call waits for that up to
``TOKENMALL_SETTLE_WAIT_SECONDS`` (200 with the settlement) and otherwise answers 202:
the settlement follows on its own; ``GET`` the same path to see it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tokenmall.http_errors import ApiError
from tokenmall.ids import DayPath
from tokenmall.money import format_cents
from tokenmall_dividends.entrypoints.deps import ServiceDep
from tokenmall_dividends.service_layer import closing

router = APIRouter(prefix="/v1/settlements", tags=["settlements"])

MAX_PARTITIONS = 1024  # of a topic (the platform makes 6; an operator may add more)


class SettlementPublic(BaseModel):
    day: int
    status: Literal["completed"] = "completed"
    already_settled: bool = Field(
        False,
        description="true when another call (or the scheduler) had requested or settled "
        "the day before this one",
    )
    released: dict[str, Decimal] = Field(description="per release kind, decimal strings")
    members_released: int
    retained: Decimal | None = None
    rounding: Decimal | None = None
    forced_exits: int | None = None
    duration_ms: int = Field(description="the engine's time for the settlement, milliseconds")
    settled_at: datetime


class ParkedInput(BaseModel):
    id: int
    event_type: str
    key: str
    waiting_for: str


class WaitingFor(BaseModel):
    markers: dict[str, str | Annotated[list[int], Field(max_length=MAX_PARTITIONS)]] = Field(
        description='per topic: the partitions whose "day closed" marker has not arrived '
        '(or "no marker yet")'
    )
    parked_inputs: int = Field(description="inputs of the day parked on a dependency")
    parked: list[ParkedInput] = Field(
        max_length=closing.SHOWN_PARKED,
        description="the oldest of them (DELETE /v1/parked/{id} discards one that will "
        "never be applicable; or settle with force=true)",
    )


class SettlementWaiting(BaseModel):
    day: int
    status: Literal["waiting"] = "waiting"
    requested_at: datetime
    waiting_for: WaitingFor


def _public(row: Any, already: bool) -> SettlementPublic:
    def money(cents: int | None) -> Decimal | None:
        return None if cents is None else Decimal(format_cents(cents))

    return SettlementPublic(
        day=row.day,
        already_settled=already,
        released={k: Decimal(format_cents(v)) for k, v in json.loads(row.released).items()},
        members_released=row.members_released,
        retained=money(row.retained_cents),
        rounding=money(row.rounding_cents),
        forced_exits=row.forced_exits,
        duration_ms=round(row.seconds * 1000),
        settled_at=utc(row.created_at),
    )


def utc(moment: datetime) -> datetime:
    """SQLite returns the stored UTC time without its zone: say it is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@router.post(
    "/{day}",
    response_model=SettlementPublic,
    responses={
        202: {"model": SettlementWaiting, "description": "requested; still waiting"},
        409: {"description": "the day has not started yet"},
    },
)
async def settle_day(
    day: DayPath,
    svc: ServiceDep,
    force: Annotated[
        bool,
        Query(
            description="settle now, without waiting for the day's inputs still on their way "
            "(they count in the next day, tokenmall_late_inputs_total)"
        ),
    ] = False,
) -> Any:
    """Settle ``day`` once all of its inputs reached the engine; settling a settled day
    changes nothing and says so (``already_settled``)."""
    already = await closing.settled_row(svc, day) is not None
    if not already:
        requested = await closing.closer_of(svc).request(day, force)
        if not requested.accepted:
            raise ApiError(409, requested.reason or "refused", field="day")
        already = not requested.first
        if not requested.settled:
            wait = float(svc.settings.settle_wait_seconds)  # type: ignore[attr-defined]
            await closing.closer_of(svc).wait_settled(day, wait)
    answer = await _answer(svc, day, already)
    assert answer is not None, "a requested day is settled or waiting"
    return answer


@router.get(
    "/{day}",
    response_model=SettlementPublic,
    responses={
        202: {"model": SettlementWaiting, "description": "requested; still waiting"},
        404: {"description": "the day is neither settled nor requested"},
    },
)
async def get_settlement(day: DayPath, svc: ServiceDep) -> Any:
    answer = await _answer(svc, day, already=True)
    if answer is None:
        raise ApiError(404, f"day {day} is not settled", field="day")
    return answer


async def _answer(svc: Any, day: int, already: bool) -> SettlementPublic | JSONResponse | None:
    """The settlement (200), the waiting closing (202), or None when the day was never
    requested.  Settled, else waiting, else settled after all: the settlement may commit
    between the reads, which then find neither a settlement nor a waiting closing."""
    row = await closing.settled_row(svc, day)
    if row is None:
        status = await closing.closing_status(svc, day)
        if status is not None:
            return _waiting(status)
        row = await closing.settled_row(svc, day)
        if row is None:
            return None
    return _public(row, already)


def _waiting(status: dict[str, Any]) -> JSONResponse:
    status = {**status, "requested_at": utc(status["requested_at"])}
    body = SettlementWaiting.model_validate(status).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers={"Retry-After": "1"})
