"""The member's bookings as evidence: the list read, which of them a POST of this rebook may
have made (`candidates`), and taking one as the rebook's (`adopt`, `booked`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from worker.core.flow.context import (
    ACCEPT_BY_FALLBACK_SECONDS,
    Kit,
    Listing,
    StepContext,
)
from worker.core.models import WebcamBooking, from_ts, iso_z
from worker.core.states import ACTIVE_STATES, State, Step
from worker.core.store import Rebook

log = logging.getLogger("rebook.flow")

LIST_MAX_PAGES = 10
"""Pages of the member's list a step reads; a list cut there is not complete (`Listing`)."""


class Bookings(Kit):
    """Shared by the POST (`reschedule`) and the proof after it (`reconcile`)."""

    def listing(
        self, ctx: StepContext, rec: Rebook, since: float, share: float | None = None
    ) -> Listing:
        """The member's bookings created since `since` (a day earlier at the upstream's
        day granularity; nothing is filtered by time here: the zone is a guess). Each page:
        its permit (the rate limiter may wait), then the lease held over the call."""
        start = from_ts(since)

        def read(token: str) -> Listing:
            found: list[WebcamBooking] = []
            for number in range(1, LIST_MAX_PAGES + 1):
                permit = self.client.reserve("MadeBookings", member=True, share=share)
                ctx.hold()
                page = self.client.made_bookings(token, start=start, page=number, permit=permit)
                found.extend(page.bookings)
                if number >= page.page_count or not page.bookings:
                    return Listing(found, True)
            return Listing(found, False)

        return self._member_call(rec, read)

    def candidates(
        self,
        rec: Rebook,
        listing: Listing,
        since: float,
        *,
        known: set[int] | None = None,
        strict: bool = False,
        performer_key: str | None = None,
    ) -> list[WebcamBooking]:
        """Bookings that may be the one a POST of this rebook made, oldest first: the member's
        (the list is theirs), not the original, not owned by another rebook, created since
        `since` (hours before: no zone error defeats it), and not visible before this POST
        (`known`). Of another performer only with a confirmed `performer_key` naming another id:
        while none is confirmed, nothing is set aside for its performer (a guess that did so
        once took our own booking for another performer's, and POSTed again).

        Never the original of another active rebook. `strict`, before a POST (looking for an
        earlier one whose mark was lost, at any time since receipt), a booking must also look
        made by a reschedule — SessionDate a few minutes after CreateDate, both site time, so no
        zone enters. After an ambiguous POST every candidate blocks the proof, and only one that
        looks made by a reschedule is adopted (`Reconcile.run`, `_foreign`).
        """
        found = []
        for b in listing.bookings:
            if b.booking_id == rec.booking_id or (known is not None and b.booking_id in known):
                continue
            if performer_key is not None and rec.performer_id is not None:
                theirs = b.performer_under(performer_key)
                if theirs is not None and theirs != rec.performer_id:
                    continue
            if b.create_date is not None and b.create_date.timestamp() < since:
                continue
            if strict and not looks_rescheduled(b):
                continue
            # another rebook's original existed before its event named it: never what our POST
            # made (an event for a booking minutes old, whose session is still ahead, is not sent)
            if self.store.records.active_owner(b.booking_id, rec.user_id) not in (
                None,
                rec.rebook_id,
            ):
                continue
            found.append(b)
        owners = self.store.records.owners_of([b.booking_id for b in found])
        return sorted(
            (b for b, owner in zip(found, owners, strict=True) if owner in (None, rec.rebook_id)),
            key=lambda b: b.booking_id,
        )

    def adopt(
        self, ctx: StepContext, rec: Rebook, candidates: Sequence[WebcamBooking], why: str
    ) -> Step:
        if len(candidates) > 1:
            log.warning(
                "rebook %s: %d bookings could be ours (%s); taking the oldest",
                rec.rebook_id,
                len(candidates),
                ", ".join(str(b.booking_id) for b in candidates),
            )
        log.info("rebook %s: %s: booking %s", rec.rebook_id, why, candidates[0].booking_id)
        return self.booked(ctx, rec, candidates[0], adopted=why)

    def booked(
        self, ctx: StepContext, rec: Rebook, booking: WebcamBooking, adopted: str = ""
    ) -> Step:
        if not self.store.records.claim_booking(booking.booking_id, rec.rebook_id):
            self._park(
                ctx,
                rec,
                "booking_claimed_elsewhere",
                action="the upstream returned a booking another rebook owns; check both records",
                new_booking_id=booking.booking_id,
                owner=self.store.records.owner_of(booking.booking_id),
            )
            return Step.PARKED
        now = self.clock()
        accept_by = booking.accept_by or from_ts(now + ACCEPT_BY_FALLBACK_SECONDS)
        assert accept_by is not None
        info = {
            "booking_id": booking.booking_id,
            "accept_by": iso_z(accept_by),
            "status": booking.status,
        }
        detail: dict[str, Any] = {
            "session_date": iso_z(booking.session_date),
            "duration": booking.duration,
            "credits": str(booking.credits) if booking.credits is not None else None,
        }
        if adopted:
            detail["adopted"] = adopted
        if self._move(
            ctx,
            rec.rebook_id,
            State.WATCHING,
            from_=[State.RESCHEDULING],
            reason=f"booked ({adopted})" if adopted else "booked",
            fields={
                "new_booking_id": booking.booking_id,
                "accept_by": info["accept_by"],
                "accept_by_ts": accept_by.timestamp(),
                "status": booking.status,
                "errors": 0,
                "known_ids": None,
                "gated_since": None,
                "blocked_by": None,
                "adopted": adopted or None,
            },
            due=now + self.store.lease,
            outcome="BOOKED",
            detail=detail,
            now=now,
        ):
            log.info(
                "rebook %s: booked %s, accept by %s",
                rec.rebook_id,
                booking.booking_id,
                info["accept_by"],
            )
            self.dispatch.watch(rec.rebook_id, info)
            self._unblock(ctx, rec)
            return Step.BOOKED
        return Step.FENCED  # another step holds the rebook now: it finds this booking upstream

    def siblings(self, rec: Rebook, member_wide: bool = False) -> list[str]:
        """Other rebooks of the member and performer (`member_wide`: of any performer) that
        could have made a booking nobody owns: active ones without a booking, and finished ones
        that POSTed without one."""
        active = set(self.store.records.active_of_user(rec.user_id))
        posted = self.store.transitions.posted_without_booking(rec, member_wide=member_wide)
        ids = sorted((active | set(posted)) - {rec.rebook_id})
        return [
            o.rebook_id
            for o in self.store.records.get_many(ids)
            if o.new_booking_id is None
            and (o.rebook_id not in active or o.state in ACTIVE_STATES)
            and (
                member_wide
                or None in (o.performer_id, rec.performer_id)
                or o.performer_id == rec.performer_id
            )
        ]

    def rivals(self, rec: Rebook) -> list[Rebook]:
        """Other rebooks of the member, any performer, whose POST is unsettled: while the
        performer field is unconfirmed, a booking found may be theirs as well as ours. (The
        member's gate keeps them from overlapping ours; they can only be left from a time the
        field was confirmed, or from before it was dropped.)"""
        ids = self.store.transitions.posted_without_booking(rec, member_wide=True)
        return [
            o
            for o in self.store.records.get_many([i for i in ids if i != rec.rebook_id])
            if o.unsettled
        ]


RESCHEDULED_LEAD = (0.0, 15 * 60.0)
"""SessionDate - CreateDate of a booking RescheduleMadeBooking made (the docs: now + 5 min)."""


def looks_rescheduled(booking: WebcamBooking) -> bool:
    if booking.create_date is None or booking.session_date is None:
        return False
    lead = (booking.session_date - booking.create_date).total_seconds()
    low, high = RESCHEDULED_LEAD
    return low <= lead <= high


def could_make(other: Rebook, booking: WebcamBooking) -> bool:
    """Whether `other`'s unsettled POST may have made `booking`: not if its list before that
    POST (`known_ids`, with what an operator vouched is not its) already showed it."""
    return other.known_ids is None or booking.booking_id not in other.known_ids
