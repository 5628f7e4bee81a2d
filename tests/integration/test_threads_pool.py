"""The worker with Celery's threads pool (`-P threads`), as the Procfile starts its I/O worker,
against an upstream 100 ms away: a burst of members with several rebooks each, ambiguous POSTs,
and POSTs that trickle until their deadline, all in one process's threads. Exactly one booking
per original, the slow ones hold nothing else up, and no step runs twice at once.

The whole integration and chaos suites run the same way with `REBOOK_TEST_POOL=threads`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import System, running_system, wait_for
from worker.core.states import State

pytestmark = pytest.mark.integration

LATENCY_MS = 100


@pytest.fixture(scope="module")
def threads_system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    logdir: Path = tmp_path_factory.mktemp("threads")
    with running_system(
        redis_url, logdir, pool="threads", sandbox_options={"latency_ms": LATENCY_MS}
    ) as sysm:
        yield sysm


def test_the_worker_runs_the_threads_pool(threads_system: System) -> None:
    assert "concurrency: 16 (thread)" in threads_system.worker.text()  # Celery's banner


def test_a_burst_of_members_books_each_original_once(threads_system: System) -> None:
    system = threads_system
    members = [system.member() for _ in range(3)]
    performers = [system.performer(online=False) for _ in range(4)]
    made = {
        system.rebook(user, performer)[0]: (user, performer)
        for user in members
        for performer in performers
    }
    for rid in made:
        system.wait_state(rid, State.WAITING)
    # a third of the POSTs answer 500 after the booking was made: reconciled, never doubled
    system.sandbox.fault("RescheduleMadeBooking", "http_500_after_commit", count=4)
    for performer in performers:
        system.sandbox.set_online(performer, True)
    for rid in made:
        rec = system.wait_state(rid, [State.WATCHING], timeout=60)
        assert rec.new_booking_id is not None
    news = system.sandbox.stats()["new_bookings"]
    for rid in made:
        rec = system.get(rid)
        assert rec is not None and news[str(rec.booking_id)] == 1, (rid, news)
    owners = [system.get(rid).new_booking_id for rid in made]  # type: ignore[union-attr]
    assert len(set(owners)) == len(owners)


def test_trickling_posts_hold_no_other_step(threads_system: System) -> None:
    system = threads_system
    s = system.settings
    system.sandbox.fault("RescheduleMadeBooking", "trickle", count=4, delay=0.5)
    slow = [system.rebook(system.member(), system.performer(online=True)) for _ in range(4)]
    wait_for(lambda: system.sandbox.stats()["faults_pending"] == 0, 20, "four POSTs trickling")
    others = [(system.member(), system.performer(online=False)) for _ in range(4)]
    waiting = [system.rebook(user, performer)[0] for user, performer in others]
    for rid in waiting:
        system.wait_state(rid, State.WAITING)
    online_at = time.time()
    for _, performer in others:
        system.sandbox.set_online(performer, True)
    for rid in waiting:
        system.wait_state(rid, [State.WATCHING], timeout=20)
    took = time.time() - online_at
    # one presence interval + one sweep + the calls (100 ms each) + slack for a busy machine;
    # with three prefork processes the trickling POSTs could hold every one for a deadline
    assert took <= s.presence_interval_seconds + s.sweep_interval_seconds + 1.0 + 1.5, took
    for rid, booking in slow:
        rec = system.wait_state(rid, [State.WATCHING], timeout=30)
        assert rec.new_booking_id is not None
        assert system.sandbox.stats()["new_bookings"][str(booking)] == 1
    assert "no complete answer within the 2 s deadline" in system.worker.text()
