"""`WAIT` after the "POST sent" mark runs on the connection that wrote the mark, against a real
primary and replica (private `redis-server`s on free ports). WAIT counts the replicas that have
the writes of *its own* connection: on a connection that wrote nothing it answers at once."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rebook_dev.embedded import free_port, redis_server_binary
from tests.conftest import wait_for
from tests.inspect_store import new_store, store_options
from tests.integration.conftest import redis_cluster
from worker.core.states import State
from worker.core.store import Store, rebook_id_for

T0 = 1_700_000_000.0


class Pair:
    """A primary and its replica."""

    def __init__(self, home: Path) -> None:
        binary = redis_server_binary()
        self.primary, self.replica = free_port(), free_port()
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        leader = ["127.0.0.1", str(self.primary)]
        self.procs = [
            subprocess.Popen(
                [binary, "--port", str(self.primary), *common],
                cwd=home,
                stdout=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                [binary, "--port", str(self.replica), *common, "--replicaof", *leader],
                cwd=home,
                stdout=subprocess.DEVNULL,
            ),
        ]
        wait_for(self._linked, 20, "replica in sync")

    def _linked(self) -> bool:
        try:
            info = redis.Redis(port=self.replica).info("replication")
        except redis.RedisError:
            return False
        return info.get("master_link_status") == "up"

    def close(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    p = Pair(tmp_path)
    yield p
    p.close()


def rescheduling(store: Store, n: int) -> str:
    rid = rebook_id_for(f"evt-{n}")
    store.records.create(
        rebook_id=rid,
        event_id=f"evt-{n}",
        booking_id=100 + n,
        user_id=f"u{n}",
        performer_id=7,
        deadline=T0 + 3600,
        now=T0,
    )
    assert store.transitions.transition(
        rid, State.RESCHEDULING, from_=[State.WAITING], reason="online"
    )
    assert store.records.claim_step(rid, "step-1") is not None
    return rid


def mark(store: Store, rid: str, timeout_ms: int) -> tuple[bool, str, int]:
    """`start_post` without its mark's time (Redis's clock; test_flow.py checks it)."""
    ok, holder, got, _ = store.transitions.start_post(
        rid,
        now=T0 + 1,
        attempts=1,
        claim="step-1",
        known_ids=[],
        due=T0 + 60,
        replicas=1,
        replica_timeout_ms=timeout_ms,
    )
    return ok, holder, got


def test_wait_counts_the_replicas_that_have_the_mark(pair: Pair) -> None:
    client = redis.Redis(port=pair.primary, decode_responses=True)
    store = new_store(client, prefix="rebook-test:", lease_seconds=10.0)
    replica = redis.Redis(port=pair.replica, decode_responses=True)

    first = rescheduling(store, 1)
    assert mark(store, first, 5000) == (True, "", 1)
    # acknowledged: the replica has the mark already, not only the primary
    assert replica.hget(store.key("r", first), "post_sent_ts") is not None

    second = rescheduling(store, 2)
    pair.procs[1].send_signal(signal.SIGSTOP)  # the replica stops applying writes
    try:
        started = time.monotonic()
        ok, holder, got = mark(store, second, 300)
        waited = time.monotonic() - started
        # the mark is written, but no replica has it: the flow sends no POST
        assert (ok, holder, got) == (True, "", 0)
        assert waited >= 0.25, waited
    finally:
        pair.procs[1].send_signal(signal.SIGCONT)
    wait_for(
        lambda: replica.hget(store.key("r", second), "post_sent_ts") is not None, 10, "caught up"
    )


def test_wait_runs_on_the_connection_that_wrote_the_mark(pair: Pair) -> None:
    """Seen by the primary (MONITOR): the mark's script and WAIT come from one client, WAIT
    right after the script (another connection's WAIT may not cover the mark)."""
    client = redis.Redis(port=pair.primary, decode_responses=True)
    store = new_store(client, prefix="rebook-test:", lease_seconds=10.0)
    rid = rescheduling(store, 4)
    client.connection_pool.disconnect()  # fresh connections: the pool hands out any of them
    seen: list[tuple[str, str]] = []
    ready = threading.Event()

    def watch() -> None:
        with redis.Redis(port=pair.primary, decode_responses=True).monitor() as monitor:
            ready.set()
            for entry in monitor.listen():
                command = str(entry["command"])
                seen.append((f"{entry['client_address']}:{entry['client_port']}", command))
                if command.upper().startswith("WAIT"):
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(10)
    assert mark(store, rid, 5000) == (True, "", 1)
    watcher.join(10)
    assert not watcher.is_alive(), seen
    waiter, _ = seen[-1]
    mine = [command.split()[0].upper() for who, command in seen if who == waiter]
    assert mine[-2:] == ["EVALSHA", "WAIT"], seen


def test_a_refused_mark_still_answers(pair: Pair) -> None:
    """The mark refused (another step holds the rebook): (False, "", n), no error."""
    client = redis.Redis(port=pair.primary, decode_responses=True)
    store = new_store(client, prefix="rebook-test:", lease_seconds=10.0)
    rid = rescheduling(store, 3)
    assert store.records.claim_step(rid, "step-2") is not None
    ok, holder, _ = mark(store, rid, 1000)
    assert (ok, holder) == (False, "")


def test_an_event_is_acknowledged_only_once_the_replica_has_its_record(pair: Pair) -> None:
    """The intake's `create` with `replicas`: the script and WAIT on one connection; a replica
    that applies nothing answers 0 (the flow hands the event back to the broker)."""
    client = redis.Redis(port=pair.primary, decode_responses=True)
    store = new_store(client, prefix="rebook-test:", lease_seconds=10.0)
    replica = redis.Redis(port=pair.replica, decode_responses=True)

    def create(n: int, timeout_ms: int) -> tuple[str, int]:
        rid = rebook_id_for(f"evt-{n}")
        got = store.records.create(
            rebook_id=rid,
            event_id=f"evt-{n}",
            booking_id=100 + n,
            user_id=f"u{n}",
            performer_id=7,
            deadline=T0 + 3600,
            now=T0,
            replicas=1,
            replica_timeout_ms=timeout_ms,
        )
        assert got.kind == "created"
        return rid, got.replicas

    first, got = create(1, 5000)
    assert got == 1
    assert replica.hget(store.key("r", first), "state") == "WAITING"
    pair.procs[1].send_signal(signal.SIGSTOP)
    try:
        second, got = create(2, 300)
        assert got == 0
    finally:
        pair.procs[1].send_signal(signal.SIGCONT)
    wait_for(lambda: replica.hget(store.key("r", second), "state") == "WAITING", 10, "caught up")


def test_in_a_cluster_the_mark_and_wait_go_to_the_record_s_node(tmp_path: Path) -> None:
    """Sharded on a Redis Cluster (no replicas here): the pipeline runs on the node of the
    rebook's shard, and WAIT answers for it (0 replicas, after its timeout)."""
    with redis_cluster(tmp_path) as url:
        store = Store.from_url(url, cluster=True, **store_options(prefix="rebook-test:", shards=4))
        for n in range(5, 9):  # members in several shards, so on several nodes
            rid = rescheduling(store, n)
            assert mark(store, rid, 50) == (True, "", 0)
            rec = store.records.get(rid)
            assert rec is not None and rec.post_sent_ts is not None
        store.r.close()
