"""Typed shapes of everything that crosses a boundary: events, upstream answers, tokens, records.

Upstream models tolerate unknown fields and the upstream's own spelling (`IsMulitple`); its
offset-less datetimes are read in the API time zone (validation context `{"tz": ZoneInfo}`).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from worker.core.errors import InvalidEvent
from worker.core.states import State

DEFAULT_ZONE = ZoneInfo("Europe/London")
MAX_EVENT_BYTES = 64 * 1024
MAX_WAIT_LIMIT = 7 * 86400


UPSTREAM_FINAL = {
    "accepted": State.ACCEPTED,
    "rejected": State.REJECTED,
    "confirmed": State.CONFIRMED,
    "cancelled": State.CANCELLED,
    "canceled": State.CANCELLED,
}


# --- datetimes ---------------------------------------------------------------------------------

_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_upstream_datetime(value: Any, zone: ZoneInfo = DEFAULT_ZONE) -> datetime | None:
    """An upstream datetime as aware UTC; offset-less values are site time (`zone`).

    Year 1 (`0001-01-01T00:00:00`, .NET's `DateTime.MinValue`) is how the upstream writes "not
    set": None, never a date (shifting it by a zone east of UTC overflows). Anything unreadable,
    an overflow at the other end of the calendar included, is a ValueError: pydantic turns that
    into a validation error naming the field, where an OverflowError would escape as a crash.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = _FRACTION.sub(r"\1", value.strip()).replace(" ", "T", 1)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"not an ISO 8601 datetime: {value[:40]!r}") from exc
    else:
        raise ValueError(f"not a datetime: {type(value).__name__}")
    if parsed.year == 1:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ValueError(f"datetime out of range: {str(value)[:40]!r}") from exc


def site_date(value: datetime, zone: ZoneInfo = DEFAULT_ZONE) -> str:
    """`yyyy-mm-dd` of the site-time day before `value`: MadeBookings' documented StartDate form
    takes a date only, and a day early keeps everything since `value` in the answer even when
    the site zone is not what we believe (the caller filters by the exact time)."""
    return (value.astimezone(zone) - timedelta(days=1)).date().isoformat()


def iso_z(value: datetime | None) -> str:
    """UTC ISO 8601 ending in `Z`, as every time rebook publishes is written ('' for none)."""
    if value is None:
        return ""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_ts(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


# --- upstream ----------------------------------------------------------------------------------


class UpstreamModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _site_time(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and field.annotation in (datetime | None, datetime):
            zone = (info.context or {}).get("tz", DEFAULT_ZONE)
            try:
                return parse_upstream_datetime(value, zone)
            except ValueError:
                raise
            except Exception as exc:  # never a crash: a readable error naming the field
                raise ValueError(f"unreadable datetime ({type(exc).__name__})") from None
        return value


class WebcamBooking(UpstreamModel):
    """One webcam booking as the upstream returns it (`MadeBookingDetails`, `MadeBookings`)."""

    booking_id: int = Field(alias="WebcamBookingID")
    duration: int | None = Field(None, alias="Duration")
    credits: Decimal | None = Field(None, alias="Credits")
    status: str = Field("", alias="Status")
    is_multiple: bool | None = Field(
        None, alias="IsMulitple", validation_alias=AliasChoices("IsMulitple", "IsMultiple")
    )
    software_type_id: int | None = Field(None, alias="SoftwareTypeID")
    sign_in_name_or_email: str | None = Field(None, alias="SignInNameOrEmail")
    also_phone_chat: bool | None = Field(None, alias="AlsoPhoneChat")
    create_date: datetime | None = Field(None, alias="CreateDate")
    session_date: datetime | None = Field(None, alias="SessionDate")
    accept_by: datetime | None = Field(None, alias="AcceptBy")
    accepted_date: datetime | None = Field(None, alias="AcceptedDate")
    confirmed_date: datetime | None = Field(None, alias="ConfirmedDate")
    cancelled_date: datetime | None = Field(None, alias="CancelledDate")
    cancelled_reason: str | None = Field(None, alias="CancelledReason")
    cancelled_by: str | None = Field(None, alias="CancelledBy")
    rejected_reason: str | None = Field(None, alias="RejectedReason")
    last_updated: datetime | None = Field(None, alias="LastUpdated")
    performer: dict[str, Any] | None = Field(None, alias="Performer")

    @property
    def performer_id(self) -> int | None:
        """A guess at the performer's user id (the first id under six likely keys), for logs
        only: `Performer`'s fields are undocumented, and a guess never decides whose a booking
        is (`performer_under` with a confirmed key does, worker/core/flow/bookings.py)."""
        if not self.performer:
            return None
        for key in ("UserID", "UserId", "userID", "ID", "Id", "id"):
            value = _as_id(self.performer.get(key))
            if value is not None:
                return value
        return None

    def performer_under(self, key: str) -> int | None:
        """The id under `key` of `Performer` (None: no Performer, no such key, or not an id)."""
        if not self.performer:
            return None
        return _as_id(self.performer.get(key))

    @property
    def final_state(self) -> State | None:
        """The terminal rebook state this upstream status means, if any."""
        return UPSTREAM_FINAL.get(self.status.strip().lower())

    @property
    def reason(self) -> str:
        return self.rejected_reason or self.cancelled_reason or ""


def _as_id(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


class Unreadable(ValueError):
    """An answer whose meaning cannot be told: never read as "nothing there"."""


TOTAL_NAMES = ("TotalBookings", "BookingsTotal", "WebcamBookingsTotal", "TotalCount", "Total")
"""Where the total of a MadeBookings answer may be (undocumented; `<Items>Total` on siblings)."""


class MadeBookingsPage(BaseModel):
    """One page of `MadeBookings`. The list's name is undocumented: it is looked up under the
    configured names, and an answer whose list cannot be found, is not a list or contradicts its
    own counts is :class:`Unreadable` — reconciliation must never take it for an empty list."""

    model_config = ConfigDict(frozen=True)

    page_count: int = 1
    page_number: int = 1
    bookings_per_page: int = 0
    total: int | None = None
    bookings: list[WebcamBooking] = Field(default_factory=list)

    @classmethod
    def parse(
        cls,
        payload: Any,
        *,
        list_names: tuple[str, ...] = ("WebcamBookings",),
        zone: ZoneInfo = DEFAULT_ZONE,
    ) -> MadeBookingsPage:
        if not isinstance(payload, dict):
            raise Unreadable(f"answer is {type(payload).__name__}, not an object")
        by_lower = {str(k).lower(): k for k in payload}
        name = next((by_lower[n.lower()] for n in list_names if n.lower() in by_lower), None)
        if name is None:
            seen = ", ".join(sorted(str(k) for k in payload)[:20]) or "none"
            raise Unreadable(
                f"no booking list under {'/'.join(list_names)} (keys seen: {seen}); "
                "set REBOOK_MADE_BOOKINGS_LIST_NAMES"
            )
        items = payload[name]
        if not isinstance(items, list):
            raise Unreadable(f"{name} is {type(items).__name__}, not a list")

        def count(*names: str) -> int | None:
            for n in names:
                key = by_lower.get(n.lower())
                if key is None or payload[key] is None:
                    continue
                value = payload[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise Unreadable(f"{key} is {value!r}, not a count")
                return value
            return None

        page_count = count("PageCount")
        page_number = count("PageNumber")
        per_page = count("BookingsPerPage")
        total = count(*TOTAL_NAMES)
        if per_page and len(items) > per_page:
            raise Unreadable(f"{len(items)} bookings on a page of {per_page}")
        if total is not None and len(items) > total:
            raise Unreadable(f"{len(items)} bookings listed but the total says {total}")
        number = page_number or 1
        pages = page_count if page_count is not None else 1
        if not items and total and number <= max(1, pages):
            raise Unreadable(f"an empty page {number} of {pages} while the total says {total}")
        if items and page_count == 0:
            raise Unreadable("bookings listed but PageCount is 0")
        if total is not None and per_page and number >= pages and items:
            expected = (number - 1) * per_page + len(items)
            if expected != total:
                raise Unreadable(f"the last page ends at booking {expected}, the total is {total}")
        bookings = []
        for i, item in enumerate(items):
            try:
                bookings.append(WebcamBooking.model_validate(item, context={"tz": zone}))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first.get("loc", ()))
                raise Unreadable(f"{name}[{i}].{where}: {first.get('msg')}") from None
        return cls(
            page_count=pages,
            page_number=number,
            bookings_per_page=per_page or 0,
            total=total,
            bookings=bookings,
        )


class UserSummary(UpstreamModel):
    """Presence from `getUserSummary`; the docs nest it under `User`, we accept both."""

    user_id: int | None = Field(None, alias="UserID")
    nickname: str | None = Field(None, alias="Nickname")
    available_now_webcam: bool = Field(False, alias="AvailableNowWebcam")

    @staticmethod
    def unwrap(payload: Any) -> Any:
        """The docs nest the summary under `User`; some answers may not."""
        if isinstance(payload, dict) and isinstance(payload.get("User"), dict):
            return payload["User"]
        return payload


# --- tokens ------------------------------------------------------------------------------------


class TokenSet(BaseModel):
    """A member's OAuth pair. Only ever stored encrypted; `repr` hides both tokens."""

    model_config = ConfigDict(extra="ignore")

    access_token: str = Field(min_length=1, repr=False)
    refresh_token: str = Field(min_length=1, repr=False)
    token_type: str = "bearer"
    expires_at: float = 0.0
    lifetime: float = 0.0
    """Seconds the access token was issued for (0: unknown); the refresh margin adapts to it."""
    #: when the refresh token was handed to us (`tokens set`/import) or issued by a refresh: the
    #: token answer does not say how long it lives, so its lapse is counted from here
    refresh_issued_at: float = 0.0

    @classmethod
    def from_token_response(cls, payload: Any, now: float) -> TokenSet:
        """Reads the token endpoint's JSON: `expires_in` (seconds from now) or `expires_at`."""
        if not isinstance(payload, dict):
            raise ValueError("token JSON must be an object")
        data = dict(payload)
        if "expires_at" in data and data["expires_at"] not in (None, ""):
            raw = data["expires_at"]
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                data["expires_at"] = float(raw)
            else:
                parsed = parse_upstream_datetime(raw, ZoneInfo("UTC"))
                data["expires_at"] = parsed.timestamp() if parsed else 0.0
            data["lifetime"] = max(0.0, data["expires_at"] - now)
        elif "expires_in" in data:
            try:
                data["expires_at"] = now + float(data["expires_in"])
            except (TypeError, ValueError):
                raise ValueError("expires_in must be a number of seconds") from None
            data["lifetime"] = max(0.0, float(data["expires_in"]))
        else:
            raise ValueError("token JSON needs expires_in or expires_at")
        data["refresh_issued_at"] = now
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            fields = ", ".join(str(e["loc"][0]) for e in exc.errors() if e.get("loc"))
            raise ValueError(f"token JSON is missing or has invalid: {fields}") from None


# --- events ------------------------------------------------------------------------------------

EVENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


class RebookEvent(BaseModel):
    """The kwargs of `rebook.request` (README "Sending events").

    Strict: `"12"` is not a booking id."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_id: Annotated[StrictStr, Field(pattern=EVENT_ID_PATTERN)]
    booking_id: Annotated[StrictInt, Field(gt=0, lt=2**63)]
    user_id: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    performer_id: Annotated[StrictInt, Field(gt=0, lt=2**63)] | None = None
    max_wait_seconds: Annotated[StrictInt, Field(ge=1, le=MAX_WAIT_LIMIT)] | None = None

    @field_validator("user_id")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.strip() or any(not ch.isprintable() for ch in value):
            raise ValueError("must be printable and not blank")
        return value

    @classmethod
    def parse(cls, args: Any, kwargs: Any) -> tuple[RebookEvent, list[str]]:
        """The event and the names of ignored extra fields, or :class:`InvalidEvent`."""
        if args:
            raise InvalidEvent("positional arguments are not accepted; send keyword arguments")
        if not isinstance(kwargs, dict):
            raise InvalidEvent(f"kwargs must be an object, got {type(kwargs).__name__}")
        try:
            size = len(json.dumps(kwargs, default=str).encode())
        except (TypeError, ValueError):
            raise InvalidEvent("kwargs are not JSON-serialisable") from None
        if size > MAX_EVENT_BYTES:
            raise InvalidEvent(f"event is {size} bytes; the limit is {MAX_EVENT_BYTES}")
        try:
            event = cls.model_validate(kwargs)
        except ValidationError as exc:
            raise InvalidEvent(describe_validation(exc)) from None
        extra = sorted(str(k) for k in kwargs if k not in cls.model_fields)
        return event, extra


def describe_validation(exc: ValidationError) -> str:
    """Pydantic's errors as one readable line: `field: message; field: message`."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "event"
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "string_pattern_mismatch":
            msg = "must be 1-128 characters of A-Z a-z 0-9 . _ : -"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
