"""The short-budget phase of `make bench`: presence when the budget covers a quarter of the demand.

`PERFORMERS` performers with one waiting rebook each at P = `INTERVAL` need PERFORMERS / P calls
a second; both systems get a quarter of that: rebook through `REBOOK_UPSTREAM_RATE_PER_SECOND`
(the presence share of it), plain Celery through `rate_limit` on its presence task (per worker,
as Celery does it; one worker here). Measured from the sandbox's call log: presence calls per
performer over a window (spread against the mean), the mean period against the fair one
(P / f), then reaction (online -> POST) of performers coming online one by one at random
moments, next to what `worker.core.capacity.plan` predicts for the performers still waiting.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from tests.bench import plain_celery
from tests.bench.harness import CallLog, log, peak_in_window, percentile, wait_until
from tests.integration.conftest import settings_env
from worker.celeryapp.app import EVENTS_QUEUE, WORK_QUEUE, create_app
from worker.celeryapp.runtime import build_services
from worker.core.capacity import DISPATCH_LATENCY, plan, presence_budget, rate_needed
from worker.core.models import TokenSet

if TYPE_CHECKING:
    from tests.bench.run import Bench

PERFORMERS = 40
INTERVAL = 1.0
WINDOW = 15.0
"""Seconds of presence calls counted per performer (about 4 polls each at the fair period)."""
ONLINE = 12
ONLINE_OVER = 12.0
"""`ONLINE` performers come online at random moments over this many seconds."""
BASE = {"ours": 30_000, "plain": 40_000}


def budget_rate() -> float:
    """The rate whose presence share is a quarter of the demand (rounded up to a whole rate)."""
    return rate_needed(PERFORMERS / INTERVAL / 4)


def run_budget(bench: Bench) -> dict[str, Any]:
    rate = budget_rate()
    budget = presence_budget(rate)
    fair = plan(PERFORMERS, interval=INTERVAL, rate=rate)
    out: dict[str, Any] = {
        "performers": PERFORMERS,
        "interval": INTERVAL,
        "rate": rate,
        "budget": budget,
        "needed": PERFORMERS / INTERVAL,
        "covered": fair.covered,
        "fair_period": fair.achieved_interval_seconds,
    }
    calls = CallLog(bench.sandbox)
    out["ours"] = _ours(bench, calls, rate)
    out["plain"] = _plain(bench, calls, budget)
    return out


# Long on purpose: one measurement window, read top to bottom (start, sample, stop, compute).
def _measure(
    bench: Bench, calls: CallLog, pids: list[int], bookings: dict[int, int], rate: float
) -> dict[str, Any]:
    """Spread over a window, then reaction of `ONLINE` performers coming online one by one."""

    def polled_all() -> bool:
        calls.sync()
        seen = {r["performer_id"] for r in calls.rows if r["op"] == "getUserSummary"}
        return set(pids) <= seen

    wait_until(polled_all, 60, "every performer polled once", 0.2)
    s0 = calls.sync()
    time.sleep(WINDOW)  # a measuring window
    s1 = calls.sync()
    rows = [
        r
        for r in calls.between(s0, s1)
        if r["op"] == "getUserSummary" and r["performer_id"] in bookings
    ]
    per = Counter(r["performer_id"] for r in rows)
    counts = [per.get(pid, 0) for pid in pids]
    mean = sum(counts) / len(counts)
    span = (rows[-1]["t"] - rows[0]["t"]) if len(rows) > 1 else WINDOW
    result: dict[str, Any] = {
        "calls": len(rows),
        "min_over_mean": min(counts) / mean if mean else 0.0,
        "max_over_mean": max(counts) / mean if mean else 0.0,
        "period": len(pids) * span / len(rows) if rows else None,
    }
    # reaction: one performer after another at random moments; the others keep waiting
    rng = random.Random(bench.cfg.seed)
    chosen = pids[:ONLINE]
    moments = sorted(rng.uniform(0, ONLINE_OVER) for _ in chosen)
    t0 = time.time()
    online_at: dict[int, float] = {}
    predicted: list[float] = []
    for i, (pid, at) in enumerate(zip(chosen, moments, strict=True)):
        delay = t0 + at - time.time()
        if delay > 0:
            time.sleep(delay)  # the moment a performer comes online is the bench's input
        online_at[pid] = time.time()
        bench.sandbox.set_online(pid, True)
        predicted.append(
            plan(len(pids) - i, interval=INTERVAL, rate=rate).achieved_interval_seconds
        )
    wanted = {bookings[pid]: pid for pid in chosen}

    def posted() -> dict[int, float]:
        calls.sync()
        found: dict[int, float] = {}
        for r in calls.between(s1, calls.next):
            if r["op"] == "RescheduleMadeBooking" and r["booking_id"] in wanted:
                found.setdefault(wanted[r["booking_id"]], r["t"])
        return found

    with contextlib.suppress(TimeoutError):
        wait_until(lambda: len(posted()) == len(chosen), 60, "reaction POSTs", 0.2)
    got = posted()
    reactions = [got[pid] - online_at[pid] for pid in chosen if pid in got]
    phase = [r["t"] for r in calls.between(s0, calls.next)]
    # each reaction in two parts: online -> the first poll after it (the model: U(0, period)),
    # and that poll -> the POST (the model: DISPATCH_LATENCY)
    first_poll: dict[int, float] = {}
    for r in calls.between(s1, calls.next):
        pid = r["performer_id"]
        if r["op"] == "getUserSummary" and pid in online_at and r["t"] >= online_at[pid]:
            first_poll.setdefault(pid, r["t"])
    # presence calls made while performers came online, against the budget the model assumes
    t_on, t_end = min(online_at.values()), max(got.values(), default=time.time())
    during = [
        r
        for r in calls.between(s1, calls.next)
        if r["op"] == "getUserSummary" and t_on <= r["t"] <= t_end
    ]
    others = Counter(
        r["op"]
        for r in calls.between(s1, calls.next)
        if r["op"] != "getUserSummary" and t_on <= r["t"] <= t_end
    )
    parts = [
        {
            "performer_id": pid,
            "predicted_period": period,
            "reaction": got[pid] - online_at[pid],
            "to_poll": first_poll[pid] - online_at[pid],
            "poll_to_post": got[pid] - first_poll[pid],
        }
        for pid, period in zip(chosen, predicted, strict=True)
        if pid in got and pid in first_poll
    ]
    result.update(
        {
            "reaction_p50": percentile(reactions, 50),
            "reaction_p99": percentile(reactions, 99),
            "posted": len(reactions),
            "online": len(chosen),
            # a performer online at a random moment waits U(0, a) for its poll: a mixture over
            # the periods while the others still wait
            "predicted_p50": sum(predicted) / len(predicted) / 2 + DISPATCH_LATENCY,
            "predicted_p99": 0.99 * max(predicted) + DISPATCH_LATENCY,
            "predicted_period": plan(
                len(pids), interval=INTERVAL, rate=rate
            ).achieved_interval_seconds,
            "peak_1s": peak_in_window(phase, 1.0),
            "reactions": parts,
            "reaction_span": t_end - t_on,
            "presence_rate_during": len(during) / (t_end - t_on) if t_end > t_on else None,
            "other_calls_during": dict(others),
            "to_poll_mean": _mean([x["to_poll"] for x in parts]),
            "poll_to_post_mean": _mean([x["poll_to_post"] for x in parts]),
            "poll_to_post_max": max((x["poll_to_post"] for x in parts), default=None),
            "predicted_to_poll_mean": _mean([x["predicted_period"] / 2 for x in parts]),
        }
    )
    for pid in chosen:
        bench.sandbox.set_online(pid, False)
    return result


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ours(bench: Bench, calls: CallLog, rate: float) -> dict[str, Any]:
    st = bench.settings().model_copy(
        update={
            "key_prefix": "bench-budget:",
            "presence_interval_seconds": INTERVAL,
            "upstream_rate_per_second": rate,
        }
    )
    svc = build_services(st)
    producer = create_app(st)
    env = settings_env(st)
    worker = bench.celery_worker("budget-worker", "worker", f"{EVENTS_QUEUE},{WORK_QUEUE}", env)
    beat = bench.celery_beat("budget-beat", "budget-beat", env)
    try:
        user = "bm-budget"
        svc.token_store.save(
            user, TokenSet.from_token_response(bench.sandbox.add_user(user), time.time())
        )
        pids = [BASE["ours"] + i for i in range(PERFORMERS)]
        bookings: dict[int, int] = {}
        for i, pid in enumerate(pids):
            bench.sandbox.set_online(pid, False)
            bookings[pid] = bench.sandbox.add_booking(user, pid)
            producer.send_task(
                "rebook.request",
                kwargs={
                    "event_id": f"budget-{i}",
                    "booking_id": bookings[pid],
                    "user_id": user,
                    "performer_id": pid,
                },
                queue=EVENTS_QUEUE,
            )
        result = _measure(bench, calls, pids, bookings, rate)
        result["stats_presence"] = svc.store.sweep.stats()["presence"]
        # checks that gave their turn back because POSTs and reads had the window
        # (worker/core/flow/presence.py)
        result["presence_deferred"] = worker.text().count("deferred (rate budget)")
        log(
            f"short budget, rebook: spread {result['min_over_mean']:.2f}-"
            f"{result['max_over_mean']:.2f} of the mean, period {result['period']:.2f}s, "
            f"reaction p99 {result['reaction_p99']}"
        )
        return result
    finally:
        bench.stop(beat)
        bench.stop(worker)


def _plain(bench: Bench, calls: CallLog, budget: float) -> dict[str, Any]:
    # what the plain phase left in its queue (countdown messages) must not run here
    bench.r.delete(plain_celery.QUEUE, "unacked", "unacked_index")
    env = {**bench.plain_env(), "PLAIN_PRESENCE_RATE_LIMIT": f"{budget:.3f}/s"}
    worker = bench.celery_worker(
        "budget-plain", "tests.bench.plain_celery", plain_celery.QUEUE, env
    )
    try:
        pids = [BASE["plain"] + i for i in range(PERFORMERS)]
        bookings: dict[int, int] = {}
        for i, pid in zip(itertools.count(), pids, strict=False):
            user = f"pm-budget-{i}"
            bench.r.set(
                plain_celery.TOKEN_KEY.format(user_id=user),
                bench.sandbox.add_user(user)["access_token"],
            )
            bench.sandbox.set_online(pid, False)
            bookings[pid] = bench.sandbox.add_booking(user, pid)
            bench.pproducer.send_task(
                "plain.rebook_limited",
                kwargs={
                    "booking_id": bookings[pid],
                    "user_id": user,
                    "performer_id": pid,
                    "interval": INTERVAL,
                    "watch_interval": bench.cfg.watch,
                },
                queue=plain_celery.QUEUE,
            )
        result = _measure(bench, calls, pids, bookings, budget_rate())
        log(
            f"short budget, plain: spread {result['min_over_mean']:.2f}-"
            f"{result['max_over_mean']:.2f} of the mean, period {result['period']:.2f}s, "
            f"reaction p99 {result['reaction_p99']}"
        )
        return result
    finally:
        bench.stop(worker)
