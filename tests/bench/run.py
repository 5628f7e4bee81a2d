"""`make bench`: rebook against a plain Celery countdown-retry implementation, in one run.

Everything runs on 127.0.0.1: a private redis-server (`EmbeddedRedis`), the sandbox upstream as its
own process, rebook's real worker (prefork) and beat, then the plain Celery worker
(`tests/bench/plain_celery.py`) against the same sandbox and the same Redis server. The two systems
are measured one after the other (never at the same time: the machine may have only 2 cores), with
the same concurrency, intervals and population, and every figure is put side by side.

How each figure is produced (see also `tests/bench/RESULTS.md`):

- intake: events sent by a producer through the broker to the real worker, timed until the last
  record is in Redis; the baseline is an empty task (`bench.noop`) in the same worker, same queue;
- presence, reaction, watching: counted by the sandbox (`GET /_sandbox/calls`, a timestamped call
  log), with the population created through intake (Celery); presence rates are per performer,
  (calls - 1) / (last - first), so a window of a few intervals is not dominated by its edges;
- Redis bytes: `INFO memory used_memory` over the baseline, less client buffers and (rebook)
  the broker's messages in flight, read in one MULTI, divided by the waiting count; points
  above `--waiting` are topped up by writing records directly with `Store.create` (the Lua script
  intake runs). Plain Celery: countdown messages held by its worker (what a waiting rebook is
  between two polls), up to `--plain-max`;
- worker RSS: VmRSS summed over the worker's process tree (main + pool), from /proc;
- sweep: `Flow.sweep()` run by the bench with rebook's Celery dispatcher against the live data,
  beat and worker paused; the CPU time of Redis's main thread over it (INFO cpu), not
  wall-clock.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from cryptography.fernet import Fernet

from rebook_dev.embedded import EmbeddedRedis, free_port
from rebook_dev.sandbox import SandboxClient
from tests.bench import plain_celery
from tests.bench.budget import run_budget
from tests.bench.harness import (
    UNACKED_KEYS,
    CallLog,
    Proc,
    RedisCpuProbe,
    broker_lists,
    commandstats,
    commandstats_delta,
    log,
    machine_info,
    peak_in_window,
    percentile,
    settle_keyspace,
    tree_cpu_seconds,
    tree_memory_kb,
    used_memory,
    wait_until,
)
from tests.bench.latency import latency_markdown, run_latency
from tests.bench.report import budget_rows, build_rows, markdown, million_rows
from tests.integration.conftest import settings_env
from worker.celeryapp.app import EVENTS_QUEUE, WORK_QUEUE, create_app
from worker.celeryapp.dispatch import CeleryDispatcher
from worker.celeryapp.runtime import Services, build_services
from worker.core.flow import Flow
from worker.core.models import TokenSet, from_ts, iso_z
from worker.core.settings import Settings, load_settings
from worker.core.states import State
from worker.core.store import Store, rebook_id_for, store_settings

OURS_PID = 10_000
PLAIN_PID = 20_000
DUE_PID = 99_999
SYNTHETIC_BOOKING = {"ours": 50_000_000, "plain": 60_000_000, "due": 70_000_000}
"""Booking ids of rebooks whose performer never comes online: never sent upstream."""


@dataclass
class Config:
    waiting: int = 10_000
    performers: int = 100
    rebooks_per_member: int = 10
    sizes: list[int] = field(default_factory=lambda: [1_000, 10_000, 100_000])
    plain_max: int = 10_000
    plain_hold: float = 300.0
    presence: float = 2.0
    sweep: float = 0.5
    watch: float = 4.0
    rate: float = 150.0
    """The presence polls of 10,000 rebooks on 100 performers at P = 2 s take 50 calls a second;
    the other 100 carry the POSTs of a performer who comes online (100 rebooks) within the
    goal's "+ 1 s". At 100/s they would have to wait for half the window."""
    lease: float = 8.0  # covers one call: rate-limit wait (lease / 4) + 2 x timeout + 1 s
    online: int = 4
    windows: int = 3
    concurrency: int = 4
    due: list[int] = field(default_factory=lambda: [100, 1_000])
    sweep_reps: int = 3
    noop_max: int = 2_000
    reaction_timeout: float = 25.0
    plain_reaction_timeout: float = 15.0
    seed: int = 5
    no_budget: bool = False
    budget_only: bool = False
    """Only the short-budget phase (tests/bench/budget.py)."""
    million: bool = False
    """Only the memory and sweep phases, up to 1,000,000 waiting (`Bench.million`)."""
    latency: list[int] = field(default_factory=list)
    """Upstream latencies, ms, of the latency phase (tests/bench/latency.py); none: no phase."""
    latency_only: bool = False

    @classmethod
    def quick(cls) -> Config:
        return cls(
            waiting=2_000,
            performers=20,
            sizes=[1_000, 2_000, 10_000],
            plain_max=2_000,
            online=2,
            windows=2,
            sweep_reps=1,
            noop_max=2_000,
            reaction_timeout=20.0,
            plain_reaction_timeout=10.0,
        )


class _Queued:
    """A Store script whose calls go onto a pipeline: `Store.create` builds the arguments as for
    intake, the pipeline sends a chunk at once, the caller checks the answers after `execute`."""

    def __init__(self, script: Any, pipe: Any) -> None:
        self.script, self.pipe = script, pipe

    def __call__(self, keys: list[str], args: list[Any]) -> tuple[str, str]:
        self.script(keys=keys, args=args, client=self.pipe)
        return ("created", "0")  # read from the pipeline's answers instead


DEFAULT_JSON = Path(".rebook/bench.json")

PLAIN_START_WAIT = 20.0
"""Longest wait for plain Celery's tasks to have each polled once (see Bench.plain_send)."""


class Bench:
    def __init__(self, cfg: Config, workdir: Path) -> None:
        self.cfg = cfg
        self.dir = workdir
        self.rng = random.Random(cfg.seed)
        self.procs: list[Proc] = []
        self.results: dict[str, Any] = {"config": asdict(cfg), "ours": {}, "plain": {}}
        self.redis_server: EmbeddedRedis | None = None
        self.bookings: dict[str, dict[int, int]] = {"ours": {}, "plain": {}}
        self.next_k = cfg.waiting
        self.sweep_app: Celery | None = None

    # -- the population ----------------------------------------------------------------------------

    def performer_of(self, k: int, base: int) -> int:
        return base + k % self.cfg.performers

    def member_of(self, k: int, kind: str) -> str:
        """Rebook k belongs to member k // rebooks_per_member: one member never has two rebooks
        on the same performer (those would wait on each other's POST, by design)."""
        return f"{kind[0]}m-{k // self.cfg.rebooks_per_member}"

    def reaction_rebooks(self, first: int = 0) -> list[int]:
        """Rebooks on the `online` performers from index `first` that come online in a reaction
        phase (the burst: 0; one at a time: `online`)."""
        lo, hi = first, first + self.cfg.online
        return [k for k in range(self.cfg.waiting) if lo <= k % self.cfg.performers < hi]

    def booking_of(self, k: int, kind: str) -> int:
        return self.bookings[kind].get(k, SYNTHETIC_BOOKING[kind] + k)

    # -- infrastructure ---------------------------------------------------------------------------

    def start_infra(self) -> None:
        (self.dir / "redis").mkdir()
        self.redis_server = EmbeddedRedis(dir=str(self.dir / "redis")).start()
        self.url = self.redis_server.url
        self.r = redis.Redis.from_url(self.url, decode_responses=True)
        port = free_port()
        self.spawn(
            "sandbox",
            [
                sys.executable,
                "-m",
                "rebook_dev.sandbox",
                "--port",
                str(port),
                "--accept-by",
                "3600",
                "--token-ttl",
                "7200",
            ],
            {},
        )
        self.sandbox_url = f"http://127.0.0.1:{port}"
        self.sandbox = SandboxClient(self.sandbox_url)
        wait_until(self._sandbox_up, 15, "the sandbox", 0.05)
        self.calls = CallLog(self.sandbox)
        self.results["machine"] = machine_info(self.r)
        log(f"redis {self.url}, sandbox {self.sandbox_url}, logs in {self.dir}")

    def _sandbox_up(self) -> bool:
        try:
            self.sandbox.stats()
        except Exception:
            return False
        return True

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, args, {**os.environ, **env}, self.dir / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(timeout=10)
        self.procs.clear()
        if self.redis_server is not None:
            self.redis_server.stop()
            self.redis_server = None

    def cpu_seconds(self) -> float:
        """CPU time used so far by everything this bench started (Redis included)."""
        roots = [p.pid for p in self.procs]
        if self.redis_server is not None and self.redis_server.proc is not None:
            roots.append(self.redis_server.proc.pid)
        return tree_cpu_seconds(roots)

    def queue_idle(self, queues: tuple[str, ...]) -> bool:
        """No message of these queues waits (at any priority) and none is held by a worker."""
        pipe = self.r.pipeline(transaction=False)
        for key in broker_lists(queues):
            pipe.llen(key)
        pipe.hlen("unacked")
        return not any(pipe.execute())

    def task_pending(self, queue: str, task: str) -> bool:
        """A message of `task` still waits in `queue` or runs. Other work may go on: a worker
        holds presence checks that are due within a sweep interval (see `queue_idle`)."""
        if any(self.r.llen(k) for k in broker_lists((queue,))):
            return True
        marker = f'"task": "{task}"'
        return any(marker in v for v in self.r.hvals("unacked"))

    def store_memory(self) -> dict[str, int]:
        """Redis bytes of the store at rest: worker and beat paused for the reading (the
        allocations of requests in progress come and go by 100 KB from one moment to the next),
        without client buffers, and without the broker's messages in flight (steps being run,
        presence checks held for their time: a few per performer, not per waiting rebook)."""
        self.beat.pause()
        self.worker.pause()
        try:
            in_flight = [*broker_lists((EVENTS_QUEUE, WORK_QUEUE)), *UNACKED_KEYS]
            return used_memory(self.r, in_flight)
        finally:
            self.worker.resume()
            self.beat.resume()

    def celery_beat(self, name: str, schedule: str, env: dict[str, str]) -> Proc:
        """rebook's beat, its schedule file in the run's directory."""
        args = [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO"]
        return self.spawn(name, [*args, "-s", str(self.dir / schedule)], env)

    def celery_worker(self, name: str, app: str, queues: str, env: dict[str, str]) -> Proc:
        """A real prefork worker, flags as in the Procfile (`-E`); no mingle/gossip (fast start)."""
        proc = self.spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                app,
                "worker",
                "-Q",
                queues,
                "-c",
                str(self.cfg.concurrency),
                "-P",
                "prefork",
                "-E",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"bench-{name}@%h",
                "-l",
                "INFO",
                *(["-I", "tests.bench.noop"] if app == "worker" else []),
            ],
            env,
        )
        before = proc.text().count(" ready.")
        wait_until(lambda: proc.text().count(" ready.") > before, 60, f"{name} ready", 0.1)
        return proc

    # -- rebook -----------------------------------------------------------------------------------

    def settings(self) -> Settings:
        c = self.cfg
        return load_settings(
            redis_url=self.url,
            broker_url=self.url,
            broker_key_prefix="",
            api_base_url=self.sandbox_url,
            api_key="sandbox-key",
            oauth_token_url=f"{self.sandbox_url}/OAuth/token",
            oauth_client_id="sandbox-client",
            oauth_client_secret="sandbox-secret",
            key_prefix="bench:",
            token_key=Fernet.generate_key().decode(),
            presence_interval_seconds=c.presence,
            watch_interval_seconds=c.watch,
            sweep_interval_seconds=c.sweep,
            step_lease_seconds=c.lease,
            upstream_rate_per_second=c.rate,
            http_timeout_seconds=2.0,
            reconcile_grace_seconds=1.0,
            retry_base_seconds=0.2,
            retry_max_seconds=5.0,
            max_wait_seconds=43200,
            log_format="console",
            log_level="INFO",
            outcome_task=None,
            webhook_url=None,
            sentry_dsn=None,
        )

    def start_ours(self) -> None:
        self.st = self.settings()
        self.svc: Services = build_services(self.st)
        self.store: Store = self.svc.store
        self.producer: Celery = create_app(self.st)
        env = settings_env(self.st)
        self.worker = self.celery_worker(
            "rebook-worker", "worker", f"{EVENTS_QUEUE},{WORK_QUEUE}", env
        )
        self.beat = self.celery_beat("rebook-beat", "beat-schedule", env)
        wait_until(self.store.sweep.last_sweep, 60, "the first sweep", 0.1)
        # The token keep-alive's once-per-deployment index backfill (a SCAN of the whole
        # keyspace) comes with beat's first keep_tokens, 5 minutes in: in the --million run that
        # was during the top-up to 1M and the presence window after it (813 SCAN calls, 3.3 s of
        # Redis time in 10 s). Run it now, before anything waits, as a deployment that has been
        # up 5 minutes has.
        self.producer.send_task("rebook.keep_tokens", queue=WORK_QUEUE)
        marker = f"{self.svc.token_store.records.index_key}:indexed"
        wait_until(lambda: self.r.exists(marker), 60, "the token index backfill", 0.1)
        log(f"rebook worker (prefork -c {self.cfg.concurrency}) and beat are up")

    def intake_and_memory(self, out: dict[str, Any]) -> int:
        """The baseline (Redis, worker RSS), then each intake batch through Celery with its
        memory point; returns the baseline's Redis bytes."""
        time.sleep(1.0)  # a measuring pause: the worker settles before the baseline is read
        base = self.store_memory()
        out["baseline"] = {
            "used_memory": base,
            "worker": tree_memory_kb(self.worker.pid),
            "redis_info_memory": self.r.info("memory"),
        }
        out["points"] = []
        out["intake"] = []
        done = 0
        for size in self.intake_batches():
            out["intake"].append(self.intake(done, size))
            done = size
            out["points"].append(self.memory_point(size, base["bytes"], "Celery intake"))
        return int(base["bytes"])

    def ours(self) -> None:
        out = self.results["ours"]
        cfg = self.cfg
        out["noop"] = self.noop_rate(min(cfg.noop_max, max(self.intake_batches())))
        self.members_ours()
        base_mem = self.intake_and_memory(out)
        # the same no-op batch with what the intake ran beside: presence polls for everyone waiting
        out["noop_loaded"] = self.noop_rate(min(cfg.noop_max, max(self.intake_batches())), True)
        pids = {OURS_PID + i for i in range(cfg.performers)}
        out["presence"] = self.presence_window(pids, cfg.waiting, cfg.windows * cfg.presence)
        out["reaction"] = self.reaction("ours", OURS_PID)
        out["watch"] = self.watch_window("ours", out["reaction"]["new_bookings"])
        self.finish_watching(out["reaction"]["new_bookings"])
        out["reaction_single"] = self.reaction("ours", OURS_PID, first=cfg.online, single=True)
        self.finish_watching(out["reaction_single"]["new_bookings"])
        for i in range(2 * cfg.online):
            self.sandbox.set_online(OURS_PID + i, False)
        time.sleep(1.0)
        out["rss_after_reaction"] = {
            "waiting": self.waiting_count(),
            "worker": tree_memory_kb(self.worker.pid),
        }
        self.grow(out, base_mem, pids)
        out["presence_min_gap"] = self.min_presence_gap(pids)
        stats = self.sandbox.stats()
        out["upstream_calls"] = stats["calls"]
        out["new_bookings_max_per_original"] = max(stats["new_bookings"].values(), default=0)
        out["deadletter"] = int(self.store.sweep.stats()["deadletter"])
        out["states"] = self.store.sweep.stats()["states"]

    def grow(self, out: dict[str, Any], base_mem: int, pids: set[int]) -> None:
        """The sweep at what waits now, then each larger size topped up with `Store.create`:
        Redis bytes, presence polling and worker RSS with that many waiting, and the sweep."""
        cfg = self.cfg
        larger = sorted(s for s in set(cfg.sizes) if s > cfg.waiting)
        out["sweep"] = [self.measure_sweep(repeat=not larger)]
        for size in larger:
            t0 = time.monotonic()
            self.top_up(size)
            created = time.monotonic() - t0
            point = self.memory_point(size, base_mem, "Store.create top-up")
            point["create_seconds"] = round(created, 2)
            log(f"top-up to {size}: {created:.0f}s")
            # the worker keeps polling with this many waiting: its memory must stay flat
            time.sleep(cfg.presence + 1)
            point["presence"] = self.presence_window(
                pids, self.waiting_count(), cfg.windows * cfg.presence
            )
            point["worker"] = tree_memory_kb(self.worker.pid)
            out["points"].append(point)
            out["sweep"].append(self.measure_sweep(repeat=size == larger[-1]))
        out["memory_breakdown"] = self.memory_breakdown()

    def million(self) -> None:
        """`--million`: the memory and sweep phases alone, up to 1,000,000 waiting.

        The sizes up to `--waiting` come through Celery intake as in the whole run; the worker
        polls them (its RSS then is the start of the growth figure); every larger size is topped
        up with `Store.create` and measured as in the whole run (`grow`). No reaction, watching,
        plain Celery or short-budget phase."""
        out = self.results["ours"]
        cfg = self.cfg
        self.members_ours(bookings=False)
        base_mem = self.intake_and_memory(out)
        pids = {OURS_PID + i for i in range(cfg.performers)}
        out["presence"] = self.presence_window(pids, cfg.waiting, cfg.windows * cfg.presence)
        out["rss_after_reaction"] = {  # the growth figure's start, as in the whole run
            "waiting": self.waiting_count(),
            "worker": tree_memory_kb(self.worker.pid),
        }
        self.grow(out, base_mem, pids)
        out["presence_min_gap"] = self.min_presence_gap(pids)
        out["deadletter"] = int(self.store.sweep.stats()["deadletter"])
        out["states"] = self.store.sweep.stats()["states"]

    def intake_batches(self) -> list[int]:
        return sorted({s for s in self.cfg.sizes if s < self.cfg.waiting} | {self.cfg.waiting})

    def noop_rate(self, n: int, busy: bool = False) -> dict[str, Any]:
        """`bench.noop` through the same broker, queue and worker: the intake ceiling. `busy`:
        the worker keeps polling presence meanwhile, so only the event queue must be empty."""
        if busy:
            wait_until(lambda: not self.r.llen(EVENTS_QUEUE), 30, "an empty event queue")
        else:
            wait_until(lambda: self.queue_idle((EVENTS_QUEUE, WORK_QUEUE)), 30, "idle queues")
        t0 = time.time()
        for i in range(n):
            self.producer.send_task("bench.noop", kwargs={"i": i}, queue=EVENTS_QUEUE)
        sent = time.time()
        wait_until(
            lambda: not self.task_pending(EVENTS_QUEUE, "bench.noop"),
            60 + n / 20,
            "no-op tasks",
            0.01,
        )
        end = time.time()
        log(f"no-op: {n} tasks in {end - t0:.1f}s ({n / (end - t0):.0f}/s)")
        return {
            "n": n,
            "send_seconds": sent - t0,
            "seconds": end - t0,
            "per_second": n / (end - t0),
        }

    def members_ours(self, bookings: bool = True) -> None:
        """Tokens for every member; real upstream bookings for the rebooks that will POST."""
        members = {self.member_of(k, "ours") for k in range(self.cfg.waiting)}
        now = time.time()
        for user in sorted(members):
            answer = self.sandbox.add_user(user)
            self.svc.token_store.save(user, TokenSet.from_token_response(answer, now))
        posting = self.reaction_rebooks() + self.reaction_rebooks(self.cfg.online)
        for k in posting if bookings else []:
            self.bookings["ours"][k] = self.sandbox.add_booking(
                self.member_of(k, "ours"), self.performer_of(k, OURS_PID)
            )
        log(f"{len(members)} members with tokens, {len(self.bookings['ours'])} upstream bookings")

    def intake(self, start: int, end: int) -> dict[str, Any]:
        """Events through the broker to the worker: time until the last record is durable."""
        created_key = self.skey("created")
        before = int(self.r.zcard(created_key))
        t0 = time.time()
        for k in range(start, end):
            self.producer.send_task(
                "rebook.request",
                kwargs={
                    "event_id": f"bench-{k}",
                    "booking_id": self.booking_of(k, "ours"),
                    "user_id": self.member_of(k, "ours"),
                    "performer_id": self.performer_of(k, OURS_PID),
                },
                queue=EVENTS_QUEUE,
            )
        sent = time.time()
        n = end - start
        wait_until(
            lambda: int(self.r.zcard(created_key)) - before >= n,
            60 + n / 20,
            f"{n} records",
            0.01,
        )
        done = time.time()
        log(f"intake: {n} events in {done - t0:.1f}s ({n / (done - t0):.0f}/s)")
        return {
            "n": n,
            "send_seconds": sent - t0,
            "seconds": done - t0,
            "per_second": n / (done - t0),
        }

    def skey(self, *parts: object) -> str:
        """A key of the store's (only) shard: the bench runs rebook unsharded."""
        return self.store.skey(0, *parts)

    def waiting_count(self) -> int:
        return int(self.r.scard(self.skey("st", State.WAITING.value)))

    def memory_point(self, n: int, base_mem: int, how: str) -> dict[str, Any]:
        wait_until(
            lambda: not self.task_pending(EVENTS_QUEUE, "rebook.request"), 60, "intake drained"
        )
        mem = self.store_memory()
        waiting = self.waiting_count()
        point: dict[str, Any] = {
            "n": n,
            "waiting": waiting,
            "how": how,
            "used_memory": mem,
            "bytes_per_waiting": (mem["bytes"] - base_mem) / max(1, waiting),
            "worker": tree_memory_kb(self.worker.pid),
            "redis_info_memory": self.r.info("memory"),
        }
        log(
            f"{waiting} waiting: {point['bytes_per_waiting']:.0f} B/rebook in Redis, worker "
            f"RSS {point['worker']['rss_kb'] / 1024:.1f} MB"
        )
        return point

    def memory_breakdown(self, sample: int = 200) -> dict[str, Any]:
        """Where a waiting rebook's bytes go: `MEMORY USAGE` per key kind (sampled: record,
        booking marker; the history and event keys a waiting rebook does not have), per index
        entry (the whole index over its entries), the main keyspace's bucket array (MEMORY STATS:
        the one part of a key that MEMORY USAGE leaves out), and each kind's type and encoding.
        Read with worker and beat paused; `MEMORY USAGE ... SAMPLES 0` walks every element of
        the large indexes (a few hundred ms at 1M)."""
        self.beat.pause()
        self.worker.pause()
        try:
            return self._memory_breakdown(sample)
        finally:
            self.worker.resume()
            self.beat.resume()

    def _memory_breakdown(self, sample: int) -> dict[str, Any]:
        waiting = self.waiting_count()
        ids: list[str] = list(self.r.srandmember(self.skey("st", State.WAITING.value), sample))  # type: ignore[arg-type]
        per: dict[str, list[int]] = {"record": [], "history": [], "event": [], "active": []}
        absent: Counter[str] = Counter()
        users: set[str] = set()
        kinds: dict[str, str] = {}
        for rid in ids:
            rec = self.store.records.get(rid)
            if rec is None:
                continue
            users.add(rec.user_id)
            for kind, key in (
                ("record", self.skey("r", rid)),
                ("history", self.skey("h", rid)),
                ("event", self.store.key("ev", rec.event_id)),
                ("active", self.skey("active", rec.booking_id)),
            ):
                size = self.r.memory_usage(key, samples=0)
                if size is None:
                    absent[kind] += 1
                elif kind not in kinds:
                    kinds[kind] = f"{self.r.type(key)!s}/{self.r.object('encoding', key)!s}"
                per[kind].append(int(size or 0))
        out: dict[str, Any] = {k: sum(v) / max(1, len(v)) for k, v in per.items()}

        def per_entry(name: str, keys: list[str]) -> float:
            size = sum(int(self.r.memory_usage(k, samples=0) or 0) for k in keys)
            pipe = self.r.pipeline(transaction=False)
            for k in keys:
                pipe.type(k)
            types = pipe.execute()
            count = 0
            for k, t in zip(keys, types, strict=True):
                count += int(self.r.zcard(k) if t == "zset" else self.r.scard(k))
            kinds[name] = f"{types[0]}/{self.r.object('encoding', keys[0])}"
            return size / max(1, count)

        perf_keys = [self.skey("perf", OURS_PID + i) for i in range(self.cfg.performers)]
        out["due_entry"] = per_entry("due_entry", [self.skey("due")])
        out["created_entry"] = per_entry("created_entry", [self.skey("created")])
        out["state_set_entry"] = per_entry(
            "state_set_entry", [self.skey("st", State.WAITING.value)]
        )
        out["performer_set_entry"] = per_entry("performer_set_entry", perf_keys)
        out["member_set_entry"] = per_entry(
            "member_set_entry", [self.skey("user", u) for u in sorted(users)]
        )
        out["sum"] = sum(v for v in out.values())
        stats = self.r.memory_stats()
        db = stats.get("db.0", {})
        keys = int(stats.get("keys.count", 0))
        main = int(db.get("overhead.hashtable.main", 0))
        # MEMORY STATS counts a key as dictEntry + robj + its bucket pointer; MEMORY USAGE already
        # has the first two, so only the bucket array is new here (a power of two >= the keys)
        buckets = max(0, main - keys * (24 + 16))
        out["main_dict_buckets_per_waiting"] = buckets / max(1, waiting)
        out["keys_per_waiting"] = keys / max(1, waiting)
        out["accounted"] = out["sum"] + out["main_dict_buckets_per_waiting"]
        out["memory_stats"] = {
            k: v for k, v in stats.items() if not isinstance(v, dict) and k != "db.0"
        } | {"db.0": db}
        out["encodings"] = kinds
        out["waiting"] = waiting
        out["sampled"] = len(per["record"])
        out["absent_keys"] = dict(absent)
        return out

    def presence_window(self, pids: set[int], waiting: int, seconds: float) -> dict[str, Any]:
        """Presence calls for `pids` over a window, with `waiting` rebooks waiting on them.

        The rate per performer is (calls - 1) / (last - first) per performer, summed over
        performers: a window a few intervals long holds 2-4 calls per performer, too few to count
        whole intervals without the window's edges dominating.
        """
        s0 = self.calls.sync()
        cs0 = commandstats(self.r)
        t0 = time.time()
        time.sleep(seconds)
        times: dict[int, list[float]] = {}
        while True:  # until most performers were called twice (bounded: 3 x the window)
            s1 = self.calls.sync()
            times.clear()
            for r in self.calls.between(s0, s1):
                if r["op"] == "getUserSummary" and r["performer_id"] in pids:
                    times.setdefault(r["performer_id"], []).append(r["t"])
            twice = sum(1 for v in times.values() if len(v) > 1)
            if twice >= 0.9 * len(pids) or time.time() - t0 > 3 * seconds:
                break
            time.sleep(self.cfg.presence / 2)
        span = time.time() - t0
        cs = commandstats_delta(cs0, commandstats(self.r))
        calls = sum(len(v) for v in times.values())
        gaps = [b - a for v in times.values() for a, b in itertools.pairwise(v)]
        spans = sum(v[-1] - v[0] for v in times.values() if len(v) > 1)
        per_performer_rate = (len(gaps) / spans) if spans > 0 else 0.0  # calls/s per performer
        busiest = max(
            ((len(v) - 1) / (v[-1] - v[0]) for v in times.values() if len(v) > 1 and v[-1] > v[0]),
            default=0.0,
        )
        p = self.cfg.presence
        total_rate = per_performer_rate * len(pids)
        result = {
            "waiting": waiting,
            "performers": len(pids),
            "seconds": span,
            "calls": calls,
            "calls_per_second": total_rate,
            "per_rebook_per_hour": total_rate * 3600 / max(1, waiting),
            "per_performer_per_interval": per_performer_rate * p,
            "busiest_per_interval": busiest * p,
            "min_gap_seconds": min(gaps, default=None),
            "demanded_per_second_if_one_per_rebook": waiting / p,
            "redis_commandstats": cs,
        }
        log(
            f"presence @{waiting}: {calls} calls in {span:.1f}s = "
            f"{result['per_rebook_per_hour']:.2f}/rebook/h, "
            f"{result['per_performer_per_interval']:.2f}/performer/interval"
        )
        return result

    def min_presence_gap(self, pids: set[int]) -> dict[str, Any]:
        """Over the whole run: the shortest time between two presence calls of one performer."""
        last: dict[int, float] = {}
        gaps: list[float] = []
        for r in self.calls.rows:
            if r["op"] != "getUserSummary" or r["performer_id"] not in pids:
                continue
            pid = r["performer_id"]
            if pid in last:
                gaps.append(r["t"] - last[pid])
            last[pid] = r["t"]
        return {
            "min_seconds": min(gaps, default=None),
            "p01_seconds": percentile(gaps, 1),
            "gaps": len(gaps),
            "lost_log_entries": self.calls.lost,
        }

    # Long on purpose: one measurement, read top to bottom (set up, burst, one at a time,
    # collect); splitting it would scatter the timing it depends on.
    def reaction(
        self, kind: str, base: int, first: int = 0, single: bool = False
    ) -> dict[str, Any]:
        """Performers come online at random moments; time to each of their rebooks' POST.

        The burst (`single` False): one after another, 0.75 P + up to P apart, so their POSTs
        overlap. One at a time (`single`): each after the previous one's POSTs are all out, at
        a random moment within P (any phase of the presence polling)."""
        cfg = self.cfg
        ks = self.reaction_rebooks(first)
        bookings = {self.booking_of(k, kind): k for k in ks}
        online_at: dict[int, float] = {}
        s0 = self.calls.sync()
        cpu0, wall0 = self.cpu_seconds(), time.monotonic()
        start = time.time()
        order = list(range(first, first + cfg.online))
        self.rng.shuffle(order)
        posted: dict[int, float] = {}
        new_bookings: dict[int, int] = {}
        attempts: Counter[int] = Counter()
        seen: set[int] = set()

        def all_posted(pids: set[int] | None = None) -> bool:
            self.calls.sync()
            for r in self.calls.between(s0, self.calls.next):
                if r["op"] != "RescheduleMadeBooking" or r["booking_id"] not in bookings:
                    continue
                if r["seq"] in seen:
                    continue
                seen.add(r["seq"])
                attempts[r["booking_id"]] += 1
                if r["status"] == 200 and r["booking_id"] not in posted:
                    posted[r["booking_id"]] = r["t"]
                    new_bookings[r["new_booking_id"]] = r["booking_id"]
            return all(
                b in posted
                for b, k in bookings.items()
                if pids is None or self.performer_of(k, base) in pids
            )

        # plain Celery is saturated: a shorter bound shows that as well and saves the run time
        timeout = cfg.reaction_timeout if kind == "ours" else cfg.plain_reaction_timeout
        timed_out = False
        try:
            if single:
                for idx in order:
                    time.sleep(self.rng.uniform(0, cfg.presence))
                    self.sandbox.set_online(base + idx, True)
                    online_at[base + idx] = time.time()
                    wait_until(
                        lambda pid=base + idx: all_posted({pid}),
                        timeout,
                        f"{kind} POSTs of performer {base + idx}",
                        0.1,
                    )
            else:
                gap = max(1.0, 0.75 * cfg.presence)
                target = start
                for i, idx in enumerate(order):
                    # each gap is `gap` + up to P (the earlier form, i * gap + up to P from the
                    # start, let two performers come online at the same moment)
                    target += (gap if i else 0.0) + self.rng.uniform(0, cfg.presence)
                    time.sleep(max(0.0, target - time.time()))
                    self.sandbox.set_online(base + idx, True)
                    online_at[base + idx] = time.time()
                wait_until(all_posted, timeout, f"{kind} reschedule POSTs", 0.25)
        except TimeoutError:
            timed_out = True
        end_seq = self.calls.sync()
        latencies: list[float] = []
        by_performer: dict[int, list[float]] = {}
        for b, t in posted.items():
            pid = self.performer_of(bookings[b], base)
            latency = t - online_at[pid]
            latencies.append(latency)
            by_performer.setdefault(pid, []).append(latency)
        t_first = min(online_at.values())
        t_last = max(posted.values(), default=time.time())
        window = [
            r["t"]
            for r in self.calls.between(s0, end_seq)
            if r["op"] != "token" and t_first <= r["t"] <= t_last + 1.0
        ]
        result: dict[str, Any] = {
            "rebooks": len(bookings),
            "posted": len(posted),
            "timed_out": timed_out,
            "timeout_seconds": timeout,
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": max(latencies, default=None),
            "per_performer": {
                str(pid): {
                    "first": min(v),
                    "last": max(v),
                    "drain": max(v) - min(v),
                    "posted": len(v),
                }
                for pid, v in sorted(by_performer.items())
            },
            "first_post_per_performer": sorted(min(v) for v in by_performer.values()),
            "post_attempts": sum(attempts.values()),
            "post_attempts_max_per_rebook": max(attempts.values(), default=0),
            "upstream_peak_1s": peak_in_window(window, 1.0),
            "upstream_peak_5s_per_second": peak_in_window(window, 5.0) / 5.0,
            "upstream_calls_in_burst": len(window),
            "burst_seconds": t_last + 1.0 - t_first,
            "cpu_cores_busy": (self.cpu_seconds() - cpu0) / (time.monotonic() - wall0),
            "single": single,
            "new_bookings": {str(new): orig for new, orig in new_bookings.items()},
            "latencies": sorted(round(x, 4) for x in latencies),
        }
        log(
            f"reaction {kind}{' one at a time' if single else ''}: "
            f"{len(posted)}/{len(bookings)} posted, "
            f"p50 {_s(result['p50'])} p99 {_s(result['p99'])}, "
            f"peak {result['upstream_peak_1s']} calls/1s"
        )
        return result

    def watch_window(self, kind: str, new_bookings: dict[str, int]) -> dict[str, Any]:
        """Status reads of the new (Pending) bookings over whole watch intervals."""
        cfg = self.cfg
        watched = {int(b) for b in new_bookings}
        orig_to_k = {self.booking_of(k, kind): k for k in self.reaction_rebooks()}
        members = {self.member_of(orig_to_k[orig], kind) for orig in new_bookings.values()}
        time.sleep(cfg.watch / 2)  # the first read right after the POST is not a steady interval
        s0 = self.calls.sync()
        t0 = time.time()
        time.sleep(max(2, cfg.windows - 1) * cfg.watch)
        s1 = self.calls.sync()
        span = time.time() - t0
        rows = self.calls.between(s0, s1)
        details = sum(
            1 for r in rows if r["op"] == "MadeBookingDetails" and r["booking_id"] in watched
        )
        made = sum(1 for r in rows if r["op"] == "MadeBookings")
        intervals = span / cfg.watch
        result = {
            "watched": len(watched),
            "members": len(members),
            "seconds": span,
            "details_calls": details,
            "made_bookings_calls": made,
            "details_per_booking_per_interval": details / max(1, len(watched)) / intervals,
            "made_bookings_per_member_per_interval": made / max(1, len(members)) / intervals,
            "calls_per_member_per_interval": (details + made) / max(1, len(members)) / intervals,
            "calls_per_booking_per_interval": (details + made) / max(1, len(watched)) / intervals,
        }
        log(
            f"watch {kind}: {len(watched)} bookings of {len(members)} members: "
            f"{result['details_per_booking_per_interval']:.2f} details/booking/interval, "
            f"{result['made_bookings_per_member_per_interval']:.2f} MadeBookings/member/interval"
        )
        return result

    def finish_watching(self, new_bookings: dict[str, int]) -> None:
        for b in new_bookings:
            self.sandbox.set_status(int(b), "Accepted")

        def settled() -> bool:
            pipe = self.r.pipeline(transaction=False)
            for state in (State.WATCHING, State.RESCHEDULING):
                pipe.scard(self.skey("st", state.value))
            return not any(pipe.execute())

        wait_until(settled, 3 * self.cfg.watch + 30, "watched rebooks to finish", 0.1)
        self.expire_all_finished()

    def expire_all_finished(self) -> None:
        """Drops finished records (housekeeping with the clock past their retention)."""
        future = time.time() + self.store.retention + 60
        while self.store.sweep.expire_finished(future):
            pass

    def top_up(self, end: int) -> None:
        """Writes waiting records with `Store.create` (intake's Lua script) up to `end` waiting:
        each call's arguments are Store.create's own, its script queued on a pipeline of 1,000
        (one round trip per chunk instead of per record; `_Queued`)."""
        log(f"writing {end - self.waiting_count()} waiting records directly (Store.create) ...")
        now = time.time()

        def create(chunk: range) -> None:
            pipe = self.store.r.pipeline(transaction=False)
            records = copy.copy(self.store.records)
            records._create = _Queued(self.store.records._create, pipe)
            for j in chunk:
                records.create(
                    rebook_id=rebook_id_for(f"bench-{j}"),
                    event_id=f"bench-{j}",
                    booking_id=SYNTHETIC_BOOKING["ours"] + j,
                    user_id=self.member_of(j, "ours"),
                    performer_id=self.performer_of(j, OURS_PID),
                    deadline=now + 43200,
                    now=now,
                )
            answers = pipe.execute()
            refused = [a for a in answers if a[0] != "created"]
            assert not refused, f"Store.create refused {len(refused)}: {refused[:3]}"

        with ThreadPoolExecutor(2) as pool:
            while (missing := end - self.waiting_count()) > 0:
                first = self.next_k
                self.next_k += missing
                chunks = [
                    range(i, min(i + 1000, self.next_k)) for i in range(first, self.next_k, 1000)
                ]
                list(pool.map(create, chunks))

    # -- the sweep ------------------------------------------------------------------------------

    def make_due(self, kind: str, n: int, tag: str) -> list[str]:
        """`n` overdue rebooks: WATCHING ones due for their next read (the sweep dispatches them),
        or WAITING ones past their max wait (the sweep moves them to GAVE_UP)."""
        now = time.time()
        ids = []
        for i in range(n):
            eid = f"due-{tag}-{i}"
            rid = rebook_id_for(eid)
            ids.append(rid)
            self.store.records.create(
                rebook_id=rid,
                event_id=eid,
                booking_id=SYNTHETIC_BOOKING["due"] + self.next_k + i,
                user_id=f"due-{i % 100}",
                performer_id=DUE_PID,
                deadline=now - 1 if kind == "gave_up" else now + 43200,
                now=now - 2,
            )
            if kind == "watching":
                self.store.transitions.transition(
                    rid, State.RESCHEDULING, from_=[State.WAITING], reason="bench", due=now + 600
                )
                self.store.transitions.transition(
                    rid,
                    State.WATCHING,
                    from_=[State.RESCHEDULING],
                    reason="booked",
                    fields={
                        "new_booking_id": 90_000_000 + self.next_k + i,
                        "accept_by_ts": now + 3600,
                        "accept_by": iso_z(from_ts(now + 3600)),
                        "status": "Pending",
                    },
                    due=now - 1,
                )
        self.next_k += n
        return ids

    def measure_sweep(self, repeat: bool) -> dict[str, Any]:
        """One sweep with `due` overdue rebooks among the waiting ones; its Redis CPU time.

        Beat and the worker are paused (after the worker has run what it held), and the sweep
        runs here with rebook's real Flow and Celery dispatcher, so Redis's CPU time over the
        sweep (`RedisCpuProbe`) is that of the sweep alone: its Lua, its reads, its transitions,
        its dispatches and their socket I/O. With `repeat`, the largest due count is measured
        `sweep_reps` times and the median kept. Redis first finishes any doubling of its keyspace
        table (`settle_keyspace`: a one-off of growth, which would tax every command measured).
        """
        self.beat.pause()
        wait_until(lambda: self.queue_idle((WORK_QUEUE,)), 20, "the worker to go idle", 0.05)
        self.worker.pause()
        client = redis.Redis.from_url(self.url, decode_responses=True, client_name="bench-sweep")
        if self.sweep_app is None:
            self.sweep_app = create_app(self.st)
            self.sweep_app.conf.broker_transport_options = {
                **self.sweep_app.conf.broker_transport_options,
                "client_name": "bench-sweep",
            }
        app = self.sweep_app
        try:
            store = Store(client, **store_settings(self.st))
            flow = Flow(self.st, store, self.svc.client, self.svc.tokens, CeleryDispatcher(app))
            waiting = self.waiting_count()
            settled = settle_keyspace(self.r, f"sweep @{waiting}")
            runs = []
            for kind in ("watching", "gave_up"):
                for n_due in self.cfg.due:
                    reps = []
                    reps_wanted = (
                        self.cfg.sweep_reps if repeat and n_due == max(self.cfg.due) else 1
                    )
                    for rep in range(reps_wanted):
                        ids = self.make_due(kind, n_due, f"{waiting}-{kind}-{n_due}-{rep}")
                        with RedisCpuProbe(self.r) as probe:
                            t0 = time.perf_counter()
                            counts = flow.sweep()
                            wall = time.perf_counter() - t0
                            redis_time = probe.read()
                        self.r.delete(WORK_QUEUE)  # nudges for a paused worker: not needed
                        for rid in ids:
                            self.store.transitions.transition(
                                rid, State.ABORTED, from_=[State.WATCHING], reason="bench"
                            )
                        self.expire_all_finished()
                        reps.append(
                            {
                                "counts": counts,
                                "redis_ms": redis_time["usec"] / 1000,
                                "redis_commands": redis_time["commands"],
                                "redis_by_command": redis_time["by_command"],
                                "wall_ms": wall * 1000,
                            }
                        )
                    median = sorted(reps, key=lambda x: x["redis_ms"])[len(reps) // 2]
                    runs.append(
                        {
                            "kind": kind,
                            "due": n_due,
                            "waiting": waiting,
                            **median,
                            "reps_redis_ms": [x["redis_ms"] for x in reps],
                        }
                    )
                    log(
                        f"sweep @{waiting} waiting, {n_due} due ({kind}): "
                        f"{median['redis_ms']:.1f} ms Redis ({median['redis_commands']} commands), "
                        f"{median['wall_ms']:.0f} ms wall, {median['counts']}"
                    )
            return {"waiting": waiting, "runs": runs, **settled}
        finally:
            client.close()
            self.worker.resume()
            self.beat.resume()

    # -- plain Celery ---------------------------------------------------------------------------

    def plain_env(self) -> dict[str, str]:
        return {
            "PLAIN_BROKER_URL": self.url,
            "PLAIN_REDIS_URL": self.url,
            "PLAIN_API_BASE_URL": self.sandbox_url,
            "PLAIN_API_KEY": "sandbox-key",
            "PLAIN_API_KEY_HEADER": "apiKey",
        }

    def plain(self) -> None:
        cfg = self.cfg
        out = self.results["plain"]
        self.pproducer = Celery("plain-producer", broker=self.url)
        self.pproducer.conf.update(task_serializer="json", accept_content=["json"])
        self.pworker = self.celery_worker(
            "plain-worker", "tests.bench.plain_celery", plain_celery.QUEUE, self.plain_env()
        )
        log(f"plain Celery worker (prefork -c {cfg.concurrency}) is up")
        for k in self.reaction_rebooks():
            user = self.member_of(k, "plain")
            key = plain_celery.TOKEN_KEY.format(user_id=user)
            if not self.r.exists(key):
                self.r.set(key, self.sandbox.add_user(user)["access_token"])
            self.bookings["plain"][k] = self.sandbox.add_booking(
                user, self.performer_of(k, PLAIN_PID)
            )
        time.sleep(1.0)
        base_mem = used_memory(self.r)["bytes"]
        out["baseline"] = {"used_memory": base_mem, "worker": tree_memory_kb(self.pworker.pid)}
        # Memory: between two polls a plain Celery rebook is one countdown (ETA) message that the
        # worker holds; `plain_hold` seconds is long enough that none fires while we measure. The
        # held messages live in the main process: the pool processes run nothing meanwhile.
        out["points"] = []
        out["hold_intake"] = []
        done = 0
        for size in sorted(s for s in set(cfg.sizes) if s <= cfg.plain_max):
            out["hold_intake"].append(self.plain_hold(done, size))
            done = size
            out["points"].append(self.plain_point(size, base_mem))
        # Presence, reaction, watching: a fresh worker and population at P, like rebook's.
        self.stop(self.pworker)
        self.r.delete(plain_celery.QUEUE, "unacked", "unacked_index", plain_celery.STARTED)
        self.pworker = self.celery_worker(
            "plain-worker", "tests.bench.plain_celery", plain_celery.QUEUE, self.plain_env()
        )
        out["intake"] = [self.plain_send(0, cfg.waiting, cfg.presence)]
        pids = {PLAIN_PID + i for i in range(cfg.performers)}
        out["presence"] = self.presence_window(pids, cfg.waiting, cfg.windows * cfg.presence)
        out["reaction"] = self.reaction("plain", PLAIN_PID)
        out["watch"] = self.watch_window("plain", out["reaction"]["new_bookings"])
        out["rss_polling"] = {"waiting": cfg.waiting, "worker": tree_memory_kb(self.pworker.pid)}
        out["presence_min_gap"] = self.min_presence_gap(pids)
        self.stop(self.pworker)

    def plain_hold(self, start: int, end: int) -> dict[str, Any]:
        """plain.rebook messages sent with a countdown: what a waiting plain rebook is between
        two polls (its `self.retry(countdown=...)` message), held by the worker until due."""
        t0 = time.time()
        for k in range(start, end):
            self.pproducer.send_task(
                "plain.rebook",
                kwargs={
                    "booking_id": self.booking_of(k, "plain"),
                    "user_id": self.member_of(k, "plain"),
                    "performer_id": self.performer_of(k, PLAIN_PID),
                    "interval": self.cfg.plain_hold,
                    "watch_interval": self.cfg.watch,
                },
                queue=plain_celery.QUEUE,
                countdown=self.cfg.plain_hold,
            )
        wait_until(
            lambda: int(self.r.hlen("unacked")) >= end and self.r.llen(plain_celery.QUEUE) == 0,
            60 + (end - start) / 50,
            f"{end} countdown messages held by the plain worker",
            0.05,
        )
        done = time.time()
        log(f"plain: {end - start} countdown messages held after {done - t0:.1f}s")
        return {"n": end - start, "seconds": done - t0}

    def plain_send(self, start: int, end: int, interval: float) -> dict[str, Any]:
        """Sends plain.rebook tasks; waits until each ran once (it then waits in a countdown)."""
        before = int(self.r.get(plain_celery.STARTED) or 0)
        t0 = time.time()
        for k in range(start, end):
            self.pproducer.send_task(
                "plain.rebook",
                kwargs={
                    "booking_id": self.booking_of(k, "plain"),
                    "user_id": self.member_of(k, "plain"),
                    "performer_id": self.performer_of(k, PLAIN_PID),
                    "interval": interval,
                    "watch_interval": self.cfg.watch,
                },
                queue=plain_celery.QUEUE,
            )
        n = end - start

        def started() -> int:
            return int(self.r.get(plain_celery.STARTED) or 0) - before

        # Every task polls once and then waits in a countdown. Plain Celery is saturated long
        # before all have started at this size (its first round alone takes minutes on 2 cores),
        # and what is measured next (calls per second, RSS) is the same saturated state either
        # way: so wait for all, or at most PLAIN_START_WAIT seconds.
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: started() >= n, PLAIN_START_WAIT, f"{n} plain tasks to start", 0.05)
        done = time.time()
        ran = started()
        log(f"plain: {ran}/{n} rebook tasks (countdown {interval:g}s) started in {done - t0:.1f}s")
        return {
            "n": n,
            "started": ran,
            "interval": interval,
            "seconds": done - t0,
            "per_second": ran / (done - t0),
        }

    def plain_point(self, n: int, base_mem: int) -> dict[str, Any]:
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: self.r.llen(plain_celery.QUEUE) == 0, 30, "plain queue", 0.1)
        time.sleep(1.0)
        mem = used_memory(self.r)["bytes"]
        point: dict[str, Any] = {
            "n": n,
            "waiting": n,
            "how": "countdown messages held by the worker",
            "used_memory": mem,
            "bytes_per_waiting": (mem - base_mem) / n,
            "worker": tree_memory_kb(self.pworker.pid),
            "redis_info_memory": self.r.info("memory"),
            "queue_len": int(self.r.llen(plain_celery.QUEUE)),
            "held_by_worker": int(self.r.hlen("unacked")),
        }
        log(
            f"plain {n} waiting: {point['bytes_per_waiting']:.0f} B/rebook in Redis, worker "
            f"RSS {point['worker']['rss_kb'] / 1024:.1f} MB, {point['held_by_worker']} held"
        )
        return point

    # -- the whole run --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.time()
        self.results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
        self.start_infra()
        if self.cfg.budget_only:
            self.pproducer = Celery("plain-producer", broker=self.url)
            self.pproducer.conf.update(task_serializer="json", accept_content=["json"])
            self.results["budget"] = run_budget(self)
            self.results["elapsed_seconds"] = time.time() - started
            self.results["rows"] = budget_rows(self.results)
            return self.results
        if self.cfg.latency_only:
            self.results["latency"] = run_latency(self, self.cfg.latency or [0, 50, 200])
            self.results["elapsed_seconds"] = time.time() - started
            self.results["rows"] = []
            return self.results
        self.start_ours()
        if self.cfg.million:
            self.million()
            self.results["elapsed_seconds"] = time.time() - started
            self.results["rows"] = million_rows(self.results)
            return self.results
        self.ours()
        self.stop(self.beat)
        self.stop(self.worker)
        self.plain()
        if not self.cfg.no_budget:
            self.results["budget"] = run_budget(self)
        if self.cfg.latency:
            self.results["latency"] = run_latency(self, self.cfg.latency)
        self.results["elapsed_seconds"] = time.time() - started
        self.results["rows"] = build_rows(self.results)
        return self.results


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}s"


def _sizes(text: str) -> list[int]:
    try:
        values = sorted({int(x.replace("_", "")) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("expected a comma list of integers") from None
    if not values or values[0] < 100:
        raise argparse.ArgumentTypeError("sizes must be >= 100")
    return values


def _latencies(text: str) -> list[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("expected a comma list of milliseconds") from None
    if not values or values[0] < 0:
        raise argparse.ArgumentTypeError("latencies must be >= 0 ms")
    return values


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="rebook vs plain Celery (countdown retries), side by side on 127.0.0.1.",
    )
    p.add_argument("--quick", action="store_true", help="small smoke run (about a minute)")
    p.add_argument("--sizes", type=_sizes, help="waiting counts for memory (default 1k,10k,100k)")
    p.add_argument("--waiting", type=int, help="waiting rebooks for presence/reaction (10000)")
    p.add_argument("--performers", type=int, help="performers they wait on (100)")
    p.add_argument("--plain-max", type=int, help="largest plain Celery size (10000)")
    p.add_argument("--online", type=int, help="performers coming online in the reaction (4)")
    p.add_argument("--presence", type=float, help="REBOOK_PRESENCE_INTERVAL_SECONDS (2)")
    p.add_argument("--sweep", type=float, help="REBOOK_SWEEP_INTERVAL_SECONDS (0.5)")
    p.add_argument("--watch", type=float, help="REBOOK_WATCH_INTERVAL_SECONDS (4)")
    p.add_argument("--rate", type=float, help="REBOOK_UPSTREAM_RATE_PER_SECOND (150)")
    p.add_argument("--concurrency", type=int, help="worker processes, both systems (4)")
    p.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help="raw numbers (default .rebook/bench.json, git-ignored)",
    )
    p.add_argument(
        "--latency",
        type=_latencies,
        help="upstream latencies, ms, of the latency phase: e.g. 0,50,200 (tests/bench/latency.py)",
    )
    p.add_argument(
        "--latency-only", action="store_true", help="only the latency phase (0,50,200 by default)"
    )
    p.add_argument("--markdown", type=Path, help="also write the table to this file")
    p.add_argument("--keep-logs", action="store_true", help="keep the worker/beat/sandbox logs")
    p.add_argument(
        "--no-budget",
        action="store_true",
        help="skip the short-budget phase (tests/bench/budget.py)",
    )
    p.add_argument(
        "--budget-only", action="store_true", help="only the short-budget phase (about a minute)"
    )
    p.add_argument(
        "--million",
        action="store_true",
        help="only the memory and sweep phases, at 1k, 10k (Celery intake), 100k and 1,000,000 "
        "waiting (Store.create top-up); --sizes overrides the sizes (about 7 minutes)",
    )
    args = p.parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    if args.million:
        cfg.million = True
        cfg.sizes = [1_000, 10_000, 100_000, 1_000_000]
        if args.json == DEFAULT_JSON:
            args.json = Path(".rebook/bench-million.json")
    for name in (
        "sizes",
        "waiting",
        "performers",
        "plain_max",
        "online",
        "presence",
        "sweep",
        "watch",
        "rate",
        "concurrency",
        "no_budget",
        "budget_only",
        "million",
        "latency",
        "latency_only",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if cfg.performers < cfg.rebooks_per_member or 2 * cfg.online > cfg.performers:
        p.error("need --performers >= 10 and --online <= --performers / 2")
    return cfg, args


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP clean up like Ctrl-C does."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="rebook-bench-"))
    bench = Bench(cfg, workdir)
    ok = False
    try:
        with _terminate_as_interrupt():
            results = bench.run()
        table = markdown(results) if results["rows"] else ""
        if results.get("latency"):
            table = "\n\n".join(t for t in (table, latency_markdown(results)) if t)
        print(table)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
        if args.markdown:
            args.markdown.write_text(table + "\n")
        log(f"JSON written to {args.json}; total {results['elapsed_seconds']:.0f}s")
        ok = True
        return 0
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        ok = True  # nothing worth keeping
        return 130
    except Exception as exc:
        log(f"failed: {type(exc).__name__}: {exc}")
        args.keep_logs = True
        raise
    finally:
        # every child goes, even if Ctrl-C / SIGTERM is pressed again meanwhile
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            bench.cleanup()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        if ok and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"logs in {workdir}")
