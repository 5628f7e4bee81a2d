"""A rebook record as the console's pages and views get it, without a store."""

from __future__ import annotations

from typing import Any

from worker.core.states import State
from worker.core.store import Rebook

NOW = 1_800_000_000.0


def rec(state: State, **extra: Any) -> Rebook:
    data: dict[str, Any] = {
        "rebook_id": "rb-0123456789abcdef",
        "event_id": "order-1",
        "booking_id": 100,
        "user_id": "dave",
        "performer_id": 102,
        "state": state,
        "created_ts": NOW - 600,
        "updated_ts": NOW - 300,
        "deadline_ts": NOW + 3600,
        **extra,
    }
    return Rebook.model_validate(data)
