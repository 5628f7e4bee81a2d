"""JSON Schemas of what rebook exchanges with other programs, generated from pydantic models.

Producers in any language send `rebook.request` with the kwargs of :class:`RebookEvent`; consumers
read the outcome stream (:class:`OutcomeEntry`, every field a string as Redis keeps it) or get
each outcome from the fan-out (:class:`OutcomeMessage`, the JSON of the outcome task's
`outcome` kwarg and of the webhook's body). `rebook schema KIND` prints them; the same text is
committed under docs/schemas/ and a test fails when the files and the models part.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Json

from worker.core.models import EVENT_ID_PATTERN, RebookEvent

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ISO_Z = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"
ISO_Z_OR_EMPTY = r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z)?$"
REBOOK_ID = r"^rb-[0-9a-f]{16}$"
#: `BOOKED`, `NEEDS_ATTENTION` and every terminal state (worker/core/states.py; a test holds
#: this list to it)
OutcomeState = Literal[
    "BOOKED",
    "NEEDS_ATTENTION",
    "ACCEPTED",
    "REJECTED",
    "CONFIRMED",
    "CANCELLED",
    "EXPIRED",
    "GAVE_UP",
    "FAILED",
    "ABORTED",
    "DUPLICATE",
    "SHADOWED",
]


class OutcomeEntry(BaseModel):
    """One entry of the outcome stream `{prefix}outcomes` (`XREAD`, `rebook outcomes --json`
    without its `id`): every value a string, "" for none. New fields may be added: ignore the
    ones you do not know."""

    model_config = ConfigDict(extra="allow", title="rebook outcome stream entry")

    rebook_id: str = Field(pattern=REBOOK_ID)
    event_id: str = Field(pattern=EVENT_ID_PATTERN)
    state: OutcomeState
    booking_id: str = Field(pattern=r"^[1-9][0-9]*$", description="the original booking")
    new_booking_id: str = Field(
        pattern=r"^([1-9][0-9]*)?$", description="the booking rebook made; '' before BOOKED"
    )
    accept_by: str = Field(pattern=ISO_Z_OR_EMPTY, description="UTC; '' when unknown")
    status: str = Field(description="the new booking's upstream status, '' when none")
    reason: str
    at: str = Field(pattern=ISO_Z, description="when the state changed, UTC")
    detail: Json[dict[str, Any]] = Field(description="a JSON object, as text")


class OutcomeMessage(BaseModel):
    """One outcome as the fan-out delivers it: the `outcome` kwarg of `REBOOK_OUTCOME_TASK` and
    the body of a `REBOOK_WEBHOOK_URL` POST. Ids are numbers, `detail` an object, none is null.
    Delivery is at least once: dedupe on `id`. New fields may be added."""

    model_config = ConfigDict(extra="allow", title="rebook outcome message")

    id: str = Field(pattern=r"^\d+-\d+$", description="the stream entry's id; dedupe on it")
    rebook_id: str = Field(pattern=REBOOK_ID)
    event_id: str = Field(pattern=EVENT_ID_PATTERN)
    state: OutcomeState
    booking_id: int | None = Field(gt=0, description="the original booking")
    new_booking_id: int | None = Field(gt=0, description="the booking rebook made")
    accept_by: str | None = Field(pattern=ISO_Z)
    status: str | None
    reason: str | None
    at: str = Field(pattern=ISO_Z)
    detail: dict[str, Any]


MODELS: dict[str, type[BaseModel]] = {
    "event": RebookEvent,
    "outcome": OutcomeEntry,
    "outcome-message": OutcomeMessage,
}
TITLES = {
    "event": "rebook.request kwargs",
    "outcome": "rebook outcome stream entry",
    "outcome-message": "rebook outcome message",
}


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `kind` (a key of MODELS), as validation reads it."""
    model = MODELS[kind]
    schema = model.model_json_schema(mode="validation")
    schema["title"] = TITLES[kind]
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def render(value: dict[str, Any]) -> str:
    """The committed form: stable key order, two-space indent, a final newline."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"
