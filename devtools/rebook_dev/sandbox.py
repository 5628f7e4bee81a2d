"""In-memory fake of the AdultWork.com developer API (the "sandbox upstream").

Why: tests, benchmarks and `rebook demo` need an upstream that enforces the real one's rules
(API key, Bearer tokens, expiry, refresh-token rotation, performer presence) and that can be told
to misbehave (faults) and asked what happened (stats), so "never two new bookings for one rebook"
can be measured rather than assumed. Standard library only, plus `requests` for `SandboxClient`.

Datetimes are kept as aware UTC and emitted like the upstream does: offset-less site time
(`Europe/London` by default), with fractional seconds on odd booking ids and without on even ones,
so clients must cope with both forms.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import itertools
import json
import math
import re
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests

__all__ = [
    "FAULT_KINDS",
    "OPERATIONS",
    "REFRESH_TOKEN_TTL_SECONDS",
    "SandboxClient",
    "SandboxServer",
    "main",
]

REFRESH_TOKEN_TTL_SECONDS = 14 * 24 * 3600.0
"""Refresh-token lifetime; the upstream documents about 14 days."""

FIRST_BOOKING_ID = 100001

STATUSES = ("Pending", "Accepted", "Rejected", "Confirmed", "Cancelled")

# Lower-cased path -> (canonical operation name, HTTP method). Paths are matched without regard to
# case because the upstream's docs spell them inconsistently.
_ROUTES: dict[str, tuple[str, str]] = {
    "/v1/webcam/reschedulemadebooking": ("RescheduleMadeBooking", "POST"),
    "/v1/webcam/madebookingdetails": ("MadeBookingDetails", "GET"),
    "/v1/webcam/madebookings": ("MadeBookings", "GET"),
    "/v1/webcam/confirmmadebooking": ("ConfirmMadeBooking", "POST"),
    "/v1/webcam/cancelmadebooking": ("CancelMadeBooking", "POST"),
    "/v1/newsfeed/getusersummary": ("getUserSummary", "GET"),
    "/oauth/token": ("token", "POST"),
}

# -- token checks (issue 21, tokens on the way in): whose token, and what it may do ----------------
_ACCOUNT_ROUTES: dict[str, tuple[str, str]] = {
    "/v1/account/verifycredentials": ("verifyCredentials", "GET"),
    "/v1/account/getpermissions": ("GetPermissions", "GET"),
    "/v1/credithistory/getcurrentcreditbalance": ("GetCurrentCreditBalance", "GET"),
}
_ROUTES.update(_ACCOUNT_ROUTES)
_ACCOUNT_OPS = frozenset(op for op, _ in _ACCOUNT_ROUTES.values())
DEFAULT_SCOPES = ("userid", "account_webcam_bookings")
UNLIMITED_BALANCE = 1_000_000
"""What GetCurrentCreditBalance answers for a member whose balance the sandbox does not count."""
"""What a member's token is granted unless `POST /_sandbox/users` names `"scopes"`."""
# -- end of token checks --------------------------------------------------------------------------

OPERATIONS: tuple[str, ...] = tuple(op for op, _ in _ROUTES.values())
"""Canonical operation names: keys of `stats()["calls"]` and valid fault endpoints."""

_OP_BY_LOWER = {op.lower(): op for op in OPERATIONS}
_MEMBER_OPS = frozenset(op for op in OPERATIONS if op not in ("getUserSummary", "token"))

_PRE_FAULTS = frozenset(
    {"http_400", "http_500", "http_503", "http_429", "timeout", "html_challenge"}
)
_MESSAGE_FAULTS = frozenset({"http_400", "http_500", "http_503", "http_429"})
"""Kinds whose JSON `Message` a fault's `message` option replaces (upstream text is untrusted:
the secrets test plants tokens in it)."""
#: What a CDN's bot challenge looks like: HTML, 403 (or 503), never the API's JSON.
CHALLENGE_PAGE = (
    b'<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title></head>'
    b"<body><noscript>Enable JavaScript and cookies to continue</noscript></body></html>"
)
_POST_FAULTS = frozenset({"http_500_after_commit", "timeout_after_commit", "bad_json"})
_LATE_FAULTS = frozenset({"http_504_commit_later", "timeout_commit_later"})
"""The answer is a 504 (at once, or after `delay`) and the work is done `commit_delay` seconds
later: an upstream whose backend goes on after its gateway gave up."""
_TRICKLE = "trickle"
"""The work is done, then the answer goes out one byte every `delay` seconds (default
`TRICKLE_SECONDS`): from its status line (`part` "all", the default) or, with `part` "body", the
headers at once and the body byte by byte. No socket timeout ever fires on it; only a total
deadline ends it."""
TRICKLE_SECONDS = 1.5
# --- deployment and member faults (issue 21) ---------------------------------------------------
_SETTING_FAULTS = frozenset(
    {
        "invalid_client",  # /OAuth/token: 401 {"error": "invalid_client"}
        "unauthorized_client",  # /OAuth/token: 400 {"error": "unauthorized_client"}
        "api_key_refused",  # 401 "Invalid or missing API key." (the body says so)
        "unauthorized_bare",  # 401 that does not say whose fault (the Web API's stock text)
        "missing_scope",  # 403 naming the scope account_webcam_bookings
        "no_credits",  # RescheduleMadeBooking: 400 "You do not have enough credits ..."
        "presence_no_flag",  # getUserSummary: an answer without AvailableNowWebcam
        "presence_other_user",  # getUserSummary: an answer about another UserID
    }
)
API_KEY_REFUSED = "Invalid or missing API key."
MISSING_SCOPE = "The access token does not grant the scope required: account_webcam_bookings."
NO_CREDITS = "You do not have enough credits to make this booking."
# -------------------------------------------------------------------------------------------------
FAULT_KINDS: frozenset[str] = (
    _PRE_FAULTS | _POST_FAULTS | _LATE_FAULTS | {_TRICKLE} | _SETTING_FAULTS
)

CALL_LOG_SIZE = 200_000
"""Upstream calls kept for `GET /_sandbox/calls` (oldest dropped first)."""
CALL_LOG_PAGE = 10_000
CALL_LOG_MAX_PAGE = 100_000

YEAR_ONE = "0001-01-01T00:00:00"
"""How the upstream writes an unset date (.NET's DateTime.MinValue; `/Site/API/GetHotList`)."""

_DENIED = "Authorization has been denied for this request."
_NOT_FOUND = "Booking not found"


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- responses and request errors -------------------------------------------------------------


@dataclass
class _Response:
    """What the HTTP layer writes; kept separate so the state machine never touches sockets."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    trickle: float | None = None
    """Seconds between the bytes of a trickled answer (the `trickle` fault), else None."""
    trickle_body_only: bool = False


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> _Response:
    hdrs = {"Content-Type": "application/json; charset=utf-8"}
    hdrs.update(headers or {})
    return _Response(status, json.dumps(payload).encode("utf-8"), hdrs)


class _Reject(Exception):
    """Raised inside an operation to answer with an error body (the upstream's `Message` form)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> _Response:
        return _json(self.status, {"Message": self.message})


def _as_int(value: Any, name: str) -> int:
    """An int from JSON or a query string; the upstream (ASP.NET) also binds numeric strings."""
    if isinstance(value, bool):
        raise _Reject(400, f"The {name} field is invalid.")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise _Reject(400, f"The {name} field is required and must be an integer.")


def _as_number(value: Any, name: str, *, minimum: float | None = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Reject(400, f"{name} must be a number")
    if minimum is not None and value < minimum:
        raise _Reject(400, f"{name} must be >= {minimum}")
    return float(value)


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise _Reject(400, "The request is invalid: empty body.")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Reject(400, "The request is invalid: body is not JSON.") from exc
    if not isinstance(data, dict):
        raise _Reject(400, "The request is invalid: body must be a JSON object.")
    return data


def _ci_get(data: Mapping[str, Any], name: str) -> Any:
    """A body field by name, ignoring case like the upstream's model binder."""
    lowered = name.lower()
    for key, value in data.items():
        if key.lower() == lowered:
            return value
    return None


# --- state ------------------------------------------------------------------------------------


PERFORMER_SHAPES = ("user_id", "profile_id", "no_id")
PROFILE_ID_OFFSET = 1_000_000


def performer_object(performer_id: int, shape: str) -> dict[str, Any]:
    """A booking's `Performer` in one of the shapes the undocumented type may have."""
    nickname = f"performer{performer_id}"
    if shape == "profile_id":
        return {"ID": performer_id + PROFILE_ID_OFFSET, "Nickname": nickname}
    if shape == "no_id":
        return {"Nickname": nickname}
    return {"UserID": performer_id, "Nickname": nickname}


@dataclass
class _Config:
    """What `POST /_sandbox/config` sets; it survives `reset`.

    The behaviours the upstream's docs show, each an option (all on with `documented: true`):
    `strict_start_date` (MadeBookings' StartDate must be `yyyy-mm-dd`, else 400),
    `year_one_unset` (unset dates written `0001-01-01T00:00:00`, not null). And what the docs do
    not say, as options: `list_name`/`total_name` of MadeBookings' answer, and `site_zone`, the
    zone the offset-less datetimes are written in (independent of the worker's setting).
    `performer_shape`, the undocumented `Performer` object of a booking: `user_id`
    (`{"UserID": pid, "Nickname"}`), `profile_id` (`{"ID": pid + 1000000, "Nickname"}`: an id
    that is not the user id) or `no_id` (`{"Nickname"}` only).
    """

    accept_by_seconds: float
    token_ttl_seconds: float
    fault_delay_seconds: float
    strict_start_date: bool = False
    year_one_unset: bool = False
    list_name: str = "WebcamBookings"
    total_name: str = "TotalBookings"
    site_zone: str = "Europe/London"
    performer_shape: str = "user_id"
    refresh_token_ttl_seconds: float = REFRESH_TOKEN_TTL_SECONDS
    echo_tokens: bool = False
    """A careless upstream: refusals of the token endpoint echo the refresh token
    (`error_description`), as some OAuth servers do; the scrubber must catch it."""
    latency_ms: float = 0.0
    """Milliseconds every answer of the API and of OAuth waits before it is written (an upstream
    a round trip away); the request's own thread waits, the others go on. Not `/_sandbox/*`."""

    NUMBERS = (
        "accept_by_seconds",
        "token_ttl_seconds",
        "fault_delay_seconds",
        "refresh_token_ttl_seconds",
        "latency_ms",
    )
    FLAGS = ("strict_start_date", "year_one_unset", "echo_tokens")
    NAMES = ("list_name", "total_name")
    #: the options `documented: true` turns on
    DOCUMENTED = ("strict_start_date", "year_one_unset")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in (*self.NUMBERS, *self.FLAGS)}
        out.update({k: getattr(self, k) for k in self.NAMES})
        out["site_zone"] = self.site_zone
        out["performer_shape"] = self.performer_shape
        out["documented"] = all(getattr(self, k) for k in self.DOCUMENTED)
        return out

    def update(self, data: Mapping[str, Any]) -> None:
        """All or nothing: a bad value changes no option."""
        known = {
            *self.NUMBERS,
            *self.FLAGS,
            *self.NAMES,
            "site_zone",
            "performer_shape",
            "documented",
        }
        unknown = set(data) - known
        if unknown:
            raise _Reject(400, f"unknown config keys: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        if "documented" in data:
            if not isinstance(data["documented"], bool):
                raise _Reject(400, "documented must be a boolean")
            values.update(dict.fromkeys(self.DOCUMENTED, data["documented"]))
        for key, value in data.items():
            if key in self.NUMBERS:
                values[key] = _as_number(value, key)
            elif key in self.FLAGS:
                if not isinstance(value, bool):
                    raise _Reject(400, f"{key} must be a boolean")
                values[key] = value
            elif key in self.NAMES:
                if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
                    raise _Reject(400, f"{key} must be a JSON property name")
                values[key] = value
            elif key == "site_zone":
                try:
                    ZoneInfo(str(value))
                except (ZoneInfoNotFoundError, ValueError) as exc:
                    raise _Reject(400, f"unknown time zone {value!r}") from exc
                values[key] = str(value)
            elif key == "performer_shape":
                if value not in PERFORMER_SHAPES:
                    raise _Reject(
                        400, f"performer_shape must be one of {', '.join(PERFORMER_SHAPES)}"
                    )
                values[key] = value
        if values.get("list_name", self.list_name) == values.get("total_name", self.total_name):
            raise _Reject(400, "list_name and total_name must differ")
        for key, value in values.items():
            setattr(self, key, value)


@dataclass
class _Member:
    """One member's current token pair; older pairs are dead (rotation)."""

    user_id: str
    access_token: str | None = None
    access_expires: datetime = field(default_factory=_utcnow)
    refresh_token: str | None = None
    refresh_expires: datetime = field(default_factory=_utcnow)
    revoked: bool = False
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    credits: float | None = None
    """The member's balance (None: unlimited); RescheduleMadeBooking spends the booking's."""


@dataclass
class _Booking:
    booking_id: int
    user_id: str
    performer_id: int
    duration: int
    credits: float
    status: str
    create_date: datetime
    session_date: datetime | None
    accept_by: datetime | None
    last_updated: datetime
    original_id: int | None = None
    is_multiple: bool = False
    software_type_id: int = 3
    sign_in: str = ""
    also_phone_chat: bool = False
    accepted_date: datetime | None = None
    confirmed_date: datetime | None = None
    cancelled_date: datetime | None = None
    cancelled_reason: str | None = None
    cancelled_by: str | None = None
    rejected_reason: str | None = None


@dataclass
class _Fault:
    endpoint: str  # lower-cased operation name or "*"
    kind: str
    remaining: int
    retry_after: float | None
    delay: float | None
    commit_delay: float | None = None
    status: int | None = None
    message: str | None = None
    part: str | None = None


class _World:
    """What the sandbox holds: members and their tokens, bookings, performers' presence, and the
    counters `stats` reports; written as the upstream writes it. Guarded by the state's lock."""

    def __init__(self, config: _Config) -> None:
        self.config = config
        self.clear()

    def clear(self) -> None:
        self.members: dict[str, _Member] = {}
        self.access_index: dict[str, str] = {}
        self.refresh_index: dict[str, str] = {}
        self.used_refresh: set[str] = set()
        self.bookings: dict[int, _Booking] = {}
        self.next_id = FIRST_BOOKING_ID
        self.online: dict[int, bool] = {}
        self.calls: dict[str, int] = dict.fromkeys(OPERATIONS, 0)
        self.new_bookings: dict[int, int] = {}
        self.presence_calls: dict[int, int] = {}
        self.refreshes = 0
        self.elsewhere_reschedules = 0
        self.refreshes_by_user: dict[str, int] = {}

    # --- formatting ---------------------------------------------------------------------------

    @property
    def tz(self) -> ZoneInfo:
        """The site zone: offset-less datetimes are written and read in it."""
        return ZoneInfo(self.config.site_zone)

    def fmt(self, value: datetime | None, fractional: bool) -> str | None:
        """Offset-less site time, like the upstream; unset is null, or year 1 as documented."""
        if value is None:
            return YEAR_ONE if self.config.year_one_unset else None
        local = value.astimezone(self.tz).replace(tzinfo=None)
        return local.isoformat(timespec="milliseconds" if fractional else "seconds")

    def booking_json(self, b: _Booking) -> dict[str, Any]:
        frac = b.booking_id % 2 == 1

        def f(v: datetime | None) -> str | None:
            return self.fmt(v, frac)

        return {
            "WebcamBookingID": b.booking_id,
            "Duration": b.duration,
            "Credits": b.credits,
            "Status": b.status,
            "IsMulitple": b.is_multiple,
            "SoftwareTypeID": b.software_type_id,
            "SignInNameOrEmail": b.sign_in,
            "AlsoPhoneChat": b.also_phone_chat,
            "CreateDate": f(b.create_date),
            "SessionDate": f(b.session_date),
            "AcceptBy": f(b.accept_by),
            "AcceptedDate": f(b.accepted_date),
            "ConfirmedDate": f(b.confirmed_date),
            "CancelledDate": f(b.cancelled_date),
            "CancelledReason": b.cancelled_reason,
            "CancelledBy": b.cancelled_by,
            "RejectedReason": b.rejected_reason,
            "LastUpdated": f(b.last_updated),
            "Performer": performer_object(b.performer_id, self.config.performer_shape),
        }

    def parse_site_datetime(self, text: str) -> datetime:
        """A StartDate: site-time date or datetime (an explicit offset is honoured); with
        `strict_start_date` only the documented `yyyy-mm-dd`."""
        text = text.strip()
        if self.config.strict_start_date and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise _Reject(
                400, f"The value '{text[:40]}' is not valid for StartDate (format yyyy-mm-dd)."
            )
        try:
            if len(text) == 10:
                d = date.fromisoformat(text)
                parsed = datetime(d.year, d.month, d.day)
            else:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise _Reject(400, f"The value '{text}' is not valid for StartDate.") from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=self.tz)
        return parsed.astimezone(UTC)

    # --- members and bookings -----------------------------------------------------------------

    def issue_tokens(self, member: _Member, access_ttl: float) -> dict[str, Any]:
        """A fresh pair for `member`; the previous pair dies at once (rotation)."""
        now = _utcnow()
        if member.access_token is not None:
            self.access_index.pop(member.access_token, None)
        if member.refresh_token is not None:
            self.refresh_index.pop(member.refresh_token, None)
            self.used_refresh.add(member.refresh_token)
        member.access_token = secrets.token_urlsafe(24)
        member.refresh_token = secrets.token_urlsafe(24)
        member.access_expires = now + timedelta(seconds=access_ttl)
        member.refresh_expires = now + timedelta(seconds=self.config.refresh_token_ttl_seconds)
        member.revoked = False
        self.access_index[member.access_token] = member.user_id
        self.refresh_index[member.refresh_token] = member.user_id
        return {
            "access_token": member.access_token,
            "token_type": "bearer",
            "expires_in": max(0, int(access_ttl)),
            "refresh_token": member.refresh_token,
        }

    def member(self, user_id: str) -> _Member:
        m = self.members.get(user_id)
        if m is None:
            m = self.members[user_id] = _Member(user_id)
        return m

    def bearer_user(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        user_id = self.access_index.get(token.strip())
        if user_id is None:
            return None
        m = self.members[user_id]
        if m.revoked or _utcnow() >= m.access_expires:
            return None
        return user_id

    def own_booking(self, user_id: str, raw_id: Any) -> _Booking:
        if raw_id is None:
            raise _Reject(400, "The BookingID field is required.")
        b = self.bookings.get(_as_int(raw_id, "BookingID"))
        if b is None or b.user_id != user_id:
            raise _Reject(404, _NOT_FOUND)
        return b

    def add(self, booking: _Booking) -> _Booking:
        """A booking under the next id (`booking.booking_id` is ignored)."""
        booking.booking_id = self.next_id
        self.next_id += 1
        self.bookings[booking.booking_id] = booking
        return booking

    def counters(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "new_bookings": {str(k): v for k, v in self.new_bookings.items()},
            "presence_calls": {str(k): v for k, v in self.presence_calls.items()},
            "refreshes": self.refreshes,
            "elsewhere_reschedules": self.elsewhere_reschedules,
            "refreshes_by_user": dict(self.refreshes_by_user),
        }


class _Faults:
    """The faults queued by `POST /_sandbox/faults`, each taken by the next matching calls, and
    the answers they make. Guarded by the state's lock (`pre_answer` sleeps without it)."""

    def __init__(self) -> None:
        self.queue: list[_Fault] = []

    def clear(self) -> None:
        self.queue.clear()

    def pending(self) -> int:
        return sum(f.remaining for f in self.queue)

    def take(self, op: str) -> _Fault | None:
        lowered = op.lower()
        for i, f in enumerate(self.queue):
            if f.endpoint in ("*", lowered):
                f.remaining -= 1
                if f.remaining <= 0:
                    del self.queue[i]
                return f
        return None

    def add(self, data: dict[str, Any]) -> _Response:
        endpoint = str(data.get("endpoint", "")).strip()
        if endpoint != "*" and endpoint.lower() not in _OP_BY_LOWER:
            raise _Reject(400, f"endpoint must be '*' or one of {', '.join(OPERATIONS)}")
        kind = str(data.get("kind", ""))
        if kind not in FAULT_KINDS:
            raise _Reject(400, f"kind must be one of {', '.join(sorted(FAULT_KINDS))}")
        count = _as_int(data.get("count", 1), "count")
        if count < 1:
            raise _Reject(400, "count must be >= 1")
        retry_after = data.get("retry_after")
        delay = data.get("delay")
        commit_delay = data.get("commit_delay")
        status = data.get("status")
        if status is not None and (kind != "html_challenge" or status not in (403, 503)):
            raise _Reject(400, "status is for html_challenge only: 403 or 503")
        part = data.get("part")
        if part is not None and (kind != _TRICKLE or part not in ("all", "body")):
            raise _Reject(400, "part is for trickle only: all or body")
        message = data.get("message")
        if message is not None and (kind not in _MESSAGE_FAULTS or not isinstance(message, str)):
            raise _Reject(400, f"message (a string) is for {', '.join(sorted(_MESSAGE_FAULTS))}")
        self.queue.append(
            _Fault(
                endpoint=endpoint.lower(),
                kind=kind,
                remaining=count,
                retry_after=None if retry_after is None else _as_number(retry_after, "retry_after"),
                delay=None if delay is None else _as_number(delay, "delay"),
                commit_delay=None
                if commit_delay is None
                else _as_number(commit_delay, "commit_delay"),
                status=status,
                message=message,
                part=part,
            )
        )
        return _json(200, {"faults_pending": self.pending()})

    @staticmethod
    def setting_answer(fault: _Fault, op: str, params: dict[str, str]) -> _Response | None:
        """The answer of a deployment or member fault (lock held); None where the kind does not
        apply to the operation (it answers as usual)."""
        kind = fault.kind
        if kind in ("invalid_client", "unauthorized_client"):
            if op != "token":
                return None
            return _json(401 if kind == "invalid_client" else 400, {"error": kind})
        if op == "token":
            return None
        if kind == "api_key_refused":
            return _json(401, {"Message": API_KEY_REFUSED})
        if kind == "unauthorized_bare":
            return _json(401, {"Message": _DENIED})
        if kind == "missing_scope":
            return None if op == "getUserSummary" else _json(403, {"Message": MISSING_SCOPE})
        if kind == "no_credits":
            if op != "RescheduleMadeBooking":
                return None
            return _json(400, {"Message": NO_CREDITS})
        if op != "getUserSummary":
            return None
        pid = _as_int(params.get("userid"), "UserID")
        user: dict[str, Any] = {"UserID": pid, "Nickname": f"performer{pid}"}
        if kind == "presence_other_user":
            other = pid + 1
            user = {"UserID": other, "Nickname": f"performer{other}", "AvailableNowWebcam": True}
        return _json(200, {"User": user})

    @staticmethod
    def pre_answer(fault: _Fault, delay: float) -> _Response:
        """The answer of a fault that strikes before the work (the lock is not held)."""
        if fault.kind == "http_400":
            return _json(400, {"Message": fault.message or "The request is invalid."})
        if fault.kind == "http_500":
            return _json(500, {"Message": fault.message or "An error has occurred."})
        if fault.kind == "http_503":
            return _json(503, {"Message": fault.message or "The service is unavailable."})
        if fault.kind == "http_429":
            headers: dict[str, str] = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(math.ceil(fault.retry_after))
            return _json(429, {"Message": fault.message or "Too many requests"}, headers)
        if fault.kind == "html_challenge":
            return _Response(
                fault.status or 403,
                CHALLENGE_PAGE,
                {"Content-Type": "text/html; charset=UTF-8", "Cache-Control": "no-store"},
            )
        time.sleep(delay)  # "timeout"
        return _json(504, {"Message": "The operation has timed out."})


class _CallLog:
    """The timestamped log of API calls (benchmarks: reaction times, rate peaks), read page by
    page through `GET /_sandbox/calls`."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.clear()

    def clear(self) -> None:
        # (seq, unix time of arrival, operation, HTTP status, performer id, booking id, new id)
        self.entries: deque[tuple[int, float, str, int, int | None, int | None, int | None]] = (
            deque(maxlen=CALL_LOG_SIZE)
        )
        self.seq = 0

    def record(
        self, op: str, started: float, query: str, body: bytes, resp: _Response | None
    ) -> None:
        """One entry (takes the lock itself: called once the answer is made)."""
        performer_id = booking_id = new_id = None
        if op == "getUserSummary" or op in _MEMBER_OPS:
            params = {k.lower(): v[-1] for k, v in parse_qs(query).items()}
            raw: Any = params.get("userid" if op == "getUserSummary" else "bookingid")
            if raw is None and body and op != "getUserSummary":
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    data = json.loads(body)
                    raw = _ci_get(data, "BookingID") if isinstance(data, dict) else None
            with contextlib.suppress(_Reject):
                value = None if raw is None else _as_int(raw, "id")
                if op == "getUserSummary":
                    performer_id = value
                else:
                    booking_id = value
        status = resp.status if resp is not None else 0
        if op == "RescheduleMadeBooking" and status == 200 and resp is not None:
            with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError):
                found = json.loads(resp.body).get("WebcamBookingID")
                new_id = found if isinstance(found, int) else None
        with self.lock:
            self.seq += 1
            self.entries.append((self.seq, started, op, status, performer_id, booking_id, new_id))

    def since(self, query: str) -> _Response:
        """A page of entries after `since` (lock held)."""
        params = {k.lower(): v[-1] for k, v in parse_qs(query).items()}
        since = _as_int(params.get("since", "0"), "since")
        limit = _as_int(params.get("limit", str(CALL_LOG_PAGE)), "limit")
        if not 1 <= limit <= CALL_LOG_MAX_PAGE:
            raise _Reject(400, f"limit must be between 1 and {CALL_LOG_MAX_PAGE}")
        rows = []
        first = self.entries[0][0] if self.entries else self.seq + 1
        start = max(0, since + 1 - first)
        for seq, at, op, status, pid, bid, new_id in itertools.islice(
            self.entries, start, start + limit
        ):
            rows.append(
                {
                    "seq": seq,
                    "t": at,
                    "op": op,
                    "status": status,
                    "performer_id": pid,
                    "booking_id": bid,
                    "new_booking_id": new_id,
                }
            )
        return _json(
            200,
            {
                "calls": rows,
                "next": rows[-1]["seq"] if rows else max(since, first - 1),
                "first": first,
                "last": self.seq,
            },
        )


class _Operations:
    """The upstream's operations, once the key, the member's token and any fault let the call
    through (lock held): the work and its answer."""

    def __init__(self, world: _World, client_id: str, client_secret: str) -> None:
        self.world = world
        self.client_id = client_id
        self.client_secret = client_secret

    def run(
        self,
        op: str,
        user_id: str | None,
        params: dict[str, str],
        headers: Mapping[str, str],
        body: bytes,
    ) -> _Response:
        world = self.world
        if op == "token":
            return self.token(headers, body)
        if op in _ACCOUNT_OPS:
            assert user_id is not None
            return self.account(op, world.members[user_id])
        if op == "getUserSummary":
            pid = _as_int(params.get("userid"), "UserID")
            return _json(
                200,
                {
                    "User": {
                        "UserID": pid,
                        "Nickname": f"performer{pid}",
                        "AvailableNowWebcam": world.online.get(pid, False),
                    }
                },
            )
        assert user_id is not None
        if op == "MadeBookings":
            return self.made_bookings(user_id, params)
        if op == "MadeBookingDetails":
            b = world.own_booking(user_id, params.get("bookingid"))
            return _json(200, world.booking_json(b))
        data = _json_object(body)
        b = world.own_booking(user_id, _ci_get(data, "BookingID"))
        now = _utcnow()
        if op == "RescheduleMadeBooking":
            return self.reschedule(b, now)
        if op == "ConfirmMadeBooking":
            if b.status != "Accepted":
                raise _Reject(400, f"Only Accepted bookings can be confirmed (Status {b.status})")
            if b.session_date is None or b.session_date <= now:
                raise _Reject(400, "The booking's session date has passed")
            b.status = "Confirmed"
            b.confirmed_date = b.last_updated = now
            return _json(200, world.booking_json(b))
        # CancelMadeBooking
        reason = _ci_get(data, "Reason")
        b.status = "Cancelled"
        b.cancelled_date = b.last_updated = now
        b.cancelled_reason = None if reason is None else str(reason)
        b.cancelled_by = f"member{user_id}"
        return _json(200, world.booking_json(b))

    @staticmethod
    def account(op: str, member: _Member) -> _Response:
        """verifyCredentials: the token's member (`UserID` a number when the id is one, as the
        upstream's are); GetPermissions: the scopes its token was issued with, all granted;
        GetCurrentCreditBalance: the member's balance as a bare decimal (the doc's sample is
        `299`), only with the extra scope `account_credits_history` (403 naming it otherwise);
        a member with no balance set (unlimited) reads `UNLIMITED_BALANCE`."""
        if op == "GetCurrentCreditBalance":
            if "account_credits_history" not in member.scopes:
                raise _Reject(
                    403,
                    "The access token does not grant the scope required: account_credits_history.",
                )
            return _json(200, UNLIMITED_BALANCE if member.credits is None else member.credits)
        if op == "verifyCredentials":
            uid: int | str = int(member.user_id) if member.user_id.isdigit() else member.user_id
            return _json(200, {"UserID": uid, "Nickname": f"member{member.user_id}"})
        return _json(
            200,
            {"Permissions": [{"Permission": p, "Status": "granted"} for p in member.scopes]},
        )

    def reschedule(self, orig: _Booking, now: datetime) -> _Response:
        world = self.world
        if not world.online.get(orig.performer_id, False):
            raise _Reject(400, "The performer is not online")
        member = world.members.get(orig.user_id)
        if member is not None and member.credits is not None:
            if member.credits < orig.credits:
                raise _Reject(400, NO_CREDITS)
            member.credits -= orig.credits
        new = world.add(
            _Booking(
                booking_id=0,
                user_id=orig.user_id,
                performer_id=orig.performer_id,
                duration=orig.duration,
                credits=orig.credits,
                status="Pending",
                create_date=now,
                session_date=now + timedelta(minutes=5),
                accept_by=now + timedelta(seconds=world.config.accept_by_seconds),
                last_updated=now,
                original_id=orig.booking_id,
                is_multiple=orig.is_multiple,
                software_type_id=orig.software_type_id,
                sign_in=orig.sign_in,
                also_phone_chat=orig.also_phone_chat,
            )
        )
        world.new_bookings[orig.booking_id] = world.new_bookings.get(orig.booking_id, 0) + 1
        return _json(200, world.booking_json(new))

    def made_bookings(self, user_id: str, params: dict[str, str]) -> _Response:
        world = self.world
        per_page = _as_int(params.get("bookingsperpage", "20"), "BookingsPerPage")
        if not 1 <= per_page <= 100:
            raise _Reject(400, "BookingsPerPage must be between 1 and 100")
        page = _as_int(params.get("pagenumber", "1"), "PageNumber")
        if page < 1:
            raise _Reject(400, "PageNumber must be 1 or more")
        order = (params.get("orderby") or "createddate-desc").strip().lower()
        if order not in ("createddate-desc", "createddate-asc"):
            raise _Reject(400, f"OrderBy '{order}' is not supported")
        start_text = params.get("startdate", "")
        start = world.parse_site_datetime(start_text) if start_text.strip() else None
        mine = [
            b
            for b in world.bookings.values()
            if b.user_id == user_id and (start is None or b.create_date >= start)
        ]
        mine.sort(key=lambda b: (b.create_date, b.booking_id), reverse=order == "createddate-desc")
        total = len(mine)
        chunk = mine[(page - 1) * per_page : page * per_page]
        return _json(
            200,
            {
                "PageCount": math.ceil(total / per_page),
                "PageNumber": page,
                "BookingsPerPage": per_page,
                world.config.total_name: total,
                world.config.list_name: [world.booking_json(b) for b in chunk],
            },
        )

    def token(self, headers: Mapping[str, str], body: bytes) -> _Response:
        world = self.world
        form = {
            k: v[-1]
            for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()
        }
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = headers.get("authorization", "")
        if client_id is None and auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:].strip()).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            client_id, _, client_secret = decoded.partition(":")
        if client_id != self.client_id or client_secret != self.client_secret:
            return _json(401, {"error": "invalid_client"})
        if form.get("grant_type") != "refresh_token":
            return _json(400, {"error": "unsupported_grant_type"})
        token = form.get("refresh_token", "")
        user_id = world.refresh_index.get(token)
        echo = (
            {"error_description": f"refresh token {token} is invalid"}
            if world.config.echo_tokens
            else {}
        )
        if not token or token in world.used_refresh or user_id is None:
            return _json(400, {"error": "invalid_grant", **echo})
        m = world.members[user_id]
        if m.revoked or _utcnow() >= m.refresh_expires:
            return _json(401, {"error": "refresh_token_has_expired", **echo})
        world.refreshes += 1
        world.refreshes_by_user[user_id] = world.refreshes_by_user.get(user_id, 0) + 1
        return _json(200, world.issue_tokens(m, world.config.token_ttl_seconds))


class _Control:
    """The `/_sandbox/*` endpoints the tests and the demo drive the sandbox with (lock held)."""

    def __init__(self, world: _World, faults: _Faults, call_log: _CallLog) -> None:
        self.world = world
        self.faults = faults
        self.call_log = call_log

    def handle(self, method: str, path: str, body: bytes, query: str = "") -> _Response:
        world = self.world
        parts = [unquote(p) for p in path.split("/")[2:]]
        low = [p.lower() for p in parts]
        n = len(parts)
        if low == ["reset"] and method == "POST":
            world.clear()
            self.faults.clear()
            self.call_log.clear()
            return _json(200, {"ok": True})
        if low == ["users"] and method == "POST":
            return self.add_user(_json_object(body))
        if n == 3 and low[0] == "users" and low[2] == "credits" and method == "POST":
            return self.credits(parts[1], _json_object(body))
        if n == 3 and low[0] == "users" and low[2] in ("expire", "revoke") and method == "POST":
            m = world.members.get(parts[1])
            if m is None:
                raise _Reject(404, "Unknown user")
            if low[2] == "expire":
                m.access_expires = _utcnow()
            else:
                m.revoked = True
                if m.access_token is not None:
                    world.access_index.pop(m.access_token, None)
            return _json(200, {"ok": True})
        if low == ["bookings"] and method == "POST":
            return self.add_booking(_json_object(body))
        if n == 2 and low[0] == "performers" and method == "PUT":
            pid = _as_int(parts[1], "performer id")
            online = _json_object(body).get("online")
            if not isinstance(online, bool):
                raise _Reject(400, "online must be a boolean")
            world.online[pid] = online
            return _json(200, {"performer_id": pid, "online": online})
        if n == 2 and low[0] == "bookings" and method == "GET":
            b = world.bookings.get(_as_int(parts[1], "booking id"))
            if b is None:
                raise _Reject(404, _NOT_FOUND)
            return _json(
                200, {**world.booking_json(b), "user_id": b.user_id, "original_id": b.original_id}
            )
        if n == 3 and low[0] == "bookings" and low[2] == "reschedule" and method == "POST":
            return self.reschedule_elsewhere(_as_int(parts[1], "booking id"))
        if n == 2 and low[0] == "bookings" and method == "DELETE":
            if world.bookings.pop(_as_int(parts[1], "booking id"), None) is None:
                raise _Reject(404, _NOT_FOUND)
            return _json(200, {"ok": True})
        if n == 3 and low[0] == "bookings" and low[2] == "status" and method == "PUT":
            return self.set_status(_as_int(parts[1], "booking id"), _json_object(body))
        if low == ["faults"] and method == "POST":
            return self.faults.add(_json_object(body))
        if low == ["faults"] and method == "DELETE":
            self.faults.clear()
            return _json(200, {"ok": True})
        if low == ["config"] and method in ("GET", "POST"):
            if method == "POST":
                world.config.update(_json_object(body))
            return _json(200, world.config.as_dict())
        if low == ["stats"] and method == "GET":
            return _json(200, self.stats())
        if low == ["calls"] and method == "GET":
            return self.call_log.since(query)
        return _json(404, {"Message": f"No sandbox control endpoint {method} {path}"})

    def stats(self) -> dict[str, Any]:
        return {**self.world.counters(), "faults_pending": self.faults.pending()}

    def add_user(self, data: dict[str, Any]) -> _Response:
        user_id = data.get("user_id")
        if user_id is None or str(user_id) == "":
            raise _Reject(400, "user_id is required")
        ttl = self.world.config.token_ttl_seconds
        if data.get("expires_in") is not None:
            ttl = _as_number(data["expires_in"], "expires_in", minimum=None)
        member = self.world.member(str(user_id))
        scopes = data.get("scopes")
        if scopes is not None:  # a token granted without some scope (e.g. no webcam bookings)
            if not isinstance(scopes, list) or not all(isinstance(x, str) for x in scopes):
                raise _Reject(400, "scopes must be a list of strings")
            member.scopes = tuple(scopes)
        return _json(200, self.world.issue_tokens(member, ttl))

    def credits(self, user_id: str, data: dict[str, Any]) -> _Response:
        """`POST /_sandbox/users/{id}/credits {"credits": n|null}`: the member's balance."""
        m = self.world.member(user_id)
        raw = data.get("credits")
        m.credits = None if raw is None else _as_number(raw, "credits")
        return _json(200, {"user_id": user_id, "credits": m.credits})

    def add_booking(self, data: dict[str, Any]) -> _Response:
        user_id = data.get("user_id")
        if user_id is None or str(user_id) == "":
            raise _Reject(400, "user_id is required")
        pid = _as_int(data.get("performer_id"), "performer_id")
        duration = _as_int(data.get("duration", 15), "duration")
        credits = _as_number(data.get("credits", 25.5), "credits")
        age = _as_number(data.get("age_seconds", 3600), "age_seconds")
        self.world.member(str(user_id))
        now = _utcnow()
        created = now - timedelta(seconds=age)
        session = now - timedelta(minutes=10)
        b = self.world.add(
            _Booking(
                booking_id=0,
                user_id=str(user_id),
                performer_id=pid,
                duration=duration,
                credits=credits,
                status="Confirmed",
                create_date=created,
                session_date=session,
                accept_by=created + timedelta(seconds=self.world.config.accept_by_seconds),
                accepted_date=created + timedelta(minutes=1),
                confirmed_date=created + timedelta(minutes=2),
                last_updated=created + timedelta(minutes=2),
                sign_in=f"performer{pid}@example.com",
            )
        )
        return _json(200, {"booking_id": b.booking_id})

    def reschedule_elsewhere(self, booking_id: int) -> _Response:
        """Another client of the site reschedules the booking (not through the API key path,
        whatever the performer's presence): a new booking from that original, counted in
        `new_bookings` like any other and in `elsewhere_reschedules`."""
        world = self.world
        orig = world.bookings.get(booking_id)
        if orig is None:
            raise _Reject(404, _NOT_FOUND)
        now = _utcnow()
        new = world.add(
            replace(
                orig,
                status="Pending",
                create_date=now,
                session_date=now + timedelta(minutes=5),
                accept_by=now + timedelta(seconds=world.config.accept_by_seconds),
                last_updated=now,
                original_id=orig.booking_id,
                accepted_date=None,
                confirmed_date=None,
                cancelled_date=None,
                cancelled_reason=None,
                cancelled_by=None,
                rejected_reason=None,
            )
        )
        world.new_bookings[orig.booking_id] = world.new_bookings.get(orig.booking_id, 0) + 1
        world.elsewhere_reschedules += 1
        return _json(200, world.booking_json(new))

    def set_status(self, booking_id: int, data: dict[str, Any]) -> _Response:
        b = self.world.bookings.get(booking_id)
        if b is None:
            raise _Reject(404, _NOT_FOUND)
        wanted = str(data.get("status", "")).strip().lower()
        status = next((s for s in STATUSES if s.lower() == wanted), None)
        if status is None:
            raise _Reject(400, f"status must be one of {', '.join(STATUSES)}")
        reason = data.get("reason")
        now = _utcnow()
        b.status = status
        b.last_updated = now
        if status == "Accepted":
            b.accepted_date = now
        elif status == "Confirmed":
            b.confirmed_date = now
        elif status == "Cancelled":
            b.cancelled_date = now
            b.cancelled_reason = None if reason is None else str(reason)
            b.cancelled_by = f"performer{b.performer_id}"
        elif status == "Rejected":
            b.rejected_reason = None if reason is None else str(reason)
        return _json(200, self.world.booking_json(b))


class _SandboxState:
    """The sandbox behind one lock; `handle` maps a parsed request to a `_Response`: the API's
    checks and faults here, the work in `_Operations`, the control endpoints in `_Control`.

    The lock is never held while sleeping for a fault delay, so a slow fault on one request does
    not stall the others (the point of a timeout fault is a slow answer, not a frozen upstream).
    """

    def __init__(
        self,
        *,
        api_key: str,
        api_key_header: str,
        client_id: str,
        client_secret: str,
        config: _Config,
        timezone: str,
    ) -> None:
        self.api_key = api_key
        self.api_key_header = api_key_header
        self.client_id = client_id
        self.client_secret = client_secret
        self.config = config
        config.update({"site_zone": timezone})
        self.lock = threading.Lock()
        self.world = _World(config)
        self.faults = _Faults()
        self.call_log = _CallLog(self.lock)
        self.operations = _Operations(self.world, client_id, client_secret)
        self.control = _Control(self.world, self.faults, self.call_log)

    @property
    def tz(self) -> ZoneInfo:
        return self.world.tz

    def handle(
        self,
        method: str,
        raw_path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        role: str = "all",
    ) -> _Response:
        """Route one request. `headers` keys are lower-cased. `role` is the listener's: "all"
        (one host), or "api" and "oauth" when OAuth has its own host, as documented (the API
        host then has no /OAuth/token, and the OAuth host nothing else)."""
        path = raw_path.rstrip("/") or "/"
        lower = path.lower()
        if (role == "api" and lower == "/oauth/token") or (
            role == "oauth" and lower != "/oauth/token"
        ):
            return _json(
                404, {"Message": "No HTTP resource was found that matches the request URI."}
            )
        try:
            if lower.startswith("/_sandbox"):
                with self.lock:
                    return self.control.handle(method, path, body, query)
            route = _ROUTES.get(lower)
            if route is not None:
                started = time.time()
                resp: _Response | None = None
                try:
                    resp = self.upstream(route[0], route[1], method, query, headers, body)
                    return resp
                finally:
                    self.call_log.record(route[0], started, query, body, resp)
            if lower.startswith("/v1/") or lower.startswith("/oauth/"):
                return _json(
                    404, {"Message": "No HTTP resource was found that matches the request URI."}
                )
            return _json(404, {"Message": "Not found"})
        except _Reject as rej:
            return rej.response()

    def upstream(
        self,
        op: str,
        allowed: str,
        method: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> _Response:
        params = {k.lower(): v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        world = self.world
        with self.lock:
            world.calls[op] += 1
            if op == "getUserSummary":
                try:
                    pid = _as_int(params.get("userid"), "UserID")
                except _Reject:
                    pass
                else:
                    world.presence_calls[pid] = world.presence_calls.get(pid, 0) + 1
            if method != allowed:
                return _json(
                    405,
                    {"Message": f"The requested resource does not support http method '{method}'."},
                    {"Allow": allowed},
                )
            user_id: str | None = None
            if op != "token":
                # the key as a header or as the documented `?apiKey=` query parameter
                if (
                    headers.get(self.api_key_header.lower()) != self.api_key
                    and params.get("apikey") != self.api_key
                ):
                    return _json(401, {"Message": API_KEY_REFUSED})
                if op in _MEMBER_OPS:
                    user_id = world.bearer_user(headers)
                    if user_id is None:
                        return _json(401, {"Message": _DENIED})
            fault = self.faults.take(op)
            delay = self.config.fault_delay_seconds
        if fault is not None and fault.delay is not None:
            delay = fault.delay

        if fault is not None and fault.kind in _SETTING_FAULTS:
            with self.lock:
                answer = self.faults.setting_answer(fault, op, params)
            if answer is not None:
                return answer
            fault = None
        if fault is not None and fault.kind in _PRE_FAULTS:
            return self.faults.pre_answer(fault, delay)
        if fault is not None and fault.kind in _LATE_FAULTS:
            later = fault.commit_delay if fault.commit_delay is not None else 2 * delay
            self.commit_later(later, op, user_id, params, headers, body)
            if fault.kind == "timeout_commit_later":
                time.sleep(delay)
            return _json(504, {"Message": "The operation has timed out."})

        with self.lock:
            try:
                resp = self.operations.run(op, user_id, params, headers, body)
            except _Reject as rej:
                resp = rej.response()

        if fault is None:
            return resp
        if fault.kind == _TRICKLE:  # after the work: a POST's booking is made
            resp.trickle = fault.delay if fault.delay is not None else TRICKLE_SECONDS
            resp.trickle_body_only = fault.part == "body"
            return resp
        if fault.kind == "http_500_after_commit":
            return _json(500, {"Message": "An error has occurred."})
        if fault.kind == "timeout_after_commit":
            time.sleep(delay)
            return resp
        # bad_json: the work is done but the answer cannot be parsed.
        cut = resp.body[: max(1, len(resp.body) // 2)]
        return _Response(200, cut, {"Content-Type": "application/json; charset=utf-8"})

    def commit_later(self, seconds: float, *request: Any) -> None:
        def commit() -> None:
            # a refusal then (the performer went offline meanwhile) makes nothing
            with self.lock, contextlib.suppress(_Reject):
                self.operations.run(*request)

        timer = threading.Timer(seconds, commit)
        timer.daemon = True
        timer.start()


# --- HTTP layer -------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    """Daemon request threads, so a sleeping timeout fault never blocks `stop()`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], state: _SandboxState, quiet: bool, role: str = "all"
    ) -> None:
        self.state = state
        self.quiet = quiet
        self.role = role
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout faults) is expected; don't spray tracebacks.
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError) or self.quiet:
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP adapter: parse, hand to `_SandboxState.handle`, write. Never raises."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid a 40 ms stall
    server_version = "RebookSandbox/1.0"
    server: _HTTPServer

    def _dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            split = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            resp = self.server.state.handle(
                self.command, split.path, split.query, headers, body, self.server.role
            )
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            return
        except Exception as exc:  # the server must survive any handler bug
            resp = _json(500, {"Message": "An error has occurred.", "ExceptionMessage": repr(exc)})
        latency = self.server.state.config.latency_ms
        if latency > 0 and not self.path.lower().startswith("/_sandbox"):
            time.sleep(latency / 1000.0)  # this request's thread only (a threaded server)
        if resp.trickle is not None:
            self._trickle(resp, resp.trickle)
            return
        try:
            self.send_response(resp.status)
            for name, value in resp.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            self.wfile.write(resp.body)
            self.wfile.flush()
        except (ConnectionError, TimeoutError, ValueError):
            self.close_connection = True

    def _trickle(self, resp: _Response, every: float) -> None:
        """The `trickle` fault: the answer one byte every `every` seconds (this request's own
        thread sleeps; the others go on). Ends early when the client goes away."""
        reason = self.responses.get(resp.status, ("",))[0]
        lines = [f"HTTP/1.1 {resp.status} {reason}", f"Server: {self.version_string()}"]
        lines.append(f"Date: {self.date_time_string()}")
        lines += [f"{name}: {value}" for name, value in resp.headers.items()]
        lines += [f"Content-Length: {len(resp.body)}", "Connection: close", "", ""]
        head = "\r\n".join(lines).encode("latin-1")
        raw = head + resp.body
        start = len(head) if resp.trickle_body_only else 0
        self.close_connection = True
        try:
            if start:
                self.wfile.write(raw[:start])
                self.wfile.flush()
            for i in range(start, len(raw)):
                time.sleep(every)
                self.wfile.write(raw[i : i + 1])
                self.wfile.flush()
        except (ConnectionError, TimeoutError, ValueError, OSError):
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


class SandboxServer:
    """The sandbox upstream over HTTP; bound on construction so `url` is known before `start()`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str = "sandbox-key",
        api_key_header: str = "apiKey",
        client_id: str = "sandbox-client",
        client_secret: str = "sandbox-secret",
        token_ttl_seconds: float = 3600.0,
        refresh_token_ttl_seconds: float = REFRESH_TOKEN_TTL_SECONDS,
        accept_by_seconds: float = 600.0,
        fault_delay_seconds: float = 2.0,
        timezone: str = "Europe/London",
        oauth_port: int | None = None,
        documented: bool = False,
        quiet: bool = True,
        latency_ms: float = 0.0,
    ) -> None:
        """`oauth_port`: OAuth on a listener of its own (0 = any free port), as the upstream has
        it on another host; `token_url` follows. `documented`: every documented behaviour on
        (see `_Config`); with `oauth_port` that is the "documented mode" of the test suite."""
        self.state = _SandboxState(
            api_key=api_key,
            api_key_header=api_key_header,
            client_id=client_id,
            client_secret=client_secret,
            config=_Config(
                accept_by_seconds=accept_by_seconds,
                token_ttl_seconds=token_ttl_seconds,
                fault_delay_seconds=fault_delay_seconds,
                refresh_token_ttl_seconds=refresh_token_ttl_seconds,
            ),
            timezone=timezone,
        )
        if documented:
            self.state.config.update({"documented": True})
        if latency_ms:
            self.state.config.update({"latency_ms": latency_ms})
        split = oauth_port is not None
        self._httpd = _HTTPServer((host, port), self.state, quiet, "api" if split else "all")
        self._oauth = (
            _HTTPServer((host, oauth_port or 0), self.state, quiet, "oauth") if split else None
        )
        self._threads: list[threading.Thread] = []
        self._closed = False

    @staticmethod
    def _root(httpd: _HTTPServer) -> str:
        host, port = httpd.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """Host root, e.g. `http://127.0.0.1:54321` (no `/v1`)."""
        return self._root(self._httpd)

    @property
    def oauth_url(self) -> str:
        """Root of the OAuth host: its own listener with `oauth_port`, else the API's."""
        return self._root(self._oauth) if self._oauth is not None else self.url

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def token_url(self) -> str:
        """Where this sandbox's OAuth token endpoint is (`REBOOK_OAUTH_TOKEN_URL`)."""
        return f"{self.oauth_url}/OAuth/token"

    def env(self) -> dict[str, str]:
        """The `REBOOK_*` variables that point a worker at this sandbox (the defaults point at
        the production upstream and there is no default key)."""
        st = self.state
        return {
            "REBOOK_API_BASE_URL": self.url,
            "REBOOK_API_KEY": st.api_key,
            "REBOOK_API_KEY_HEADER": st.api_key_header,
            "REBOOK_OAUTH_TOKEN_URL": self.token_url,
            "REBOOK_OAUTH_CLIENT_ID": st.client_id,
            "REBOOK_OAUTH_CLIENT_SECRET": st.client_secret,
            "REBOOK_API_TIMEZONE": st.tz.key,
        }

    def _listeners(self) -> list[_HTTPServer]:
        return [self._httpd] + ([self._oauth] if self._oauth is not None else [])

    def start(self) -> SandboxServer:
        """Serve in daemon threads; returns self for `with SandboxServer().start() as s`."""
        if not self._threads:
            for httpd in self._listeners():
                thread = threading.Thread(
                    target=httpd.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    name=f"sandbox-{httpd.server_address[1]}",
                    daemon=True,
                )
                thread.start()
                self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving and release the ports; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._threads:
            for httpd in self._listeners():
                httpd.shutdown()
            for thread in self._threads:
                thread.join(timeout=5)
        for httpd in self._listeners():
            httpd.server_close()

    def serve_forever(self) -> None:
        """Blocking; for `rebook sandbox --port P`. Ctrl-C stops it."""
        if self._oauth is not None:
            oauth = threading.Thread(
                target=self._oauth.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
            )
            oauth.start()
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._closed = True
            for httpd in self._listeners():
                httpd.server_close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- client -----------------------------------------------------------------------------------


class SandboxClient:
    """Drives the control endpoints (tests, demo); non-2xx raises `requests.HTTPError`."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        resp = self._session.request(
            method,
            f"{self.base_url}/_sandbox/{path}",
            json=payload,
            timeout=self.timeout,
        )
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def close(self) -> None:
        self._session.close()

    def reset(self) -> None:
        self._call("POST", "reset")

    def add_user(
        self,
        user_id: str,
        expires_in: float | None = None,
        scopes: list[str] | None = None,
    ) -> dict[str, Any]:
        """A new pair for the member; `scopes`: what its token is granted (default all)."""
        payload: dict[str, Any] = {"user_id": user_id}
        if expires_in is not None:
            payload["expires_in"] = expires_in
        if scopes is not None:
            payload["scopes"] = scopes
        result: dict[str, Any] = self._call("POST", "users", payload)
        return result

    def expire_user(self, user_id: str) -> None:
        self._call("POST", f"users/{quote(user_id, safe='')}/expire")

    def revoke_user(self, user_id: str) -> None:
        self._call("POST", f"users/{quote(user_id, safe='')}/revoke")

    def set_credits(self, user_id: str, credits: float | None) -> None:
        """The member's balance (None: unlimited): RescheduleMadeBooking refuses past it."""
        self._call("POST", f"users/{quote(user_id, safe='')}/credits", {"credits": credits})

    def add_booking(self, user_id: str, performer_id: int, **extra: Any) -> int:
        result = self._call(
            "POST", "bookings", {"user_id": user_id, "performer_id": performer_id, **extra}
        )
        return int(result["booking_id"])

    def set_online(self, performer_id: int, online: bool) -> None:
        self._call("PUT", f"performers/{performer_id}", {"online": online})

    def set_status(self, booking_id: int, status: str, reason: str | None = None) -> None:
        self._call("PUT", f"bookings/{booking_id}/status", {"status": status, "reason": reason})

    def booking(self, booking_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"bookings/{booking_id}")
        return result

    def reschedule_elsewhere(self, booking_id: int) -> int:
        """Another client reschedules `booking_id` behind rebook's back: the new booking's id."""
        result: dict[str, Any] = self._call("POST", f"bookings/{booking_id}/reschedule")
        return int(result["WebcamBookingID"])

    def remove_booking(self, booking_id: int) -> None:
        """The booking vanishes upstream (no longer listed, details 404)."""
        self._call("DELETE", f"bookings/{booking_id}")

    def fault(self, endpoint: str, kind: str, count: int = 1, **extra: Any) -> None:
        self._call("POST", "faults", {"endpoint": endpoint, "kind": kind, "count": count, **extra})

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def configure(self, **config: Any) -> dict[str, Any]:
        """Options of `_Config` (numbers, flags, names, `site_zone`, `documented`)."""
        result: dict[str, Any] = self._call("POST", "config", config)
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def calls(self, since: int = 0, limit: int = 10_000) -> dict[str, Any]:
        """Upstream calls after sequence number `since`, oldest first:
        `{"calls": [{"seq", "t", "op", "status", "performer_id", "booking_id",
        "new_booking_id"}, ...], "next": seq to pass next time, "first", "last"}`."""
        result: dict[str, Any] = self._call("GET", f"calls?since={since}&limit={limit}")
        return result


# --- CLI --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """`python -m rebook_dev.sandbox --port 8765`: run the sandbox in the foreground."""
    p = argparse.ArgumentParser(
        prog="rebook_dev.sandbox", description="In-memory fake of the AdultWork.com API."
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--api-key", default="sandbox-key")
    p.add_argument("--api-key-header", default="apiKey")
    p.add_argument("--client-id", default="sandbox-client")
    p.add_argument("--client-secret", default="sandbox-secret")
    p.add_argument("--token-ttl", type=float, default=3600.0, help="access-token seconds")
    p.add_argument(
        "--refresh-token-ttl",
        type=float,
        default=REFRESH_TOKEN_TTL_SECONDS,
        help="refresh-token seconds (unused, it dies: refresh_token_has_expired)",
    )
    p.add_argument("--accept-by", type=float, default=600.0, help="AcceptBy seconds after create")
    p.add_argument("--fault-delay", type=float, default=2.0, help="default timeout-fault seconds")
    p.add_argument("--timezone", default="Europe/London", help="site zone of its datetimes")
    p.add_argument("--oauth-port", type=int, default=None, help="OAuth on its own port")
    p.add_argument("--documented", action="store_true", help="every documented behaviour on")
    p.add_argument("--latency-ms", type=float, default=0.0, help="ms before every API answer")
    p.add_argument("--verbose", action="store_true", help="log every request")
    args = p.parse_args(argv)
    server = SandboxServer(
        args.host,
        args.port,
        api_key=args.api_key,
        api_key_header=args.api_key_header,
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_ttl_seconds=args.token_ttl,
        refresh_token_ttl_seconds=args.refresh_token_ttl,
        accept_by_seconds=args.accept_by,
        fault_delay_seconds=args.fault_delay,
        timezone=args.timezone,
        oauth_port=args.oauth_port,
        documented=args.documented,
        quiet=not args.verbose,
        latency_ms=args.latency_ms,
    )
    print(f"sandbox upstream listening on {server.url}; to use it:", flush=True)
    for name, value in server.env().items():
        print(f"export {name}={value}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
