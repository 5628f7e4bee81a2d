"""A rebook's record as read from Redis, and the values written into it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from worker.core.models import iso_z
from worker.core.observability import scrub
from worker.core.states import State

KEEP = ""
"""`due=KEEP` leaves the due index as it is; `due=REMOVE` takes the record out of it."""
REMOVE = "-"
SERVER_NOW = "=TIME"
"""A field value that transition.lua replaces with Redis's own clock (`Store.server_time`)."""


def rebook_id_for(event_id: str) -> str:
    """Deterministic id, so a redelivered event maps to the same record and ids are predictable."""
    return "rb-" + hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()


class Rebook(BaseModel):
    """A record as read from Redis (the public fields of `status --json`, plus bookkeeping)."""

    model_config = ConfigDict(frozen=True)

    rebook_id: str
    event_id: str
    booking_id: int
    user_id: str
    performer_id: int | None = None
    state: State
    reason: str = ""
    new_booking_id: int | None = None
    accept_by: str = ""
    accept_by_ts: float | None = None
    status: str = ""
    duplicate_of: str = ""
    resume_state: State | None = None
    created_ts: float
    updated_ts: float = 0.0
    deadline_ts: float
    post_sent_ts: float | None = None
    answer_ts: float | None = None
    online_ts: float | None = None
    """When the performer was last seen online while this rebook waited (presence)."""
    would_post_ts: float | None = None
    """SHADOWED: when the POST would have gone out."""
    performer_resolved: bool = False
    """`performer_id` was read from the original's details, not given by the event: no answer
    compared with it says anything about which key names the performer."""
    adopted: str = ""
    """Why the new booking was taken as this rebook's (empty: the POST's own answer named it)."""
    known_ids: list[int] | None = None
    """The member's bookings the list showed before the last POST (JSON): not its booking."""
    empty_reads: int = 0
    gated_since: float | None = None
    blocked_by: str = ""
    claim: str = ""
    confirm_sent_ts: float | None = None
    confirm_answer_ts: float | None = None
    confirm_reads: int = 0
    action: str = ""
    attempts: int = 0
    errors: int = 0
    reconcile_tries: int = 0

    @classmethod
    def from_hash(cls, rebook_id: str, raw: dict[str, str]) -> Rebook:
        data: dict[str, Any] = {k: v for k, v in raw.items() if v != ""}
        if "known_ids" in data:
            data["known_ids"] = json.loads(data["known_ids"])
        return cls.model_validate({**data, "rebook_id": rebook_id})

    @property
    def unsettled(self) -> bool:
        """A POST went out (or may have) and nothing has shown what it made."""
        return self.post_sent_ts is not None and self.new_booking_id is None

    @property
    def created_at(self) -> str:
        return iso_z(datetime.fromtimestamp(self.created_ts, UTC))

    @property
    def updated_at(self) -> str:
        return iso_z(datetime.fromtimestamp(self.updated_ts or self.created_ts, UTC))

    def public(self) -> dict[str, Any]:
        """The JSON shape of `rebook status --json` / `list --json`."""
        return {
            "rebook_id": self.rebook_id,
            "event_id": self.event_id,
            "booking_id": self.booking_id,
            "user_id": self.user_id,
            "performer_id": self.performer_id,
            "state": self.state.value,
            "reason": self.reason,
            "new_booking_id": self.new_booking_id,
            "accept_by": self.accept_by or None,
            "status": self.status or None,
            "duplicate_of": self.duplicate_of or None,
            "action": self.action or None,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "deadline": iso_z(datetime.fromtimestamp(self.deadline_ts, UTC)),
        }


@dataclass(frozen=True)
class Created:
    kind: Literal["created", "exists", "duplicate"]
    rebook_id: str
    other: str = ""
    dispatch_presence: bool = False
    replicas: int = 0
    """`WAIT`'s answer when `create` was asked to wait (else 0)."""


def scrubbed(value: Any) -> Any:
    """Free text on its way into Redis (reasons, outcome details): upstream error text is
    untrusted and may echo a token, a key or a URL password; scrubbed here, once, for every
    record, history entry, outcome (and so webhook body) and dead letter."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrubbed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrubbed(v) for v in value]
    return value


class StepLock(Protocol):
    """What a step needs of its lock (redis-py's `Lock`; a simulation brings its own)."""

    def acquire(self) -> bool: ...
    def release(self) -> None: ...
    def extend(self, additional_time: float, replace_ttl: bool = False) -> bool: ...


def field_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, State):
        return value.value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return json.dumps(list(value), separators=(",", ":"))
    return str(value)
