"""The latency phase of `make bench` (`--latency 0,50,200`): the upstream N ms away.

The sandbox waits N ms before each answer (`latency_ms`). At each latency, one population —
`PERFORMERS` performers with `PER_PERFORMER` waiting rebooks each (10 per member, each on another
performer), P = `INTERVAL` — is run by rebook in two layouts and by plain Celery:

- `prefork`: rebook's former Procfile worker, one `-P prefork -c 4` on both queues;
- `threads`: the Procfile's workers as it starts them, read from it (`procfile_layout`): now
  `worker` (`-P prefork -c 2`, both queues: intake, and steps too) beside `io` (`-P threads -c 32
  -Q rebook.work`);
- plain Celery, `-P prefork -c 4`, its task polling and POSTing in one.

Measured from the sandbox's call log: presence calls per performer per P over a window, then a
burst — `ONLINE` performers online at the same moment (their 100 rebooks) — time from online to
each POST (p50, p99), upstream calls per second achieved during the burst against the budget,
and the workers' process trees' RSS after it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any

from tests.bench import plain_celery
from tests.bench.harness import (
    ROOT,
    Proc,
    log,
    peak_in_window,
    percentile,
    tree_memory_kb,
    wait_until,
)
from tests.integration.conftest import settings_env
from worker.celeryapp.app import EVENTS_QUEUE, WORK_QUEUE, create_app
from worker.celeryapp.runtime import build_services
from worker.core.models import TokenSet

if TYPE_CHECKING:
    from tests.bench.run import Bench

PERFORMERS = 40
PER_PERFORMER = 10
PER_MEMBER = 10
INTERVAL = 2.0
ONLINE = 10
RATE = 100.0
WINDOWS = 3
BURST_TIMEOUT = 60.0
Layout = list[tuple[str, str, str, int]]
"""A layout's workers: (name, queues, pool, concurrency)."""


def procfile_layout(text: str) -> Layout:
    """The Celery workers a Procfile starts, with their queues, pool and concurrency (Celery's
    defaults where a flag is absent: both queues, prefork, one process a core)."""
    workers: Layout = []
    for line in text.splitlines():
        name, _, command = line.partition(":")
        args = shlex.split(command)
        if line.startswith("#") or args[:4] != ["celery", "-A", "worker", "worker"]:
            continue
        flags: dict[str, str] = {}
        for flag, value in itertools.pairwise(args):
            if flag.startswith("-"):
                flags[flag] = value
        workers.append(
            (
                name.strip(),
                flags.get("-Q", f"{EVENTS_QUEUE},{WORK_QUEUE}"),
                flags.get("-P", flags.get("--pool", "prefork")),
                int(flags.get("--concurrency", flags.get("-c", str(os.cpu_count() or 1)))),
            )
        )
    return workers


LAYOUTS: dict[str, Layout] = {
    "prefork": [("all", f"{EVENTS_QUEUE},{WORK_QUEUE}", "prefork", 4)],
    "threads": procfile_layout((ROOT / "Procfile").read_text()),
}


def layout_name(layout: str) -> str:
    """The table's name for a layout: its workers' pools and concurrency."""
    if layout == "threads":
        parts = [f"{name} {pool} {c}" for name, _, pool, c in LAYOUTS[layout]]
        return "rebook, Procfile: " + " + ".join(parts)
    return "rebook, prefork -c 4"


def run_latency(bench: Bench, latencies: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "performers": PERFORMERS,
        "waiting": PERFORMERS * PER_PERFORMER,
        "interval": INTERVAL,
        "online": ONLINE,
        "rate": RATE,
        "runs": {},
    }
    base = 200_000
    try:
        for ms in latencies:
            bench.sandbox.configure(latency_ms=ms)
            run: dict[str, Any] = {}
            for layout in LAYOUTS:
                base += 1000
                run[layout] = _ours(bench, ms, layout, base)
            base += 1000
            run["plain"] = _plain(bench, ms, base)
            out["runs"][str(ms)] = run
    finally:
        bench.sandbox.configure(latency_ms=0)
    return out


def _worker(
    bench: Bench, name: str, app: str, queues: str, pool: str, c: int, env: dict[str, str]
) -> Proc:
    proc = bench.spawn(
        name,
        [
            sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queues,
            "-c", str(c), "-P", pool, "-E", "--without-mingle", "--without-gossip",
            "-n", f"bench-{name}@%h", "-l", "INFO",
        ],
        env,
    )  # fmt: skip
    wait_until(lambda: " ready." in proc.text(), 60, f"{name} ready", 0.1)
    return proc


# Long on purpose: one measurement, read top to bottom (presence window, burst, collect).
def _measure(
    bench: Bench, pids: list[int], bookings: dict[int, int], procs: list[Proc]
) -> dict[str, Any]:
    calls = bench.calls
    waiting = len(bookings)
    wanted_pids = set(pids)

    def polled_all() -> bool:
        calls.sync()
        seen = {r["performer_id"] for r in calls.rows if r["op"] == "getUserSummary"}
        return wanted_pids <= seen

    with contextlib.suppress(TimeoutError):
        wait_until(polled_all, 60, "every performer polled once", 0.2)
    presence = bench.presence_window(wanted_pids, waiting, WINDOWS * INTERVAL)
    chosen = set(pids[:ONLINE])
    wanted = {b: pid for b, pid in bookings.items() if pid in chosen}
    s0 = calls.sync()
    t_on = time.time()
    for pid in sorted(chosen):
        bench.sandbox.set_online(pid, True)

    def posted() -> dict[int, float]:
        calls.sync()
        found: dict[int, float] = {}
        for r in calls.between(s0, calls.next):
            if (
                r["op"] == "RescheduleMadeBooking"
                and r["status"] == 200
                and r["booking_id"] in wanted
            ):
                found.setdefault(r["booking_id"], r["t"])
        return found

    timed_out = False
    try:
        wait_until(lambda: len(posted()) == len(wanted), BURST_TIMEOUT, "burst POSTs", 0.2)
    except TimeoutError:
        timed_out = True
    got = posted()
    latencies = [t - t_on for t in got.values()]
    t_end = max(got.values(), default=time.time())
    window = [
        r for r in calls.between(s0, calls.next) if r["op"] != "token" and t_on <= r["t"] <= t_end
    ]
    by_op: dict[str, int] = {}
    for r in window:
        by_op[r["op"]] = by_op.get(r["op"], 0) + 1
    rss_kb = sum(int(tree_memory_kb(p.pid)["rss_kb"]) for p in procs)
    for pid in chosen:
        bench.sandbox.set_online(pid, False)
    return {
        "presence_per_performer_per_interval": presence["per_performer_per_interval"],
        "presence_calls_per_second": presence["calls_per_second"],
        "burst_rebooks": len(wanted),
        "burst_posted": len(got),
        "burst_timed_out": timed_out,
        "burst_p50": percentile(latencies, 50),
        "burst_p99": percentile(latencies, 99),
        "burst_seconds": t_end - t_on,
        "burst_calls_per_second": len(window) / (t_end - t_on) if t_end > t_on else None,
        "burst_peak_1s": peak_in_window([r["t"] for r in window], 1.0),
        "burst_calls": by_op,
        "rss_mb": rss_kb / 1024,
    }


def _population(bench: Bench, base: int) -> tuple[list[int], list[tuple[int, str, int]]]:
    """(performers, [(k, member, performer)]): 10 rebooks per member, each on another performer."""
    pids = [base + i for i in range(PERFORMERS)]
    rows = [
        (k, f"m{base}-{k // PER_MEMBER}", pids[k % PERFORMERS])
        for k in range(PERFORMERS * PER_PERFORMER)
    ]
    for pid in pids:
        bench.sandbox.set_online(pid, False)
    return pids, rows


def _ours(bench: Bench, ms: int, layout: str, base: int) -> dict[str, Any]:
    st = bench.settings().model_copy(
        update={
            "key_prefix": f"bench-lat-{ms}-{layout}:",
            "presence_interval_seconds": INTERVAL,
            "upstream_rate_per_second": RATE,
        }
    )
    svc = build_services(st)
    producer = create_app(st)
    env = settings_env(st)
    procs = [
        _worker(bench, f"lat{ms}-{layout}-{name}", "worker", queues, pool, c, env)
        for name, queues, pool, c in LAYOUTS[layout]
    ]
    beat = bench.celery_beat(f"lat{ms}-{layout}-beat", f"lat{ms}-{layout}-beat", env)
    try:
        pids, rows = _population(bench, base)
        bookings: dict[int, int] = {}
        for user in sorted({user for _, user, _ in rows}):
            answer = bench.sandbox.add_user(user)
            svc.token_store.save(user, TokenSet.from_token_response(answer, time.time()))
        for k, user, pid in rows:
            booking = bench.sandbox.add_booking(user, pid)
            bookings[booking] = pid
            producer.send_task(
                "rebook.request",
                kwargs={
                    "event_id": f"lat-{ms}-{layout}-{k}",
                    "booking_id": booking,
                    "user_id": user,
                    "performer_id": pid,
                },
                queue=EVENTS_QUEUE,
            )
        result = _measure(bench, pids, bookings, procs)
        result["layout"] = " + ".join(
            f"-P {pool} -c {c} -Q {queues}" for _, queues, pool, c in LAYOUTS[layout]
        )
        log(_line(f"rebook {layout}", ms, result))
        return result
    finally:
        bench.stop(beat)
        for proc in procs:
            bench.stop(proc)


def _plain(bench: Bench, ms: int, base: int) -> dict[str, Any]:
    bench.r.delete(plain_celery.QUEUE, "unacked", "unacked_index")
    from celery import Celery

    producer = Celery("plain-latency", broker=bench.url)
    producer.conf.update(task_serializer="json", accept_content=["json"])
    proc = _worker(
        bench,
        f"lat{ms}-plain",
        "tests.bench.plain_celery",
        plain_celery.QUEUE,
        "prefork",
        4,
        bench.plain_env(),
    )
    try:
        pids, rows = _population(bench, base)
        bookings: dict[int, int] = {}
        for user in sorted({user for _, user, _ in rows}):
            bench.r.set(
                plain_celery.TOKEN_KEY.format(user_id=user),
                bench.sandbox.add_user(user)["access_token"],
            )
        for _, user, pid in rows:
            booking = bench.sandbox.add_booking(user, pid)
            bookings[booking] = pid
            producer.send_task(
                "plain.rebook",
                kwargs={
                    "booking_id": booking,
                    "user_id": user,
                    "performer_id": pid,
                    "interval": INTERVAL,
                    "watch_interval": bench.cfg.watch,
                },
                queue=plain_celery.QUEUE,
            )
        result = _measure(bench, pids, bookings, [proc])
        result["layout"] = f"-P prefork -c 4 -Q {plain_celery.QUEUE}"
        log(_line("plain", ms, result))
        return result
    finally:
        bench.stop(proc)
        bench.r.delete(plain_celery.QUEUE, "unacked", "unacked_index")


def _line(who: str, ms: int, r: dict[str, Any]) -> str:
    p50, p99 = r["burst_p50"], r["burst_p99"]
    return (
        f"latency {ms} ms, {who}: presence {r['presence_per_performer_per_interval']:.2f}"
        f"/performer/P, burst {r['burst_posted']}/{r['burst_rebooks']} p50 "
        f"{'-' if p50 is None else f'{p50:.2f}'} s p99 {'-' if p99 is None else f'{p99:.2f}'} s, "
        f"RSS {r['rss_mb']:.0f} MB"
    )


def latency_markdown(res: dict[str, Any]) -> str:
    """One table: each latency, rebook in both layouts and plain Celery side by side."""
    lat = res.get("latency")
    if not lat:
        return ""
    lines = [
        f"Upstream latency ({lat['performers']} performers, {lat['waiting']} waiting, "
        f"P = {lat['interval']:g} s; burst: {lat['online']} performers online at once, "
        f"{lat['online'] * PER_PERFORMER} rebooks; rebook's budget {lat['rate']:g} calls/s, "
        "plain Celery has none):",
        "",
        "| latency | system | presence calls / performer / P | burst p50, s | burst p99, s "
        "| calls/s in the burst (budget) | peak 1 s | workers' RSS, MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for ms, run in lat["runs"].items():
        for key in ("prefork", "threads", "plain"):
            r = run.get(key)
            if r is None:
                continue
            posted = (
                ""
                if r["burst_posted"] == r["burst_rebooks"]
                else f" ({r['burst_posted']}/{r['burst_rebooks']} in {BURST_TIMEOUT:g} s)"
            )
            budget = f" ({lat['rate']:g})" if key != "plain" else ""
            cps = r["burst_calls_per_second"]
            system = "plain Celery, prefork -c 4" if key == "plain" else layout_name(key)
            lines.append(
                f"| {ms} ms | {system} | "
                f"{r['presence_per_performer_per_interval']:.2f} | {_f(r['burst_p50'])} | "
                f"{_f(r['burst_p99'])}{posted} | {'-' if cps is None else f'{cps:.0f}'}{budget} | "
                f"{r['burst_peak_1s']} | {r['rss_mb']:.0f} |"
            )
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
