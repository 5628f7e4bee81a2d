"""Typed models: upstream answers, datetimes, tokens, the intake event (README "Sending events")."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from worker.core.errors import InvalidEvent
from worker.core.models import (
    MAX_EVENT_BYTES,
    MadeBookingsPage,
    RebookEvent,
    TokenSet,
    Unreadable,
    UserSummary,
    WebcamBooking,
    iso_z,
    parse_upstream_datetime,
)
from worker.core.states import State

LONDON = ZoneInfo("Europe/London")
EVENT_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

SEED: dict[str, Any] = {
    "WebcamBookingID": 100001,
    "Duration": 15,
    "Credits": 25.5,
    "Status": "Pending",
    "IsMulitple": True,
    "SoftwareTypeID": 3,
    "SignInNameOrEmail": "performer7@example.com",
    "AlsoPhoneChat": False,
    "CreateDate": "2024-07-01T12:00:00",
    "SessionDate": "2024-07-01T12:05:00.123",
    "AcceptBy": "2024-07-01T12:10:00.1234567",
    "AcceptedDate": None,
    "ConfirmedDate": None,
    "CancelledDate": None,
    "CancelledReason": None,
    "CancelledBy": None,
    "RejectedReason": None,
    "LastUpdated": "2024-07-01T12:00:00",
    "Performer": {"UserID": 7, "Nickname": "performer7"},
}


def utc(*args: int, micro: int = 0) -> datetime:
    return datetime(*args, microsecond=micro, tzinfo=UTC)


# --- WebcamBooking ---------------------------------------------------------------------------


def test_every_seed_field_is_parsed() -> None:
    b = WebcamBooking.model_validate(SEED)
    assert b.booking_id == 100001
    assert b.duration == 15
    assert b.credits == Decimal("25.5")
    assert b.status == "Pending"
    assert b.is_multiple is True
    assert b.software_type_id == 3
    assert b.sign_in_name_or_email == "performer7@example.com"
    assert b.also_phone_chat is False
    # July: London is BST (UTC+1)
    assert b.create_date == utc(2024, 7, 1, 11, 0, 0)
    assert b.session_date == utc(2024, 7, 1, 11, 5, 0, micro=123000)
    assert b.accept_by == utc(2024, 7, 1, 11, 10, 0, micro=123456)
    assert b.last_updated == utc(2024, 7, 1, 11, 0, 0)
    for nullable in ("accepted_date", "confirmed_date", "cancelled_date"):
        assert getattr(b, nullable) is None
    assert b.cancelled_reason is None and b.cancelled_by is None and b.rejected_reason is None
    assert b.performer == {"UserID": 7, "Nickname": "performer7"}
    assert b.performer_id == 7
    assert b.final_state is None
    assert b.reason == ""


def test_every_datetime_is_aware_utc() -> None:
    b = WebcamBooking.model_validate(SEED)
    for name in ("create_date", "session_date", "accept_by", "last_updated"):
        value = getattr(b, name)
        assert value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)


def test_is_mulitple_spelling_and_the_correct_one_are_both_read() -> None:
    assert WebcamBooking.model_validate({"WebcamBookingID": 1, "IsMulitple": True}).is_multiple
    assert WebcamBooking.model_validate({"WebcamBookingID": 1, "IsMultiple": True}).is_multiple
    assert WebcamBooking.model_validate({"WebcamBookingID": 1}).is_multiple is None


def test_unknown_fields_are_tolerated_and_kept() -> None:
    b = WebcamBooking.model_validate({**SEED, "Brand": "new", "Nested": {"a": [1, 2]}})
    assert b.booking_id == 100001
    assert b.model_extra is not None
    assert b.model_extra["Brand"] == "new"


def test_only_the_booking_id_is_required() -> None:
    b = WebcamBooking.model_validate({"WebcamBookingID": 5})
    assert b.booking_id == 5 and b.status == "" and b.performer is None
    assert b.performer_id is None
    with pytest.raises(ValidationError):
        WebcamBooking.model_validate({"Status": "Pending"})


def test_populate_by_field_name_too() -> None:
    assert WebcamBooking(booking_id=9, status="Accepted").final_state is State.ACCEPTED


@pytest.mark.parametrize(
    ("performer", "expected"),
    [
        ({"UserID": 7, "Nickname": "x"}, 7),
        ({"UserId": "42"}, 42),
        ({"userID": 3}, 3),
        ({"ID": 11}, 11),
        ({"Id": "12"}, 12),
        ({"id": 13}, 13),
        ({"UserID": True}, None),  # a bool is not an id
        ({"UserID": "abc"}, None),
        ({"Nickname": "only"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_performer_is_a_loose_mapping(performer: Any, expected: int | None) -> None:
    b = WebcamBooking.model_validate({"WebcamBookingID": 1, "Performer": performer})
    assert b.performer_id == expected


def test_performer_keeps_unknown_keys() -> None:
    perf = {"UserID": 7, "Nickname": "n", "Avatar": {"url": "x"}, "Rating": 4.5}
    b = WebcamBooking.model_validate({"WebcamBookingID": 1, "Performer": perf})
    assert b.performer == perf


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("Accepted", State.ACCEPTED),
        ("Rejected", State.REJECTED),
        ("Confirmed", State.CONFIRMED),
        ("Cancelled", State.CANCELLED),
        ("Canceled", State.CANCELLED),
        (" accepted ", State.ACCEPTED),
        ("CONFIRMED", State.CONFIRMED),
        ("Pending", None),
        ("", None),
        ("Unheard-of", None),
    ],
)
def test_final_state(status: str, state: State | None) -> None:
    assert WebcamBooking.model_validate({"WebcamBookingID": 1, "Status": status}).final_state == (
        state
    )


def test_reason_prefers_rejected_then_cancelled() -> None:
    both = {"WebcamBookingID": 1, "RejectedReason": "busy", "CancelledReason": "ill"}
    assert WebcamBooking.model_validate(both).reason == "busy"
    cancelled = {"WebcamBookingID": 1, "CancelledReason": "ill"}
    assert WebcamBooking.model_validate(cancelled).reason == "ill"


def test_bad_datetime_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        WebcamBooking.model_validate({"WebcamBookingID": 1, "CreateDate": "yesterday"})
    with pytest.raises(ValidationError):
        WebcamBooking.model_validate({"WebcamBookingID": 1, "CreateDate": 12345})


def test_empty_datetime_is_none() -> None:
    b = WebcamBooking.model_validate({"WebcamBookingID": 1, "AcceptedDate": ""})
    assert b.accepted_date is None


def test_models_are_frozen() -> None:
    b = WebcamBooking.model_validate(SEED)
    with pytest.raises(ValidationError):
        b.status = "Accepted"  # type: ignore[misc]


# --- datetimes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # winter: GMT (UTC+0)
        ("2024-01-15T12:00:00", utc(2024, 1, 15, 12, 0, 0)),
        # summer: BST (UTC+1)
        ("2024-07-15T12:00:00", utc(2024, 7, 15, 11, 0, 0)),
        # spring forward on 2024-03-31 at 01:00 GMT
        ("2024-03-31T00:30:00", utc(2024, 3, 31, 0, 30, 0)),
        ("2024-03-31T02:30:00", utc(2024, 3, 31, 1, 30, 0)),
        # fall back on 2024-10-27 at 01:00 GMT
        ("2024-10-26T23:30:00", utc(2024, 10, 26, 22, 30, 0)),
        ("2024-10-27T03:00:00", utc(2024, 10, 27, 3, 0, 0)),
        # space instead of T
        ("2024-07-15 12:00:00", utc(2024, 7, 15, 11, 0, 0)),
    ],
)
def test_offsetless_is_read_in_london(text: str, expected: datetime) -> None:
    assert parse_upstream_datetime(text) == expected
    b = WebcamBooking.model_validate({"WebcamBookingID": 1, "CreateDate": text})
    assert b.create_date == expected


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("2024-01-15T12:00:00", 0),
        ("2024-01-15T12:00:00.5", 500000),
        ("2024-01-15T12:00:00.123", 123000),
        ("2024-01-15T12:00:00.123456", 123456),
        ("2024-01-15T12:00:00.1234567", 123456),  # .NET's 7 digits
        ("2024-01-15T12:00:00.123456789", 123456),
    ],
)
def test_fractional_seconds(text: str, micro: int) -> None:
    assert parse_upstream_datetime(text) == utc(2024, 1, 15, 12, 0, 0, micro=micro)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-07-15T12:00:00Z", utc(2024, 7, 15, 12, 0, 0)),
        ("2024-07-15T12:00:00+00:00", utc(2024, 7, 15, 12, 0, 0)),
        ("2024-07-15T12:00:00+02:00", utc(2024, 7, 15, 10, 0, 0)),
        ("2024-07-15T12:00:00-05:00", utc(2024, 7, 15, 17, 0, 0)),
        ("2024-07-15T12:00:00.1234567Z", utc(2024, 7, 15, 12, 0, 0, micro=123456)),
        ("2024-07-15T12:00:00.1234567+01:00", utc(2024, 7, 15, 11, 0, 0, micro=123456)),
    ],
)
def test_explicit_offsets_win_over_the_site_zone(text: str, expected: datetime) -> None:
    assert parse_upstream_datetime(text, ZoneInfo("Asia/Tokyo")) == expected


def test_datetime_objects_pass_through() -> None:
    naive = datetime(2024, 7, 15, 12, 0, 0)
    assert parse_upstream_datetime(naive) == utc(2024, 7, 15, 11, 0, 0)
    aware = utc(2024, 7, 15, 12, 0, 0)
    assert parse_upstream_datetime(aware) == aware


@pytest.mark.parametrize("value", [None, ""])
def test_none_and_empty(value: Any) -> None:
    assert parse_upstream_datetime(value) is None


@pytest.mark.parametrize(
    "value",
    ["0001-01-01T00:00:00", "0001-01-01T00:00:00.000", "0001-01-01T23:59:59+01:00", "0001-06-01"],
)
@pytest.mark.parametrize("zone", ["Europe/Paris", "Europe/London", "America/New_York"])
def test_year_one_is_unset(value: str, zone: str) -> None:
    assert parse_upstream_datetime(value, ZoneInfo(zone)) is None
    b = WebcamBooking.model_validate(
        {"WebcamBookingID": 1, "AcceptBy": value}, context={"tz": ZoneInfo(zone)}
    )
    assert b.accept_by is None


def test_the_end_of_the_calendar_is_a_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError):
        parse_upstream_datetime("9999-12-31T23:00:00", ZoneInfo("America/New_York"))
    with pytest.raises(ValidationError) as info:
        WebcamBooking.model_validate(
            {"WebcamBookingID": 1, "SessionDate": "9999-12-31T23:00:00"},
            context={"tz": ZoneInfo("America/New_York")},
        )
    assert info.value.errors()[0]["loc"] == ("SessionDate",)


@pytest.mark.parametrize("value", ["nope", "2024-13-01T00:00:00", 1234, 1.5, [], {}])
def test_garbage_is_value_error(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_upstream_datetime(value)


def test_validation_context_sets_the_zone() -> None:
    data = {"WebcamBookingID": 1, "CreateDate": "2024-01-15T12:00:00"}
    ny = WebcamBooking.model_validate(data, context={"tz": ZoneInfo("America/New_York")})
    assert ny.create_date == utc(2024, 1, 15, 17, 0, 0)
    tokyo = WebcamBooking.model_validate(data, context={"tz": ZoneInfo("Asia/Tokyo")})
    assert tokyo.create_date == utc(2024, 1, 15, 3, 0, 0)
    default = WebcamBooking.model_validate(data)
    assert default.create_date == utc(2024, 1, 15, 12, 0, 0)


def test_iso_z() -> None:
    out = iso_z(utc(2024, 7, 15, 11, 0, 0, micro=123456))
    assert out == "2024-07-15T11:00:00.123Z"
    # a non-UTC aware datetime is converted, not just relabelled
    plus2 = datetime(2024, 7, 15, 13, 0, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert iso_z(plus2) == "2024-07-15T11:00:00.000Z"
    assert iso_z(None) == ""


@given(
    st.datetimes(
        min_value=datetime(2, 1, 2),  # year 1 is the upstream's "unset"
        timezones=st.sampled_from([UTC, LONDON, ZoneInfo("Asia/Kolkata")]),
    )
)
def test_iso_z_round_trips(value: datetime) -> None:
    out = iso_z(value)
    assert out.endswith("Z") and "+" not in out
    back = parse_upstream_datetime(out)
    assert back is not None
    assert abs((back - value).total_seconds()) < 0.001


# --- MadeBookingsPage / UserSummary -------------------------------------------------------------


def test_made_bookings_page() -> None:
    second = {**SEED, "WebcamBookingID": 100002, "CreateDate": "2024-01-15T12:00:00"}
    page = MadeBookingsPage.parse(
        {
            "PageCount": 3,
            "PageNumber": 2,
            "BookingsPerPage": 2,
            "TotalBookings": 6,
            "WebcamBookings": [SEED, second],
            "Unknown": True,
        }
    )
    assert (page.page_count, page.page_number, page.bookings_per_page, page.total) == (3, 2, 2, 6)
    assert [b.booking_id for b in page.bookings] == [100001, 100002]
    assert page.bookings[1].create_date == utc(2024, 1, 15, 12, 0, 0)


def test_made_bookings_context_reaches_nested_bookings_and_names_are_settings() -> None:
    page = MadeBookingsPage.parse(
        {"bookings": [{"WebcamBookingID": 1, "CreateDate": "2024-01-15T12:00:00"}]},
        list_names=("WebcamBookings", "Bookings"),
        zone=ZoneInfo("Asia/Tokyo"),
    )
    assert page.bookings[0].create_date == utc(2024, 1, 15, 3, 0, 0)
    empty = MadeBookingsPage.parse({"PageCount": 0, "TotalBookings": 0, "WebcamBookings": []})
    assert empty.bookings == []


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ({}, "no booking list under WebcamBookings"),
        ({"PageCount": 1, "Items": [SEED]}, "keys seen: Items, PageCount"),
        ({"WebcamBookings": None}, "not a list"),
        ({"WebcamBookings": {"0": SEED}}, "not a list"),
        ({"TotalBookings": 3, "PageCount": 1, "WebcamBookings": []}, "total says 3"),
        ({"TotalBookings": 0, "WebcamBookings": [SEED]}, "the total says 0"),
        ({"BookingsPerPage": 1, "WebcamBookings": [SEED, SEED]}, "on a page of 1"),
        ({"PageCount": "x", "WebcamBookings": []}, "not a count"),
        ({"WebcamBookings": [{"CreateDate": "x"}]}, "WebcamBookings[0]"),
        ([SEED], "not an object"),
    ],
)
def test_an_unreadable_list_is_never_an_empty_one(payload: Any, why: str) -> None:
    with pytest.raises(Unreadable, match=re.escape(why)):
        MadeBookingsPage.parse(payload)


def test_user_summary_nested_and_top_level() -> None:
    def summary(payload: Any) -> UserSummary:  # as the client reads it
        return UserSummary.model_validate(UserSummary.unwrap(payload))

    nested = summary(
        {"User": {"UserID": 7, "Nickname": "p", "AvailableNowWebcam": True, "Other": 1}}
    )
    assert nested.user_id == 7 and nested.nickname == "p" and nested.available_now_webcam
    top = summary({"UserID": 8, "AvailableNowWebcam": False})
    assert top.user_id == 8 and top.available_now_webcam is False
    missing = summary({"User": {"UserID": 9}})
    assert missing.available_now_webcam is False


# --- TokenSet ------------------------------------------------------------------------------------


def test_token_from_expires_in() -> None:
    t = TokenSet.from_token_response(
        {"access_token": "A", "refresh_token": "R", "token_type": "bearer", "expires_in": 3600},
        1000.0,
    )
    assert (t.access_token, t.refresh_token, t.token_type) == ("A", "R", "bearer")
    assert t.expires_at == 4600.0


def test_token_expires_in_as_string_and_extra_fields() -> None:
    t = TokenSet.from_token_response(
        {"access_token": "A", "refresh_token": "R", "expires_in": "60", "scope": "x"}, 10.0
    )
    assert t.expires_at == 70.0
    assert t.token_type == "bearer"


@pytest.mark.parametrize("raw", [1_900_000_000, 1_900_000_000.5])
def test_token_expires_at_numeric(raw: float) -> None:
    t = TokenSet.from_token_response(
        {"access_token": "A", "refresh_token": "R", "expires_at": raw}, 0.0
    )
    assert t.expires_at == float(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2030-01-01T00:00:00Z", utc(2030, 1, 1, 0, 0, 0)),
        ("2030-01-01T02:00:00+02:00", utc(2030, 1, 1, 0, 0, 0)),
        ("2030-07-01T00:00:00", utc(2030, 7, 1, 0, 0, 0)),  # no offset: UTC, not London
    ],
)
def test_token_expires_at_iso(raw: str, expected: datetime) -> None:
    t = TokenSet.from_token_response(
        {"access_token": "A", "refresh_token": "R", "expires_at": raw, "expires_in": 5}, 0.0
    )
    assert t.expires_at == expected.timestamp()


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"access_token": "A", "refresh_token": "R"}, "expires"),
        ({"refresh_token": "R", "expires_in": 60}, "access_token"),
        ({"access_token": "A", "expires_in": 60}, "refresh_token"),
        ({"access_token": "", "refresh_token": "R", "expires_in": 60}, "access_token"),
        ({"access_token": "A", "refresh_token": "R", "expires_in": "soon"}, "expires_in"),
        ({"access_token": "A", "refresh_token": "R", "expires_at": "never"}, ""),
        (["access_token"], "object"),
        ("A", "object"),
    ],
)
def test_token_bad_payload_is_value_error(payload: Any, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        TokenSet.from_token_response(payload, 0.0)
    assert needle in str(info.value)


def test_token_repr_hides_tokens() -> None:
    t = TokenSet.from_token_response(
        {"access_token": "acc-SECRET-1", "refresh_token": "ref-SECRET-2", "expires_in": 60}, 0.0
    )
    for text in (repr(t), str(t)):
        assert "acc-SECRET-1" not in text
        assert "ref-SECRET-2" not in text


# --- RebookEvent.parse ----------------------------------------------------------------------------


def ev(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event_id": "evt-1", "booking_id": 12, "user_id": "u1"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def invalid(args: Any, kwargs: Any) -> str:
    with pytest.raises(InvalidEvent) as info:
        RebookEvent.parse(args, kwargs)
    reason = info.value.reason
    assert reason and "\n" not in reason
    return reason


def test_valid_minimal_event() -> None:
    event, extra = RebookEvent.parse((), ev())
    assert (event.event_id, event.booking_id, event.user_id) == ("evt-1", 12, "u1")
    assert event.performer_id is None and event.max_wait_seconds is None
    assert extra == []


def test_valid_full_event_and_args_forms() -> None:
    for args in ((), [], None):
        event, _ = RebookEvent.parse(args, ev(performer_id=7, max_wait_seconds=600))
        assert event.performer_id == 7 and event.max_wait_seconds == 600


@pytest.mark.parametrize(
    "event_id", ["a", "A" * 128, "abc.DEF_123:x-y", "0", "...", "2024-01-01T00:00:00"]
)
def test_event_id_accepted(event_id: str) -> None:
    assert RebookEvent.parse((), ev(event_id=event_id))[0].event_id == event_id


@pytest.mark.parametrize(
    "event_id",
    ["", "A" * 129, "a b", "a/b", "é", "a\n", "\nab", "a\x00", "tab\t", "a#b", 123, None, _DROP],
)
def test_event_id_rejected(event_id: Any) -> None:
    assert "event_id" in invalid((), ev(event_id=event_id))


@pytest.mark.parametrize("booking_id", [1, 2**63 - 1, 999_999])
def test_booking_id_accepted(booking_id: int) -> None:
    assert RebookEvent.parse((), ev(booking_id=booking_id))[0].booking_id == booking_id


@pytest.mark.parametrize(
    "booking_id", [0, -1, True, False, "12", 12.0, 2**63, None, [12], {"id": 12}, _DROP]
)
def test_booking_id_rejected(booking_id: Any) -> None:
    assert "booking_id" in invalid((), ev(booking_id=booking_id))


@pytest.mark.parametrize("user_id", ["u", "U" * 64, "member 42", "ünïcode", "a@b.c"])
def test_user_id_accepted(user_id: str) -> None:
    assert RebookEvent.parse((), ev(user_id=user_id))[0].user_id == user_id


@pytest.mark.parametrize("user_id", ["", "U" * 65, "   ", "a\nb", "\x00", 42, None, _DROP])
def test_user_id_rejected(user_id: Any) -> None:
    assert "user_id" in invalid((), ev(user_id=user_id))


def test_performer_id_optional() -> None:
    assert RebookEvent.parse((), ev())[0].performer_id is None
    assert RebookEvent.parse((), ev(performer_id=None))[0].performer_id is None
    assert RebookEvent.parse((), ev(performer_id=1))[0].performer_id == 1


@pytest.mark.parametrize("performer_id", [0, -5, True, "7", 7.0, 2**63])
def test_performer_id_rejected(performer_id: Any) -> None:
    assert "performer_id" in invalid((), ev(performer_id=performer_id))


@pytest.mark.parametrize("seconds", [1, 60, 43200, 7 * 86400])
def test_max_wait_accepted(seconds: int) -> None:
    assert RebookEvent.parse((), ev(max_wait_seconds=seconds))[0].max_wait_seconds == seconds


@pytest.mark.parametrize("seconds", [0, -1, 7 * 86400 + 1, "60", 60.0, True])
def test_max_wait_rejected(seconds: Any) -> None:
    assert "max_wait_seconds" in invalid((), ev(max_wait_seconds=seconds))


@pytest.mark.parametrize("args", [(1,), ["evt-1", 12, "u1"], ("x",), [None]])
def test_positional_args_rejected(args: Any) -> None:
    assert "positional" in invalid(args, ev())


@pytest.mark.parametrize("kwargs", [None, [], ["event_id"], "event_id=x", 12, ("a", 1)])
def test_non_dict_kwargs_rejected(kwargs: Any) -> None:
    assert "kwargs" in invalid((), kwargs)


def test_over_64kb_rejected_and_just_under_accepted() -> None:
    big = ev(note="x" * (MAX_EVENT_BYTES + 1))
    assert str(MAX_EVENT_BYTES) in invalid((), big)
    base = len(json.dumps(ev(note="")).encode())
    fits = ev(note="x" * (MAX_EVENT_BYTES - base))
    assert len(json.dumps(fits).encode()) == MAX_EVENT_BYTES
    event, extra = RebookEvent.parse((), fits)
    assert event.booking_id == 12 and extra == ["note"]


def test_size_counts_multibyte_characters_as_bytes() -> None:
    # 22k snowmen are 22k characters but (escaped) far more than 64 KB of JSON
    assert "bytes" in invalid((), ev(note="\u2603" * 22_000))


def test_unserialisable_kwargs_rejected() -> None:
    loop: dict[str, Any] = ev()
    loop["self"] = loop
    assert "serialisable" in invalid((), loop)


def test_extra_fields_are_returned_sorted() -> None:
    event, extra = RebookEvent.parse((), ev(zeta=1, alpha={"x": 1}, trace_id="t"))
    assert extra == ["alpha", "trace_id", "zeta"]
    assert event.event_id == "evt-1"


def test_several_problems_are_reported_on_one_line() -> None:
    reason = invalid((), {"event_id": "", "booking_id": "x", "user_id": ""})
    for name in ("event_id", "booking_id", "user_id"):
        assert name in reason


def test_event_is_frozen() -> None:
    event, _ = RebookEvent.parse((), ev())
    with pytest.raises(ValidationError):
        event.booking_id = 13  # type: ignore[misc]


# --- properties ----------------------------------------------------------------------------------

FIELD_NAMES = ["event_id", "booking_id", "user_id", "performer_id", "max_wait_seconds"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None), max_size=140)
    | st.sampled_from(["", "12", "evt-1", "u1", " ", "\x00", "\ud800", "A" * 129])
)
json_ish = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
kwargs_strategy = st.dictionaries(
    st.sampled_from(FIELD_NAMES) | st.text(max_size=12), json_ish, max_size=8
)


def check_valid(event: RebookEvent, extra: list[str], kwargs: dict[str, Any]) -> None:
    assert isinstance(event.event_id, str) and EVENT_ID_RE.fullmatch(event.event_id)
    assert type(event.booking_id) is int and 0 < event.booking_id < 2**63
    assert isinstance(event.user_id, str) and 1 <= len(event.user_id) <= 64
    assert event.user_id.strip() and event.user_id.isprintable()
    assert event.performer_id is None or (
        type(event.performer_id) is int and event.performer_id > 0
    )
    assert event.max_wait_seconds is None or (
        type(event.max_wait_seconds) is int and 1 <= event.max_wait_seconds <= 7 * 86400
    )
    assert extra == sorted(str(k) for k in kwargs if k not in FIELD_NAMES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=st.one_of(st.none(), st.just(()), st.lists(json_ish, max_size=2)), kwargs=json_ish)
def test_anything_json_ish_is_an_event_or_invalid(args: Any, kwargs: Any) -> None:
    try:
        event, extra = RebookEvent.parse(args, kwargs)
    except InvalidEvent as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    assert not args
    check_valid(event, extra, kwargs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kwargs=kwargs_strategy)
def test_arbitrary_kwargs_never_raise_anything_else(kwargs: dict[str, Any]) -> None:
    try:
        event, extra = RebookEvent.parse((), kwargs)
    except InvalidEvent as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    check_valid(event, extra, kwargs)


valid_events = st.fixed_dictionaries(
    {
        "event_id": st.from_regex(EVENT_ID_RE, fullmatch=True),
        "booking_id": st.integers(min_value=1, max_value=2**63 - 1),
        "user_id": st.text(
            st.characters(categories=["L", "N", "P", "S"], include_characters=" "),
            min_size=1,
            max_size=64,
        ).filter(lambda s: s.strip() != ""),
    },
    optional={
        "performer_id": st.none() | st.integers(min_value=1, max_value=2**63 - 1),
        "max_wait_seconds": st.none() | st.integers(min_value=1, max_value=7 * 86400),
        "extra": json_ish,
    },
)


@settings(max_examples=200, deadline=None)
@given(kwargs=valid_events)
def test_every_valid_event_is_accepted_unchanged(kwargs: dict[str, Any]) -> None:
    event, extra = RebookEvent.parse((), kwargs)
    dumped = event.model_dump()
    for name in FIELD_NAMES:
        assert dumped[name] == kwargs.get(name)
    assert extra == (["extra"] if "extra" in kwargs else [])


def test_performer_under_reads_only_the_key_it_is_given() -> None:
    b = WebcamBooking.model_validate(
        {"WebcamBookingID": 1, "Performer": {"ID": 1_000_007, "UserID": "7", "Flag": True}}
    )
    assert b.performer_under("UserID") == 7
    assert b.performer_under("ID") == 1_000_007
    assert b.performer_under("Flag") is None  # a bool is not an id
    assert b.performer_under("Nickname") is None
    assert WebcamBooking(booking_id=2).performer_under("UserID") is None
