"""The small error tree of rebook. Each upstream error carries its retry decision.

Flow code branches on the class, never on status codes: the one status→exception mapping lives in
`worker.adapters.upstream.error_for_response`. Messages never contain tokens or keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.core.models import WebcamBooking


class RebookError(Exception):
    """Base of every error rebook raises on purpose."""


class ConfigError(RebookError):
    """A setting is missing or invalid; the message is one line naming the variable."""


class StoreUnavailable(RebookError):
    """Redis cannot be reached; the message names the URL with its password masked."""


class InvalidEvent(RebookError):
    """A rebook event that can never be processed; goes to the dead-letter stream, never retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReauthRequired(RebookError):
    """The member's tokens are missing or refused: only a new `rebook tokens set` helps."""

    def __init__(self, user_id: str, detail: str = "refresh refused") -> None:
        super().__init__(f"member {user_id} must re-authorise ({detail})")
        self.user_id = user_id
        self.detail = detail


class UpstreamError(RebookError):
    """An upstream call did not give a usable answer.

    `retry_after` is the wait the upstream asked for, if any. Whether to try again is the class:
    the flow catches `Transient`, `Throttled`, `Ambiguous`, ... each where it knows what to do.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"{self.endpoint} " if self.endpoint else ""
        code = f"HTTP {self.status}: " if self.status else ""
        return f"{where}{code}{self.message}"


class Transient(UpstreamError):
    """Nothing happened upstream (or the call is read-only): try again after a backoff."""


class RateLimited(Transient):
    """HTTP 429: try again after `retry_after` seconds, or a backoff when none was given."""


class Challenged(Transient):
    """Not the API's answer: an HTML page or a body that is not JSON (a CDN bot challenge, a
    proxy's error page). It never reached the API, so it is never a refusal and never a reason
    to re-authorise; try again after a backoff (`retry_after` if the page gave one)."""


class Throttled(RateLimited):
    """Our own shared rate budget said wait (`retry_after`): no request went out. Never counts
    toward an attempt limit: it says "not now", not "failed"."""


class NotSent(Transient):
    """A call stopped by its own step just before it would have gone out: nothing was sent."""


class Shadowed(NotSent):
    """Shadow mode (`REBOOK_SHADOW`): a call that books, confirms or cancels stopped where it
    would have gone out (after the rate limiter, and what its caller did between `reserve` and
    the call). Nothing was sent."""


class StepInterrupted(RebookError):
    """The flow steering itself, never an upstream answer: raised and caught by the flow's own
    code, apart from :class:`UpstreamError`, so no handler of upstream failures catches one by
    accident. Nothing was sent when one is raised."""


class LeaseLost(StepInterrupted):
    """The step's lease on its rebook was taken over: another step decides; this one stops."""


class Gated(StepInterrupted):
    """Another rebook of the same member and performer (while the performer field is
    unconfirmed: of the same member) has an unsettled POST."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"waiting for {holder}")
        self.holder = holder


class Capped(StepInterrupted):
    """The member reached REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY: this POST is not sent."""


class Unmarked(StepInterrupted):
    """The "POST sent" mark is not as the POST needs it (the rebook changed meanwhile, or too
    few replicas have it): the POST is not sent."""


class Found(StepInterrupted):
    """Before the POST, a booking it would duplicate was found: adopted instead of sent —
    unless another rebook of the same member and performer could be its maker."""

    def __init__(self, bookings: list[WebcamBooking], siblings: list[str]) -> None:
        super().__init__(f"booking {bookings[0].booking_id} found")
        self.bookings = bookings
        self.siblings = siblings


class AuthExpired(UpstreamError):
    """HTTP 401 on a member call: refresh the access token, then the call may be repeated."""


class Rejected(UpstreamError):
    """The upstream refused the request with a reason (4xx): repeating it will not help."""


class TokenRefused(Rejected):
    """The token endpoint refused a refresh; `code` is its OAuth `error` ("" if none)."""

    code: str = ""


class NotFound(Rejected):
    """HTTP 404: the booking does not exist or is not the member's."""


class Ambiguous(UpstreamError):
    """A non-idempotent call may or may not have taken effect (timeout, 5xx, unreadable body).

    Never repeat the call: settle it by reconciliation first.
    """


class PresenceUnreadable(Transient):
    """A presence answer that does not say whether the performer is online (no
    `AvailableNowWebcam`, or about another `UserID`): unknown, never "offline"; retried."""

    answer: str = ""
    """The answer as read (JSON, no secrets: a performer's public summary)."""


#: The settings a deployment fault is about, by reason (`rebook stats` "paused", doctor, README).
FAULT_SETTINGS: dict[str, str] = {
    "oauth_client": "REBOOK_OAUTH_CLIENT_ID / REBOOK_OAUTH_CLIENT_SECRET",
    "api_key": "REBOOK_API_KEY",
    "scope": "the OAuth client's scopes (account_webcam_bookings)",
}


class DeploymentFault(RebookError):
    """The site's setting is refused (OAuth client, API key, scope): no member's fault, so no
    member is parked and no token rotated. The calls it affects pause behind one circuit
    (`worker.core.circuit`). `paused`: raised by the open circuit, no request was sent.

    Deliberately not an UpstreamError: no handler that counts errors or attempts catches it."""

    def __init__(self, reason: str, message: str = "", *, paused: bool = False) -> None:
        self.reason = reason
        self.setting = FAULT_SETTINGS.get(reason, reason)
        self.message = message
        self.paused = paused
        super().__init__(reason, message)

    def __str__(self) -> str:  # from the fields: a scrubbed `message` shows scrubbed
        what = "paused" if self.paused else "refused"
        tail = f": {self.message}" if self.message else ""
        return f"{what}: {self.setting} ({self.reason}){tail}"
