"""The performer field: which key of a booking's `Performer` names the performer's user id.

It is undocumented. It is learned from answers whose meaning is known — the original's details
against the event's performer_id, the POST's own answer, the watched booking of a definite POST
— and until a key is confirmed no booking is told apart by its performer (README "Exactly one
booking"). Also the step that reads a performer the event did not name (`resolve`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from worker.core.errors import (
    DeploymentFault,
    ReauthRequired,
    Rejected,
    UpstreamError,
)
from worker.core.flow.context import (
    Kit,
    StepContext,
)
from worker.core.models import WebcamBooking
from worker.core.states import State, Step
from worker.core.store import Rebook

log = logging.getLogger("rebook.flow")

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


@dataclass
class Performer(Kit):
    """The field as learned, and `resolve`: the step of a rebook whose event named no
    performer. One per `Flow`: intake, the POST and the watch teach the same one."""

    _field_seen: tuple[float, str | None] = field(default=(-math.inf, None), repr=False)
    _slots_spent_until: float = field(default=-math.inf, repr=False)

    def resolve(self, ctx: StepContext, rec: Rebook) -> Step:
        field_name = self.store.performer_field.performer_field()
        if rec.performer_id is not None:
            return self._learn_from_original(ctx, rec) if field_name is None else Step.NOOP
        if field_name is None:  # a guess at the key would decide whose bookings are whose
            self._park(
                ctx,
                rec,
                "unverified_shape",
                action="resubmit the event with performer_id; or wait: it resumes by itself "
                "once the performer field is confirmed (`rebook doctor`)",
                why="the event names no performer and no key of a booking's Performer is "
                "confirmed as the performer's user id",
            )
            return Step.PARKED
        try:
            ctx.hold()
            booking = self._member_call(
                rec, lambda tok: self.client.booking_details(tok, rec.booking_id)
            )
        except Rejected as exc:
            return self._fail(ctx, rec, f"original booking unreadable: {exc.message}")
        except UpstreamError as exc:
            self._retry_later(ctx, rec, exc, "reading the original booking")
            return Step.RETRY
        pid = booking.performer_under(field_name)
        if pid is None:
            self._park(
                ctx,
                rec,
                "performer_unknown",
                action="resubmit with performer_id",
                why=f"the original's Performer has no id under {field_name}",
            )
            return Step.PARKED
        if self._stay(
            ctx,
            rec,
            reason="performer resolved",
            fields={"performer_id": pid, "performer_resolved": 1, "errors": 0},
            due=rec.deadline_ts,
        ):
            self.dispatch.check_presence(pid)
        return Step.RESOLVED

    def field_for_intake(self) -> str | None:
        """The confirmed field as intake sees it: cached a few seconds (it only decides whether a
        learning read is worth a call; proofs read the field afresh)."""
        at, value = self._field_seen
        now = self.clock()  # the injected clock (the simulation's); a step back re-reads
        if not 0 <= now - at <= FIELD_CACHE_SECONDS:
            value = self.store.performer_field.performer_field()
            self._field_seen = (now, value)
        return value

    def learning_slot(self, now: float) -> bool:
        """One of the window's few learning reads, across all workers; once they are spent, this
        process asks Redis again only in the next window (intake pays nothing meanwhile)."""
        if now < self._slots_spent_until:
            return False
        if self.store.performer_field.learning_slot(LEARNING_READS, LEARNING_WINDOW_SECONDS, now):
            return True
        window = LEARNING_WINDOW_SECONDS
        self._slots_spent_until = (now // window + 1) * window
        return False

    def learn(self, ctx: StepContext, rec: Rebook, booking: WebcamBooking, what: str) -> None:
        """`booking` is certainly of the rebook's performer (the original, or what its own POST
        answered): one answer to learn the performer field from. A performer read through the
        field itself (`performer_resolved`) says nothing about it."""
        if rec.performer_id is None or rec.performer_resolved or booking.performer is None:
            return
        try:
            confirmed, change = self.store.performer_field.learn_performer_field(
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
        self._field_seen = (self.clock(), confirmed)
        if change == "dropped":
            log.warning(
                "performer field dropped: %s of booking %s (%s) contradicts it",
                what,
                booking.booking_id,
                sorted(booking.performer)[:10],
            )
        elif change == "confirmed":
            log.info("performer field confirmed: %s", confirmed)
            self._resume_unverified(ctx)

    def _resume_unverified(self, ctx: StepContext) -> int:
        """The field is confirmed: rebooks parked for `unverified_shape` go on (they settle, or
        resolve their performer, through the confirmed field now)."""
        resumed = 0
        for other in self.store.records.list_rebooks(State.NEEDS_ATTENTION, limit=0):
            if other.reason == "unverified_shape":
                self._resume(ctx, other, "performer field confirmed")
                resumed += 1
        return resumed

    def _learn_from_original(self, ctx: StepContext, rec: Rebook) -> Step:
        """While no field is confirmed, an event's performer_id against its original's details
        is an answer of known meaning: one read, only until the field is confirmed."""
        try:
            ctx.hold()
            booking = self._member_call(
                rec, lambda tok: self.client.booking_details(tok, rec.booking_id)
            )
        except (UpstreamError, ReauthRequired, DeploymentFault) as exc:
            # a lesson missed, nothing else: the rebook goes on as it was. A side road parks no
            # member and pauses nothing (its own POST will, if it must, on the main road).
            log.info(
                "rebook %s: original not read for the performer field (%s)", rec.rebook_id, exc
            )
            return Step.NOOP
        self.learn(ctx, rec, booking, "the original's details")
        return Step.LEARNED
