"""Where presence comes from, behind one small interface.

`getUserSummary` (one call per performer, `AvailableNowWebcam`) is the only presence signal the
upstream's docs list. If a cheaper bulk source turns up (one call for many performers), it is a
new `PresenceSource` handed to the client (`UpstreamClient.presence`): the flow only ever calls
`client.is_online(performer_id)` and needs no change.
"""

from __future__ import annotations

import json
from typing import Protocol, runtime_checkable

from worker.core.errors import PresenceUnreadable
from worker.core.models import UserSummary


@runtime_checkable
class PresenceSource(Protocol):
    def is_online(self, performer_id: int) -> bool: ...


class SummaryClient(Protocol):
    def user_summary(self, user_id: int) -> UserSummary: ...


class UserSummaryPresence:
    """The default: `GET /v1/newsfeed/getUserSummary?UserID=` per performer (API key only)."""

    def __init__(self, client: SummaryClient) -> None:
        self.client = client

    def is_online(self, performer_id: int) -> bool:
        """Raises PresenceUnreadable for an answer without the flag, or about another user:
        such an answer does not say "offline", it says nothing."""
        summary = self.client.user_summary(performer_id)
        why = ""
        if "available_now_webcam" not in summary.model_fields_set:
            why = "no AvailableNowWebcam in the answer"
        elif summary.user_id is not None and summary.user_id != performer_id:
            why = f"the answer is about UserID {summary.user_id}"
        if why:
            exc = PresenceUnreadable(why, endpoint="getUserSummary")
            exc.answer = json.dumps(summary.model_dump(mode="json", by_alias=True), default=str)
            raise exc
        return summary.available_now_webcam
