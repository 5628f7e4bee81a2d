"""The flow's ports: the upstream, the member's tokens and the queue, as the flow sees them.

Production plugs in `worker.adapters.upstream.UpstreamClient`, `worker.adapters.auth.TokenManager`
and the Celery dispatcher (`worker.celeryapp.dispatch`); the simulation its own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from worker.core.budget import Permit
from worker.core.models import MadeBookingsPage, WebcamBooking


class Dispatcher(Protocol):
    """Sends the next step. Implementations must not block on the step itself."""

    def check_presence(
        self, performer_id: int | None, rebook_id: str | None = None, at: float | None = None
    ) -> None:
        """`at`: run no earlier than this (unix time; within one sweep interval)."""

    def reschedule(self, rebook_id: str, urgent: bool = False) -> None: ...
    def watch(self, rebook_id: str, booking: dict[str, Any]) -> None: ...

    def batch(self) -> AbstractContextManager[None]:
        """What is dispatched inside goes out together, when the block ends (one round trip
        for a sweep's worth of steps instead of one each)."""
        ...


class Upstream(Protocol):
    """The upstream calls the flow makes (`worker.adapters.upstream.UpstreamClient`). A call
    that must have the step's lease (or its mark) right before it goes out is taken in two
    phases: `reserve` (the circuit's gate and the rate limiter, which may wait), then the call
    with its `permit`."""

    def reserve(self, endpoint: str, *, member: bool, share: float | None = None) -> Permit: ...
    def is_online(self, performer_id: int) -> bool: ...
    def reschedule(
        self, token: str, booking_id: int, *, permit: Permit | None = None
    ) -> WebcamBooking: ...
    def booking_details(self, token: str, booking_id: int) -> WebcamBooking: ...
    def confirm(self, token: str, booking_id: int) -> WebcamBooking: ...
    def iter_made_bookings(
        self, token: str, *, start: datetime | None = None, max_pages: int = 10
    ) -> Iterator[WebcamBooking]: ...
    def made_bookings(
        self,
        token: str,
        *,
        start: datetime | None = None,
        page: int = 1,
        permit: Permit | None = None,
    ) -> MadeBookingsPage: ...


class Tokens(Protocol):
    """A member's access token, refreshed single-flight (`worker.adapters.auth.TokenManager`)."""

    def access_token(self, user_id: str, *, rejected: str | None = None) -> str: ...
