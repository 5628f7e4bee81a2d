"""Where presence comes from, behind one small interface.

`getUserSummary` (one call per performer, `AvailableNowWebcam`) is the only presence signal the
upstream's docs list. If a cheaper bulk source turns up (one call for many performers), it is a
new `PresenceSource` handed to the client (`UpstreamClient.presence`): the flow only ever calls
`client.is_online(performer_id)` and needs no change.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

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
        return self.client.user_summary(performer_id).available_now_webcam
