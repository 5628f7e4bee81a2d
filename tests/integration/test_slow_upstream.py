"""A slow upstream stalls nothing else: six POSTs whose answers trickle in (one byte every 0.5 s,
for minutes; no read timeout ever fires) are cut at REBOOK_HTTP_DEADLINE_SECONDS by a real
worker, while unrelated rebooks are POSTed as soon as their performers come online; the six end
with exactly one new booking each, found by reconciliation."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.integration.conftest import System, wait_for
from worker.core.states import State

pytestmark = pytest.mark.integration

SLOW = 6
OTHERS = 4
EVERY = 0.5  # below the 1 s read timeout of the fast settings: only the deadline can end it
SLACK = 1.5  # a busy 2-core machine: process start-up jitter, Redis and HTTP round trips


def booked_at(system: System, rid: str) -> float:
    """When the POST's answer was recorded (RESCHEDULING -> WATCHING): a little after the POST
    went out, so a bound on it bounds the POST (worker clock = this machine's)."""
    for entry in system.store.records.history(rid):
        if entry.get("to") == State.WATCHING.value:
            return datetime.fromisoformat(str(entry["at"]).replace("Z", "+00:00")).timestamp()
    raise AssertionError(f"{rid}: not booked: {system.store.records.history(rid)}")


def test_trickling_posts_stall_nothing_else(system: System) -> None:
    s = system.settings
    deadline = s.call_bound_seconds
    assert deadline == 2.0 and s.http_timeout_seconds == 1.0  # the fast settings
    # the others wait first, their performers offline
    others = [(system.member(), system.performer(online=False)) for _ in range(OTHERS)]
    waiting = [system.rebook(user, performer)[0] for user, performer in others]
    for rid in waiting:
        system.wait_state(rid, State.WAITING)

    system.sandbox.fault("RescheduleMadeBooking", "trickle", count=SLOW, delay=EVERY)
    slow = [system.rebook(system.member(), system.performer(online=True)) for _ in range(SLOW)]
    # all six POSTs sent (the worker has 3 processes: two waves of at most one deadline)
    wait_for(lambda: system.sandbox.stats()["faults_pending"] == 0, 15, "six POSTs trickling")

    online_at = time.time()
    for _, performer in others:
        system.sandbox.set_online(performer, True)
    for rid in waiting:
        system.wait_state(rid, [State.WATCHING], timeout=15)
    # Bound: one presence interval + one sweep (the contract's), + one deadline because the
    # last wave of trickling POSTs may hold every worker process for up to one deadline after
    # its POST went out (the fault is taken when the request arrives), + slack.
    bound = s.presence_interval_seconds + s.sweep_interval_seconds + deadline + SLACK
    late = {rid: booked_at(system, rid) - online_at for rid in waiting}
    assert all(delay <= bound for delay in late.values()), (late, bound)

    # the six were cut (Ambiguous), reconciled, and own the one booking each POST made
    for rid, _ in slow:
        rec = system.wait_state(rid, [State.WATCHING], timeout=20)
        assert rec.new_booking_id is not None
    news = system.sandbox.stats()["new_bookings"]
    for rid, booking in slow:
        assert news[str(booking)] == 1, (rid, news)
    worker_log = system.worker.text()
    assert "no complete answer within the 2 s deadline" in worker_log  # not a read timeout
    assert "TimeLimitExceeded" not in worker_log and "SoftTimeLimit" not in worker_log
