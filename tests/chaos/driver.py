"""A scenario driver for chaos runs: many rebooks over many performers, performers coming online
at random, a performer bot deciding each new booking, and the final accounting."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.inspect_store import ids_in_state
from tests.integration.conftest import System, wait_for
from worker.core.states import ACTIVE_STATES, State

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
    decided: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

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
        threading.Thread(target=self._presence_bot, daemon=True).start()
        threading.Thread(target=self._decision_bot, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _presence_bot(self) -> None:
        """Each performer comes online once, at a random moment within the window."""
        times = sorted((self.rng.uniform(0, self.online_window), p) for p in self.performer_ids)
        start = time.monotonic()
        for at, performer in times:
            while not self._stop.is_set() and time.monotonic() - start < at:
                self._stop.wait(0.05)
            if self._stop.is_set():
                return
            self.system.sandbox.set_online(performer, True)

    def _decision_bot(self) -> None:
        """Accepts 40 %, rejects 30 % and ignores 30 % (left to expire) of the new bookings."""
        while not self._stop.is_set():
            try:
                watching = ids_in_state(self.system.store, State.WATCHING)
                for rec in self.system.store.get_many(watching):
                    new = rec.new_booking_id
                    if new is None or new in self.decided:
                        continue
                    self.decided.add(new)
                    roll = self.rng.random()
                    if roll < 0.4:
                        self.system.sandbox.set_status(new, "Accepted")
                    elif roll < 0.7:
                        self.system.sandbox.set_status(new, "Rejected", "busy")
            except Exception:  # Redis restarting, sandbox busy: the bot just tries again
                pass
            self._stop.wait(0.1)

    def settled(self) -> bool:
        recs = self.system.store.get_many(self.rids)
        return len(recs) == len(self.rids) and all(
            r.state not in ACTIVE_STATES or r.state == State.NEEDS_ATTENTION for r in recs
        )

    def wait_settled(self, timeout: float) -> None:
        try:
            wait_for(self.settled, timeout, "every rebook settled")
        except AssertionError:
            recs = self.system.store.get_many(self.rids)
            counts = Counter(r.state.value for r in recs)
            raise AssertionError(
                f"not settled after {timeout}s: {dict(counts)}, "
                f"{len(self.rids) - len(recs)} without a record"
            ) from None

    def check_invariants(self) -> Counter[str]:
        """Nothing lost, nothing doubled; returns the final states."""
        recs = {r.rebook_id: r for r in self.system.store.get_many(self.rids)}
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
