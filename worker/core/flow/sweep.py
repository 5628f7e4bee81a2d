"""The beat: the sweep (what is overdue goes again), the deployment-fault circuit, housekeeping."""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field

from worker.core.capacity import presence_budget
from worker.core.errors import (
    DeploymentFault,
    UpstreamError,
)
from worker.core.flow.context import (
    CLIENT_REFUSAL_TEXT,
    Kit,
)
from worker.core.observability import HEARTBEAT_SECONDS, sweep_heartbeat
from worker.core.states import STEP_STATES, State
from worker.core.store import REMOVE

log = logging.getLogger("rebook.flow")


@dataclass
class Sweep(Kit):
    """The beat's work (`rebook.sweep`, `rebook.housekeeping`)."""

    _client_parked_checked: bool = field(default=False, init=False, repr=False)
    """Whether this process has looked for rebooks an older version parked `reauth` for a
    refused OAuth client (`resume_client_parked`)."""

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
        ids, pids = self.store.sweep.claim_due(
            now,
            self.settings.sweep_batch,
            ahead=self.settings.sweep_interval_seconds,
            performers=share,
        )
        self.store.presence.note_presence_performers(now)
        counts = {"performers": len(pids), "rebooks": len(ids), "gave_up": 0}
        expired: list[str] = []
        with self.dispatch.batch():
            for i, (pid, due) in enumerate(sorted(pids.items(), key=lambda row: row[1])):
                at = max(due, now + i * spacing)
                self.dispatch.check_presence(pid, at=at if at > now else None)
            for rec in self.store.records.get_many(ids):
                if rec.state == State.WAITING:
                    if now >= rec.deadline_ts and paused == "api_key":
                        # presence cannot be read while the key is refused: the operator's
                        # typo does not make anyone give up; the wait ends after the fix
                        later = now + self._pause_wait()
                        self._stay(
                            None, rec, reason=rec.reason, due=later, fields={"deadline_ts": later}
                        )
                    elif now >= rec.deadline_ts:
                        expired.append(rec.rebook_id)
                    elif rec.performer_id is None:
                        self.dispatch.check_presence(None, rec.rebook_id)
                    else:
                        self._stay(None, rec, reason=rec.reason, due=rec.deadline_ts)
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
                        None,
                        rec.rebook_id,
                        rec.state,
                        from_=[rec.state],
                        reason=rec.reason,
                        due=REMOVE,
                    )
        if expired:  # one script call per shard for all of them
            gave_up = self.store.transitions.transition_many(
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
        for rec in self.store.records.get_many(ids):
            if rec.state in STEP_STATES:
                self._stay(None, rec, reason=rec.reason, due=now - 0.001, fields={"errors": 0})
        for pid in pids:
            self.store.presence.schedule_performer(pid, now - 0.001)
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
        for rec in self.store.records.list_rebooks(State.NEEDS_ATTENTION, limit=0):
            if rec.reason != "reauth":
                continue
            detail = self.store.outcomes.park_detail(rec) or {}
            if CLIENT_REFUSAL_TEXT.search(json.dumps(detail)):
                self._resume(None, rec, "the OAuth client was refused, not the member's tokens")
                resumed += 1
        if resumed:
            log.warning("%d rebook(s) parked reauth for a refused OAuth client resumed", resumed)
        return resumed

    def housekeeping(self) -> int:
        return self.store.sweep.expire_finished(self.clock())
