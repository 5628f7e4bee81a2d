"""A short upstream budget, end to end: real worker and beat, Redis, the sandbox over HTTP.

40 performers with waiting rebooks at a presence interval of 0.5 s need 80 calls a second; a rate
of 30/s gives presence 20 (a quarter). Every performer must still get its share: each polled
about every 2 s, the least at 0.6x and the most at 1.6x the mean, while POSTs of a performer who
comes online still go, and no second ever holds more than the rate.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from worker.core.capacity import plan, presence_budget
from worker.core.states import State

from .conftest import System, running_system

PERFORMERS = 40
INTERVAL = 0.5
RATE = 30.0
CALLS = 240
"""Presence calls measured: about 6 per performer (12 s)."""


@pytest.fixture(scope="module")
def system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(
        redis_url,
        tmp_path_factory.mktemp("budget"),
        presence_interval_seconds=INTERVAL,
        upstream_rate_per_second=RATE,
        step_lease_seconds=4.0,
    ) as sysm:
        yield sysm


def presence_log(system: System, since: int) -> tuple[list[dict[str, Any]], int]:
    rows: list[dict[str, Any]] = []
    while True:
        page = system.sandbox.calls(since)
        rows.extend(page["calls"])
        if not page["calls"]:
            return rows, since
        since = page["next"]


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_every_performer_gets_its_share_of_a_quarter_budget(system: System) -> None:
    assert presence_budget(RATE) == pytest.approx(PERFORMERS / INTERVAL / 4)
    user = system.member()
    pids = [system.performer() for _ in range(PERFORMERS)]
    for pid in pids:
        system.rebook(user, pid)
    # warm-up: every performer polled once (the line has formed)
    wait_for(
        lambda: len(system.sandbox.stats()["presence_calls"]) == PERFORMERS, 30, "every one polled"
    )
    _, seq = presence_log(system, 0)
    rows: list[dict[str, Any]] = []

    def measured() -> bool:
        nonlocal seq
        more, seq = presence_log(system, seq)
        rows.extend(more)
        return sum(1 for r in rows if r["op"] == "getUserSummary") >= CALLS

    wait_for(measured, 60, f"{CALLS} presence calls")
    polls = [r for r in rows if r["op"] == "getUserSummary"][:CALLS]
    span = polls[-1]["t"] - polls[0]["t"]
    per = Counter(r["performer_id"] for r in polls)
    mean = CALLS / PERFORMERS
    counts = [per.get(pid, 0) for pid in pids]
    assert min(counts) >= 0.6 * mean and max(counts) <= 1.6 * mean, sorted(counts)
    # made at the budget, so each performer about every P / f = 2 s
    fair = plan(PERFORMERS, interval=INTERVAL, rate=RATE).achieved_interval_seconds
    assert fair == pytest.approx(2.0)
    assert PERFORMERS * span / CALLS == pytest.approx(fair, rel=0.25)
    assert busiest_second([r["t"] for r in rows]) <= RATE

    # what the operator sees: the achieved interval near P / f, the shortfall
    out = system.cli("stats", "--json")
    assert out.returncode == 0, out.stderr
    presence = json.loads(out.stdout)["presence"]
    assert presence["performers"] == PERFORMERS
    assert presence["interval_seconds"] == INTERVAL
    assert presence["needed_calls_per_second"] == PERFORMERS / INTERVAL
    assert presence["budget_calls_per_second"] == pytest.approx(20.0, abs=0.01)
    assert presence["achieved_interval_seconds"] == pytest.approx(fair, rel=0.3)

    doctor = system.cli("doctor")
    assert "WARN presence:" in doctor.stdout, doctor.stdout
    assert f"{PERFORMERS} performers need 80.00 presence calls/s" in doctor.stdout
    assert "REBOOK_UPSTREAM_RATE_PER_SECOND=" in doctor.stdout


def test_posts_keep_their_priority_under_the_short_budget(system: System) -> None:
    """A performer who comes online while presence eats the budget: its POSTs go, the window
    never holds more than the rate."""
    user = system.member()
    pid = system.performer()
    rids = [system.rebook(user, pid)[0] for _ in range(3)] + [
        system.rebook(system.member(), pid)[0] for _ in range(5)
    ]
    for rid in rids:
        system.wait_state(rid, State.WAITING)
    _, seq = presence_log(system, 0)
    system.sandbox.set_online(pid, True)
    # one member's three share one gate: POSTs one after another; each settles within seconds
    for rid in rids:
        system.wait_state(rid, State.WATCHING, timeout=30)
    rows, _ = presence_log(system, seq)
    assert sum(1 for r in rows if r["op"] == "RescheduleMadeBooking") >= len(rids)
    assert busiest_second([r["t"] for r in rows]) <= RATE
