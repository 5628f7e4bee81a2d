"""Reconciliation: after a POST whose answer did not settle it, the proof of what it made."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from worker.core.errors import (
    Throttled,
    UpstreamError,
)
from worker.core.flow.bookings import Bookings, could_make, looks_rescheduled
from worker.core.flow.context import (
    Kit,
    StepContext,
    mark_guard,
)
from worker.core.flow.reschedule import Reschedule
from worker.core.models import WebcamBooking
from worker.core.states import Step
from worker.core.store import Rebook

log = logging.getLogger("rebook.flow")


@dataclass
class Reconcile(Kit):
    """`run`: the step of a rebook whose last POST is unsettled; once proven to have made
    nothing, the next POST goes out (`posts`)."""

    bookings: Bookings
    posts: Reschedule

    def run(self, ctx: StepContext, rec: Rebook) -> Step:
        """The last POST may have worked: look for it before anything is sent again.

        "Not made" needs `REBOOK_RECONCILE_PROOF_READS` readable, complete list answers without
        a candidate, the last one starting `REBOOK_RECONCILE_WINDOW_SECONDS` after the window
        opened (past the HTTP timeout and any commit lag). Anything less is no proof: the rebook
        waits, and parks when `REBOOK_RECONCILE_MAX_SECONDS` pass without one.
        """
        assert rec.post_sent_ts is not None
        s = self.settings
        sent = rec.post_sent_ts
        start = self._window_start(sent, rec.answer_ts)
        k = rec.empty_reads + 1
        # a read that *starts* at its time counts; the server's clock, as the mark's and the
        # answer's: a worker clock minutes ahead cannot end the window early
        read_at = self.store.server_time(rec.rebook_id)
        if read_at < self._proof_due(start, k):
            self._stay(
                ctx, rec, reason=rec.reason, due=self._due_at(self._proof_due(start, k), read_at)
            )
            return Step.GRACE
        if read_at > start + s.reconcile_max_seconds:
            return self._park_unsettled(ctx, rec, rec.reconcile_tries, "no proof within the bound")
        known = set(rec.known_ids) if rec.known_ids is not None else None
        performer_key = self.store.performer_field.performer_field()
        try:
            listing = self.bookings.listing(ctx, rec, sent - s.reconcile_lookback_seconds)
        except Throttled as exc:
            self._retry_later(ctx, rec, exc, "reconciling")
            return Step.THROTTLED
        except UpstreamError as exc:
            return self._unreadable(ctx, rec, str(exc))
        found = self.bookings.candidates(
            rec,
            listing,
            sent - s.reconcile_lookback_seconds,
            known=known,
            performer_key=performer_key,
        )
        ours = [b for b in found if looks_rescheduled(b)]
        if ours and performer_key is None:
            # no field says whose it is: ours only if no other unsettled POST of the member may
            # have made it — one whose list before its POST (or an operator) showed it did not
            rivals = self.bookings.rivals(rec)
            theirs = {b.booking_id for b in ours if any(could_make(o, b) for o in rivals)}
            if theirs:
                mine = [b for b in ours if b.booking_id not in theirs]
                if not mine:
                    who = [o.rebook_id for o in rivals]
                    return self._foreign(ctx, rec, ours, start, read_at, rivals=who)
                ours = mine
        if ours:
            return self.bookings.adopt(ctx, rec, ours, "reconciled: the POST had made it")
        if found:
            return self._foreign(ctx, rec, found, start, read_at, unverified=performer_key is None)
        if not listing.complete:
            return self._unreadable(ctx, rec, "the member's list is too long to read whole")
        if k < s.reconcile_proof_reads:
            self._stay(
                ctx,
                rec,
                reason=f"reconciling: {k} of {s.reconcile_proof_reads} reads found no booking",
                require={"post_sent_ts": mark_guard(sent)},
                fields={"empty_reads": k},
                due=self._due_at(self._proof_due(start, k + 1), read_at),
            )
            return Step.PROVING
        # Proven: the POST did not make a booking. Its mark goes; the next POST may go out.
        if not self._stay(
            ctx,
            rec,
            reason="reconciled: no booking was made",
            require={"post_sent_ts": mark_guard(sent)},
            fields={
                "post_sent_ts": None,
                "answer_ts": None,
                "empty_reads": None,
                "reconcile_tries": 0,
            },
            due=self.clock() + self.store.lease,
        ):
            return Step.NOOP
        fresh = self.store.records.get(rec.rebook_id)
        return self.posts.post(ctx, fresh, listing) if fresh is not None else Step.NOOP

    def _foreign(
        self,
        ctx: StepContext,
        rec: Rebook,
        found: Sequence[WebcamBooking],
        start: float,
        read_at: float,
        *,
        unverified: bool = False,
        rivals: Sequence[str] = (),
    ) -> Step:
        """Bookings appeared that the list did not show before the POST, but none looks made by
        a reschedule (SessionDate a few minutes after CreateDate): the member or the site may
        have booked this performer meanwhile. Such a booking is no proof that the POST made
        nothing (it may be ours after all, if the upstream dates it otherwise), and adopting it
        could claim a booking the member made: wait out the window for ours, then park.

        `unverified`: no performer field is confirmed, so they may be of any performer of the
        member; `rivals`: they look like a reschedule, but another rebook of the member has an
        unsettled POST that may have made them. Either way they cannot be told apart:
        `unverified_shape`."""
        ids = ", ".join(str(b.booking_id) for b in found)
        s = self.settings
        if rivals:
            why = f"booking(s) {ids} may be this rebook's or {', '.join(rivals)}'s"
        else:
            why = f"booking(s) {ids} appeared after the POST but do not look made by a reschedule"
        if read_at >= start + s.reconcile_window_seconds:
            if unverified or rivals:
                self._park(
                    ctx,
                    rec,
                    "unverified_shape",
                    tries=rec.reconcile_tries,
                    error=why,
                    bookings=[b.booking_id for b in found],
                    rivals=list(rivals),
                    action="no confirmed field of a booking's Performer says whose these are: "
                    "look for this rebook's booking upstream, then `rebook retry ID` (with "
                    "`--not-ours` for bookings that are not its); or wait: it resumes by itself "
                    "once the performer field is confirmed (`rebook doctor`)",
                )
                return Step.PARKED
            return self._park_unsettled(ctx, rec, rec.reconcile_tries, why)
        self._stay(
            ctx,
            rec,
            reason=f"reconciling: {why}"
            if rivals
            else f"reconciling: booking(s) {ids} appeared, not like a reschedule",
            require={"post_sent_ts": mark_guard(rec.post_sent_ts)},
            due=self._due_at(
                max(read_at + s.reconcile_grace_seconds, start + s.reconcile_window_seconds),
                read_at,
            ),
        )
        return Step.PROVING

    def _unreadable(self, ctx: StepContext, rec: Rebook, error: str) -> Step:
        """A read that proves nothing either way: counted, and parked past the limit."""
        tries = rec.reconcile_tries + 1
        if tries >= self.settings.reconcile_max_tries:
            return self._park_unsettled(ctx, rec, tries, error)
        self._stay(
            ctx,
            rec,
            reason=f"reconcile failed: {error}",
            fields={"reconcile_tries": tries},
            due=self.clock() + self.backoff(tries),
        )
        return Step.RETRY

    def _park_unsettled(self, ctx: StepContext, rec: Rebook, tries: int, error: str) -> Step:
        self._park(
            ctx,
            rec,
            "ambiguous_reschedule",
            tries=tries,
            error=error,
            action="look for the booking upstream, then `rebook retry ID` (it reconciles "
            "again before any new request)",
        )
        return Step.PARKED
