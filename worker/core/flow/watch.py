"""Watching the new booking until the performer decides; confirming it (REBOOK_AUTO_CONFIRM)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from worker.core.errors import (
    Ambiguous,
    Rejected,
    UpstreamError,
)
from worker.core.flow.context import (
    ACCEPT_BY_FALLBACK_SECONDS,
    Kit,
    StepContext,
)
from worker.core.flow.performer import Performer
from worker.core.models import WebcamBooking, from_ts, iso_z
from worker.core.states import State, Step
from worker.core.store import SERVER_NOW, Rebook

log = logging.getLogger("rebook.flow")


@dataclass
class Watch(Kit):
    """`run`: the step of a rebook with a new booking, until the performer decides."""

    performer: Performer

    def run(self, ctx: StepContext, rec: Rebook) -> Step:
        new_booking_id = rec.new_booking_id
        if new_booking_id is None:
            return Step.NOOP
        accept_by = rec.accept_by_ts or (rec.created_ts + ACCEPT_BY_FALLBACK_SECONDS)
        try:
            booking = self._read_watched(rec, new_booking_id, accept_by)
        except Rejected as exc:
            self._park(
                ctx,
                rec,
                "watch_failed",
                error=str(exc),
                action="check the booking upstream, then `rebook retry ID`",
            )
            return Step.PARKED
        except UpstreamError as exc:
            overdue = self.clock() - accept_by
            if overdue > max(600.0, 10 * self.settings.watch_interval_seconds) and (
                rec.errors + 1 >= self.settings.reconcile_max_tries
            ):
                self._park(
                    ctx,
                    rec,
                    "watch_unreadable",
                    error=str(exc),
                    action="check the booking upstream, then `rebook retry ID`",
                )
                return Step.PARKED
            self._retry_later(ctx, rec, exc, "reading the new booking")
            return Step.RETRY
        now = self.clock()
        if booking is None:
            self._stay(ctx, rec, reason=rec.reason, due=now + self.settings.sweep_interval_seconds)
            return Step.DEFERRED
        if not rec.adopted:  # the POST's own answer named it: certainly the rebook's performer
            self.performer.learn(ctx, rec, booking, "the watched booking")
        final = booking.final_state
        if booking.accept_by is not None:
            accept_by = booking.accept_by.timestamp()
        if final == State.ACCEPTED and self.settings.auto_confirm:
            if self.settings.shadow:  # a booking made before shadow mode: never confirmed here
                return self._finish(
                    ctx, rec, booking, final, "accepted; not confirmed (shadow mode)"
                )
            return self._confirm(ctx, rec, booking)
        if final is not None:
            return self._finish(ctx, rec, booking, final)
        if now >= accept_by:
            self._move(
                ctx,
                rec.rebook_id,
                State.EXPIRED,
                from_=[State.WATCHING],
                reason=f"AcceptBy passed while {booking.status or 'Pending'}",
                fields={"status": booking.status},
                outcome=State.EXPIRED.value,
                now=now,
            )
            log.info("rebook %s: EXPIRED", rec.rebook_id)
            return Step.EXPIRED
        self._stay(
            ctx,
            rec,
            reason=rec.reason,
            fields={
                "status": booking.status,
                "errors": 0,
                "accept_by_ts": accept_by,
                "accept_by": iso_z(from_ts(accept_by)),
            },
            due=min(now + self.settings.watch_interval_seconds, accept_by),
            now=now,
        )
        return Step.PENDING

    def _read_watched(self, rec: Rebook, booking_id: int, accept_by: float) -> WebcamBooking | None:
        """The watched booking's state, at one MadeBookings call per member per interval.

        The first watch of a member in an interval reads the member's recent bookings once and
        caches them for everyone watching that interval; the others use the cache. None: another
        worker is reading that list right now; the step comes back a sweep later instead of
        spending a MadeBookingDetails call (watch reads have minutes of slack). A booking not in
        the list, and the last read at AcceptBy (EXPIRED must rest on a fresh answer), go to
        MadeBookingDetails.
        """
        interval = self.settings.watch_interval_seconds
        if self.clock() < accept_by:
            if self.store.claim_window(f"watchlist:{rec.user_id}", interval) == 0:
                watching = [
                    r
                    for r in self.store.records.get_many(
                        self.store.records.active_of_user(rec.user_id)
                    )
                    if r.state == State.WATCHING
                ]
                since = min((r.post_sent_ts or r.created_ts) for r in [rec, *watching])
                found = self._member_call(
                    rec,
                    lambda tok: list(
                        self.client.iter_made_bookings(
                            # a lookback of hours: a wrong zone must not hide what we watch
                            tok,
                            start=from_ts(since - self.settings.reconcile_lookback_seconds),
                            max_pages=5,
                        )
                    ),
                )
                self.store.watch.cache_bookings(
                    rec.user_id,
                    {b.booking_id: b.model_dump_json(by_alias=True) for b in found},
                    ttl=interval,
                )
            listed, cached = self.store.watch.cached_booking(rec.user_id, booking_id)
            if cached is not None:
                return WebcamBooking.model_validate_json(cached, context={"tz": self.settings.zone})
            if not listed:
                return None
        return self._member_call(rec, lambda tok: self.client.booking_details(tok, booking_id))

    def _finish(
        self, ctx: StepContext, rec: Rebook, booking: WebcamBooking, final: State, reason: str = ""
    ) -> Step:
        self._move(
            ctx,
            rec.rebook_id,
            final,
            from_=[State.WATCHING],
            reason=reason or booking.reason or f"upstream status {booking.status}",
            fields={"status": booking.status},
            outcome=final.value,
        )
        log.info("rebook %s: %s", rec.rebook_id, final.value)
        return Step(final.value.lower())

    def _confirm(self, ctx: StepContext, rec: Rebook, booking: WebcamBooking) -> Step:
        """REBOOK_AUTO_CONFIRM: confirm an Accepted booking (costs credits; upstream rules:
        only Accepted, only before SessionDate). Confirm is not idempotent either: after an
        ambiguous answer it goes again only on the same proof as a POST — readable status
        reads, still Accepted, spread over the reconcile window (`_proof_due`)."""
        now = self.clock()
        if booking.session_date is not None and booking.session_date.timestamp() <= now:
            return self._finish(ctx, rec, booking, State.ACCEPTED, "accepted; too late to confirm")
        sent = rec.confirm_sent_ts
        if sent is not None:  # the proof on the server's clock, as a POST's
            start = self._window_start(sent, rec.confirm_answer_ts)
            k = rec.confirm_reads + 1
            read_at = self.store.server_time(rec.rebook_id)
            if read_at < self._proof_due(start, k):
                self._stay(
                    ctx,
                    rec,
                    reason=rec.reason,
                    due=self._due_at(self._proof_due(start, k), read_at),
                )
                return Step.CONFIRM_PENDING
            try:  # a fresh read of our own: a cached list may predate the confirm
                ctx.hold()
                booking = self._member_call(
                    rec, lambda tok: self.client.booking_details(tok, booking.booking_id)
                )
            except UpstreamError as exc:
                self._retry_later(ctx, rec, exc, "reading the booking after a confirm")
                return Step.CONFIRM_RETRY
            final = booking.final_state
            if final is not None and final != State.ACCEPTED:
                return self._finish(ctx, rec, booking, final)
            if k < self.settings.reconcile_proof_reads:
                self._stay(
                    ctx,
                    rec,
                    reason=rec.reason,
                    require={"confirm_sent_ts": repr(sent)},
                    fields={"confirm_reads": k},
                    due=self._due_at(self._proof_due(start, k + 1), read_at),
                )
                return Step.CONFIRM_PROVING
        self.store.watch.forget_cached(rec.user_id, booking.booking_id)
        if not self._stay(
            ctx,
            rec,
            reason="confirm sent",
            fields={
                "confirm_sent_ts": SERVER_NOW,
                "confirm_answer_ts": None,
                "confirm_reads": None,
            },
            due=now + self.store.lease,
        ):
            return Step.NOOP
        try:
            ctx.hold()
            confirmed = self._member_call(
                rec, lambda tok: self.client.confirm(tok, booking.booking_id)
            )
        except Rejected as exc:
            return self._finish(
                ctx, rec, booking, State.ACCEPTED, f"auto-confirm refused: {exc.message}"
            )
        except Ambiguous as exc:  # read the status again, on proof, before confirming again
            answered = self.store.server_time(rec.rebook_id)
            log.warning("rebook %s: confirm not settled (%s)", rec.rebook_id, exc)
            self._stay(
                ctx,
                rec,
                reason=f"confirm unsettled: {exc}",
                fields={"confirm_answer_ts": answered},
                due=self._due_at(self._proof_due(answered, 1), answered),
            )
            return Step.CONFIRM_RETRY
        except UpstreamError as exc:  # not sent (or a 401 twice): nothing was confirmed
            self._stay(
                ctx,
                rec,
                reason=f"confirm not sent: {exc}",
                fields={"confirm_sent_ts": None},
                due=self.clock() + self.backoff(rec.errors, exc.retry_after),
            )
            return Step.CONFIRM_RETRY
        return self._finish(ctx, rec, confirmed, State.CONFIRMED, "auto-confirmed")
