"""The audit's attribution rules (worker.core.audit.attribute), on records and bookings built
here: overlap counting, a double is not also an orphan, hand-made bookings are no finding."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.core.audit import Finding, attribute
from worker.core.models import WebcamBooking
from worker.core.states import State
from worker.core.store import Rebook

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
MARGIN = 300.0


def rebook(rid: str, original: int, performer: int = 7, at: float = 0, **kw: Any) -> Rebook:
    received = (T0 + timedelta(seconds=at)).timestamp()
    data: dict[str, Any] = {
        "rebook_id": rid,
        "event_id": f"ev-{rid}",
        "booking_id": original,
        "user_id": "alice",
        "performer_id": performer,
        "state": State.WATCHING,
        "created_ts": received,
        "deadline_ts": received + 3600,
    }
    data.update(kw)
    return Rebook.model_validate(data)


def booking(bid: int, at: float, performer: int = 7, lead: float = 300) -> WebcamBooking:
    """A booking created `at` seconds after T0; `lead` = SessionDate - CreateDate (a
    reschedule's is 5 min; a booking made by hand is days ahead or in the past)."""
    created = T0 + timedelta(seconds=at)
    return WebcamBooking.model_validate(
        {
            "WebcamBookingID": bid,
            "Status": "Pending",
            "CreateDate": created.isoformat(),
            "SessionDate": (created + timedelta(seconds=lead)).isoformat(),
            "Performer": {"UserID": performer},
        }
    )


def run(
    records: list[Rebook],
    bookings: list[WebcamBooking],
    owners: dict[int, str] | None = None,
    key: str | None = "UserID",
) -> list[Finding]:
    return attribute(
        "alice",
        records,
        bookings,
        {b.booking_id: (owners or {}).get(b.booking_id) for b in bookings},
        performer_key=key,
        margin=MARGIN,
        found_at="2026-12-06T13:00:00.000Z",
    )


def test_one_rebook_one_booking_is_clean() -> None:
    assert run([rebook("r1", 100, new_booking_id=200)], [booking(200, 60)], {200: "r1"}) == []


def test_a_second_booking_of_one_original_is_a_double_and_not_an_orphan() -> None:
    found = run(
        [rebook("r1", 100, new_booking_id=200)],
        [booking(200, 60), booking(201, 90)],
        {200: "r1"},
    )
    assert [(f.kind, f.booking_id, f.new_booking_ids, f.rebook_ids) for f in found] == [
        ("double", 100, (200, 201), ("r1",))
    ]


def test_overlapping_originals_count_bookings_against_rebooks() -> None:
    records = [
        rebook("r1", 100, new_booking_id=200),
        rebook("r2", 101, at=30, new_booking_id=202),
    ]
    two = [booking(200, 60), booking(202, 70)]
    assert run(records, two, {200: "r1", 202: "r2"}) == []
    three = [*two, booking(203, 80)]
    (found,) = run(records, three, {200: "r1", 202: "r2"})
    assert found.kind == "double"
    assert found.new_booking_ids == (200, 202, 203)
    assert found.rebook_ids == ("r1", "r2")


def test_an_unowned_reschedule_with_room_for_it_is_an_orphan() -> None:
    records = [rebook("r1", 100, state=State.WAITING)]
    (found,) = run(records, [booking(300, 60)])
    assert (found.kind, found.booking_id, found.new_booking_ids) == ("orphan", 100, (300,))


def test_bookings_made_by_hand_are_no_finding() -> None:
    records = [rebook("r1", 100, new_booking_id=200)]
    by_hand = [booking(400, 90, lead=3 * 86400), booking(401, 95, lead=-3600)]
    assert run(records, [booking(200, 60), *by_hand], {200: "r1"}) == []


def test_bookings_from_before_the_rebook_or_of_another_performer_do_not_count() -> None:
    records = [rebook("r1", 100, new_booking_id=200)]
    earlier = booking(500, -2 * MARGIN)
    other = booking(501, 90, performer=8)
    assert run(records, [booking(200, 60), earlier, other], {200: "r1"}) == []


def test_without_a_confirmed_performer_field_the_member_is_one_group() -> None:
    records = [
        rebook("r1", 100, performer=7, new_booking_id=200),
        rebook("r2", 101, performer=8, state=State.WAITING),
    ]
    bookings = [booking(200, 60), booking(201, 90, performer=8)]
    # unconfirmed: two rebooks, two bookings, the unowned one an orphan of the member's
    (found,) = run(records, bookings, {200: "r1"}, key=None)
    assert (found.kind, found.new_booking_ids, found.rebook_ids) == ("orphan", (201,), ("r1", "r2"))
    # confirmed: the same, by performer
    (found,) = run(records, bookings, {200: "r1"})
    assert (found.kind, found.booking_id, found.rebook_ids) == ("orphan", 101, ("r2",))


def test_a_booking_a_parked_or_unsettled_record_names_is_not_reported_again() -> None:
    parked = rebook("r1", 100, state=State.NEEDS_ATTENTION, reason="unclaimed_booking")
    assert run([parked], [booking(300, 60)]) == []
    unsettled = rebook("r1", 100, state=State.RESCHEDULING, post_sent_ts=T0.timestamp() + 50)
    assert run([unsettled], [booking(300, 60)]) == []
    # a double is still a double
    (found,) = run([unsettled], [booking(300, 60), booking(301, 61)])
    assert found.kind == "double"


def test_the_original_and_other_rebooks_bookings_are_not_counted() -> None:
    records = [rebook("r2", 200, at=600, new_booking_id=210)]
    # 200 (this rebook's original) was r1's new booking, before the window
    found = run(records, [booking(200, 60), booking(210, 700)], {200: "r1", 210: "r2"})
    assert found == []


def test_duplicates_add_no_room() -> None:
    records = [
        rebook("r1", 100, new_booking_id=200),
        rebook("r1b", 100, at=5, state=State.DUPLICATE),
    ]
    (found,) = run(records, [booking(200, 60), booking(201, 90)], {200: "r1"})
    assert found.kind == "double" and found.rebook_ids == ("r1",)


def test_the_stream_shape_and_the_fingerprint() -> None:
    f = Finding("double", "alice", 100, (201, 200), ("r1",), "2026-12-06T13:00:00.000Z")
    fields = f.stream_fields()
    assert set(fields) == set(f.as_json())
    assert json.loads(fields["new_booking_ids"]) == [201, 200]
    assert Finding.from_stream(fields) == f
    assert f.fingerprint == "double:100:200,201"


def test_owned_bookings_fit_their_owners_whatever_the_zone_makes_of_their_dates() -> None:
    records = [
        rebook("r1", 100, new_booking_id=200),
        rebook("r2", 101, at=30, new_booking_id=202),
    ]
    # the zone an hour off: both CreateDates read before either receipt
    early = [booking(200, -3600), booking(202, -3590)]
    assert run(records, early, {200: "r1", 202: "r2"}) == []
