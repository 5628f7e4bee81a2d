"""The decisions of the pipeline, one method per step. No Celery and no HTTP here.

Each step reads the record, asks the upstream through the client, and moves the record with a
compare-and-set transition. What to run next goes through a :class:`Dispatcher` (Celery in
production, see `tasks/`), but nothing depends on that message arriving: the sweep finds every
overdue record in the due index and dispatches it again.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

from worker.core.actions import SHADOWED_REFUSAL
from worker.core.backoff import backoff, jittered
from worker.core.budget import RATE_SHARE
from worker.core.capacity import presence_budget
from worker.core.circuit import MEMBER
from worker.core.errors import (
    Ambiguous,
    AuthExpired,
    DeploymentFault,
    InvalidEvent,
    LeaseLost,
    NotFound,
    NotSent,
    PresenceUnreadable,
    ReauthRequired,
    Rejected,
    Shadowed,
    StoreUnavailable,
    Throttled,
    UpstreamError,
)
from worker.core.models import RebookEvent, WebcamBooking, from_ts, iso_z
from worker.core.observability import HEARTBEAT_SECONDS, bound, sweep_heartbeat
from worker.core.preread import SharedRead, SharedReads
from worker.core.settings import Settings
from worker.core.states import ACTIVE_STATES, STEP_STATES, State, Step
from worker.core.store import REMOVE, SERVER_NOW, Rebook, StepLock, Store, rebook_id_for

log = logging.getLogger("rebook.flow")
POST = "RescheduleMadeBooking"

T = TypeVar("T")
ACCEPT_BY_FALLBACK_SECONDS = 86400.0
PERFORMER_FIELD_ANSWERS = 3
PERFORMER_FIELD_PERFORMERS = 2
"""A key of `Performer` is confirmed as the performer's user id after this many answers of known
meaning that agree (distinct bookings), over this many distinct performers, with no answer
contradicting it since it was first seen (one contradiction resets it). Two performers: one
performer's answers cannot tell a user id from a profile id that happens to equal it, or from a
key that is the same for every booking; three answers: one more than the least that can show
two performers, so no single pair of bookings decides it (README "Exactly one booking")."""
LEARNING_READS = 10
LEARNING_WINDOW_SECONDS = 60.0
"""While the field is unconfirmed, at most this many originals per window are read to learn it
(the POSTs' own answers teach it too, at no cost)."""
FIELD_CACHE_SECONDS = 5.0
"""How long intake trusts its last look at the performer field (it only decides whether to
spend a learning read; every proof reads the field afresh)."""
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


BeforeSend = Callable[[], None]


class Upstream(Protocol):
    """The upstream calls the flow makes (`worker.adapters.upstream.UpstreamClient`; a
    simulation's)."""

    def is_online(self, performer_id: int) -> bool: ...
    def reschedule(
        self, token: str, booking_id: int, *, before_send: BeforeSend | None = None
    ) -> WebcamBooking: ...
    def booking_details(
        self, token: str, booking_id: int, *, before_send: BeforeSend | None = None
    ) -> WebcamBooking: ...
    def confirm(self, token: str, booking_id: int) -> WebcamBooking: ...
    def iter_made_bookings(
        self, token: str, *, start: datetime | None = None, max_pages: int = 10
    ) -> Iterator[WebcamBooking]: ...
    def list_made_bookings(
        self,
        token: str,
        *,
        start: datetime | None = None,
        max_pages: int = 10,
        before_send: BeforeSend | None = None,
        share: float | None = None,
    ) -> tuple[list[WebcamBooking], bool]: ...


class Tokens(Protocol):
    """A member's access token, refreshed single-flight (`worker.adapters.auth.TokenManager`)."""

    def access_token(self, user_id: str, *, rejected: str | None = None) -> str: ...


class Gated(NotSent):
    """Another rebook of the same member and performer (while the performer field is
    unconfirmed: of the same member) has an unsettled POST."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"waiting for {holder}")
        self.holder = holder


class _Capped(NotSent):
    """The member reached REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY: this POST is not sent."""


PAUSE_RECHECK_MIN_SECONDS = 300.0
"""A step paused by a deployment fault comes back by itself after this long (or ten probe
intervals, whichever is longer): the sweep probes meanwhile and, once the fault is gone, makes
every held step due at once."""
NO_CREDITS = re.compile(
    r"credit[^.]*\b(enough|insufficient|sufficient|balance|top.?up|low)\b"
    r"|\b(enough|insufficient|sufficient|no)\b[^.]*credit",
    re.IGNORECASE,
)
"""A RescheduleMadeBooking refusal for lack of credits (README "Members' money"): the text names
credits and their lack; or HTTP 402."""
CLIENT_REFUSAL_TEXT = re.compile(r"invalid_client|unauthorized_client", re.IGNORECASE)


class _Found(NotSent):
    """Before the POST, a booking it would duplicate was found: adopted instead of sent —
    unless another rebook of the same member and performer could be its maker."""

    def __init__(self, bookings: list[WebcamBooking], siblings: list[str]) -> None:
        super().__init__(f"booking {bookings[0].booking_id} found")
        self.bookings = bookings
        self.siblings = siblings


@dataclass(frozen=True)
class _Step:
    rebook_id: str
    token: str
    lock: StepLock


_STEP: ContextVar[_Step | None] = ContextVar("rebook_step", default=None)
"""The step this thread runs: its writes to that rebook are fenced by its token."""


@dataclass(frozen=True)
class Listing:
    """One read of a member's bookings: what it showed, and whether it was read to its end."""

    bookings: list[WebcamBooking]
    complete: bool
    server: str = ""
    """The store's server (`Store.server_id`) before a read before a POST went out: the mark
    must be written on the same one (`_marker`). Empty for other reads; `unknown-…` where it
    cannot be read (then only a fresh read stands before the POST, as ever)."""


@dataclass
class Flow:
    settings: Settings
    store: Store
    client: Upstream
    tokens: Tokens
    dispatch: Dispatcher
    clock: Callable[[], float] = field(default=time.time)
    _field_seen: tuple[float, str | None] = field(default=(-math.inf, None), repr=False)
    _slots_spent_until: float = field(default=-math.inf, repr=False)
    reads: SharedReads[Listing] = field(default_factory=SharedReads, repr=False)
    """Reads before a POST that later POSTs may share: one per worker process (`flow()`)."""
    _client_parked_checked: bool = field(default=False, init=False, repr=False)
    """Whether this process has looked for rebooks an older version parked `reauth` for a
    refused OAuth client (`resume_client_parked`)."""

    # -- helpers -------------------------------------------------------------------------------

    def backoff(self, errors: int, retry_after: float | None = None) -> float:
        """Seconds to wait after `errors` failures (`worker.core.backoff`), or what 429 asked."""
        s = self.settings
        return backoff(errors, s.retry_base_seconds, s.retry_max_seconds, retry_after)

    def _member_call(self, rec: Rebook, call: Callable[[str], T]) -> T:
        """Runs a member call; on 401 refreshes once (single-flight) and repeats it once —
        unless the 401 was the API key's (`_key_check`): no refresh cures that.

        Safe for the POST too: a 401 means the upstream did nothing.
        """
        self.store.circuit.check(MEMBER)  # paused: not even a refresh before the call
        token = self.tokens.access_token(rec.user_id)
        try:
            return call(token)
        except AuthExpired:
            self._key_check(rec)
            log.info("rebook %s: access token refused, refreshing", rec.rebook_id)
            return call(self.tokens.access_token(rec.user_id, rejected=token))

    def _key_check(self, rec: Rebook) -> None:
        """A member call's 401 that does not say whose fault it is: one call that needs no
        member token tells. Refused too: the API key is at fault (DeploymentFault), no refresh."""
        probe = getattr(self.client, "api_key_refused", None)
        # (UserID 1, not the performer: a probe is not a presence check and counts as none)
        if probe is not None and probe(1):
            raise DeploymentFault("api_key", "a call with the API key alone was refused too")

    def _pause_wait(self) -> float:
        return jittered(max(PAUSE_RECHECK_MIN_SECONDS, 10 * self.settings.pause_probe_seconds))

    def _paused(self, rec: Rebook, exc: DeploymentFault, marked: list[float] | None = None) -> Step:
        """A deployment fault: the step waits, counting no error and no attempt, held for the
        sweep to resume once the circuit closes. A refused POST's mark goes (401/403: the
        upstream did nothing)."""
        self.store.circuit.hold(rec.rebook_id)
        due = self.clock() + self._pause_wait()
        reason = f"paused: {exc.setting} refused"
        if marked is not None:
            self._unmark(rec, marked, reason=reason, due=due)
        else:
            self._stay(rec, reason=reason, due=due)
        if not exc.paused:
            log.warning("rebook %s: %s", rec.rebook_id, exc)
        return Step.PAUSED

    def _move(
        self, rebook_id: str, to: State, *, require: dict[str, Any] | None = None, **kw: Any
    ) -> bool:
        """`store.transition`, fenced: inside a step, a write to its own rebook applies only
        while the step still holds it (its token is the record's `claim`)."""
        step = _STEP.get()
        if step is not None and step.rebook_id == rebook_id:
            require = {**(require or {}), "claim": step.token}
        return self.store.transition(rebook_id, to, require=require, **kw)

    def _hold(self) -> None:
        """Extends the step's lease over the next upstream call, or raises :class:`LeaseLost`."""
        step = _STEP.get()
        if step is None:
            return
        try:
            held = step.lock.extend(self.settings.longest_call_seconds, replace_ttl=True)
        except Exception:  # redis-py raises LockNotOwnedError when another step has it
            held = False
        if not held:
            raise LeaseLost(f"lease of {step.rebook_id} taken over")

    def _park(
        self,
        rec: Rebook,
        reason: str,
        *,
        action: str,
        fields: dict[str, Any] | None = None,
        **detail: Any,
    ) -> bool:
        """NEEDS_ATTENTION: `reason` says why (a short code), `action` what a person should do."""
        ok = self._move(
            rec.rebook_id,
            State.NEEDS_ATTENTION,
            from_=STEP_STATES,
            reason=reason,
            due=REMOVE,
            fields={"action": action, **(fields or {})},
            outcome=State.NEEDS_ATTENTION.value,
            detail={"action": action, **detail},
        )
        if ok:
            log.warning("rebook %s: needs attention (%s) %s", rec.rebook_id, reason, detail or "")
        return ok

    def park_member(self, user_id: str, detail: str) -> int:
        """Refresh refused: every active rebook of the member waits for `rebook tokens set`."""
        if CLIENT_REFUSAL_TEXT.search(detail):  # the site's client, never the member's fault
            log.warning("member %s: refresh refused for the OAuth client, not parked", user_id)
            return 0
        parked = 0
        for rec in self.store.get_many(self.store.active_of_user(user_id)):
            if rec.state in STEP_STATES and self._park(
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
        return self._move(rec.rebook_id, rec.state, from_=[rec.state], reason=reason, **changes)

    def _throttle_wait(self, exc: Throttled) -> float:
        """When to try again after our own rate budget said "not now" (nothing was sent)."""
        return jittered(exc.retry_after or self.settings.retry_base_seconds)

    def _retry_later(
        self, rec: Rebook, exc: UpstreamError, what: str, fields: dict[str, Any] | None = None
    ) -> None:
        """Backoff after a failed call; our own throttle is "not now" and counts nothing."""
        if isinstance(exc, Throttled):
            wait = self._throttle_wait(exc)
            log.info("rebook %s: %s deferred %.2fs (rate budget)", rec.rebook_id, what, wait)
            self._stay(rec, reason=rec.reason, due=self.clock() + wait)
            return
        wait = self.backoff(rec.errors, exc.retry_after)
        log.warning("rebook %s: %s failed (%s); again in %.1fs", rec.rebook_id, what, exc, wait)
        self._stay(
            rec,
            reason=rec.reason,
            due=self.clock() + wait,
            fields={**(fields or {}), "errors": rec.errors + 1},
        )

    # -- intake ----------------------------------------------------------------------------------

    def intake(self, args: Any, kwargs: Any, *, task_id: str = "") -> Step:
        """Records an event durably: `Step.CREATED`, `EXISTS`, `DUPLICATE` or `INVALID`."""
        try:
            event, extra = RebookEvent.parse(args, kwargs)
        except InvalidEvent as exc:
            self.store.deadletter(
                exc.reason, {"args": args, "kwargs": kwargs}, task_id=task_id, task="rebook.request"
            )
            log.warning("invalid rebook event (task %s): %s", task_id, exc.reason)
            return Step.INVALID
        with bound(
            event_id=event.event_id,
            booking_id=event.booking_id,
            rebook_id=rebook_id_for(event.event_id),
            performer_id=event.performer_id,
        ):
            return self._intake(event, extra)

    def _intake(self, event: RebookEvent, extra: list[str]) -> Step:
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
            # acknowledged means kept: a failover to a replica without the record would lose an
            # event its producer was told was taken (found by the simulation's failovers)
            replicas=self.settings.redis_wait_replicas,
            replica_timeout_ms=self.settings.redis_wait_timeout_ms,
        )
        n = self.settings.redis_wait_replicas
        if n and result.replicas < n:
            raise StoreUnavailable(f"{result.replicas} of {n} replicas have the event")
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
            else:
                if result.dispatch_presence:
                    self.dispatch.check_presence(event.performer_id)
                if self._field_for_intake() is None and self._learning_slot(now):
                    # read its original: an answer to learn the performer field from
                    self.dispatch.check_presence(None, result.rebook_id)
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
        return Step(result.kind)

    # -- waiting ---------------------------------------------------------------------------------

    def check_presence(self, performer_id: int | None, rebook_id: str | None = None) -> Step:
        """One presence call for a performer, however many rebooks wait on them."""
        if performer_id is None:
            return self.resolve_performer(rebook_id) if rebook_id else Step.NOOP
        with bound(performer_id=performer_id):
            return self._check_presence(performer_id)

    def _check_presence(self, performer_id: int) -> Step:
        interval = self.settings.presence_interval_seconds
        wait = self.store.claim_presence_call(performer_id, interval)
        if 0 < wait <= PRESENCE_SLACK_SECONDS:
            time.sleep(wait + 0.002)  # PTTL is in whole milliseconds, rounded down
            wait = self.store.claim_presence_call(performer_id, interval)
        if wait > 0:  # checked within this interval by someone else
            self.store.schedule_performer(performer_id, self.clock() + wait)
            return Step.COALESCED
        if not self.store.waiting_count(performer_id):
            self.store.schedule_performer(performer_id, self.clock() + interval)
            return Step.IDLE
        try:
            online = self.client.is_online(performer_id)
        except Throttled:  # not called: the budget went to POSTs
            # keep its place in the line (least recently polled first): a throttled check sent
            # to the back, or to a random time, is how some performers came to be polled far
            # less than others; the sweep hands it out again within its budget
            self.store.release_presence_call(performer_id)
            self.store.keep_presence_turn(performer_id, self.clock())
            log.info("presence of performer %s deferred (rate budget)", performer_id)
            return Step.THROTTLED
        except DeploymentFault as exc:  # the key is refused: not the performer's answer
            self.store.release_presence_call(performer_id)
            self.store.circuit.hold_performer(performer_id)
            self.store.schedule_performer(performer_id, self.clock() + self._pause_wait())
            log.info("presence of performer %s paused (%s)", performer_id, exc.reason)
            return Step.PAUSED
        except UpstreamError as exc:
            self.store.note_presence_call(self.clock(), performer_id, None, str(exc))
            if isinstance(exc, PresenceUnreadable):
                n = self.store.note_presence_unreadable(
                    self.clock(), performer_id, exc.message, exc.answer
                )
                log.warning(
                    "presence of performer %s unreadable (%s; answer %s); %d so far",
                    performer_id,
                    exc.message,
                    exc.answer[:300],
                    n,
                )
            wait = jittered(max(interval, exc.retry_after or 0.0))
            log.warning(
                "presence of performer %s unknown (%s); again in %.1fs", performer_id, exc, wait
            )
            self.store.schedule_performer(performer_id, self.clock() + wait)
            return Step.ERROR
        # The next check is due one interval after this answer came: the upstream sees at least
        # one interval between two calls, whatever the latency or rate-limit wait of each.
        now = self.clock()
        self.store.note_presence_call(now, performer_id, online)
        if online:  # only now read who waits: an offline answer (the usual one) costs O(1)
            moved = self.store.transition_many(
                self.store.waiting_for(performer_id),
                State.RESCHEDULING,
                from_=[State.WAITING],
                reason="performer online",
                due=now + self.store.lease,
                fields={"errors": 0, "online_ts": now},
                now=now,
            )
            with self.dispatch.batch():
                for i, rid in enumerate(moved):
                    # the first jumps the queue: a performer who comes online gets a POST out
                    # at once, even while another performer's burst is being worked off
                    self.dispatch.reschedule(rid, urgent=i == 0)
            log.info("performer %s online: %d rebook(s) to reschedule", performer_id, len(moved))
        self.store.schedule_performer(performer_id, now + interval)
        return Step.ONLINE if online else Step.OFFLINE

    def _locked_step(self, rebook_id: str, state: State, body: Callable[[Rebook], Step]) -> Step:
        """Runs a step of one rebook under its lock, if the rebook is still in `state`.

        The lock keeps two workers from running the same step at once; the token written into
        the record fences the step's writes, for the case the lock cannot cover: a step that
        outlived its lease (a stuck call, a paused process) and comes back with a stale answer.
        """
        lock = self.store.lock(rebook_id)
        if not lock.acquire():
            return Step.BUSY
        step = _STEP.set(_Step(rebook_id, secrets.token_hex(8), lock))
        try:
            rec = self.store.claim_step(rebook_id, _STEP.get().token)  # type: ignore[union-attr]
            if rec is None or rec.state != state:
                return Step.NOOP
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
                    return Step.REAUTH
                except DeploymentFault as exc:
                    return self._paused(rec, exc)
                except LeaseLost as exc:
                    log.warning("rebook %s: %s; the step that took over decides", rebook_id, exc)
                    return Step.LEASE_LOST
        finally:
            _STEP.reset(step)
            _release(lock)

    def resolve_performer(self, rebook_id: str) -> Step:
        """The event named no performer: read it from the original booking."""
        return self._locked_step(rebook_id, State.WAITING, self._resolve_performer)

    def _resolve_performer(self, rec: Rebook) -> Step:
        field_name = self.store.performer_field()
        if rec.performer_id is not None:
            return self._learn_from_original(rec) if field_name is None else Step.NOOP
        if field_name is None:  # a guess at the key would decide whose bookings are whose
            self._park(
                rec,
                "unverified_shape",
                action="resubmit the event with performer_id; or wait: it resumes by itself "
                "once the performer field is confirmed (`rebook doctor`)",
                why="the event names no performer and no key of a booking's Performer is "
                "confirmed as the performer's user id",
            )
            return Step.PARKED
        try:
            self._hold()
            booking = self._member_call(
                rec, lambda tok: self.client.booking_details(tok, rec.booking_id)
            )
        except Rejected as exc:
            return self._fail(rec, f"original booking unreadable: {exc.message}")
        except LeaseLost:
            raise
        except UpstreamError as exc:
            self._retry_later(rec, exc, "reading the original booking")
            return Step.RETRY
        pid = booking.performer_under(field_name)
        if pid is None:
            self._park(
                rec,
                "performer_unknown",
                action="resubmit with performer_id",
                why=f"the original's Performer has no id under {field_name}",
            )
            return Step.PARKED
        if self._stay(
            rec,
            reason="performer resolved",
            fields={"performer_id": pid, "performer_resolved": 1, "errors": 0},
            due=rec.deadline_ts,
        ):
            self.dispatch.check_presence(pid)
        return Step.RESOLVED

    # -- the performer field -----------------------------------------------------------------
    #
    # Which key of a booking's `Performer` names the performer's user id is undocumented. It is
    # learned from answers whose meaning is known — the original's details against the event's
    # performer_id, the POST's own answer, the watched booking of a definite POST — and until a
    # key is confirmed no booking is told apart by its performer (README "Exactly one booking").

    def _field_for_intake(self) -> str | None:
        """The confirmed field as intake sees it: cached a few seconds (it only decides whether a
        learning read is worth a call; proofs read the field afresh)."""
        at, value = self._field_seen
        now = time.monotonic()
        if now - at > FIELD_CACHE_SECONDS:
            value = self.store.performer_field()
            self._field_seen = (now, value)
        return value

    def _learning_slot(self, now: float) -> bool:
        """One of the window's few learning reads, across all workers; once they are spent, this
        process asks Redis again only in the next window (intake pays nothing meanwhile)."""
        if now < self._slots_spent_until:
            return False
        if self.store.learning_slot(LEARNING_READS, LEARNING_WINDOW_SECONDS, now):
            return True
        window = LEARNING_WINDOW_SECONDS
        self._slots_spent_until = (now // window + 1) * window
        return False

    def _learn(self, rec: Rebook, booking: WebcamBooking, what: str) -> None:
        """`booking` is certainly of the rebook's performer (the original, or what its own POST
        answered): one answer to learn the performer field from. A performer read through the
        field itself (`performer_resolved`) says nothing about it."""
        if rec.performer_id is None or rec.performer_resolved or booking.performer is None:
            return
        try:
            confirmed, change = self.store.learn_performer_field(
                booking.performer,
                rec.performer_id,
                booking.booking_id,
                answers=PERFORMER_FIELD_ANSWERS,
                performers=PERFORMER_FIELD_PERFORMERS,
                now=self.clock(),
            )
        except Exception as exc:  # learning is a side road: never fail the step for it
            log.warning("rebook %s: performer field not updated (%s)", rec.rebook_id, exc)
            return
        self._field_seen = (time.monotonic(), confirmed)
        if change == "dropped":
            log.warning(
                "performer field dropped: %s of booking %s (%s) contradicts it",
                what,
                booking.booking_id,
                sorted(booking.performer)[:10],
            )
        elif change == "confirmed":
            log.info("performer field confirmed: %s", confirmed)
            self._resume_unverified()

    def _resume_unverified(self) -> int:
        """The field is confirmed: rebooks parked for `unverified_shape` go on (they settle, or
        resolve their performer, through the confirmed field now)."""
        resumed = 0
        for other in self.store.list_rebooks(State.NEEDS_ATTENTION, limit=0):
            if other.reason == "unverified_shape":
                self._resume(other, "performer field confirmed")
                resumed += 1
        return resumed

    def _learn_from_original(self, rec: Rebook) -> Step:
        """While no field is confirmed, an event's performer_id against its original's details
        is an answer of known meaning: one read, only until the field is confirmed."""
        try:
            self._hold()
            booking = self._member_call(
                rec, lambda tok: self.client.booking_details(tok, rec.booking_id)
            )
        except LeaseLost:
            raise
        except (UpstreamError, ReauthRequired, DeploymentFault) as exc:
            # a lesson missed, nothing else: the rebook goes on as it was. A side road parks no
            # member and pauses nothing (its own POST will, if it must, on the main road).
            log.info(
                "rebook %s: original not read for the performer field (%s)", rec.rebook_id, exc
            )
            return Step.NOOP
        self._learn(rec, booking, "the original's details")
        return Step.LEARNED

    def _fail(self, rec: Rebook, reason: str) -> Step:
        """FAILED: the upstream refused for good. A refused POST made nothing: its mark goes."""
        self._move(
            rec.rebook_id,
            State.FAILED,
            from_=STEP_STATES,
            reason=reason,
            fields={"post_sent_ts": None, "answer_ts": None},
            outcome=State.FAILED.value,
        )
        log.warning("rebook %s: FAILED (%s)", rec.rebook_id, reason)
        self._unblock(rec)
        return Step.FAILED

    # -- reschedule ------------------------------------------------------------------------------
    #
    # The POST is not idempotent, so a second one needs proof that the first made nothing
    # (README, "Exactly one booking"). The record says "POST sent" (`post_sent_ts`) before the
    # request goes out; until the mark is settled — a booking found, or proven not made — no
    # other POST goes out for this rebook, nor for another rebook of the same member and
    # performer (the gate: their bookings could not be told apart).

    def reschedule(self, rebook_id: str) -> Step:
        return self._locked_step(
            rebook_id,
            State.RESCHEDULING,
            lambda rec: self._reconcile(rec) if rec.post_sent_ts is not None else self._post(rec),
        )

    def _list(self, rec: Rebook, since: float, share: float | None = None) -> Listing:
        """The member's bookings created since `since` (a day earlier at the upstream's
        day granularity; nothing is filtered by time here: the zone is a guess)."""
        bookings, complete = self._member_call(
            rec,
            lambda tok: self.client.list_made_bookings(
                tok, start=from_ts(since), before_send=self._hold, share=share
            ),
        )
        return Listing(bookings, complete)

    def _candidates(
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
        looks made by a reschedule is adopted (`_reconcile`, `_foreign`).
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
            if strict and not _looks_rescheduled(b):
                continue
            # another rebook's original existed before its event named it: never what our POST
            # made (an event for a booking minutes old, whose session is still ahead, is not sent)
            if self.store.active_owner(b.booking_id, rec.user_id) not in (None, rec.rebook_id):
                continue
            found.append(b)
        owners = self.store.owners_of([b.booking_id for b in found])
        return sorted(
            (b for b, owner in zip(found, owners, strict=True) if owner in (None, rec.rebook_id)),
            key=lambda b: b.booking_id,
        )

    def _adopt(self, rec: Rebook, candidates: Sequence[WebcamBooking], why: str) -> Step:
        if len(candidates) > 1:
            log.warning(
                "rebook %s: %d bookings could be ours (%s); taking the oldest",
                rec.rebook_id,
                len(candidates),
                ", ".join(str(b.booking_id) for b in candidates),
            )
        log.info("rebook %s: %s: booking %s", rec.rebook_id, why, candidates[0].booking_id)
        return self._booked(rec, candidates[0], adopted=why)

    def _post(self, rec: Rebook, listing: Listing | None = None) -> Step:
        s = self.settings
        if rec.attempts >= s.reschedule_max_attempts:
            self._park(
                rec,
                "too_many_attempts",
                attempts=rec.attempts,
                action="check the upstream, then `rebook retry ID`",
            )
            return Step.PARKED
        performer_key = self.store.performer_field()
        holder = self.store.gate_holder(rec, member_wide=performer_key is None)
        if holder is not None:
            return self._gated(rec, holder)
        cap = s.max_rebooks_per_member_per_day
        if cap and self.store.member_posts_today(rec.user_id, self.clock()) >= cap:
            return self._capped(rec, cap)
        # Before a POST, look: a POST whose mark was lost (a failover, a restore) made a booking
        # that nothing here remembers. What the list shows now is what our POST cannot have made.
        if listing is None:
            try:
                listing = self._read_before_post(rec, rec.created_ts - s.reconcile_lookback_seconds)
            except LeaseLost:
                raise
            except UpstreamError as exc:
                return self._list_failed(rec, exc)
        # (a list cut at its page limit is fine here: what it did not show stays a candidate)
        try:
            token = self.tokens.access_token(rec.user_id)
        except UpstreamError as exc:  # the token endpoint failed: nothing was sent
            self._retry_later(rec, exc, "refreshing the member's token")
            return Step.RETRY
        marked: list[float] = []
        try:
            booking = self._send_post(rec, token, listing, marked, performer_key)
        except Shadowed:
            return self._shadowed(rec, marked)
        except Gated as exc:
            return self._gated(rec, exc.holder)
        except _Capped:
            return self._capped(rec, cap or 0)
        except DeploymentFault as exc:  # 401/403 (or paused): the upstream did nothing
            return self._paused(rec, exc, marked)
        except _Found as exc:
            return self._found_before_post(rec, exc)
        except LeaseLost:
            raise
        except Ambiguous as exc:
            return self._ambiguous(rec, marked, exc)
        except AuthExpired:  # 401: the upstream did nothing
            return self._token_refused(rec, marked, token)
        except NotFound as exc:
            return self._fail(rec, f"upstream: {exc.message}")
        except Rejected as exc:
            return self._rejected(rec, exc)
        except UpstreamError as exc:  # nothing was sent, or refused before the upstream acted
            return self._not_done(rec, marked, exc)
        self._learn(rec, booking, "the POST's answer")
        return self._booked(rec, booking)

    def _list_failed(self, rec: Rebook, exc: UpstreamError) -> Step:
        """The look before a POST failed: nothing was sent. Our own rate budget's "not now"
        counts nothing; a failed read counts (`reconcile_tries`, from the last mark), and at
        REBOOK_RECONCILE_MAX_TRIES the rebook parks `list_unreadable` rather than retry for
        ever (a list the worker cannot parse, a member whose list always fails)."""
        what = "reading the member's bookings before the POST"
        tries = rec.reconcile_tries + 1
        if isinstance(exc, Throttled):
            self._retry_later(rec, exc, what)
            return Step.RETRY
        if tries < self.settings.reconcile_max_tries:
            self._retry_later(rec, exc, what, fields={"reconcile_tries": tries})
            return Step.RETRY
        self._park(
            rec,
            "list_unreadable",
            tries=tries,
            error=str(exc),
            action="the member's bookings could not be read before a POST (nothing was sent): "
            "check the upstream (and REBOOK_MADE_BOOKINGS_LIST_NAMES), then `rebook retry ID`",
        )
        return Step.PARKED

    def _read_before_post(self, rec: Rebook, since: float) -> Listing:
        """The member's list before a POST: a read shared with the member's other POSTs where it
        is evidence for this one (`_shared_read`), else one made now — by one thread of this
        process for all its threads that need the member's list meanwhile."""
        s = self.settings
        if s.shared_read_seconds <= 0 or rec.attempts:
            # a rebook that has POSTed before reads afresh: its own earlier POST's booking must be
            # in the list for the lost-mark check
            server = self.store.server_id(rec.user_id)
            return replace(self._list(rec, since, RATE_SHARE[POST]), server=server)
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
            listing = replace(self._list(rec, since, RATE_SHARE[POST]), server=server)
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
        others = [o for o in self.store.posted_without_booking(rec, True) if o != rec.rebook_id]
        for other in self.store.get_many(others):
            if other.new_booking_id is None and (
                other.post_sent_ts is not None or other.updated_ts >= after
            ):
                self.reads.drop(rec.user_id, read)
                return None
        return read.listing

    def _send_post(
        self,
        rec: Rebook,
        token: str,
        listing: Listing,
        marked: list[float],
        performer_key: str | None = None,
    ) -> WebcamBooking:
        """The POST. Under REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY, one that cannot have made a
        booking (refused, or stopped after its mark) gives its count back: the cap counts
        POSTs that may have booked."""
        try:
            return self.client.reschedule(
                token,
                rec.booking_id,
                before_send=self._shadow_marker(marked)
                if self.settings.shadow
                else self._marker(rec, listing, marked, performer_key),
            )
        except Exception as exc:
            capped = bool(self.settings.max_rebooks_per_member_per_day)
            # (shadow mode took no count: its marker does not reach the cap)
            if marked and capped and not isinstance(exc, (Ambiguous, Shadowed)):
                self.store.give_back_member_post(rec.user_id, marked[0])
            raise

    def _marker(
        self, rec: Rebook, listing: Listing, marked: list[float], performer_key: str | None = None
    ) -> Callable[[], None]:
        """What runs after the rate limiter, right before the request: lease, mark (with what
        the list showed, which the POST cannot have made), the lost-mark check, replicas.
        Appends the mark's time to `marked`; raises to send nothing. With no confirmed
        `performer_key` the gate and the siblings span the member (every performer)."""
        member_wide = performer_key is None
        s = self.settings
        seen = sorted({*(rec.known_ids or ()), *(b.booking_id for b in listing.bookings)})

        def mark() -> None:
            self._hold()
            now = self.clock()
            step = _STEP.get()
            cap = s.max_rebooks_per_member_per_day
            if cap and not self.store.take_member_post(rec.user_id, cap, now):
                raise _Capped(f"member {rec.user_id} reached {cap} POSTs today")
            ok, holder, got, sent = self.store.start_post(
                rec.rebook_id,
                now=now,
                attempts=rec.attempts + 1,
                claim=step.token if step else "",
                known_ids=seen,
                due=now + self.store.lease,
                member_wide=member_wide,
                # WAIT on the connection that wrote the mark (one pipeline)
                replicas=s.redis_wait_replicas,
                replica_timeout_ms=s.redis_wait_timeout_ms,
            )
            if not ok:
                if cap:
                    self.store.give_back_member_post(rec.user_id, now)
                raise Gated(holder) if holder else NotSent("the rebook changed")
            assert sent is not None
            marked.append(sent)  # the server's time (the proof's clock), as the record has it
            self.reads.marked(rec.rebook_id, now, now - 2 * s.call_bound_seconds - 60)
            # A restart or a failover since the read went out may have lost a sibling's mark
            # (its booking made after the read: not in it), and then the gate let this POST by
            # (sim seed 86). Nothing is decided on a read from another server: read again.
            known = listing.server and not listing.server.startswith("unknown-")
            if known and self.store.server_id(rec.user_id) != listing.server:
                raise NotSent("the store's server changed since the read before the POST")
            # Under the gate now, no sibling's POST is unsettled: a booking in the list that
            # nobody owns and that looks like ours is one whose mark was lost. Owners are read
            # only now, so one a sibling took meanwhile is not taken twice.
            found = self._candidates(
                rec,
                listing,
                rec.created_ts - s.reconcile_lookback_seconds,
                strict=True,
                performer_key=performer_key,
            )
            if found:
                raise _Found(found, self._siblings(rec, member_wide=member_wide))
            if s.redis_wait_replicas and got < s.redis_wait_replicas:
                raise NotSent(f"{got} of {s.redis_wait_replicas} replicas have the mark")

        return mark

    def _shadow_marker(self, marked: list[float]) -> Callable[[], None]:
        """Shadow mode's `before_send`: the moment the POST would go out (after the gate, the
        read before it and the rate limiter) is noted, and nothing is sent — whatever client
        runs it. No "POST sent" mark is written: nothing needs reconciling."""

        def stop() -> None:
            self._hold()
            marked.append(self.clock())
            raise Shadowed("shadow mode: not sent", endpoint=POST)

        return stop

    def _shadowed(self, rec: Rebook, marked: list[float]) -> Step:
        """SHADOWED (terminal): what shadow mode would have booked, when, and how long after
        the performer was seen online."""
        at = marked[0] if marked else self.clock()
        detail: dict[str, Any] = {"would_post_at": iso_z(from_ts(at))}
        if rec.online_ts is not None:
            detail["online_at"] = iso_z(from_ts(rec.online_ts))
            detail["online_to_post_seconds"] = round(max(0.0, at - rec.online_ts), 3)
        if self._move(
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

    def _capped(self, rec: Rebook, cap: int) -> Step:
        """REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY reached: parked before any POST."""
        self._park(
            rec,
            "member_cap",
            fields={"post_sent_ts": None, "attempts": rec.attempts},
            action=f"the member reached {cap} rebook POSTs today (UTC day, "
            "REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY); `rebook retry ID` tomorrow or raise the cap",
            cap=cap,
        )
        return Step.PARKED

    def _found_before_post(self, rec: Rebook, exc: _Found) -> Step:
        """A booking whose mark was lost: adopted, or parked if a sibling could own it."""
        if not exc.siblings:
            return self._adopt(rec, exc.bookings, "found upstream before the POST")
        self._park(  # whose is it? a wrong guess books one session twice; nothing was sent
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

    def _ambiguous(self, rec: Rebook, marked: list[float], exc: Ambiguous) -> Step:
        """Sent, and the answer does not say what happened: reconcile, from this answer (its
        time on the server's clock, as every time the proof compares)."""
        answered = self.store.server_time(rec.rebook_id)
        log.warning("rebook %s: reschedule ambiguous (%s); reconciling", rec.rebook_id, exc)
        self._stay(
            rec,
            reason=f"ambiguous: {exc}",
            require={"post_sent_ts": _mark(marked[0])},
            fields={"errors": rec.errors + 1, "answer_ts": answered},
            due=self._due_at(self._proof_due(answered, 1), answered),
        )
        return Step.AMBIGUOUS

    def _token_refused(self, rec: Rebook, marked: list[float], token: str) -> Step:
        """401: nothing happened upstream; refresh now, POST again on the next run — unless the
        API key is at fault (`_key_check` raises; the step pauses)."""
        self._unmark(rec, marked, reason="access token refused", due=self.clock())
        self._key_check(rec)
        try:
            self.tokens.access_token(rec.user_id, rejected=token)
        except UpstreamError as exc:  # refreshed on the next run instead
            log.warning("rebook %s: token refresh failed (%s)", rec.rebook_id, exc)
        return Step.REAUTH_RETRY

    def _not_done(self, rec: Rebook, marked: list[float], exc: UpstreamError) -> Step:
        """Not sent, or refused before the upstream acted: the mark goes, try again later."""
        if isinstance(exc, NotSent) and not marked:
            return Step.NOOP  # the rebook moved on meanwhile
        if isinstance(exc, Throttled):
            wait, errors = self._throttle_wait(exc), rec.errors
        else:
            wait = self.backoff(rec.errors, exc.retry_after)
            errors = rec.errors + 1
        log.warning("rebook %s: reschedule not done (%s); again in %.1fs", rec.rebook_id, exc, wait)
        self._unmark(rec, marked, reason=f"retry: {exc}", due=self.clock() + wait, errors=errors)
        return Step.RETRY

    def _unmark(
        self, rec: Rebook, marked: list[float], *, reason: str, due: float, **fields: Any
    ) -> bool:
        """The POST was not sent or was refused: its mark goes, and it was no attempt."""
        require = {"post_sent_ts": _mark(marked[0])} if marked else None
        return self._stay(
            rec,
            reason=reason,
            require=require,
            fields={**fields, "post_sent_ts": None, "attempts": rec.attempts},
            due=due,
        )

    def _gated(self, rec: Rebook, holder: str) -> Step:
        """Another rebook of the same member and performer has an unsettled POST: wait for it,
        visibly, and not past `REBOOK_GATE_MAX_WAIT_SECONDS`."""
        now = self.clock()
        since = rec.gated_since if rec.gated_since is not None else now
        if now - since >= self.settings.gate_max_wait_seconds:
            self._park(
                rec,
                "blocked",
                action=f"settle {holder} first (`rebook status {holder}`); this one goes on "
                "by itself once it is settled, or `rebook retry` it",
                fields={"blocked_by": holder},
                blocked_by=holder,
            )
            return Step.PARKED
        self._stay(
            rec,
            reason=f"waiting for {holder} (same member; its reschedule is unsettled)",
            fields={"gated_since": since, "blocked_by": holder},
            due=now + self.backoff(0) + self.settings.reconcile_grace_seconds,
        )
        return Step.GATED

    def _siblings(self, rec: Rebook, member_wide: bool = False) -> list[str]:
        """Other rebooks of the member and performer (`member_wide`: of any performer) that
        could have made a booking nobody owns: active ones without a booking, and finished ones
        that POSTed without one."""
        active = set(self.store.active_of_user(rec.user_id))
        posted = self.store.posted_without_booking(rec, member_wide=member_wide)
        ids = sorted((active | set(posted)) - {rec.rebook_id})
        return [
            o.rebook_id
            for o in self.store.get_many(ids)
            if o.new_booking_id is None
            and (o.rebook_id not in active or o.state in ACTIVE_STATES)
            and (
                member_wide
                or None in (o.performer_id, rec.performer_id)
                or o.performer_id == rec.performer_id
            )
        ]

    def _rivals(self, rec: Rebook) -> list[Rebook]:
        """Other rebooks of the member, any performer, whose POST is unsettled: while the
        performer field is unconfirmed, a booking found may be theirs as well as ours. (The
        member's gate keeps them from overlapping ours; they can only be left from a time the
        field was confirmed, or from before it was dropped.)"""
        ids = self.store.posted_without_booking(rec, member_wide=True)
        return [
            o for o in self.store.get_many([i for i in ids if i != rec.rebook_id]) if o.unsettled
        ]

    def _unblock(self, rec: Rebook) -> None:
        """Its POST settled: the siblings it had parked as `blocked` go on by themselves."""
        ids = self.store.active_of_user(rec.user_id)
        if len(ids) < 2:
            return
        for other in self.store.get_many(ids):
            if (
                other.state == State.NEEDS_ATTENTION
                and other.reason == "blocked"
                and other.blocked_by == rec.rebook_id
            ):
                self._resume(other, f"{rec.rebook_id} settled")

    def _rejected(self, rec: Rebook, exc: Rejected) -> Step:
        """A 4xx: if a fresh presence check says offline, the performer left in between. A
        refusal for lack of credits parks `no_credits`: the member can cure it."""
        assert rec.performer_id is not None
        if exc.status == 402 or NO_CREDITS.search(exc.message or ""):
            self._park(
                rec,
                "no_credits",
                fields={"post_sent_ts": None, "answer_ts": None, "attempts": rec.attempts},
                action="the member tops up their credits; then `rebook retry ID`",
                upstream=exc.message,
            )
            self._unblock(rec)
            return Step.PARKED
        try:
            self._hold()
            online: bool | None = self.client.is_online(rec.performer_id)
        except LeaseLost:
            raise
        except UpstreamError:
            online = None
        now = self.clock()
        if online is False:
            self._move(
                rec.rebook_id,
                State.WAITING,
                from_=[State.RESCHEDULING],
                reason="performer went offline",
                fields={"post_sent_ts": None, "answer_ts": None},
                due=rec.deadline_ts,
                now=now,
            )
            self._unblock(rec)
            return Step.WAITING
        if online is None:
            self._stay(
                rec,
                reason=f"rejected ({exc.message}); presence unknown",
                fields={"post_sent_ts": None, "errors": rec.errors + 1},
                due=now + self.backoff(rec.errors),
            )
            return Step.RETRY
        return self._fail(rec, f"upstream refused: {exc.message}")

    def _booked(self, rec: Rebook, booking: WebcamBooking, adopted: str = "") -> Step:
        if not self.store.claim_booking(booking.booking_id, rec.rebook_id):
            self._park(
                rec,
                "booking_claimed_elsewhere",
                action="the upstream returned a booking another rebook owns; check both records",
                new_booking_id=booking.booking_id,
                owner=self.store.owner_of(booking.booking_id),
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
            self._unblock(rec)
            return Step.BOOKED
        return Step.FENCED  # another step holds the rebook now: it finds this booking upstream

    def _due_at(self, server_at: float, server_now: float) -> float:
        """A moment on the server's clock as a due time on this worker's: the due index
        schedules on worker clocks (a step run early finds the proof not due and waits again);
        only what decides that the window has passed reads the server's (`Store.server_time`)."""
        return self.clock() + max(0.0, server_at - server_now)

    def _window_start(self, sent: float, answered: float | None) -> float:
        """Since when a booking of an unsettled POST may still appear: its ambiguous answer, or,
        when the worker died before it came, the latest the request could have been in flight."""
        if answered is not None:
            return answered
        return sent + self.settings.send_bound_seconds

    def _proof_due(self, window_start: float, k: int) -> float:
        """When the k-th of the proof's reads may start: the first a grace after the window
        opens, the last at its end, the others spread between."""
        s = self.settings
        n = s.reconcile_proof_reads
        if n <= 1:
            return window_start + s.reconcile_window_seconds
        span = s.reconcile_window_seconds - s.reconcile_grace_seconds
        return window_start + s.reconcile_grace_seconds + span * (min(k, n) - 1) / (n - 1)

    def _reconcile(self, rec: Rebook) -> Step:
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
            self._stay(rec, reason=rec.reason, due=self._due_at(self._proof_due(start, k), read_at))
            return Step.GRACE
        if read_at > start + s.reconcile_max_seconds:
            return self._park_unsettled(rec, rec.reconcile_tries, "no proof within the bound")
        known = set(rec.known_ids) if rec.known_ids is not None else None
        performer_key = self.store.performer_field()
        try:
            listing = self._list(rec, sent - s.reconcile_lookback_seconds)
        except LeaseLost:  # another step holds the rebook now (ReauthRequired passes by itself)
            raise
        except Throttled as exc:
            self._retry_later(rec, exc, "reconciling")
            return Step.THROTTLED
        except UpstreamError as exc:
            return self._unreadable(rec, str(exc))
        found = self._candidates(
            rec,
            listing,
            sent - s.reconcile_lookback_seconds,
            known=known,
            performer_key=performer_key,
        )
        ours = [b for b in found if _looks_rescheduled(b)]
        if ours and performer_key is None:
            # no field says whose it is: ours only if no other unsettled POST of the member may
            # have made it — one whose list before its POST (or an operator) showed it did not
            rivals = self._rivals(rec)
            theirs = {b.booking_id for b in ours if any(_could_make(o, b) for o in rivals)}
            if theirs:
                mine = [b for b in ours if b.booking_id not in theirs]
                if not mine:
                    who = [o.rebook_id for o in rivals]
                    return self._foreign(rec, ours, start, read_at, rivals=who)
                ours = mine
        if ours:
            return self._adopt(rec, ours, "reconciled: the POST had made it")
        if found:
            return self._foreign(rec, found, start, read_at, unverified=performer_key is None)
        if not listing.complete:
            return self._unreadable(rec, "the member's list is too long to read whole")
        if k < s.reconcile_proof_reads:
            self._stay(
                rec,
                reason=f"reconciling: {k} of {s.reconcile_proof_reads} reads found no booking",
                require={"post_sent_ts": _mark(sent)},
                fields={"empty_reads": k},
                due=self._due_at(self._proof_due(start, k + 1), read_at),
            )
            return Step.PROVING
        # Proven: the POST did not make a booking. Its mark goes; the next POST may go out.
        if not self._stay(
            rec,
            reason="reconciled: no booking was made",
            require={"post_sent_ts": _mark(sent)},
            fields={
                "post_sent_ts": None,
                "answer_ts": None,
                "empty_reads": None,
                "reconcile_tries": 0,
            },
            due=self.clock() + self.store.lease,
        ):
            return Step.NOOP
        fresh = self.store.get(rec.rebook_id)
        return self._post(fresh, listing) if fresh is not None else Step.NOOP

    def _foreign(
        self,
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
            return self._park_unsettled(rec, rec.reconcile_tries, why)
        self._stay(
            rec,
            reason=f"reconciling: {why}"
            if rivals
            else f"reconciling: booking(s) {ids} appeared, not like a reschedule",
            require={"post_sent_ts": _mark(rec.post_sent_ts)},
            due=self._due_at(
                max(read_at + s.reconcile_grace_seconds, start + s.reconcile_window_seconds),
                read_at,
            ),
        )
        return Step.PROVING

    def _unreadable(self, rec: Rebook, error: str) -> Step:
        """A read that proves nothing either way: counted, and parked past the limit."""
        tries = rec.reconcile_tries + 1
        if tries >= self.settings.reconcile_max_tries:
            return self._park_unsettled(rec, tries, error)
        self._stay(
            rec,
            reason=f"reconcile failed: {error}",
            fields={"reconcile_tries": tries},
            due=self.clock() + self.backoff(tries),
        )
        return Step.RETRY

    def _park_unsettled(self, rec: Rebook, tries: int, error: str) -> Step:
        self._park(
            rec,
            "ambiguous_reschedule",
            tries=tries,
            error=error,
            action="look for the booking upstream, then `rebook retry ID` (it reconciles "
            "again before any new request)",
        )
        return Step.PARKED

    # -- watch -----------------------------------------------------------------------------------

    def watch(self, rebook_id: str) -> Step:
        """Reads the record's copy of the new booking, never the message's."""
        return self._locked_step(rebook_id, State.WATCHING, self._watch)

    def _watch(self, rec: Rebook) -> Step:
        new_booking_id = rec.new_booking_id
        if new_booking_id is None:
            return Step.NOOP
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
            return Step.PARKED
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
                return Step.PARKED
            self._retry_later(rec, exc, "reading the new booking")
            return Step.RETRY
        now = self.clock()
        if booking is None:
            self._stay(rec, reason=rec.reason, due=now + self.settings.sweep_interval_seconds)
            return Step.DEFERRED
        if not rec.adopted:  # the POST's own answer named it: certainly the rebook's performer
            self._learn(rec, booking, "the watched booking")
        final = booking.final_state
        if booking.accept_by is not None:
            accept_by = booking.accept_by.timestamp()
        if final == State.ACCEPTED and self.settings.auto_confirm:
            if self.settings.shadow:  # a booking made before shadow mode: never confirmed here
                return self._finish(rec, booking, final, "accepted; not confirmed (shadow mode)")
            return self._confirm(rec, booking)
        if final is not None:
            return self._finish(rec, booking, final)
        if now >= accept_by:
            self._move(
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
                    for r in self.store.get_many(self.store.active_of_user(rec.user_id))
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

    def _finish(self, rec: Rebook, booking: WebcamBooking, final: State, reason: str = "") -> Step:
        self._move(
            rec.rebook_id,
            final,
            from_=[State.WATCHING],
            reason=reason or booking.reason or f"upstream status {booking.status}",
            fields={"status": booking.status},
            outcome=final.value,
        )
        log.info("rebook %s: %s", rec.rebook_id, final.value)
        return Step(final.value.lower())

    def _confirm(self, rec: Rebook, booking: WebcamBooking) -> Step:
        """REBOOK_AUTO_CONFIRM: confirm an Accepted booking (costs credits; upstream rules:
        only Accepted, only before SessionDate). Confirm is not idempotent either: after an
        ambiguous answer it goes again only on the same proof as a POST — readable status
        reads, still Accepted, spread over the reconcile window (`_proof_due`)."""
        now = self.clock()
        if booking.session_date is not None and booking.session_date.timestamp() <= now:
            return self._finish(rec, booking, State.ACCEPTED, "accepted; too late to confirm")
        sent = rec.confirm_sent_ts
        if sent is not None:  # the proof on the server's clock, as a POST's
            start = self._window_start(sent, rec.confirm_answer_ts)
            k = rec.confirm_reads + 1
            read_at = self.store.server_time(rec.rebook_id)
            if read_at < self._proof_due(start, k):
                self._stay(
                    rec, reason=rec.reason, due=self._due_at(self._proof_due(start, k), read_at)
                )
                return Step.CONFIRM_PENDING
            try:  # a fresh read of our own: a cached list may predate the confirm
                self._hold()
                booking = self._member_call(
                    rec, lambda tok: self.client.booking_details(tok, booking.booking_id)
                )
            except LeaseLost:
                raise
            except UpstreamError as exc:
                self._retry_later(rec, exc, "reading the booking after a confirm")
                return Step.CONFIRM_RETRY
            final = booking.final_state
            if final is not None and final != State.ACCEPTED:
                return self._finish(rec, booking, final)
            if k < self.settings.reconcile_proof_reads:
                self._stay(
                    rec,
                    reason=rec.reason,
                    require={"confirm_sent_ts": repr(sent)},
                    fields={"confirm_reads": k},
                    due=self._due_at(self._proof_due(start, k + 1), read_at),
                )
                return Step.CONFIRM_PROVING
        self.store.forget_cached(rec.user_id, booking.booking_id)
        if not self._stay(
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
            self._hold()
            confirmed = self._member_call(
                rec, lambda tok: self.client.confirm(tok, booking.booking_id)
            )
        except Rejected as exc:
            return self._finish(
                rec, booking, State.ACCEPTED, f"auto-confirm refused: {exc.message}"
            )
        except LeaseLost:
            raise
        except Ambiguous as exc:  # read the status again, on proof, before confirming again
            answered = self.store.server_time(rec.rebook_id)
            log.warning("rebook %s: confirm not settled (%s)", rec.rebook_id, exc)
            self._stay(
                rec,
                reason=f"confirm unsettled: {exc}",
                fields={"confirm_answer_ts": answered},
                due=self._due_at(self._proof_due(answered, 1), answered),
            )
            return Step.CONFIRM_RETRY
        except UpstreamError as exc:  # not sent (or a 401 twice): nothing was confirmed
            self._stay(
                rec,
                reason=f"confirm not sent: {exc}",
                fields={"confirm_sent_ts": None},
                due=self.clock() + self.backoff(rec.errors, exc.retry_after),
            )
            return Step.CONFIRM_RETRY
        return self._finish(rec, confirmed, State.CONFIRMED, "auto-confirmed")

    # -- beat ------------------------------------------------------------------------------------

    def heartbeat(self) -> bool:
        """The sweep's Sentry check-in, once a minute across all workers (observability)."""
        return sweep_heartbeat(
            lambda: self.store.claim_window("sweep:heartbeat", HEARTBEAT_SECONDS) == 0
        )

    def sweep(self) -> dict[str, int]:
        """Re-dispatches whatever is overdue: a lost message only delays, never loses."""
        now = self.clock()
        paused: str | None = None
        try:
            paused = self._circuit_round(now)
        except Exception as exc:  # the circuit must never stop the sweep itself
            log.warning("deployment fault round skipped: %s: %s", type(exc).__name__, exc)
        # performers due before the next sweep are sent now, to run on time: a performer who
        # came online is seen within one presence interval, not one interval plus one sweep
        # Presence gets at most its budget's worth per sweep, the longest due (the least
        # recently polled) first, spread over the sweep interval: under a short budget every
        # performer waits its turn in one line instead of a scramble for the window.
        budget = presence_budget(self.settings.upstream_rate_per_second)
        spacing = 0.0 if math.isinf(budget) else 1.0 / budget
        share: int | None = None
        if not math.isinf(budget):  # whole calls, the fraction carried on average (unbiased)
            exact = budget * self.settings.sweep_interval_seconds
            share = max(1, math.floor(exact) + (random.random() < exact - math.floor(exact)))
        ids, pids = self.store.claim_due(
            now,
            self.settings.sweep_batch,
            ahead=self.settings.sweep_interval_seconds,
            performers=share,
        )
        self.store.note_presence_performers(now)
        counts = {"performers": len(pids), "rebooks": len(ids), "gave_up": 0}
        expired: list[str] = []
        with self.dispatch.batch():
            for i, (pid, due) in enumerate(sorted(pids.items(), key=lambda row: row[1])):
                at = max(due, now + i * spacing)
                self.dispatch.check_presence(pid, at=at if at > now else None)
            for rec in self.store.get_many(ids):
                if rec.state == State.WAITING:
                    if now >= rec.deadline_ts and paused == "api_key":
                        # presence cannot be read while the key is refused: the operator's
                        # typo does not make anyone give up; the wait ends after the fix
                        later = now + self._pause_wait()
                        self._stay(rec, reason=rec.reason, due=later, fields={"deadline_ts": later})
                    elif now >= rec.deadline_ts:
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
                    self._move(
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

    def _circuit_round(self, now: float) -> str | None:
        """While a deployment fault is in force, probe it (one call per probe interval across
        all workers); once it is gone, what it held is due now, so it runs in this sweep.
        Returns the reason of the fault still in force, if any."""
        circuit = self.store.circuit
        state = circuit.state(fresh=True)
        if state is not None:
            self._probe(state["reason"])
            state = circuit.state(fresh=True)
            if state is not None:
                return state["reason"]
        ids, pids = circuit.take_held(self.settings.sweep_batch, checked=True)
        if ids or pids:
            log.info("resuming %d rebook(s), %d performer(s) paused", len(ids), len(pids))
        for rec in self.store.get_many(ids):
            if rec.state in STEP_STATES:
                self._stay(rec, reason=rec.reason, due=now - 0.001, fields={"errors": 0})
        for pid in pids:
            self.store.schedule_performer(pid, now - 0.001)
        if ids or not self._client_parked_checked:
            self._client_parked_checked = True
            self.resume_client_parked()
        return None

    def _probe(self, reason: str) -> None:
        """One call that tells whether the fault is gone, if this interval's probe is free (the
        circuit's gate decides); a success closes the circuit (in the client)."""
        try:
            if reason == "api_key":
                probe = getattr(self.client, "api_key_refused", None)
                if probe is not None:
                    probe(1)
            elif reason == "oauth_client":
                check = getattr(self.tokens, "check_client", None)
                if check is not None:
                    check()
        except (UpstreamError, DeploymentFault):
            pass  # still refused, paused, or the upstream is down: the next interval probes

    def resume_client_parked(self) -> int:
        """Rebooks parked `reauth` because the OAuth client was refused (an older version did
        that; found by their park detail) resume: it was the site's setting, not the member.
        Should the client still be refused, they pause behind the circuit, not park again."""
        resumed = 0
        for rec in self.store.list_rebooks(State.NEEDS_ATTENTION, limit=0):
            if rec.reason != "reauth":
                continue
            detail = self.store.park_detail(rec) or {}
            if CLIENT_REFUSAL_TEXT.search(json.dumps(detail)):
                self._resume(rec, "the OAuth client was refused, not the member's tokens")
                resumed += 1
        if resumed:
            log.warning("%d rebook(s) parked reauth for a refused OAuth client resumed", resumed)
        return resumed

    def housekeeping(self) -> int:
        return self.store.expire_finished(self.clock())

    # -- operators -------------------------------------------------------------------------------

    def cancel(self, ident: str) -> Rebook:
        """ABORTED. A rebook whose last POST is unsettled keeps its mark (and its gate): it may
        have made a booking, and `retry` reconciles that before any new request."""
        rec = self._find(ident)
        if rec.state.terminal:
            raise Refused(f"{rec.rebook_id} is already {rec.state.value}; nothing to cancel")
        reason = "cancelled by operator"
        if rec.unsettled:
            reason += (
                "; its last reschedule request is unsettled: a booking may have been made "
                "(`rebook retry` reconciles it before any new request)"
            )
        if not self._move(
            rec.rebook_id,
            State.ABORTED,
            from_=[rec.state],
            reason=reason,
            require={"post_sent_ts": _mark(rec.post_sent_ts)},
            outcome=State.ABORTED.value,
        ):
            raise Refused(f"{rec.rebook_id} changed meanwhile; try again")
        return self._find(rec.rebook_id)

    def retry(self, ident: str, not_ours: Sequence[int] = ()) -> Rebook:
        """NEEDS_ATTENTION resumes its step; GAVE_UP, FAILED and ABORTED with no new booking
        start waiting again. Whatever made a booking is refused: a second one would be a
        second booking for the same rebook.

        `not_ours`: bookings an operator has checked upstream and vouches this rebook's POST did
        not make (the member's own, say). They join `known_ids`, so reconciliation neither
        adopts them nor lets them stand in the proof's way; the proof itself still has to come."""
        rec = self._find(ident)
        extra: dict[str, Any] = {}
        if not_ours:
            if not rec.unsettled:
                raise Refused(f"{rec.rebook_id} has no unsettled POST; --not-ours settles one")
            vouched = sorted({*(rec.known_ids or ()), *not_ours})
            extra = {"known_ids": vouched}
        if rec.state == State.NEEDS_ATTENTION:
            reason = "retried by operator"
            if not_ours:
                reason += f"; not this rebook's: {', '.join(map(str, sorted(set(not_ours))))}"
            self._resume(rec, reason, extra)
        elif rec.state in (State.GAVE_UP, State.FAILED, State.ABORTED):
            if rec.new_booking_id is not None:
                raise Refused(
                    f"{rec.rebook_id} is {rec.state.value} after booking {rec.new_booking_id} was "
                    "made; send a new event to rebook again"
                )
            self._refuse_if_superseded(rec)
            self._restart(rec, extra)
        elif rec.state == State.DUPLICATE:
            raise Refused(f"{rec.rebook_id} is a duplicate of {rec.duplicate_of}; retry that one")
        elif rec.state == State.SHADOWED:
            raise Refused(SHADOWED_REFUSAL.format(rid=rec.rebook_id))
        elif rec.state.terminal:
            raise Refused(
                f"{rec.rebook_id} is {rec.state.value}: booking {rec.new_booking_id} was made and "
                "decided; send a new event to rebook again"
            )
        else:
            raise Refused(f"{rec.rebook_id} is {rec.state.value} and in progress; nothing to retry")
        return self._find(rec.rebook_id)

    def _refuse_if_superseded(self, rec: Rebook) -> None:
        """A later rebook of the same original made a booking after this one ended: restarting
        this one would book the original a second time (the simulation's seed 106551: an operator
        retried a FAILED rebook after a second event had rebooked its original)."""
        for other in self.store.rebooks_of_booking(rec.booking_id, rec.user_id):
            if (
                other.rebook_id != rec.rebook_id
                and other.new_booking_id is not None
                and other.created_ts >= rec.created_ts
            ):
                raise Refused(
                    f"booking {rec.booking_id} was rebooked meanwhile by {other.rebook_id} "
                    f"(booking {other.new_booking_id}, {other.state.value}); send a new event "
                    "to rebook it again"
                )

    def _restart(self, rec: Rebook, extra: dict[str, Any] | None = None) -> None:
        """A finished rebook waits again — or, if its last POST is unsettled, reconciles first:
        a retry never clears a mark it has not settled."""
        now = self.clock()
        deadline = now + self.settings.max_wait_seconds
        fields: dict[str, Any] = {
            "deadline_ts": deadline,
            "errors": 0,
            "attempts": 0,
            "reconcile_tries": 0,
            "action": None,
        }
        to, due = State.WAITING, deadline if rec.performer_id is not None else now
        if rec.unsettled:
            to, due = State.RESCHEDULING, now
            fields.update(  # the window starts afresh, on the server's clock (`_reconcile`)
                answer_ts=SERVER_NOW, empty_reads=None, attempts=rec.attempts, **(extra or {})
            )
        if not self._move(
            rec.rebook_id,
            to,
            from_=[rec.state],
            reason="retried by operator",
            require={"post_sent_ts": _mark(rec.post_sent_ts)},
            fields=fields,
            due=due,
            now=now,
        ):
            active = self.store.active_owner(rec.booking_id, rec.user_id)
            raise Refused(
                f"booking {rec.booking_id} has another active rebook ({active}); not restarted"
                if active and active != rec.rebook_id
                else f"{rec.rebook_id} changed; try again"
            )
        if to == State.RESCHEDULING:
            self.dispatch.reschedule(rec.rebook_id)
        elif rec.performer_id is not None:
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

    def _resume(self, rec: Rebook, reason: str, extra: dict[str, Any] | None = None) -> None:
        to = rec.resume_state if rec.resume_state in STEP_STATES else State.WAITING
        now = self.clock()
        fields: dict[str, Any] = {
            "errors": 0,
            "reconcile_tries": 0,
            "action": None,
            "gated_since": None,
            "blocked_by": None,
        }
        if rec.unsettled:  # reconcile first, the proof's window starting afresh
            to = State.RESCHEDULING
            fields.update(answer_ts=SERVER_NOW, empty_reads=None, **(extra or {}))
        if to == State.WAITING:
            deadline = max(rec.deadline_ts, now + self.settings.presence_interval_seconds * 2)
            fields["deadline_ts"] = deadline
            due: float = deadline
        else:
            due = now + self.store.lease
            if to == State.RESCHEDULING and rec.post_sent_ts is None:
                fields["attempts"] = 0
        if not self._move(
            rec.rebook_id,
            to,
            from_=[State.NEEDS_ATTENTION],
            reason=reason,
            require={"post_sent_ts": _mark(rec.post_sent_ts)},
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


RESCHEDULED_LEAD = (0.0, 15 * 60.0)
"""SessionDate - CreateDate of a booking RescheduleMadeBooking made (the docs: now + 5 min)."""


def _looks_rescheduled(booking: WebcamBooking) -> bool:
    if booking.create_date is None or booking.session_date is None:
        return False
    lead = (booking.session_date - booking.create_date).total_seconds()
    low, high = RESCHEDULED_LEAD
    return low <= lead <= high


def _could_make(other: Rebook, booking: WebcamBooking) -> bool:
    """Whether `other`'s unsettled POST may have made `booking`: not if its list before that
    POST (`known_ids`, with what an operator vouched is not its) already showed it."""
    return other.known_ids is None or booking.booking_id not in other.known_ids


def _mark(post_sent_ts: float | None) -> str:
    """A "POST sent" mark as a transition guard compares it ("" = none)."""
    return "" if post_sent_ts is None else repr(post_sent_ts)


def _release(lock: Any) -> None:
    try:
        lock.release()
    except Exception:  # expired while we worked: the sweep may already have re-dispatched
        log.warning("a step outlived its lock (%s)", getattr(lock, "name", "?"))
