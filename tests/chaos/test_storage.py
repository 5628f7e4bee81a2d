"""Storage and broker: a private `redis-server` with `appendonly yes` (store and broker in one)
restarted mid-run loses nothing that was acknowledged to a producer.

Two variants: a graceful stop (SIGTERM: Redis writes and fsyncs the AOF on shutdown) and a SIGKILL
of `redis-server` running with `appendfsync always` (set with CONFIG SET on the private server:
every write is on disk before its reply). Beat is never restarted; the worker runs as under its
systemd unit (ops/systemd/rebook-worker.service, `Restart=on-failure`): if it exits with a
failure, it is started again, and every such death is reported.

`REBOOK_CHAOS_SCALE=full` sends more events, keeps Redis down longer and also restarts Redis while
the producer is still sending (Redis is also the broker: a message taken just as Redis stopped
must come back, which may take the broker's visibility timeout).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from rebook_dev.embedded import EmbeddedRedis
from tests.inspect_store import ids_in_state
from tests.integration.conftest import System, running_system, wait_for
from worker.core.states import State
from worker.core.store import rebook_id_for

pytestmark = pytest.mark.integration

FULL = os.environ.get("REBOOK_CHAOS_SCALE", "").lower() == "full"
EVENTS = 150 if FULL else 30
PERFORMERS = 12 if FULL else 6
DOWN_SECONDS = 5.0 if FULL else 1.0
"""How long Redis stays down: part of the fault, not a wait for work."""
SEND_PAUSE = 0.02
QUEUE = "rebook.events"
NOTICED = (b"Connection to broker lost", b"Cannot connect to redis", b"Unrecoverable error")


def quiet(predicate: Callable[[], Any]) -> Callable[[], Any]:
    """`predicate`, answering False while Redis is away instead of raising."""

    def check() -> Any:
        try:
            return predicate()
        except (redis.RedisError, OSError):
            return False

    return check


def fsync_always(server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        client.config_set("appendfsync", "always")
        assert client.config_get("appendfsync")["appendfsync"] == "always"
    finally:
        client.close()


class Producer(threading.Thread):
    """Sends events one by one, as a producer would; remembers which sends returned (acked)."""

    def __init__(self, system: System, events: list[dict[str, Any]]) -> None:
        super().__init__(name="producer", daemon=True)
        self.system, self.events = system, events
        self.acked: list[str] = []
        self.refused: list[tuple[str, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        for kwargs in self.events:
            if self.stopping.is_set():
                return
            try:
                self.system.producer.send_task("rebook.request", kwargs=kwargs, queue=QUEUE)
            except Exception as exc:  # not acknowledged: the producer knows to send it again
                self.refused.append((kwargs["event_id"], f"{type(exc).__name__}: {exc}"))
            else:
                self.acked.append(kwargs["event_id"])
            self.stopping.wait(SEND_PAUSE)


class Supervisor(threading.Thread):
    """What systemd does for `rebook-worker.service` (Restart=on-failure): a worker that exits
    with a failure code is started again. Every such death is recorded: it is a finding."""

    def __init__(self, system: System) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.system = system
        self.deaths: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            popen = self.system.worker.popen
            code = popen.poll() if popen is not None else None
            if code is None:
                continue
            self.deaths.append(code)
            if code in (0, 2):  # a clean stop; RestartPreventExitStatus=2
                return
            self.system.worker.kill()  # pool children left behind
            self.system.start_worker()

    def stop(self) -> None:
        self.stopping.set()
        self.join(40)


@contextlib.contextmanager
def private_redis(data_dir: Path, always: bool) -> Iterator[list[EmbeddedRedis]]:
    """A private AOF Redis in a directory we own; the list holds the current server last
    (restarts append). Every server started here is stopped on the way out."""
    data_dir.mkdir(parents=True, exist_ok=True)
    servers = [EmbeddedRedis(appendonly=True, dir=str(data_dir)).start()]
    try:
        if always:
            fsync_always(servers[-1])
        yield servers
    finally:
        for server in servers:
            server.stop()


def restart(servers: list[EmbeddedRedis], how: str, worker_log: Path) -> float:
    """Stops the current server (`how`: sigterm or sigkill), waits until the worker noticed, and
    starts a new one on the same port and directory. Returns the time Redis was back."""
    old = servers[-1]
    assert old.proc is not None
    seen = len(worker_log.read_bytes())
    if how == "sigkill":
        old.proc.send_signal(signal.SIGKILL)
        old.proc.wait(10)
        if old.proc.stderr is not None:
            old.proc.stderr.close()
        old.proc = None
    else:
        old.stop()  # SIGTERM: redis-server writes and fsyncs the AOF, then exits
    down_at = time.monotonic()
    try:  # the outage must be one the worker sees, not a blip between two reads
        wait_for(
            lambda: any(sign in worker_log.read_bytes()[seen:] for sign in NOTICED),
            20,
            "the worker to notice that the broker is gone",
        )
    except AssertionError:
        tail = worker_log.read_bytes()[seen:][-1500:].decode(errors="replace")
        warnings.warn(f"the worker did not log the outage within 20 s: {tail}", stacklevel=2)
    time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_at)))  # the outage itself
    new = EmbeddedRedis(port=old.port, appendonly=True, dir=old.dir)
    servers.append(new)
    new.start(timeout=30)
    if how == "sigkill":
        fsync_always(new)
    return time.time()


def broker_event_ids(system: System) -> dict[str, str]:
    """Event ids of intake messages the broker holds: `queued` (in the list) or `unacked`
    (delivered to a worker that did not acknowledge it; redelivered after the visibility
    timeout)."""
    r = system.store.r
    prefix = system.settings.broker_key_prefix
    found: dict[str, str] = {}

    def event_id(envelope: Any) -> str | None:
        try:
            body = json.loads(base64.b64decode(envelope["body"]))
            return str(body[1]["event_id"])
        except (KeyError, IndexError, TypeError, ValueError):
            return None

    for raw in r.lrange(prefix + QUEUE, 0, -1):
        eid = event_id(json.loads(raw))
        if eid:
            found[eid] = "queued"
    for raw in r.hvals(prefix + "unacked"):
        eid = event_id(json.loads(raw)[0])
        if eid:
            found.setdefault(eid, "unacked")
    return found


@dataclass
class Run:
    system: System
    how: str
    supervisor: Supervisor
    events: list[dict[str, Any]] = field(default_factory=list)
    originals: dict[str, int] = field(default_factory=dict)
    performers: list[int] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    def prepare(self) -> None:
        system = self.system
        self.performers = [system.performer(online=i % 2 == 0) for i in range(PERFORMERS)]
        members = [system.member() for _ in range(3)]
        for i in range(EVENTS):
            user, performer = members[i % len(members)], self.performers[i % PERFORMERS]
            booking = system.sandbox.add_booking(user, performer)
            event_id = f"st-{self.how}-{i}-{uuid.uuid4().hex[:8]}"
            self.originals[rebook_id_for(event_id)] = booking
            self.events.append(
                {
                    "event_id": event_id,
                    "booking_id": booking,
                    "user_id": user,
                    "performer_id": performer,
                }
            )

    def send(self, events: list[dict[str, Any]]) -> Producer:
        producer = Producer(self.system, events)
        producer.run()  # in this thread
        self.acked += producer.acked
        self.refused += producer.refused
        return producer

    def rids(self) -> list[str]:
        return [rebook_id_for(e) for e in self.acked]

    def all_recorded(self) -> bool:
        return len(self.system.store.records.get_many(self.rids())) == len(self.acked)

    def where(self) -> Counter[str]:
        """Where each acknowledged event is: recorded, queued, unacked, or nowhere (lost)."""
        recorded = {rec.rebook_id for rec in self.system.store.records.get_many(self.rids())}
        broker = broker_event_ids(self.system)
        return Counter(
            "recorded" if rebook_id_for(e) in recorded else broker.get(e, "nowhere")
            for e in self.acked
        )

    def after_restart(self, back_at: float) -> None:
        """Beat reconnects by itself (and the worker, or its supervisor starts it again)."""
        system = self.system
        wait_for(
            quiet(lambda: (system.store.sweep.last_sweep() or 0) > back_at),
            30,
            "a sweep after the restart",
        )
        assert system.beat.popen is not None and system.beat.popen.poll() is None, (
            "beat died when Redis restarted:\n" + system.beat.text()[-3000:]
        )

    def settle(self, timeout: float) -> None:
        """All performers online; every new booking accepted; every acked event terminal."""
        store, sandbox = self.system.store, self.system.sandbox
        for performer in self.performers:
            sandbox.set_online(performer, True)
        accepted: set[int] = set()
        rids = self.rids()

        def settled() -> bool:
            recs = store.records.get_many(rids)
            for rec in recs:
                new = rec.new_booking_id
                if rec.state == State.WATCHING and new is not None and new not in accepted:
                    sandbox.set_status(new, "Accepted")
                    accepted.add(new)
            return len(recs) == len(rids) and all(rec.state.terminal for rec in recs)

        try:
            wait_for(quiet(settled), timeout, "every acknowledged event terminal")
        except AssertionError:
            recs = store.records.get_many(rids)
            stuck = [(r.rebook_id, r.state.value, r.reason) for r in recs if not r.state.terminal]
            raise AssertionError(
                f"{self.how}: {len(self.acked)} acknowledged, {len(self.refused)} refused; "
                f"where: {dict(self.where())}; states "
                f"{dict(Counter(r.state.value for r in recs))}, e.g. {stuck[:5]}; worker deaths "
                f"{self.supervisor.deaths}\n--- worker log tail ---\n"
                f"{self.system.worker.text()[-3000:]}"
            ) from None

    def check(self) -> None:
        store = self.system.store
        made = self.system.sandbox.stats()["new_bookings"]
        recs = {rec.rebook_id: rec for rec in store.records.get_many(self.rids())}
        assert len(recs) == len(self.acked)
        for rid, rec in recs.items():
            count = made.get(str(self.originals[rid]), 0)
            assert count <= 1, f"{rid}: {count} new bookings for original {self.originals[rid]}"
            if rec.new_booking_id is not None:
                assert count == 1, f"{rid} names a booking the sandbox did not make"
        states = Counter(rec.state.value for rec in recs.values())
        assert states == {"ACCEPTED": len(self.acked)}, states
        assert len(self.acked) + len(self.refused) == EVENTS


@contextlib.contextmanager
def scenario(tmp_path: Path, how: str) -> Iterator[tuple[Run, list[EmbeddedRedis]]]:
    with (
        private_redis(tmp_path / "redis", always=how == "sigkill") as servers,
        running_system(servers[0].url, tmp_path) as system,
    ):
        supervisor = Supervisor(system)
        supervisor.start()
        started = time.monotonic()
        run = Run(system, how, supervisor)
        try:
            run.prepare()
            yield run, servers
        finally:
            supervisor.stop()
            print(
                f"\n{how}: {time.monotonic() - started:.1f}s, {len(run.acked)} acked, "
                f"{len(run.refused)} refused, worker deaths {supervisor.deaths}"
            )


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_redis_restart_mid_run_loses_nothing_acknowledged(tmp_path: Path, how: str) -> None:
    """Every event is acknowledged and recorded; then Redis restarts while rebooks wait, are
    rescheduled and watched, and steps and sweeps are in flight."""
    with scenario(tmp_path, how) as (run, servers):
        system = run.system
        first = EVENTS // 3
        run.send(run.events[:first])
        wait_for(run.all_recorded, 20, "the first events recorded")
        wait_for(lambda: ids_in_state(system.store, State.WATCHING), 20, "some rebooks watching")
        run.send(run.events[first:])
        assert not run.refused, run.refused
        wait_for(run.all_recorded, 20, "every event recorded")
        back_at = restart(servers, how, system.worker.log)
        run.after_restart(back_at)
        where = wait_for(quiet(run.where), 10, "Redis answering")
        assert where == {"recorded": len(run.acked)}, f"records lost in the restart: {where}"
        run.settle(60 if FULL else 30)
        run.check()


@pytest.mark.full  # needs minutes (the broker's visibility timeout): `make chaos` only
@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_redis_restart_while_producing_loses_nothing_acknowledged(tmp_path: Path, how: str) -> None:
    """The producer keeps sending while Redis restarts: a send that returned is never lost, not
    even one the worker took from the queue just as Redis stopped (`worker.celeryapp.broker` pops
    and records it as unacknowledged in one step, celery/kombu#305). An intake message whose task
    gave up waiting for the store stays in the broker's `unacked` hash until the visibility
    timeout plus kombu's restore period pass, hence the long settle."""
    with scenario(tmp_path, how) as (run, servers):
        system = run.system
        first = EVENTS // 3
        run.send(run.events[:first])
        wait_for(run.all_recorded, 20, "the first events recorded")
        late = Producer(system, run.events[first:])
        late.start()
        try:
            wait_for(lambda: len(late.acked) >= 3, 10, "the producer running")
            back_at = restart(servers, how, system.worker.log)
            late.join(120)
            assert not late.is_alive(), "the producer hung"
        finally:
            late.stopping.set()
            late.join(10)
        run.acked += late.acked
        run.refused += late.refused
        run.after_restart(back_at)
        # informative only: a message in a worker's hands is briefly "nowhere"
        print(f"{how}: right after the restart: {dict(wait_for(quiet(run.where), 10, 'Redis'))}")
        run.settle(300)  # an unacked intake waits out the visibility timeout + kombu's restore
        run.check()


def test_the_worker_reconnects_when_redis_restarts_while_it_holds_a_message(
    tmp_path: Path,
) -> None:
    with (
        private_redis(tmp_path / "redis", always=False) as servers,
        running_system(
            servers[0].url, tmp_path, http_timeout_seconds=5.0, step_lease_seconds=11.0
        ) as system,
    ):
        user, performer = system.member(), system.performer(online=False)

        def presence_calls() -> int:
            return int(system.sandbox.stats()["calls"].get("getUserSummary", 0))

        before = presence_calls()
        system.sandbox.fault("getUserSummary", "timeout", count=1, delay=6.0)
        rid, _ = system.rebook(user, performer)
        # a presence step is now inside its upstream call: the worker holds its message
        wait_for(lambda: presence_calls() > before, 15, "a presence call in flight")
        seen = len(system.worker.log.read_bytes())
        restart(servers, "sigterm", system.worker.log)
        assert system.worker.popen is not None
        wait_for(
            lambda: (
                system.worker.popen.poll() is not None  # type: ignore[union-attr]
                or b"Connected to redis" in system.worker.log.read_bytes()[seen:]
            ),
            30,
            "the worker to reconnect (or die)",
        )
        assert system.worker.popen.poll() is None, (
            f"the worker exited with {system.worker.popen.returncode} when Redis restarted:\n"
            + system.worker.text()[-2000:]
        )
        system.sandbox.set_online(performer, True)
        system.wait_state(rid, State.WATCHING, timeout=30)
