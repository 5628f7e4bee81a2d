"""The decisions of the pipeline, one method per step. No Celery and no HTTP here.

Each step reads the record, asks the upstream through the client, and moves the record with a
compare-and-set transition. What to run next goes through a :class:`Dispatcher` (Celery in
production, see `tasks/`), but nothing depends on that message arriving: the sweep finds every
overdue record in the due index and dispatches it again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from worker.auth import TokenManager
from worker.errors import (
    Ambiguous,
    AuthExpired,
    InvalidEvent,
    NotFound,
    ReauthRequired,
    Rejected,
    Throttled,
    UpstreamError,
)
from worker.models import RebookEvent, State, WebcamBooking, from_ts, iso_z
from worker.observability import bound
from worker.settings import Settings
from worker.store import REMOVE, Rebook, Store, rebook_id_for
from worker.upstream import UpstreamClient

log = logging.getLogger("rebook.flow")

T = TypeVar("T")
ACTIVE_STEPS = (State.WAITING, State.RESCHEDULING, State.WATCHING)
CLOCK_SKEW_SECONDS = 30.0
"""How far the upstream's CreateDate may lag our clock when we look for a booking we made."""
ACCEPT_BY_FALLBACK_SECONDS = 86400.0
PRESENCE_SLACK_SECONDS = 0.05
"""A presence check sent to run on time may find the last one's window open for a moment more
(the window began a round trip after its check did; clocks of two hosts differ by a few ms):
it waits that long rather than a whole sweep."""


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


class Refused(Exception):
    """An operator command that does not apply in the record's state; the message says why."""


@dataclass
class Flow:
    settings: Settings
    store: Store
    client: UpstreamClient
    tokens: TokenManager
    dispatch: Dispatcher
    clock: Callable[[], float] = field(default=time.time)

    # -- helpers -------------------------------------------------------------------------------

    def backoff(self, errors: int, retry_after: float | None = None) -> float:
        """Seconds to wait after `errors` failures: exponential with jitter, or what 429 asked."""
        if retry_after is not None:
            return min(self.settings.retry_max_seconds, retry_after) + random.uniform(0, 0.25)
        ceiling = min(
            self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2 ** min(errors, 20)
        )
        return random.uniform(ceiling / 2, ceiling)

    def _member_call(self, rec: Rebook, call: Callable[[str], T]) -> T:
        """Runs a member call; on 401 refreshes once (single-flight) and repeats it once.

        Safe for the POST too: a 401 means the upstream did nothing.
        """
        token = self.tokens.access_token(rec.user_id)
        try:
            return call(token)
        except AuthExpired:
            log.info("rebook %s: access token refused, refreshing", rec.rebook_id)
            return call(self.tokens.access_token(rec.user_id, rejected=token))

    def _park(self, rec: Rebook, reason: str, *, action: str, **detail: Any) -> bool:
        """NEEDS_ATTENTION: `reason` says why (a short code), `action` what a person should do."""
        ok = self.store.transition(
            rec.rebook_id,
            State.NEEDS_ATTENTION,
            from_=ACTIVE_STEPS,
            reason=reason,
            due=REMOVE,
            fields={"action": action},
            outcome=State.NEEDS_ATTENTION.value,
            detail={"action": action, **detail},
        )
        if ok:
            log.warning("rebook %s: needs attention (%s) %s", rec.rebook_id, reason, detail or "")
        return ok

    def park_member(self, user_id: str, detail: str) -> int:
        """Refresh refused: every active rebook of the member waits for `rebook tokens set`."""
        parked = 0
        for rec in self.store.get_many(self.store.active_of_user(user_id)):
            if rec.state in ACTIVE_STEPS and self._park(
                rec,
                "reauth",
                action=f"the member must sign in again; then `rebook tokens set {user_id}`",
                why=detail,
            ):
                parked += 1
        return parked

    def _stay(self, rec: Rebook, *, reason: str, **changes: Any) -> bool:
        """Updates a record in its current state (due time, counters, reason); a no-op if the
        state moved on meanwhile."""
        return self.store.transition(
            rec.rebook_id, rec.state, from_=[rec.state], reason=reason, **changes
        )

    def _retry_later(self, rec: Rebook, exc: UpstreamError, what: str) -> None:
        wait = self.backoff(rec.errors, exc.retry_after)
        log.warning("rebook %s: %s failed (%s); again in %.1fs", rec.rebook_id, what, exc, wait)
        self._stay(
            rec, reason=rec.reason, due=self.clock() + wait, fields={"errors": rec.errors + 1}
        )

    # -- intake ----------------------------------------------------------------------------------

    def intake(self, args: Any, kwargs: Any, *, task_id: str = "") -> str:
        """Records an event durably. Returns "created", "exists", "duplicate" or "invalid"."""
        try:
            event, extra = RebookEvent.parse(args, kwargs)
        except InvalidEvent as exc:
            self.store.deadletter(
                exc.reason, {"args": args, "kwargs": kwargs}, task_id=task_id, task="rebook.request"
            )
            log.warning("invalid rebook event (task %s): %s", task_id, exc.reason)
            return "invalid"
        with bound(
            event_id=event.event_id,
            booking_id=event.booking_id,
            rebook_id=rebook_id_for(event.event_id),
            performer_id=event.performer_id,
        ):
            return self._intake(event, extra)

    def _intake(self, event: RebookEvent, extra: list[str]) -> str:
        if extra:
            log.info("event %s: ignored unknown fields %s", event.event_id, ", ".join(extra[:10]))
        now = self.clock()
        max_wait = event.max_wait_seconds or self.settings.max_wait_seconds
        result = self.store.create(
            rebook_id=rebook_id_for(event.event_id),
            event_id=event.event_id,
            booking_id=event.booking_id,
            user_id=event.user_id,
            performer_id=event.performer_id,
            deadline=now + max_wait,
            now=now,
        )
        if result.kind == "created":
            log.info(
                "rebook %s: received event %s for booking %s (performer %s)",
                result.rebook_id,
                event.event_id,
                event.booking_id,
                event.performer_id,
            )
            if event.performer_id is None:
                self.dispatch.check_presence(None, result.rebook_id)
            elif result.dispatch_presence:
                self.dispatch.check_presence(event.performer_id)
        elif result.kind == "duplicate":
            log.info(
                "event %s: booking %s already has rebook %s: DUPLICATE",
                event.event_id,
                event.booking_id,
                result.other,
            )
        else:
            log.info(
                "event %s: already recorded as %s, nothing to do", event.event_id, result.rebook_id
            )
        return result.kind

    # -- waiting ---------------------------------------------------------------------------------

    def check_presence(self, performer_id: int | None, rebook_id: str | None = None) -> str:
        """One presence call for a performer, however many rebooks wait on them."""
        if performer_id is None:
            return self.resolve_performer(rebook_id) if rebook_id else "noop"
        with bound(performer_id=performer_id):
            return self._check_presence(performer_id)

    def _check_presence(self, performer_id: int) -> str:
        interval = self.settings.presence_interval_seconds
        wait = self.store.claim_presence_call(performer_id, interval)
        if 0 < wait <= PRESENCE_SLACK_SECONDS:
            time.sleep(wait + 0.002)  # PTTL is in whole milliseconds, rounded down
            wait = self.store.claim_presence_call(performer_id, interval)
        if wait > 0:  # checked within this interval by someone else
            self.store.schedule_performer(performer_id, self.clock() + wait)
            return "coalesced"
        if not self.store.waiting_count(performer_id):
            self.store.schedule_performer(performer_id, self.clock() + interval)
            return "idle"
        try:
            online = self.client.is_online(performer_id)
        except Throttled as exc:  # not called: the budget went to POSTs; try again soon
            self.store.release_presence_call(performer_id)
            wait = (exc.retry_after or interval) * random.uniform(1.0, 1.25)
            log.info("presence of performer %s deferred %.2fs (rate budget)", performer_id, wait)
            self.store.schedule_performer(performer_id, self.clock() + wait)
            return "throttled"
        except UpstreamError as exc:
            wait = max(interval, exc.retry_after or 0.0) * random.uniform(1.0, 1.25)
            log.warning(
                "presence of performer %s unknown (%s); again in %.1fs", performer_id, exc, wait
            )
            self.store.schedule_performer(performer_id, self.clock() + wait)
            return "error"
        # The next check is due one interval after this answer came: the upstream sees at least
        # one interval between two calls, whatever the latency or rate-limit wait of each.
        now = self.clock()
        if online:  # only now read who waits: an offline answer (the usual one) costs O(1)
            moved = self.store.transition_many(
                self.store.waiting_for(performer_id),
                State.RESCHEDULING,
                from_=[State.WAITING],
                reason="performer online",
                due=now + self.store.lease,
                fields={"errors": 0},
                now=now,
            )
            with self.dispatch.batch():
                for i, rid in enumerate(moved):
                    # the first jumps the queue: a performer who comes online gets a POST out
                    # at once, even while another performer's burst is being worked off
                    self.dispatch.reschedule(rid, urgent=i == 0)
            log.info("performer %s online: %d rebook(s) to reschedule", performer_id, len(moved))
        self.store.schedule_performer(performer_id, now + interval)
        return "online" if online else "offline"

    def _locked_step(self, rebook_id: str, state: State, body: Callable[[Rebook], str]) -> str:
        """Runs a step of one rebook under its lock, if the rebook is still in `state`."""
        lock = self.store.lock(rebook_id)
        if not lock.acquire():
            return "busy"
        try:
            rec = self.store.get(rebook_id)
            if rec is None or rec.state != state:
                return "noop"
            with bound(
                rebook_id=rec.rebook_id,
                event_id=rec.event_id,
                booking_id=rec.booking_id,
                performer_id=rec.performer_id,
            ):
                try:
                    return body(rec)
                except ReauthRequired as exc:
                    self.park_member(rec.user_id, exc.detail)
                    return "reauth"
        finally:
            _release(lock)

    def resolve_performer(self, rebook_id: str) -> str:
        """The event named no performer: read it from the original booking."""
        return self._locked_step(rebook_id, State.WAITING, self._resolve_performer)

    def _resolve_performer(self, rec: Rebook) -> str:
        if rec.performer_id is not None:
            return "noop"
        try:
            booking = self._member_call(
                rec, lambda tok: self.client.booking_details(tok, rec.booking_id)
            )
        except Rejected as exc:
            return self._fail(rec, f"original booking unreadable: {exc.message}")
        except UpstreamError as exc:
            self._retry_later(rec, exc, "reading the original booking")
            return "retry"
        pid = booking.performer_id
        if pid is None:
            self._park(rec, "performer_unknown", action="resubmit with performer_id")
            return "parked"
        if self._stay(
            rec,
            reason="performer resolved",
            fields={"performer_id": pid, "errors": 0},
            due=rec.deadline_ts,
        ):
            self.dispatch.check_presence(pid)
        return "resolved"

    def _fail(self, rec: Rebook, reason: str, state: State = State.FAILED) -> str:
        self.store.transition(
            rec.rebook_id, state, from_=ACTIVE_STEPS, reason=reason, outcome=state.value
        )
        log.warning("rebook %s: %s (%s)", rec.rebook_id, state.value, reason)
        return state.value.lower()

    # -- reschedule ------------------------------------------------------------------------------

    def reschedule(self, rebook_id: str) -> str:
        return self._locked_step(
            rebook_id,
            State.RESCHEDULING,
            lambda rec: self._reconcile(rec) if rec.post_sent_ts is not None else self._post(rec),
        )

    def _post(self, rec: Rebook) -> str:
        if rec.attempts >= self.settings.reschedule_max_attempts:
            self._park(
                rec,
                "too_many_attempts",
                attempts=rec.attempts,
                action="check the upstream, then `rebook retry ID`",
            )
            return "parked"
        try:
            token = self.tokens.access_token(rec.user_id)
        except UpstreamError as exc:  # the token endpoint failed: nothing was sent
            self._retry_later(rec, exc, "refreshing the member's token")
            return "retry"
        now = self.clock()
        # The record says "POST sent" before the POST: a crash from here on leads to reconcile.
        blocked = self.store.start_post(rec.rebook_id, now=now, attempts=rec.attempts + 1)
        if blocked is not None:
            if blocked.startswith("waiting for"):
                self._stay(
                    rec,
                    reason=blocked,
                    due=now + self.backoff(0) + self.settings.reconcile_grace_seconds,
                )
                return "gated"
            return "noop"
        clear = {"post_sent_ts": None}
        try:
            booking = self.client.reschedule(token, rec.booking_id)
        except Ambiguous as exc:
            log.warning("rebook %s: reschedule ambiguous (%s); reconciling", rec.rebook_id, exc)
            self._stay(
                rec,
                reason=f"ambiguous: {exc}",
                fields={"errors": rec.errors + 1},
                due=now + self.settings.reconcile_grace_seconds,
            )
            return "ambiguous"
        except AuthExpired:
            self._stay(
                rec,
                reason="access token refused",
                fields=clear,
                due=self.clock(),
            )
            try:
                self.tokens.access_token(rec.user_id, rejected=token)
            except UpstreamError as exc:  # refreshed on the next run instead
                log.warning("rebook %s: token refresh failed (%s)", rec.rebook_id, exc)
            return "reauth-retry"
        except NotFound as exc:
            return self._fail(rec, f"upstream: {exc.message}")
        except Rejected as exc:
            return self._rejected(rec, exc)
        except UpstreamError as exc:  # nothing was sent or the upstream refused before acting
            wait = self.backoff(rec.errors, exc.retry_after)
            log.warning(
                "rebook %s: reschedule not done (%s); again in %.1fs", rec.rebook_id, exc, wait
            )
            self._stay(
                rec,
                reason=f"retry: {exc}",
                fields={**clear, "errors": rec.errors + 1, "attempts": rec.attempts},
                due=self.clock() + wait,
            )
            return "retry"
        return self._booked(rec, booking)

    def _rejected(self, rec: Rebook, exc: Rejected) -> str:
        """A 4xx: if a fresh presence check says offline, the performer left in between."""
        assert rec.performer_id is not None
        try:
            online = self.client.is_online(rec.performer_id)
        except UpstreamError:
            online = None
        now = self.clock()
        if online is False:
            self.store.transition(
                rec.rebook_id,
                State.WAITING,
                from_=[State.RESCHEDULING],
                reason="performer went offline",
                fields={"post_sent_ts": None},
                due=rec.deadline_ts,
                now=now,
            )
            return "waiting"
        if online is None:
            self._stay(
                rec,
                reason=f"rejected ({exc.message}); presence unknown",
                fields={"post_sent_ts": None, "errors": rec.errors + 1},
                due=now + self.backoff(rec.errors),
            )
            return "retry"
        return self._fail(rec, f"upstream refused: {exc.message}")

    def _booked(self, rec: Rebook, booking: WebcamBooking) -> str:
        if not self.store.claim_booking(booking.booking_id, rec.rebook_id):
            self._park(
                rec,
                "booking_claimed_elsewhere",
                action="the upstream returned a booking another rebook owns; check both records",
                new_booking_id=booking.booking_id,
                owner=self.store.owner_of(booking.booking_id),
            )
            return "parked"
        now = self.clock()
        accept_by = booking.accept_by or from_ts(now + ACCEPT_BY_FALLBACK_SECONDS)
        assert accept_by is not None
        info = {
            "booking_id": booking.booking_id,
            "accept_by": iso_z(accept_by),
            "status": booking.status,
        }
        if self.store.transition(
            rec.rebook_id,
            State.WATCHING,
            from_=[State.RESCHEDULING],
            reason="booked",
            fields={
                "new_booking_id": booking.booking_id,
                "accept_by": info["accept_by"],
                "accept_by_ts": accept_by.timestamp(),
                "status": booking.status,
                "errors": 0,
            },
            due=now + self.store.lease,
            outcome="BOOKED",
            detail={
                "session_date": iso_z(booking.session_date),
                "duration": booking.duration,
                "credits": str(booking.credits) if booking.credits is not None else None,
            },
            now=now,
        ):
            log.info(
                "rebook %s: booked %s, accept by %s",
                rec.rebook_id,
                booking.booking_id,
                info["accept_by"],
            )
            self.dispatch.watch(rec.rebook_id, info)
        return "booked"

    def _reconcile(self, rec: Rebook) -> str:
        """The last POST may have worked: look for it before anything is sent again."""
        assert rec.post_sent_ts is not None
        sent = rec.post_sent_ts
        read_at = self.clock()  # a read that *starts* after the grace period is the proof
        try:
            found = self._member_call(rec, lambda tok: self._find_made(rec, tok, sent))
        except ReauthRequired:
            raise
        except UpstreamError as exc:
            tries = rec.reconcile_tries + 1
            if tries >= self.settings.reconcile_max_tries:
                self._park(
                    rec,
                    "ambiguous_reschedule",
                    tries=tries,
                    error=str(exc),
                    action="look for the booking upstream, then `rebook retry ID`",
                )
                return "parked"
            self._stay(
                rec,
                reason=f"reconcile failed: {exc}",
                fields={"reconcile_tries": tries},
                due=self.clock() + self.backoff(tries, exc.retry_after),
            )
            return "retry"
        if found is not None:
            log.info(
                "rebook %s: reconciled, the POST had made booking %s",
                rec.rebook_id,
                found.booking_id,
            )
            return self._booked(rec, found)
        now = self.clock()
        ready_at = sent + self.settings.reconcile_grace_seconds
        if read_at < ready_at:
            self._stay(
                rec,
                reason=rec.reason,
                due=ready_at,
            )
            return "grace"
        # A list read after the grace period shows no booking: the POST did not happen.
        if not self._stay(
            rec,
            reason="reconciled: no booking was made",
            require={"post_sent_ts": repr(sent)},
            fields={"post_sent_ts": None, "reconcile_tries": 0},
            due=now + self.store.lease,
        ):
            return "noop"
        fresh = self.store.get(rec.rebook_id)
        return self._post(fresh) if fresh is not None else "noop"

    def _find_made(self, rec: Rebook, token: str, sent: float) -> WebcamBooking | None:
        """Newest first, created since "POST sent", same performer, not the original, not owned
        by another rebook; the oldest such booking is the one our POST made."""
        since = sent - CLOCK_SKEW_SECONDS
        found: WebcamBooking | None = None
        for booking in self.client.iter_made_bookings(token, start=from_ts(since)):
            if booking.create_date is not None and booking.create_date.timestamp() < since:
                break
            if booking.booking_id == rec.booking_id:
                continue
            if rec.performer_id is not None and booking.performer_id not in (
                None,
                rec.performer_id,
            ):
                continue
            owner = self.store.owner_of(booking.booking_id)
            if owner is not None and owner != rec.rebook_id:
                continue
            found = booking
        return found

    # -- watch -----------------------------------------------------------------------------------

    def watch(self, rebook_id: str, booking: dict[str, Any] | None = None) -> str:
        """`booking` is what the message carried; the record's copy is the one trusted."""
        return self._locked_step(rebook_id, State.WATCHING, self._watch)

    def _watch(self, rec: Rebook) -> str:
        new_booking_id = rec.new_booking_id
        if new_booking_id is None:
            return "noop"
        accept_by = rec.accept_by_ts or (rec.created_ts + ACCEPT_BY_FALLBACK_SECONDS)
        try:
            booking = self._read_watched(rec, new_booking_id, accept_by)
        except Rejected as exc:
            self._park(
                rec,
                "watch_failed",
                error=str(exc),
                action="check the booking upstream, then `rebook retry ID`",
            )
            return "parked"
        except UpstreamError as exc:
            overdue = self.clock() - accept_by
            if overdue > max(600.0, 10 * self.settings.watch_interval_seconds) and (
                rec.errors + 1 >= self.settings.reconcile_max_tries
            ):
                self._park(
                    rec,
                    "watch_unreadable",
                    error=str(exc),
                    action="check the booking upstream, then `rebook retry ID`",
                )
                return "parked"
            self._retry_later(rec, exc, "reading the new booking")
            return "retry"
        now = self.clock()
        if booking is None:
            self._stay(rec, reason=rec.reason, due=now + self.settings.sweep_interval_seconds)
            return "deferred"
        final = booking.final_state
        if booking.accept_by is not None:
            accept_by = booking.accept_by.timestamp()
        if final == State.ACCEPTED and self.settings.auto_confirm:
            return self._confirm(rec, booking)
        if final is not None:
            return self._finish(rec, booking, final)
        if now >= accept_by:
            self.store.transition(
                rec.rebook_id,
                State.EXPIRED,
                from_=[State.WATCHING],
                reason=f"AcceptBy passed while {booking.status or 'Pending'}",
                fields={"status": booking.status},
                outcome=State.EXPIRED.value,
                now=now,
            )
            log.info("rebook %s: EXPIRED", rec.rebook_id)
            return "expired"
        self._stay(
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
        return "pending"

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
                    for r in self.store.get_many(self.store.active_of_user(rec.user_id))
                    if r.state == State.WATCHING
                ]
                since = min((r.post_sent_ts or r.created_ts) for r in [rec, *watching])
                found = self._member_call(
                    rec,
                    lambda tok: list(
                        self.client.iter_made_bookings(
                            tok, start=from_ts(since - CLOCK_SKEW_SECONDS), max_pages=5
                        )
                    ),
                )
                self.store.cache_bookings(
                    rec.user_id,
                    {b.booking_id: b.model_dump_json(by_alias=True) for b in found},
                    ttl=interval,
                )
            listed, cached = self.store.cached_booking(rec.user_id, booking_id)
            if cached is not None:
                return WebcamBooking.model_validate_json(cached, context={"tz": self.settings.zone})
            if not listed:
                return None
        return self._member_call(rec, lambda tok: self.client.booking_details(tok, booking_id))

    def _finish(self, rec: Rebook, booking: WebcamBooking, final: State, reason: str = "") -> str:
        self.store.transition(
            rec.rebook_id,
            final,
            from_=[State.WATCHING],
            reason=reason or booking.reason or f"upstream status {booking.status}",
            fields={"status": booking.status},
            outcome=final.value,
        )
        log.info("rebook %s: %s", rec.rebook_id, final.value)
        return final.value.lower()

    def _confirm(self, rec: Rebook, booking: WebcamBooking) -> str:
        """REBOOK_AUTO_CONFIRM: confirm an Accepted booking (costs credits; upstream rules:
        only Accepted, only before SessionDate). Confirm is not idempotent either: after an
        ambiguous answer the next watch reads the status again before confirming again."""
        now = self.clock()
        if booking.session_date is not None and booking.session_date.timestamp() <= now:
            return self._finish(rec, booking, State.ACCEPTED, "accepted; too late to confirm")
        sent = rec.confirm_sent_ts
        grace = self.settings.reconcile_grace_seconds
        if sent is not None and now < sent + grace:
            self._stay(
                rec,
                reason=rec.reason,
                due=sent + grace,
            )
            return "confirm-pending"
        self.store.forget_cached(rec.user_id, booking.booking_id)
        self._stay(
            rec,
            reason="confirm sent",
            fields={"confirm_sent_ts": now},
            due=now + self.store.lease,
        )
        try:
            confirmed = self._member_call(
                rec, lambda tok: self.client.confirm(tok, booking.booking_id)
            )
        except Rejected as exc:
            return self._finish(
                rec, booking, State.ACCEPTED, f"auto-confirm refused: {exc.message}"
            )
        except UpstreamError as exc:  # ambiguous or transient: read the status again first
            log.warning("rebook %s: confirm not settled (%s)", rec.rebook_id, exc)
            self._stay(
                rec,
                reason=f"confirm unsettled: {exc}",
                due=now + grace,
            )
            return "confirm-retry"
        return self._finish(rec, confirmed, State.CONFIRMED, "auto-confirmed")

    # -- beat ------------------------------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Re-dispatches whatever is overdue: a lost message only delays, never loses."""
        now = self.clock()
        # performers due before the next sweep are sent now, to run on time: a performer who
        # came online is seen within one presence interval, not one interval plus one sweep
        ids, pids = self.store.claim_due(
            now, self.settings.sweep_batch, ahead=self.settings.sweep_interval_seconds
        )
        counts = {"performers": len(pids), "rebooks": len(ids), "gave_up": 0}
        expired: list[str] = []
        with self.dispatch.batch():
            for pid, at in pids.items():
                self.dispatch.check_presence(pid, at=at if at > now else None)
            for rec in self.store.get_many(ids):
                if rec.state == State.WAITING:
                    if now >= rec.deadline_ts:
                        expired.append(rec.rebook_id)
                    elif rec.performer_id is None:
                        self.dispatch.check_presence(None, rec.rebook_id)
                    else:
                        self._stay(rec, reason=rec.reason, due=rec.deadline_ts)
                elif rec.state == State.RESCHEDULING:
                    self.dispatch.reschedule(rec.rebook_id)
                elif rec.state == State.WATCHING and rec.new_booking_id is not None:
                    self.dispatch.watch(
                        rec.rebook_id,
                        {
                            "booking_id": rec.new_booking_id,
                            "accept_by": rec.accept_by,
                            "status": rec.status,
                        },
                    )
                else:
                    self.store.transition(
                        rec.rebook_id, rec.state, from_=[rec.state], reason=rec.reason, due=REMOVE
                    )
        if expired:  # one script call per shard for all of them
            gave_up = self.store.transition_many(
                expired,
                State.GAVE_UP,
                from_=[State.WAITING],
                reason="performer not online within max wait",
                outcome=State.GAVE_UP.value,
                now=now,
            )
            counts["gave_up"] = len(gave_up)
        return counts

    def housekeeping(self) -> int:
        return self.store.expire_finished(self.clock())

    # -- operators -------------------------------------------------------------------------------

    def cancel(self, ident: str) -> Rebook:
        rec = self._find(ident)
        if rec.state.terminal:
            raise Refused(f"{rec.rebook_id} is already {rec.state.value}; nothing to cancel")
        require = {"post_sent_ts": ""} if rec.state == State.RESCHEDULING else None
        if not self.store.transition(
            rec.rebook_id,
            State.ABORTED,
            from_=[rec.state],
            reason="cancelled by operator",
            require=require,
            outcome=State.ABORTED.value,
        ):
            raise Refused(
                f"{rec.rebook_id} is in the middle of a reschedule request; try again in a moment"
            )
        return self._find(rec.rebook_id)

    def retry(self, ident: str) -> Rebook:
        """NEEDS_ATTENTION resumes its step; GAVE_UP, FAILED and ABORTED with no new booking
        start waiting again. Whatever made a booking is refused: a second one would be a
        second booking for the same rebook."""
        rec = self._find(ident)
        if rec.state == State.NEEDS_ATTENTION:
            self._resume(rec, "retried by operator")
        elif rec.state in (State.GAVE_UP, State.FAILED, State.ABORTED):
            if rec.new_booking_id is not None:
                raise Refused(
                    f"{rec.rebook_id} is {rec.state.value} after booking {rec.new_booking_id} was "
                    "made; send a new event to rebook again"
                )
            self._restart(rec)
        elif rec.state == State.DUPLICATE:
            raise Refused(f"{rec.rebook_id} is a duplicate of {rec.duplicate_of}; retry that one")
        elif rec.state.terminal:
            raise Refused(
                f"{rec.rebook_id} is {rec.state.value}: booking {rec.new_booking_id} was made and "
                "decided; send a new event to rebook again"
            )
        else:
            raise Refused(f"{rec.rebook_id} is {rec.state.value} and in progress; nothing to retry")
        return self._find(rec.rebook_id)

    def _restart(self, rec: Rebook) -> None:
        now = self.clock()
        deadline = now + self.settings.max_wait_seconds
        if not self.store.transition(
            rec.rebook_id,
            State.WAITING,
            from_=[rec.state],
            reason="retried by operator",
            fields={
                "deadline_ts": deadline,
                "errors": 0,
                "attempts": 0,
                "reconcile_tries": 0,
                "post_sent_ts": None,
                "action": None,
            },
            due=deadline if rec.performer_id is not None else now,
            now=now,
        ):
            active = self.store.active_owner(rec.booking_id, rec.user_id)
            raise Refused(
                f"booking {rec.booking_id} has another active rebook ({active}); not restarted"
                if active and active != rec.rebook_id
                else f"{rec.rebook_id} changed; try again"
            )
        if rec.performer_id is not None:
            self.dispatch.check_presence(rec.performer_id)
        else:
            self.dispatch.check_presence(None, rec.rebook_id)

    def resume_member(self, user_id: str) -> int:
        """After `rebook tokens set`: the member's rebooks parked for `reauth` go on."""
        resumed = 0
        for rec in self.store.get_many(self.store.active_of_user(user_id)):
            if rec.state == State.NEEDS_ATTENTION and rec.reason == "reauth":
                self._resume(rec, "tokens renewed")
                resumed += 1
        return resumed

    def _resume(self, rec: Rebook, reason: str) -> None:
        to = rec.resume_state if rec.resume_state in ACTIVE_STEPS else State.WAITING
        now = self.clock()
        fields: dict[str, Any] = {"errors": 0, "reconcile_tries": 0, "action": None}
        if to == State.WAITING:
            deadline = max(rec.deadline_ts, now + self.settings.presence_interval_seconds * 2)
            fields["deadline_ts"] = deadline
            due: float = deadline
        else:
            due = now + self.store.lease
            if to == State.RESCHEDULING and rec.post_sent_ts is None:
                fields["attempts"] = 0
        if not self.store.transition(
            rec.rebook_id,
            to,
            from_=[State.NEEDS_ATTENTION],
            reason=reason,
            fields=fields,
            due=due,
            now=now,
        ):
            return
        if to == State.WAITING and rec.performer_id is not None:
            self.dispatch.check_presence(rec.performer_id)
        elif to == State.WAITING:
            self.dispatch.check_presence(None, rec.rebook_id)
        elif to == State.RESCHEDULING:
            self.dispatch.reschedule(rec.rebook_id)
        else:
            self.dispatch.watch(
                rec.rebook_id, {"booking_id": rec.new_booking_id, "accept_by": rec.accept_by}
            )

    def _find(self, ident: str) -> Rebook:
        rec = self.store.find(ident)
        if rec is None:
            raise LookupError(f"no rebook {ident!r}")
        return rec


def _release(lock: Any) -> None:
    try:
        lock.release()
    except Exception:  # expired while we worked: the sweep may already have re-dispatched
        log.warning("a step outlived its lock (%s)", getattr(lock, "name", "?"))
