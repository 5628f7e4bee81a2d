"""Upstream faults on every endpoint — 500, 503, 429 with and without Retry-After, timeouts,
invalid JSON, and commits whose answer is lost — while rebooks run. Every rebook settles and no
original ever gets a second booking: ambiguous POSTs are settled through MadeBookings."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from tests.chaos.driver import FULL, Scenario
from tests.integration.conftest import System, running_system
from worker.core.states import State

pytestmark = pytest.mark.integration

ENDPOINTS = [
    "RescheduleMadeBooking",
    "MadeBookingDetails",
    "MadeBookings",
    "getUserSummary",
    "token",
]
KINDS = ["http_500", "http_503", "http_429", "timeout", "bad_json"]
AFTER_COMMIT = ["http_500_after_commit", "timeout_after_commit", "bad_json"]


@pytest.fixture(scope="module")
def fault_system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(
        redis_url,
        tmp_path_factory.mktemp("faults"),
        http_timeout_seconds=0.4,
        step_lease_seconds=3.0,
        reconcile_grace_seconds=0.5,
        reconcile_max_tries=8,
        reschedule_max_attempts=8,
        token_refresh_margin_seconds=0,
    ) as sysm:
        sysm.sandbox.configure(accept_by_seconds=4, fault_delay_seconds=0.8)
        yield sysm


def test_a_commit_whose_answer_is_lost_is_found_not_posted_again(fault_system: System) -> None:
    system = fault_system
    user = system.member()
    for kind in ("http_500_after_commit", "timeout_after_commit", "bad_json"):
        performer = system.performer(online=True)
        system.sandbox.fault("RescheduleMadeBooking", kind)
        rid, booking = system.rebook(user, performer)
        rec = system.wait_state(rid, State.WATCHING, timeout=30)
        stats = system.sandbox.stats()
        assert stats["new_bookings"][str(booking)] == 1, kind
        assert system.sandbox.booking(rec.new_booking_id)["original_id"] == booking  # type: ignore[arg-type]


def test_a_post_refused_before_acting_is_sent_again(fault_system: System) -> None:
    system = fault_system
    user = system.member()
    for kind, extra in (("http_503", {}), ("http_429", {"retry_after": 1}), ("http_429", {})):
        performer = system.performer(online=True)
        system.sandbox.fault("RescheduleMadeBooking", kind, **extra)
        rid, booking = system.rebook(user, performer)
        system.wait_state(rid, State.WATCHING, timeout=30)
        assert system.sandbox.stats()["new_bookings"][str(booking)] == 1, kind


def test_random_faults_on_every_endpoint(fault_system: System) -> None:
    system = fault_system
    rng = random.Random(5)
    rebooks, performers = (200, 20) if FULL else (30, 6)
    scenario = Scenario(system, rebooks, performers, online_window=4)
    for _ in range(60 if FULL else 25):
        endpoint = rng.choice(ENDPOINTS)
        kind = rng.choice(KINDS + (AFTER_COMMIT if endpoint == "RescheduleMadeBooking" else []))
        extra = (
            {"retry_after": rng.choice([0.5, 1])}
            if kind == "http_429" and rng.random() < 0.5
            else {}
        )
        system.sandbox.fault(endpoint, kind, count=rng.randint(1, 3), **extra)
    started = time.monotonic()
    scenario.submit_all()
    scenario.start_bots()
    try:
        scenario.wait_settled(180 if FULL else 90)
    finally:
        scenario.stop()
    states = scenario.check_invariants()
    stats = system.sandbox.stats()
    print(
        f"\nfaults: {rebooks} rebooks, faults queued on {len(ENDPOINTS)} endpoints; settled in "
        f"{time.monotonic() - started:.0f}s: {dict(states)}; upstream calls {stats['calls']}"
    )
