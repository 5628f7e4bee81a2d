"""Presence: one call per performer and interval, however many rebooks wait on them."""

from __future__ import annotations

import logging
import time

from worker.core.backoff import jittered
from worker.core.errors import (
    DeploymentFault,
    PresenceUnreadable,
    Throttled,
    UpstreamError,
)
from worker.core.flow.context import (
    Kit,
)
from worker.core.states import State, Step

log = logging.getLogger("rebook.flow")

PRESENCE_SLACK_SECONDS = 0.05
"""A presence check sent to run on time may find the last one's window open for a moment more
(the window began a round trip after its check did; clocks of two hosts differ by a few ms):
it waits that long rather than a whole sweep."""


class Presence(Kit):
    """`check`: a performer's presence; online moves every rebook waiting on them."""

    def check(self, performer_id: int) -> Step:
        interval = self.settings.presence_interval_seconds
        wait = self.store.presence.claim_presence_call(performer_id, interval)
        if 0 < wait <= PRESENCE_SLACK_SECONDS:
            time.sleep(wait + 0.002)  # PTTL is in whole milliseconds, rounded down
            wait = self.store.presence.claim_presence_call(performer_id, interval)
        if wait > 0:  # checked within this interval by someone else
            self.store.presence.schedule_performer(performer_id, self.clock() + wait)
            return Step.COALESCED
        if not self.store.presence.waiting_count(performer_id):
            self.store.presence.schedule_performer(performer_id, self.clock() + interval)
            return Step.IDLE
        try:
            online = self.client.is_online(performer_id)
        except Throttled:  # not called: the budget went to POSTs
            # keep its place in the line (least recently polled first): a throttled check sent
            # to the back, or to a random time, is how some performers came to be polled far
            # less than others; the sweep hands it out again within its budget
            self.store.presence.release_presence_call(performer_id)
            self.store.presence.keep_presence_turn(performer_id, self.clock())
            log.info("presence of performer %s deferred (rate budget)", performer_id)
            return Step.THROTTLED
        except DeploymentFault as exc:  # the key is refused: not the performer's answer
            self.store.presence.release_presence_call(performer_id)
            self.store.circuit.hold_performer(performer_id)
            self.store.presence.schedule_performer(performer_id, self.clock() + self._pause_wait())
            log.info("presence of performer %s paused (%s)", performer_id, exc.reason)
            return Step.PAUSED
        except UpstreamError as exc:
            self.store.presence.note_presence_call(self.clock(), performer_id, None, str(exc))
            if isinstance(exc, PresenceUnreadable):
                n = self.store.presence.note_presence_unreadable(
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
            self.store.presence.schedule_performer(performer_id, self.clock() + wait)
            return Step.ERROR
        # The next check is due one interval after this answer came: the upstream sees at least
        # one interval between two calls, whatever the latency or rate-limit wait of each.
        now = self.clock()
        self.store.presence.note_presence_call(now, performer_id, online)
        if online:  # only now read who waits: an offline answer (the usual one) costs O(1)
            moved = self.store.transitions.transition_many(
                self.store.presence.waiting_for(performer_id),
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
        self.store.presence.schedule_performer(performer_id, now + interval)
        return Step.ONLINE if online else Step.OFFLINE
