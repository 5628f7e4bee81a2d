"""The POST, top to bottom: prepare (attempts, gate, cap, the read before it) -> permit (the
circuit's gate and the rate limiter) -> mark (lease, cap, "POST sent", WAIT, lost-mark check)
-> send -> classify (booked, ambiguous, refused, not sent...).

The POST is not idempotent, so a second one needs proof that the first made nothing (README,
"Exactly one booking"). The record says "POST sent" (`post_sent_ts`) before the request goes
out; until the mark is settled — a booking found, or proven not made — no other POST goes out
for this rebook, nor for another rebook of the same member and performer (the gate: their
bookings could not be told apart)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from worker.core.budget import RATE_SHARE
from worker.core.errors import (
    Ambiguous,
    AuthExpired,
    Capped,
    DeploymentFault,
    Found,
    Gated,
    NotFound,
    Rejected,
    Shadowed,
    Throttled,
    Unmarked,
    UpstreamError,
)
from worker.core.flow.bookings import Bookings
from worker.core.flow.context import (
    POST,
    Kit,
    Listing,
    StepContext,
    mark_guard,
)
from worker.core.flow.performer import Performer
from worker.core.models import WebcamBooking, from_ts, iso_z
from worker.core.preread import SharedRead
from worker.core.states import State, Step
from worker.core.store import Rebook

log = logging.getLogger("rebook.flow")

NO_CREDITS = re.compile(
    r"credit[^.]*\b(enough|insufficient|sufficient|balance|top.?up|low)\b"
    r"|\b(enough|insufficient|sufficient|no)\b[^.]*credit",
    re.IGNORECASE,
)
"""A RescheduleMadeBooking refusal for lack of credits (README "Members' money"): the text names
credits and their lack; or HTTP 402."""


@dataclass
class Reschedule(Kit):
    """`post`: the step of a rebook whose performer is online and whose last POST (if any) is
    settled."""

    bookings: Bookings
    performer: Performer
    classify: Classify

    def post(self, ctx: StepContext, rec: Rebook, listing: Listing | None = None) -> Step:
        """Prepare (attempts, gate, cap, the read before it, the token), then `_send_post`
        (permit, mark, send), then classify what came back. `listing`: a read already made
        (by the proof that the last POST made nothing)."""
        s = self.settings
        if rec.attempts >= s.reschedule_max_attempts:
            self._park(
                ctx,
                rec,
                "too_many_attempts",
                attempts=rec.attempts,
                action="check the upstream, then `rebook retry ID`",
            )
            return Step.PARKED
        performer_key = self.store.performer_field.performer_field()
        holder = self.store.transitions.gate_holder(rec, member_wide=performer_key is None)
        if holder is not None:
            return self.classify.gated(ctx, rec, holder)
        cap = s.max_rebooks_per_member_per_day
        if cap and self.store.watch.member_posts_today(rec.user_id, self.clock()) >= cap:
            return self.classify.capped(ctx, rec, cap)
        # Before a POST, look: a POST whose mark was lost (a failover, a restore) made a booking
        # that nothing here remembers. What the list shows now is what our POST cannot have made.
        if listing is None:
            try:
                listing = self._read_before_post(
                    ctx, rec, rec.created_ts - s.reconcile_lookback_seconds
                )
            except UpstreamError as exc:
                return self._list_failed(ctx, rec, exc)
        # (a list cut at its page limit is fine here: what it did not show stays a candidate)
        try:
            token = self.tokens.access_token(rec.user_id)
        except UpstreamError as exc:  # the token endpoint failed: nothing was sent
            self._retry_later(ctx, rec, exc, "refreshing the member's token")
            return Step.RETRY
        marked: list[float] = []
        try:
            booking = self._send_post(ctx, rec, token, listing, marked, performer_key)
        except Shadowed:
            return self.classify.shadowed(ctx, rec, marked)
        except Gated as exc:
            return self.classify.gated(ctx, rec, exc.holder)
        except Capped:
            return self.classify.capped(ctx, rec, cap or 0)
        except DeploymentFault as exc:  # 401/403 (or paused): the upstream did nothing
            return self._paused(ctx, rec, exc, marked)
        except Found as exc:
            return self.classify.found_before_post(ctx, rec, exc)
        except Ambiguous as exc:
            return self.classify.ambiguous(ctx, rec, marked, exc)
        except AuthExpired:  # 401: the upstream did nothing
            return self.classify.token_refused(ctx, rec, marked, token)
        except NotFound as exc:
            return self._fail(ctx, rec, f"upstream: {exc.message}")
        except Rejected as exc:
            return self.classify.rejected(ctx, rec, exc)
        except (UpstreamError, Unmarked) as exc:  # not sent, or refused before it acted
            return self.classify.not_done(ctx, rec, marked, exc)
        self.performer.learn(ctx, rec, booking, "the POST's answer")
        return self.bookings.booked(ctx, rec, booking)

    def _read_before_post(self, ctx: StepContext, rec: Rebook, since: float) -> Listing:
        """The member's list before a POST: a read shared with the member's other POSTs where it
        is evidence for this one (`_shared_read`), else one made now — by one thread of this
        process for all its threads that need the member's list meanwhile."""
        s = self.settings
        if s.shared_read_seconds <= 0 or rec.attempts:
            # a rebook that has POSTed before reads afresh: its own earlier POST's booking must be
            # in the list for the lost-mark check
            server = self.store.server_id(rec.user_id)
            return replace(self.bookings.listing(ctx, rec, since, RATE_SHARE[POST]), server=server)
        shared = self._shared_read(rec, since)
        if shared is not None:
            return shared
        lead, done = self.reads.lead(rec.user_id)
        if not lead:  # another thread of this process is reading the member's list: wait for it
            done.wait(s.call_bound_seconds)
            shared = self._shared_read(rec, since)
            if shared is not None:
                return shared
        try:
            server, started = self.store.server_id(rec.user_id), self.clock()
            # a member is waiting for this POST: the read before it has the POST's share
            listing = replace(
                self.bookings.listing(ctx, rec, since, RATE_SHARE[POST]), server=server
            )
            self.reads.put(
                rec.user_id,
                SharedRead(listing, since, started, server),
                started - s.shared_read_seconds,
            )
            return listing
        finally:
            if lead:
                self.reads.landed(rec.user_id)

    def _shared_read(self, rec: Rebook, since: float) -> Listing | None:
        """A read of the member's list this process made for an earlier POST, if it is evidence
        for this one: at most `REBOOK_SHARED_READ_SECONDS` old, no other POST of the member
        unsettled (its booking, made after the read, would be missing from `known_ids`: should
        the performer field be dropped, nothing would tell the two apart), and none settled
        since the read went out without owning a booking (it may have made one the read does
        not show). The others settled since own their booking (never a candidate) or made
        nothing. A POST whose mark was lost cannot be seen settling: so never a read older
        than a POST of this rebook that this process sent, nor one from before the store's
        server changed (a restart or a failover is what loses a mark). README "Exactly one
        booking": the read before a POST."""
        s = self.settings
        read = self.reads.latest(rec.user_id, since, oldest=self.clock() - s.shared_read_seconds)
        if read is None:
            return None
        # a POST sent up to one call bound before the read may have been made after it went
        # out; the margin also covers the clocks of other processes (they write `updated_ts`)
        after = read.started - s.call_bound_seconds - 1.0
        mine = self.reads.last_mark(rec.rebook_id)
        if mine is not None and mine >= after:
            return None
        if self.store.server_id(rec.user_id) != read.server:
            self.reads.drop(rec.user_id, read)
            return None
        others = [
            o
            for o in self.store.transitions.posted_without_booking(rec, True)
            if o != rec.rebook_id
        ]
        for other in self.store.records.get_many(others):
            if other.new_booking_id is None and (
                other.post_sent_ts is not None or other.updated_ts >= after
            ):
                self.reads.drop(rec.user_id, read)
                return None
        return read.listing

    def _list_failed(self, ctx: StepContext, rec: Rebook, exc: UpstreamError) -> Step:
        """The look before a POST failed: nothing was sent. Our own rate budget's "not now"
        counts nothing; a failed read counts (`reconcile_tries`, from the last mark), and at
        REBOOK_RECONCILE_MAX_TRIES the rebook parks `list_unreadable` rather than retry for
        ever (a list the worker cannot parse, a member whose list always fails)."""
        what = "reading the member's bookings before the POST"
        tries = rec.reconcile_tries + 1
        if isinstance(exc, Throttled):
            self._retry_later(ctx, rec, exc, what)
            return Step.RETRY
        if tries < self.settings.reconcile_max_tries:
            self._retry_later(ctx, rec, exc, what, fields={"reconcile_tries": tries})
            return Step.RETRY
        self._park(
            ctx,
            rec,
            "list_unreadable",
            tries=tries,
            error=str(exc),
            action="the member's bookings could not be read before a POST (nothing was sent): "
            "check the upstream (and REBOOK_MADE_BOOKINGS_LIST_NAMES), then `rebook retry ID`",
        )
        return Step.PARKED

    def _send_post(
        self,
        ctx: StepContext,
        rec: Rebook,
        token: str,
        listing: Listing,
        marked: list[float],
        performer_key: str | None = None,
    ) -> WebcamBooking:
        """The POST: its permit (the circuit's gate, the rate limiter: it may wait), then the
        mark right before the request — no wait lies between them, and the lease covers the
        call — then the request. Under REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY, one that cannot
        have made a booking (refused, or stopped after its mark) gives its count back: the cap
        counts POSTs that may have booked."""
        try:
            permit = self.client.reserve(POST, member=True)
            if self.settings.shadow:
                self._shadow_stop(ctx, marked)
            self._write_mark(ctx, rec, listing, marked, performer_key)
            return self.client.reschedule(token, rec.booking_id, permit=permit)
        except Exception as exc:
            capped = bool(self.settings.max_rebooks_per_member_per_day)
            # (shadow mode took no count: it stops before the mark, and the cap)
            if marked and capped and not isinstance(exc, (Ambiguous, Shadowed)):
                self.store.watch.give_back_member_post(rec.user_id, marked[0])
            raise

    def _write_mark(
        self,
        ctx: StepContext,
        rec: Rebook,
        listing: Listing,
        marked: list[float],
        performer_key: str | None = None,
    ) -> None:
        """Right before the request: lease, mark (with what the list showed, which the POST
        cannot have made), the lost-mark check, replicas. Appends the mark's time to `marked`;
        raises to send nothing. With no confirmed `performer_key` the gate and the siblings
        span the member (every performer)."""
        member_wide = performer_key is None
        s = self.settings
        seen = sorted({*(rec.known_ids or ()), *(b.booking_id for b in listing.bookings)})
        ctx.hold()
        now = self.clock()
        cap = s.max_rebooks_per_member_per_day
        if cap and not self.store.watch.take_member_post(rec.user_id, cap, now):
            raise Capped(f"member {rec.user_id} reached {cap} POSTs today")
        ok, holder, got, sent = self.store.transitions.start_post(
            rec.rebook_id,
            now=now,
            attempts=rec.attempts + 1,
            claim=ctx.token,
            known_ids=seen,
            due=now + self.store.lease,
            member_wide=member_wide,
            # WAIT on the connection that wrote the mark (one pipeline)
            replicas=s.redis_wait_replicas,
            replica_timeout_ms=s.redis_wait_timeout_ms,
        )
        if not ok:
            if cap:
                self.store.watch.give_back_member_post(rec.user_id, now)
            raise Gated(holder) if holder else Unmarked("the rebook changed")
        assert sent is not None
        marked.append(sent)  # the server's time (the proof's clock), as the record has it
        self.reads.marked(rec.rebook_id, now, now - 2 * s.call_bound_seconds - 60)
        # A restart or a failover since the read went out may have lost a sibling's mark
        # (its booking made after the read: not in it), and then the gate let this POST by
        # (sim seed 86). Nothing is decided on a read from another server: read again.
        known = listing.server and not listing.server.startswith("unknown-")
        if known and self.store.server_id(rec.user_id) != listing.server:
            raise Unmarked("the store's server changed since the read before the POST")
        # Under the gate now, no sibling's POST is unsettled: a booking in the list that
        # nobody owns and that looks like ours is one whose mark was lost. Owners are read
        # only now, so one a sibling took meanwhile is not taken twice.
        found = self.bookings.candidates(
            rec,
            listing,
            rec.created_ts - s.reconcile_lookback_seconds,
            strict=True,
            performer_key=performer_key,
        )
        if found:
            raise Found(found, self.bookings.siblings(rec, member_wide=member_wide))
        if s.redis_wait_replicas and got < s.redis_wait_replicas:
            raise Unmarked(f"{got} of {s.redis_wait_replicas} replicas have the mark")

    def _shadow_stop(self, ctx: StepContext, marked: list[float]) -> NoReturn:
        """Shadow mode: the moment the POST would go out (after the gate, the read before it
        and the rate limiter) is noted, and nothing is sent, whatever client runs it. No "POST
        sent" mark is written: nothing needs reconciling."""
        ctx.hold()
        marked.append(self.clock())
        raise Shadowed("shadow mode: not sent", endpoint=POST)


@dataclass
class Classify(Kit):
    """What a POST that booked nothing (yet) comes to: each answer's handler, by name."""

    bookings: Bookings

    def shadowed(self, ctx: StepContext, rec: Rebook, marked: list[float]) -> Step:
        """SHADOWED (terminal): what shadow mode would have booked, when, and how long after
        the performer was seen online."""
        at = marked[0] if marked else self.clock()
        detail: dict[str, Any] = {"would_post_at": iso_z(from_ts(at))}
        if rec.online_ts is not None:
            detail["online_at"] = iso_z(from_ts(rec.online_ts))
            detail["online_to_post_seconds"] = round(max(0.0, at - rec.online_ts), 3)
        if self._move(
            ctx,
            rec.rebook_id,
            State.SHADOWED,
            from_=[State.RESCHEDULING],
            reason="shadow mode: would have rescheduled (nothing sent)",
            fields={"would_post_ts": at},
            outcome=State.SHADOWED.value,
            detail=detail,
        ):
            log.info("rebook %s: SHADOWED (would have POSTed at %s)", rec.rebook_id, at)
        return Step.SHADOWED

    def capped(self, ctx: StepContext, rec: Rebook, cap: int) -> Step:
        """REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY reached: parked before any POST."""
        self._park(
            ctx,
            rec,
            "member_cap",
            fields={"post_sent_ts": None, "attempts": rec.attempts},
            action=f"the member reached {cap} rebook POSTs today (UTC day, "
            "REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY); `rebook retry ID` tomorrow or raise the cap",
            cap=cap,
        )
        return Step.PARKED

    def gated(self, ctx: StepContext, rec: Rebook, holder: str) -> Step:
        """Another rebook of the same member and performer has an unsettled POST: wait for it,
        visibly, and not past `REBOOK_GATE_MAX_WAIT_SECONDS`."""
        now = self.clock()
        since = rec.gated_since if rec.gated_since is not None else now
        if now - since >= self.settings.gate_max_wait_seconds:
            self._park(
                ctx,
                rec,
                "blocked",
                action=f"settle {holder} first (`rebook status {holder}`); this one goes on "
                "by itself once it is settled, or `rebook retry` it",
                fields={"blocked_by": holder},
                blocked_by=holder,
            )
            return Step.PARKED
        self._stay(
            ctx,
            rec,
            reason=f"waiting for {holder} (same member; its reschedule is unsettled)",
            fields={"gated_since": since, "blocked_by": holder},
            due=now + self.backoff(0) + self.settings.reconcile_grace_seconds,
        )
        return Step.GATED

    def found_before_post(self, ctx: StepContext, rec: Rebook, exc: Found) -> Step:
        """A booking whose mark was lost: adopted, or parked if a sibling could own it."""
        if not exc.siblings:
            return self.bookings.adopt(ctx, rec, exc.bookings, "found upstream before the POST")
        self._park(
            ctx,  # whose is it? a wrong guess books one session twice; nothing was sent
            rec,
            "unclaimed_booking",
            fields={"post_sent_ts": None, "attempts": rec.attempts},
            action=f"booking {exc.bookings[0].booking_id} is nobody's here; it may be "
            f"this rebook's or {', '.join(exc.siblings)}'s (a lost \"POST sent\" "
            "mark): check upstream, then `rebook retry` the one it belongs to, after "
            "recording it",
            bookings=[b.booking_id for b in exc.bookings],
            siblings=exc.siblings,
        )
        return Step.PARKED

    def ambiguous(self, ctx: StepContext, rec: Rebook, marked: list[float], exc: Ambiguous) -> Step:
        """Sent, and the answer does not say what happened: reconcile, from this answer (its
        time on the server's clock, as every time the proof compares)."""
        answered = self.store.server_time(rec.rebook_id)
        log.warning("rebook %s: reschedule ambiguous (%s); reconciling", rec.rebook_id, exc)
        self._stay(
            ctx,
            rec,
            reason=f"ambiguous: {exc}",
            require={"post_sent_ts": mark_guard(marked[0])},
            fields={"errors": rec.errors + 1, "answer_ts": answered},
            due=self._due_at(self._proof_due(answered, 1), answered),
        )
        return Step.AMBIGUOUS

    def token_refused(self, ctx: StepContext, rec: Rebook, marked: list[float], token: str) -> Step:
        """401: nothing happened upstream; refresh now, POST again on the next run — unless the
        API key is at fault (`_key_check` raises; the step pauses)."""
        self._unmark(ctx, rec, marked, reason="access token refused", due=self.clock())
        self._key_check(rec)
        try:
            self.tokens.access_token(rec.user_id, rejected=token)
        except UpstreamError as exc:  # refreshed on the next run instead
            log.warning("rebook %s: token refresh failed (%s)", rec.rebook_id, exc)
        return Step.REAUTH_RETRY

    def not_done(
        self, ctx: StepContext, rec: Rebook, marked: list[float], exc: UpstreamError | Unmarked
    ) -> Step:
        """Not sent, or refused before the upstream acted: the mark goes, try again later."""
        if isinstance(exc, Unmarked) and not marked:
            return Step.NOOP  # the rebook moved on meanwhile
        if isinstance(exc, Throttled):
            wait, errors = self._throttle_wait(exc), rec.errors
        else:
            retry_after = exc.retry_after if isinstance(exc, UpstreamError) else None
            wait = self.backoff(rec.errors, retry_after)
            errors = rec.errors + 1
        log.warning("rebook %s: reschedule not done (%s); again in %.1fs", rec.rebook_id, exc, wait)
        self._unmark(
            ctx, rec, marked, reason=f"retry: {exc}", due=self.clock() + wait, errors=errors
        )
        return Step.RETRY

    def rejected(self, ctx: StepContext, rec: Rebook, exc: Rejected) -> Step:
        """A 4xx: if a fresh presence check says offline, the performer left in between. A
        refusal for lack of credits parks `no_credits`: the member can cure it."""
        assert rec.performer_id is not None
        if exc.status == 402 or NO_CREDITS.search(exc.message or ""):
            self._park(
                ctx,
                rec,
                "no_credits",
                fields={"post_sent_ts": None, "answer_ts": None, "attempts": rec.attempts},
                action="the member tops up their credits; then `rebook retry ID`",
                upstream=exc.message,
            )
            self._unblock(ctx, rec)
            return Step.PARKED
        try:
            ctx.hold()
            online: bool | None = self.client.is_online(rec.performer_id)
        except UpstreamError:
            online = None
        now = self.clock()
        if online is False:
            self._move(
                ctx,
                rec.rebook_id,
                State.WAITING,
                from_=[State.RESCHEDULING],
                reason="performer went offline",
                fields={"post_sent_ts": None, "answer_ts": None},
                due=rec.deadline_ts,
                now=now,
            )
            self._unblock(ctx, rec)
            return Step.WAITING
        if online is None:
            self._stay(
                ctx,
                rec,
                reason=f"rejected ({exc.message}); presence unknown",
                fields={"post_sent_ts": None, "errors": rec.errors + 1},
                due=now + self.backoff(rec.errors),
            )
            return Step.RETRY
        return self._fail(ctx, rec, f"upstream refused: {exc.message}")
