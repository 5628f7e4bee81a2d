"""Kills: workers (main process and pool children) and beat die with SIGKILL at random moments
while hundreds of rebooks run; a worker also gets SIGTERM. Nothing is lost, nothing doubled.

`make test` runs a bounded slice; `make chaos` (REBOOK_CHAOS_SCALE=full) runs 500 rebooks over
50 performers.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.driver import FULL, Scenario
from tests.integration.conftest import System, running_system, wait_for
from worker.core.states import State

pytestmark = pytest.mark.integration


def pool_children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry.name))
    return kids


@pytest.fixture(scope="module")
def chaos_system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(
        redis_url,
        tmp_path_factory.mktemp("kills"),
        http_timeout_seconds=0.5,
        step_lease_seconds=3.0,
        presence_interval_seconds=0.5,
        watch_interval_seconds=0.5,
    ) as sysm:
        sysm.sandbox.configure(accept_by_seconds=4)
        yield sysm


def test_kill_9_workers_and_beat_lose_nothing_and_double_nothing(chaos_system: System) -> None:
    system = chaos_system
    rebooks, performers, kills = (500, 50, 10) if FULL else (60, 10, 5)
    rng = random.Random(int(os.environ.get("REBOOK_CHAOS_SEED", "11")))
    scenario = Scenario(system, rebooks, performers, online_window=12 if FULL else 6)
    started = time.monotonic()
    scenario.submit_all()
    scenario.start_bots()
    actions = ["worker", "child", "beat"] + [
        rng.choice(["worker", "child", "beat", "child"]) for _ in range(kills - 3)
    ]
    rng.shuffle(actions)
    done = []
    try:
        for action in actions:
            time.sleep(rng.uniform(0.5, 2.0))  # chaos at random moments (not waiting for work)
            popen = system.worker.popen
            if action == "child" and popen is not None:
                kids = pool_children(popen.pid)
                if kids:
                    os.kill(rng.choice(kids), signal.SIGKILL)  # billiard replaces it
                    done.append("child")
            elif action == "beat":
                system.beat.kill(signal.SIGKILL)
                system.beat.popen = None
                system.beat.start()
                done.append("beat")
            else:
                system.worker.kill(signal.SIGKILL)  # main process and pool children
                system.worker.popen = None
                system.start_worker()
                done.append("worker")
        scenario.wait_settled(240 if FULL else 90)
    finally:
        scenario.stop()
    states = scenario.check_invariants()
    assert done, "no chaos happened"
    made = sum(system.sandbox.stats()["new_bookings"].values())
    print(
        f"\nchaos: {rebooks} rebooks over {performers} performers, kill -9 {done}; settled in "
        f"{time.monotonic() - started:.0f}s: {dict(states)}; {made} new bookings, none twice"
    )


def test_sigterm_lets_a_worker_finish_or_hand_back_its_step(chaos_system: System) -> None:
    """A reschedule POST is in flight (the upstream is slow) when the worker gets SIGTERM."""
    system = chaos_system
    user, performer = system.member(), system.performer(online=True)
    system.sandbox.fault("RescheduleMadeBooking", "timeout_after_commit", delay=0.3)
    rid, booking = system.rebook(user, performer)
    wait_for(
        lambda: system.sandbox.stats()["calls"]["RescheduleMadeBooking"] > 0 and True,
        20,
        "the POST going out",
    )
    system.worker.stop()  # SIGTERM: warm shutdown
    system.start_worker()
    rec = system.wait_state(rid, State.WATCHING, timeout=30)
    assert system.sandbox.stats()["new_bookings"][str(booking)] == 1
    assert rec.new_booking_id is not None
