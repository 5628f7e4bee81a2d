"""Plumbing for the benchmark: child processes, their memory, the sandbox call log, Redis probes."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import redis

from rebook_dev.sandbox import SandboxClient
from rebook_dev.supervisor import Child
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def log(msg: str) -> None:
    """Progress on stderr, so stdout stays the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# One poller for tests and bench; its timeout is also a TimeoutError.
wait_until = wait_for


class Proc(Child):
    """A bench process in its own session (its pool children share its process group)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logfile: Path) -> None:
        super().__init__(name, args, env, logfile, cwd=ROOT)


# --- memory of a process tree -------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a Celery worker: main process + pool children)."""
    tree = _children()
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        out.append(cur)
        todo.extend(tree.get(cur, []))
    return out


def _kb(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_kb(pid: int) -> dict[str, Any]:
    """VmRSS (what the brief asks) and Pss (shared pages split) summed over the tree."""
    pids = process_tree(pid)
    return {
        "processes": len(pids),
        "rss_kb": sum(_kb(f"/proc/{p}/status", "VmRSS") for p in pids),
        "pss_kb": sum(_kb(f"/proc/{p}/smaps_rollup", "Pss") for p in pids),
        "main_rss_kb": _kb(f"/proc/{pid}/status", "VmRSS"),
    }


def tree_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and all their descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for root in pids:
        for p in process_tree(root):
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


# --- the sandbox's call log ---------------------------------------------------------------------


class CallLog:
    """Everything the sandbox was asked, fetched incrementally from `GET /_sandbox/calls`."""

    def __init__(self, sandbox: SandboxClient) -> None:
        self.sandbox = sandbox
        self.rows: list[dict[str, Any]] = []
        self.next = 0
        self.lost = 0

    def sync(self) -> int:
        """Fetches new entries; returns the last sequence number seen."""
        while True:
            page = self.sandbox.calls(since=self.next, limit=100_000)
            if page["first"] > self.next + 1:
                self.lost += page["first"] - self.next - 1
            if not page["calls"]:
                self.next = max(self.next, page["next"])
                return self.next
            self.rows.extend(page["calls"])
            self.next = page["next"]

    def between(self, start_seq: int, end_seq: int) -> list[dict[str, Any]]:
        return [r for r in self.rows if start_seq < r["seq"] <= end_seq]


def peak_in_window(times: Sequence[float], window: float) -> int:
    """Most events in any sliding window of `window` seconds."""
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def percentile(values: Iterable[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


# --- Redis --------------------------------------------------------------------------------------


PRIORITY_STEPS = (0, 3, 6, 9)
"""kombu's Redis transport keeps one list per priority step: `queue`, `queue\\x06\\x163`, ..."""


UNACKED_KEYS = ("unacked", "unacked_index")
"""Where kombu's Redis transport keeps the messages workers hold (one hash, one index)."""


def broker_lists(queues: Iterable[str]) -> list[str]:
    """The Redis lists that hold the waiting messages of these queues, at every priority."""
    return [q if pri == 0 else f"{q}\x06\x16{pri}" for q in queues for pri in PRIORITY_STEPS]


def used_memory(r: redis.Redis, exclude: Sequence[str] = ()) -> dict[str, int]:
    """Redis memory without what its connections hold (they follow how many processes are
    connected, not how many rebooks wait) and without the keys in `exclude` (broker messages in
    flight), read in one MULTI so that all are of the same moment. Connections are counted by
    CLIENT LIST `tot-mem`: Redis 6.2's `mem_clients_normal` leaves out grown query buffers
    (seen: 100 KB that came and went between two readings)."""
    pipe = r.pipeline(transaction=True)
    pipe.info("memory")
    pipe.client_list()
    for key in exclude:
        pipe.memory_usage(key, samples=0)
    info, clients_list, *sizes = pipe.execute()
    clients = sum(int(c.get("tot-mem", 0)) for c in clients_list)
    excluded = sum(int(size or 0) for size in sizes)
    return {
        "used_memory": int(info["used_memory"]),
        "clients": clients,
        "excluded": excluded,
        "bytes": int(info["used_memory"]) - clients - excluded,
    }


def commandstats(r: redis.Redis) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    for name, value in r.info("commandstats").items():
        stats[name.removeprefix("cmdstat_")] = {
            "calls": float(value["calls"]),
            "usec": float(value["usec"]),
        }
    return stats


def commandstats_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, now in after.items():
        was = before.get(name, {"calls": 0.0, "usec": 0.0})
        calls, usec = now["calls"] - was["calls"], now["usec"] - was["usec"]
        if calls:
            out[name] = {"calls": calls, "usec": usec}
    return out


def _main_thread_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    if "used_cpu_user_main_thread" in info:
        return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class RedisCpuProbe:
    """CPU time of Redis's main thread over a stretch in which only the measured code uses
    Redis (the bench pauses beat and the worker): commands, scripts, parsing and socket I/O.

    Not SLOWLOG: with a threshold of 0, Redis 6.2 also logs every command a script runs, and
    that logging made a script of 17,000 inner commands look twice as slow as it is. The
    command counts come from INFO commandstats (commands run by scripts included)."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._cpu = 0.0
        self._stats: dict[str, dict[str, float]] = {}

    def __enter__(self) -> RedisCpuProbe:
        self._stats = commandstats(self.r)
        self._cpu = _main_thread_cpu(self.r)
        return self

    def read(self) -> dict[str, Any]:
        cpu = _main_thread_cpu(self.r) - self._cpu
        by_cmd = commandstats_delta(self._stats, commandstats(self.r))
        by_cmd.pop("info", None)  # the probe's own
        return {
            "usec": cpu * 1e6,
            "commands": int(sum(v["calls"] for v in by_cmd.values())),
            "by_command": by_cmd,
        }

    def __exit__(self, *exc: object) -> None:
        return None


# --- machine ------------------------------------------------------------------------------------


def rehashing(r: redis.Redis) -> bool | None:
    """Whether Redis is moving its keyspace into a table twice the size (`DEBUG HTSTATS 0`:
    a "rehashing target"); None where DEBUG is refused (Redis 7's `enable-debug-command no`)."""
    try:
        stats = str(r.execute_command("DEBUG", "HTSTATS", "0"))
    except redis.ResponseError:
        return None
    return "rehashing target" in stats


def settle_keyspace(r: redis.Redis, what: str, timeout: float = 120.0) -> dict[str, Any]:
    """Lets a doubling of the keyspace's hash table finish before a measurement of Redis CPU.

    Redis grows its table when the key count passes a power of two (1,000,000 waiting rebooks
    are 2,100,000 keys: just past 2^21) and moves the keys over incrementally, one bucket per
    command that touches the table plus 1 ms per cron tick (10 a second): about 90 s for 2^21
    buckets, during which every command pays for the move (`dictRehash` was 15 % of Redis's
    samples under `perf` in the 1M sweep). That is a one-off cost of growth, not of the sweep:
    `hz` is raised while the move finishes, then restored, and the wait is logged (`what`: whose
    keyspace). Returns whether a move was under way and how long it took to finish."""
    started = time.monotonic()
    state = rehashing(r)
    if not state:
        return {"rehashing": state, "settle_seconds": 0.0}
    hz = str(r.config_get("hz").get("hz") or 10)
    try:
        r.config_set("hz", 500)
        wait_until(lambda: not rehashing(r), timeout, "the keyspace's rehash", 0.2)
    finally:
        r.config_set("hz", hz)
    took = round(time.monotonic() - started, 2)
    log(f"{what}: keyspace table doubled, settled in {took}s")
    return {"rehashing": True, "settle_seconds": took}


def machine_info(r: redis.Redis) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import celery

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "redis": str(r.info("server")["redis_version"]),
        "celery": celery.__version__,
        "os": platform.platform(),
        "mem_total_kb": _kb("/proc/meminfo", "MemTotal"),
    }
