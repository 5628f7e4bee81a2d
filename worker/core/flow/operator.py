"""What an operator asks of one rebook: cancel, retry, resume a member."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from worker.core.actions import SHADOWED_REFUSAL
from worker.core.flow.context import (
    Kit,
    mark_guard,
)
from worker.core.states import State
from worker.core.store import SERVER_NOW, Rebook

log = logging.getLogger("rebook.flow")


class Refused(Exception):
    """An operator command that does not apply in the record's state; the message says why."""


class Operator(Kit):
    """`rebook cancel`, `rebook retry`, `rebook tokens set` (resume_member)."""

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
            None,
            rec.rebook_id,
            State.ABORTED,
            from_=[rec.state],
            reason=reason,
            require={"post_sent_ts": mark_guard(rec.post_sent_ts)},
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
            self._resume(None, rec, reason, extra)
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
        for other in self.store.records.rebooks_of_booking(rec.booking_id, rec.user_id):
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
            fields.update(  # the window starts afresh, on the server's clock (`Reconcile.run`)
                answer_ts=SERVER_NOW, empty_reads=None, attempts=rec.attempts, **(extra or {})
            )
        if not self._move(
            None,
            rec.rebook_id,
            to,
            from_=[rec.state],
            reason="retried by operator",
            require={"post_sent_ts": mark_guard(rec.post_sent_ts)},
            fields=fields,
            due=due,
            now=now,
        ):
            active = self.store.records.active_owner(rec.booking_id, rec.user_id)
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
        for rec in self.store.records.get_many(self.store.records.active_of_user(user_id)):
            if rec.state == State.NEEDS_ATTENTION and rec.reason == "reauth":
                self._resume(None, rec, "tokens renewed")
                resumed += 1
        return resumed

    def _find(self, ident: str) -> Rebook:
        rec = self.store.records.find(ident)
        if rec is None:
            raise LookupError(f"no rebook {ident!r}")
        return rec
