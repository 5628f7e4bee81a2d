"""What every step shares: the step's context (`StepContext`) and the helpers that move, park,
retry or resume a record (`Kit`, the base of every step's class).

Each step reads the record, asks the upstream through the client, and moves the record with a
compare-and-set transition; inside a step, its writes to its own rebook are fenced by the
step's token."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from worker.core.backoff import backoff, jittered
from worker.core.circuit import MEMBER
from worker.core.errors import (
    AuthExpired,
    DeploymentFault,
    LeaseLost,
    Throttled,
    UpstreamError,
)
from worker.core.flow.ports import Dispatcher, Tokens, Upstream
from worker.core.models import WebcamBooking
from worker.core.preread import SharedReads
from worker.core.settings import Settings
from worker.core.states import STEP_STATES, State, Step
from worker.core.store import REMOVE, SERVER_NOW, Rebook, StepLock, Store

log = logging.getLogger("rebook.flow")
POST = "RescheduleMadeBooking"
T = TypeVar("T")
ACCEPT_BY_FALLBACK_SECONDS = 86400.0
PAUSE_RECHECK_MIN_SECONDS = 300.0
"""A step paused by a deployment fault comes back by itself after this long (or ten probe
intervals, whichever is longer): the sweep probes meanwhile and, once the fault is gone, makes
every held step due at once."""
CLIENT_REFUSAL_TEXT = re.compile(r"invalid_client|unauthorized_client", re.IGNORECASE)


@dataclass(frozen=True)
class StepContext:
    """One step of one rebook, handed to everything the step calls (`Flow._locked_step`): its
    writes to that rebook are fenced by `token` (the record's `claim`); `lock` is its lease."""

    rebook_id: str
    token: str
    lock: StepLock
    clock: Callable[[], float]
    lease_seconds: float
    """How far `hold` extends the lease: the longest one upstream call may take."""

    def hold(self) -> None:
        """Extends the lease over the next upstream call, or raises :class:`LeaseLost`."""
        try:
            held = self.lock.extend(self.lease_seconds, replace_ttl=True)
        except Exception:  # redis-py raises LockNotOwnedError when another step has it
            held = False
        if not held:
            raise LeaseLost(f"lease of {self.rebook_id} taken over")


@dataclass(frozen=True)
class Listing:
    """One read of a member's bookings: what it showed, and whether it was read to its end."""

    bookings: list[WebcamBooking]
    complete: bool
    server: str = ""
    """The store's server (`Store.server_id`) before a read before a POST went out: the mark
    must be written on the same one (`Reschedule._write_mark`). Empty for other reads; `unknown-…`
    where it cannot be read (then only a fresh read stands before the POST, as ever)."""


@dataclass
class Kit:
    """The deployment a step works in, and the moves every step makes. One per step class;
    `Flow` builds them all from the same parts."""

    settings: Settings
    store: Store
    client: Upstream
    tokens: Tokens
    dispatch: Dispatcher
    clock: Callable[[], float]
    reads: SharedReads[Listing]
    """Reads before a POST that later POSTs may share: one per worker process (`flow()`)."""

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

    def _paused(
        self, ctx: StepContext, rec: Rebook, exc: DeploymentFault, marked: list[float] | None = None
    ) -> Step:
        """A deployment fault: the step waits, counting no error and no attempt, held for the
        sweep to resume once the circuit closes. A refused POST's mark goes (401/403: the
        upstream did nothing)."""
        self.store.circuit.hold(rec.rebook_id)
        due = self.clock() + self._pause_wait()
        reason = f"paused: {exc.setting} refused"
        if marked is not None:
            self._unmark(ctx, rec, marked, reason=reason, due=due)
        else:
            self._stay(ctx, rec, reason=reason, due=due)
        if not exc.paused:
            log.warning("rebook %s: %s", rec.rebook_id, exc)
        return Step.PAUSED

    def _move(
        self,
        ctx: StepContext | None,
        rebook_id: str,
        to: State,
        *,
        require: dict[str, Any] | None = None,
        **kw: Any,
    ) -> bool:
        """`store.transition`, fenced: inside a step, a write to its own rebook applies only
        while the step still holds it (its token is the record's `claim`)."""
        if ctx is not None and ctx.rebook_id == rebook_id:
            require = {**(require or {}), "claim": ctx.token}
        return self.store.transitions.transition(rebook_id, to, require=require, **kw)

    def _park(
        self,
        ctx: StepContext | None,
        rec: Rebook,
        reason: str,
        *,
        action: str,
        fields: dict[str, Any] | None = None,
        **detail: Any,
    ) -> bool:
        """NEEDS_ATTENTION: `reason` says why (a short code), `action` what a person should do."""
        ok = self._move(
            ctx,
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

    def _park_member(self, ctx: StepContext | None, user_id: str, detail: str) -> int:
        if CLIENT_REFUSAL_TEXT.search(detail):  # the site's client, never the member's fault
            log.warning("member %s: refresh refused for the OAuth client, not parked", user_id)
            return 0
        parked = 0
        for rec in self.store.records.get_many(self.store.records.active_of_user(user_id)):
            if rec.state in STEP_STATES and self._park(
                ctx,
                rec,
                "reauth",
                action=f"the member must sign in again; then `rebook tokens set {user_id}`",
                why=detail,
            ):
                parked += 1
        return parked

    def _stay(self, ctx: StepContext | None, rec: Rebook, *, reason: str, **changes: Any) -> bool:
        """Updates a record in its current state (due time, counters, reason); a no-op if the
        state moved on meanwhile."""
        return self._move(
            ctx, rec.rebook_id, rec.state, from_=[rec.state], reason=reason, **changes
        )

    def _throttle_wait(self, exc: Throttled) -> float:
        """When to try again after our own rate budget said "not now" (nothing was sent)."""
        return jittered(exc.retry_after or self.settings.retry_base_seconds)

    def _retry_later(
        self,
        ctx: StepContext,
        rec: Rebook,
        exc: UpstreamError,
        what: str,
        fields: dict[str, Any] | None = None,
    ) -> None:
        """Backoff after a failed call; our own throttle is "not now" and counts nothing."""
        if isinstance(exc, Throttled):
            wait = self._throttle_wait(exc)
            log.info("rebook %s: %s deferred %.2fs (rate budget)", rec.rebook_id, what, wait)
            self._stay(ctx, rec, reason=rec.reason, due=self.clock() + wait)
            return
        wait = self.backoff(rec.errors, exc.retry_after)
        log.warning("rebook %s: %s failed (%s); again in %.1fs", rec.rebook_id, what, exc, wait)
        self._stay(
            ctx,
            rec,
            reason=rec.reason,
            due=self.clock() + wait,
            fields={**(fields or {}), "errors": rec.errors + 1},
        )

    def _fail(self, ctx: StepContext, rec: Rebook, reason: str) -> Step:
        """FAILED: the upstream refused for good. A refused POST made nothing: its mark goes."""
        self._move(
            ctx,
            rec.rebook_id,
            State.FAILED,
            from_=STEP_STATES,
            reason=reason,
            fields={"post_sent_ts": None, "answer_ts": None},
            outcome=State.FAILED.value,
        )
        log.warning("rebook %s: FAILED (%s)", rec.rebook_id, reason)
        self._unblock(ctx, rec)
        return Step.FAILED

    def _unmark(
        self,
        ctx: StepContext,
        rec: Rebook,
        marked: list[float],
        *,
        reason: str,
        due: float,
        **fields: Any,
    ) -> bool:
        """The POST was not sent or was refused: its mark goes, and it was no attempt."""
        require = {"post_sent_ts": mark_guard(marked[0])} if marked else None
        return self._stay(
            ctx,
            rec,
            reason=reason,
            require=require,
            fields={**fields, "post_sent_ts": None, "attempts": rec.attempts},
            due=due,
        )

    def _unblock(self, ctx: StepContext, rec: Rebook) -> None:
        """Its POST settled: the siblings it had parked as `blocked` go on by themselves."""
        ids = self.store.records.active_of_user(rec.user_id)
        if len(ids) < 2:
            return
        for other in self.store.records.get_many(ids):
            if (
                other.state == State.NEEDS_ATTENTION
                and other.reason == "blocked"
                and other.blocked_by == rec.rebook_id
            ):
                self._resume(ctx, other, f"{rec.rebook_id} settled")

    def _resume(
        self, ctx: StepContext | None, rec: Rebook, reason: str, extra: dict[str, Any] | None = None
    ) -> None:
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
            ctx,
            rec.rebook_id,
            to,
            from_=[State.NEEDS_ATTENTION],
            reason=reason,
            require={"post_sent_ts": mark_guard(rec.post_sent_ts)},
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


def mark_guard(post_sent_ts: float | None) -> str:
    """A "POST sent" mark as a transition guard compares it ("" = none)."""
    return "" if post_sent_ts is None else repr(post_sent_ts)


def release(lock: Any) -> None:
    try:
        lock.release()
    except Exception:  # expired while we worked: the sweep may already have re-dispatched
        log.warning("a step outlived its lock (%s)", getattr(lock, "name", "?"))
