"""Plumbing for the benchmark: child processes, their memory, the sandbox call log, Redis probes."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import redis

from tests.conftest import wait_for
from worker.sandbox import SandboxClient

ROOT = Path(__file__).resolve().parents[2]


def log(msg: str) -> None:
    """Progress on stderr, so stdout stays the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# One poller for tests and bench; its timeout is also a TimeoutError.
wait_until = wait_for


class Proc:
    """A child process in its own session (so its pool children share its process group)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logfile: Path) -> None:
        self.name, self.args, self.env, self.logfile = name, args, env, logfile
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.logfile.open("ab") as handle:
            self.popen = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} not started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group (SIGCONT first, in case it is paused), then SIGKILL what is left."""
        if self.popen is None:
            return
        self.resume()
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # prefork children, if any survived
        self.popen = None


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


def used_memory(r: redis.Redis) -> int:
    """Redis memory without client connection buffers: those follow how many processes are
    connected (a worker's pool children connect lazily), not how many rebooks wait."""
    info = r.info("memory")
    clients = int(info.get("mem_clients_normal", 0)) + int(info.get("mem_clients_slaves", 0))
    return int(info["used_memory"]) - clients


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


class SlowlogProbe:
    """Redis execution time of one client's commands (SLOWLOG with threshold 0, by client name).

    Script-internal commands are inside their EVALSHA's duration, so nothing is counted twice,
    and other clients (workers, beat) are filtered out by name.
    """

    MAX = 100_000

    def __init__(self, r: redis.Redis, client_name: str) -> None:
        self.r = r
        self.client_name = client_name
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> SlowlogProbe:
        self._saved = {
            key: self.r.config_get(key)[key]
            for key in ("slowlog-log-slower-than", "slowlog-max-len")
        }
        self.r.config_set("slowlog-max-len", self.MAX)
        self.r.config_set("slowlog-log-slower-than", 0)
        self.r.slowlog_reset()
        return self

    def read(self) -> dict[str, Any]:
        entries = self.r.slowlog_get(self.MAX)
        mine = [e for e in entries if _name(e.get("client_name")) == self.client_name]
        by_cmd: dict[str, list[int]] = {}
        for e in mine:
            command = e.get("command", b"")
            if isinstance(command, bytes):
                command = command.decode(errors="replace")
            by_cmd.setdefault(str(command).split(" ", 1)[0].upper(), []).append(int(e["duration"]))
        return {
            "commands": len(mine),
            "usec": sum(int(e["duration"]) for e in mine),
            "by_command": {k: {"calls": len(v), "usec": sum(v)} for k, v in by_cmd.items()},
            "log_full": len(entries) >= self.MAX,
        }

    def __exit__(self, *exc: object) -> None:
        for key, value in self._saved.items():
            self.r.config_set(key, value)
        self.r.slowlog_reset()


def _name(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


# --- machine ------------------------------------------------------------------------------------


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
