"""The decisions of the pipeline, one module per step. No Celery and no HTTP here.

`Flow` is the one door (tasks/, the worker, the simulation and the tests go through it); behind
it each step is a small class in its own module: `intake`, `presence`, `performer` (the
performer field), `reschedule` (the POST, in its phases), `bookings` (what a POST may have
made), `reconcile`, `watch` (and confirm), `sweep` (and the deployment-fault circuit),
`operator` (cancel, retry, resume). `context` holds what they share: the step's
`StepContext` and the `Kit` of moves; `ports` the upstream, tokens and queue as the flow sees
them. What to run next goes through a :class:`Dispatcher` (Celery in production, see `tasks/`),
but nothing depends on that message arriving: the sweep finds every overdue record in the due
index and dispatches it again.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.core.errors import DeploymentFault, LeaseLost, ReauthRequired
from worker.core.flow.bookings import Bookings, looks_rescheduled
from worker.core.flow.context import POST, Kit, Listing, StepContext, release
from worker.core.flow.intake import Intake
from worker.core.flow.operator import Operator, Refused
from worker.core.flow.performer import (
    LEARNING_READS,
    PERFORMER_FIELD_ANSWERS,
    PERFORMER_FIELD_PERFORMERS,
    Performer,
)
from worker.core.flow.ports import Dispatcher, Tokens, Upstream
from worker.core.flow.presence import Presence
from worker.core.flow.reconcile import Reconcile
from worker.core.flow.reschedule import Classify, Reschedule
from worker.core.flow.sweep import Sweep
from worker.core.flow.watch import Watch
from worker.core.observability import bound
from worker.core.preread import SharedReads
from worker.core.settings import Settings
from worker.core.states import State, Step
from worker.core.store import Rebook, Store

__all__ = [
    "LEARNING_READS",
    "PERFORMER_FIELD_ANSWERS",
    "PERFORMER_FIELD_PERFORMERS",
    "POST",
    "Dispatcher",
    "Flow",
    "Listing",
    "Refused",
    "Step",
    "StepContext",
    "Tokens",
    "Upstream",
    "looks_rescheduled",
]

log = logging.getLogger("rebook.flow")


@dataclass
class Flow:
    """The steps of the pipeline behind one door: each public method is one task's work."""

    settings: Settings
    store: Store
    client: Upstream
    tokens: Tokens
    dispatch: Dispatcher
    clock: Callable[[], float] = field(default=time.time)
    reads: SharedReads[Listing] = field(default_factory=SharedReads, repr=False)
    """Reads before a POST that later POSTs may share: one per worker process (`flow()`)."""
    kit: Kit = field(init=False, repr=False)
    performer: Performer = field(init=False, repr=False)
    bookings: Bookings = field(init=False, repr=False)
    posts: Reschedule = field(init=False, repr=False)
    reconciler: Reconcile = field(init=False, repr=False)
    watcher: Watch = field(init=False, repr=False)
    intakes: Intake = field(init=False, repr=False)
    presence: Presence = field(init=False, repr=False)
    sweeper: Sweep = field(init=False, repr=False)
    operator: Operator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = (
            self.settings,
            self.store,
            self.client,
            self.tokens,
            self.dispatch,
            self.clock,
            self.reads,
        )
        self.kit = Kit(*parts)
        self.performer = Performer(*parts)
        self.bookings = Bookings(*parts)
        classify = Classify(*parts, bookings=self.bookings)
        self.posts = Reschedule(
            *parts, bookings=self.bookings, performer=self.performer, classify=classify
        )
        self.reconciler = Reconcile(*parts, bookings=self.bookings, posts=self.posts)
        self.watcher = Watch(*parts, performer=self.performer)
        self.intakes = Intake(*parts, performer=self.performer)
        self.presence = Presence(*parts)
        self.sweeper = Sweep(*parts)
        self.operator = Operator(*parts)

    def backoff(self, errors: int, retry_after: float | None = None) -> float:
        return self.kit.backoff(errors, retry_after)

    def park_member(self, user_id: str, detail: str) -> int:
        """Refresh refused: every active rebook of the member waits for `rebook tokens set`."""
        return self.kit._park_member(None, user_id, detail)

    def intake(self, args: Any, kwargs: Any, *, task_id: str = "") -> Step:
        """Records an event durably: `Step.CREATED`, `EXISTS`, `DUPLICATE` or `INVALID`."""
        return self.intakes.intake(args, kwargs, task_id=task_id)

    def check_presence(self, performer_id: int | None, rebook_id: str | None = None) -> Step:
        """One presence call for a performer, however many rebooks wait on them."""
        if performer_id is None:
            return self.resolve_performer(rebook_id) if rebook_id else Step.NOOP
        with bound(performer_id=performer_id):
            return self.presence.check(performer_id)

    def resolve_performer(self, rebook_id: str) -> Step:
        """The event named no performer: read it from the original booking."""
        return self._locked_step(rebook_id, State.WAITING, self.performer.resolve)

    def reschedule(self, rebook_id: str) -> Step:
        return self._locked_step(
            rebook_id,
            State.RESCHEDULING,
            lambda ctx, rec: (
                self.reconciler.run(ctx, rec)
                if rec.post_sent_ts is not None
                else self.posts.post(ctx, rec)
            ),
        )

    def watch(self, rebook_id: str) -> Step:
        """Reads the record's copy of the new booking, never the message's."""
        return self._locked_step(rebook_id, State.WATCHING, self.watcher.run)

    def heartbeat(self) -> bool:
        """The sweep's Sentry check-in, once a minute across all workers (observability)."""
        return self.sweeper.heartbeat()

    def sweep(self) -> dict[str, int]:
        """Re-dispatches whatever is overdue: a lost message only delays, never loses."""
        return self.sweeper.sweep()

    def resume_client_parked(self) -> int:
        return self.sweeper.resume_client_parked()

    def housekeeping(self) -> int:
        return self.sweeper.housekeeping()

    def cancel(self, ident: str) -> Rebook:
        return self.operator.cancel(ident)

    def retry(self, ident: str, not_ours: Sequence[int] = ()) -> Rebook:
        return self.operator.retry(ident, not_ours)

    def resume_member(self, user_id: str) -> int:
        """After `rebook tokens set`: the member's rebooks parked for `reauth` go on."""
        return self.operator.resume_member(user_id)

    def _locked_step(
        self, rebook_id: str, state: State, body: Callable[[StepContext, Rebook], Step]
    ) -> Step:
        """Runs a step of one rebook under its lock, if the rebook is still in `state`.

        The lock keeps two workers from running the same step at once; the token written into
        the record fences the step's writes, for the case the lock cannot cover: a step that
        outlived its lease (a stuck call, a paused process) and comes back with a stale answer.
        """
        lock = self.store.records.lock(rebook_id)
        if not lock.acquire():
            return Step.BUSY
        ctx = StepContext(
            rebook_id,
            secrets.token_hex(8),
            lock,
            self.clock,
            self.settings.longest_call_seconds,
        )
        try:
            rec = self.store.records.claim_step(rebook_id, ctx.token)
            if rec is None or rec.state != state:
                return Step.NOOP
            with bound(
                rebook_id=rec.rebook_id,
                event_id=rec.event_id,
                booking_id=rec.booking_id,
                performer_id=rec.performer_id,
            ):
                try:
                    return body(ctx, rec)
                except ReauthRequired as exc:
                    self.kit._park_member(ctx, rec.user_id, exc.detail)
                    return Step.REAUTH
                except DeploymentFault as exc:
                    return self.kit._paused(ctx, rec, exc)
                except LeaseLost as exc:
                    log.warning("rebook %s: %s; the step that took over decides", rebook_id, exc)
                    return Step.LEASE_LOST
        finally:
            release(lock)
