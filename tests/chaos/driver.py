"""A scenario driver for chaos runs: many rebooks over many performers, performers coming online
at random, a performer bot deciding each new booking, and the final accounting."""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field

from rebook_dev.performers import Answer, PerformerBot
from tests.integration.conftest import System, wait_for
from worker.core.states import ACTIVE_STATES, State
from worker.core.store import Rebook

FULL = os.environ.get("REBOOK_CHAOS_SCALE", "").lower() == "full"


@dataclass
class Scenario:
    system: System
    rebooks: int
    performers: int
    online_window: float
    seed: int = 7
    rids: list[str] = field(default_factory=list)
    originals: dict[str, int] = field(default_factory=dict)
    bot: PerformerBot | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.performer_ids = [self.system.performer(online=False) for _ in range(self.performers)]
        self.members = [self.system.member() for _ in range(max(2, self.performers // 5))]

    def submit_all(self) -> None:
        for i in range(self.rebooks):
            user = self.members[i % len(self.members)]
            performer = self.performer_ids[i % len(self.performer_ids)]
            rid, booking = self.system.rebook(user, performer)
            self.rids.append(rid)
            self.originals[rid] = booking

    def start_bots(self) -> None:
        """Each performer comes online once, at a random moment within the window; the
        performers accept 40 %, reject 30 % and ignore 30 % (left to expire) of new bookings."""
        moves = [(self.rng.uniform(0, self.online_window), p, True) for p in self.performer_ids]

        def decide(rec: Rebook, watched: float) -> Answer:
            roll = self.rng.random()
            if roll < 0.4:
                return ("accept", "")
            return ("reject", "busy") if roll < 0.7 else ("ignore", "")

        self.bot = PerformerBot(
            self.system.sandbox.base_url, self.system.store, lambda: self.rids, decide, moves
        )
        self.bot.start()

    def stop(self) -> None:
        if self.bot is not None:
            self.bot.stop()
            self.bot.join(timeout=5)

    def settled(self) -> bool:
        recs = self.system.store.records.get_many(self.rids)
        return len(recs) == len(self.rids) and all(
            r.state not in ACTIVE_STATES or r.state == State.NEEDS_ATTENTION for r in recs
        )

    def wait_settled(self, timeout: float) -> None:
        try:
            wait_for(self.settled, timeout, "every rebook settled")
        except AssertionError:
            recs = self.system.store.records.get_many(self.rids)
            counts = Counter(r.state.value for r in recs)
            errors = self.bot.errors[-5:] if self.bot is not None else []
            raise AssertionError(
                f"not settled after {timeout}s: {dict(counts)}, "
                f"{len(self.rids) - len(recs)} without a record; performer bot errors: {errors}"
            ) from None

    def check_invariants(self) -> Counter[str]:
        """Nothing lost, nothing doubled; returns the final states."""
        recs = {r.rebook_id: r for r in self.system.store.records.get_many(self.rids)}
        assert len(recs) == len(self.rids), "an accepted event has no record"
        made = self.system.sandbox.stats()["new_bookings"]
        for rid, original in self.originals.items():
            rec = recs[rid]
            count = made.get(str(original), 0)
            assert count <= 1, f"{rid}: {count} new bookings for original {original}"
            if rec.new_booking_id is not None:
                assert count == 1, f"{rid} names booking {rec.new_booking_id} the sandbox lacks"
            elif count == 1:
                assert rec.state == State.NEEDS_ATTENTION, (
                    f"{rid} is {rec.state} but the upstream has a booking for it"
                )
            if rec.state == State.NEEDS_ATTENTION:
                assert rec.reason and rec.action, f"{rid} parked without reason/action"
        return Counter(r.state.value for r in recs.values())
