"""Outcome fan-out against a real Redis: order per rebook, retries, dead-lettering, per-receiver
progress, a pass cut by the soft time limit or a kill resumed where it stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded

from tests.conftest import fast_settings, wait_for
from worker.celeryapp.fanout import Fanout
from worker.core.states import State
from worker.core.store import Store, rebook_id_for


class Receiver:
    def __init__(self, fail: set[str] | None = None) -> None:
        self.fail = fail or set()
        self.got: list[tuple[str, str]] = []

    def __call__(self, name: str, kwargs: dict[str, Any], queue: str) -> None:
        outcome = kwargs["outcome"]
        if outcome["state"] in self.fail:
            raise ConnectionError("receiver down")
        self.got.append((outcome["rebook_id"], outcome["state"]))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(redis_url: str, prefix: str) -> tuple[Store, Any]:
    settings = fast_settings(
        redis_url, "http://127.0.0.1:9", prefix, outcome_task="acme.out", fanout_max_attempts=3
    )
    store = Store.from_settings(settings)
    return store, settings


def booked_then(store: Store, event: str, final: State) -> str:
    rid = rebook_id_for(event)
    store.records.create(
        rebook_id=rid,
        event_id=event,
        booking_id=abs(hash(event)) % 10**6 + 1,
        user_id="u",
        performer_id=1,
        deadline=time.time() + 60,
        now=time.time(),
    )
    store.transitions.transition(rid, State.WATCHING, reason="booked", outcome="BOOKED")
    store.transitions.transition(rid, final, reason="x", outcome=final.value)
    return rid


def test_one_rebooks_outcomes_stay_in_order_while_others_go_on(setup: tuple[Store, Any]) -> None:
    store, settings = setup
    receiver, clock = Receiver(fail={"BOOKED"}), Clock()
    fanout = Fanout(store, settings, receiver, clock=clock)
    fanout.ensure_group()
    a = booked_then(store, "a", State.ACCEPTED)
    fanout.run()
    assert receiver.got == []  # BOOKED failed, ACCEPTED waits behind it
    b_receiver_free = rebook_id_for("b")
    receiver.fail = {"BOOKED_NEVER"}
    store.records.create(
        rebook_id=b_receiver_free,
        event_id="b",
        booking_id=77,
        user_id="u",
        performer_id=1,
        deadline=time.time() + 60,
        now=time.time(),
    )
    store.transitions.transition(b_receiver_free, State.ABORTED, reason="x", outcome="ABORTED")
    fanout.run()
    assert receiver.got == [(b_receiver_free, "ABORTED")]  # another rebook is not held up
    clock.now += 3600
    fanout.run()
    assert receiver.got[1:] == [(a, "BOOKED"), (a, "ACCEPTED")]
    fanout.run()
    assert len(receiver.got) == 3  # each delivered once


def test_an_outcome_that_never_goes_through_is_dead_lettered(setup: tuple[Store, Any]) -> None:
    store, settings = setup
    receiver, clock = Receiver(fail={"BOOKED", "REJECTED"}), Clock()
    fanout = Fanout(store, settings, receiver, clock=clock)
    fanout.ensure_group()
    booked_then(store, "c", State.REJECTED)
    for _ in range(6):
        fanout.run()
        clock.now += 3600
    reasons = [d["reason"] for d in store.outcomes.deadletters(10)]
    assert sum("fan-out gave up after 3 attempts" in r for r in reasons) == 2
    assert isinstance(store.r, redis.Redis)


def outcomes_of(store: Store, n: int, tag: str) -> list[str]:
    """`n` rebooks that each end ABORTED: one outcome each, in stream order."""
    rids = []
    for i in range(n):
        rid = rebook_id_for(f"{tag}-{i}")
        store.records.create(
            rebook_id=rid,
            event_id=f"{tag}-{i}",
            booking_id=10_000 + i,
            user_id="u",
            performer_id=1,
            deadline=time.time() + 60,
            now=time.time(),
        )
        store.transitions.transition(rid, State.ABORTED, reason="x", outcome="ABORTED")
        rids.append(rid)
    return rids


class Cut:
    """A receiver whose pass is cut by Celery's soft time limit at delivery `at`."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.got: list[str] = []

    def __call__(self, name: str, kwargs: dict[str, Any], queue: str) -> None:
        if len(self.got) == self.at:
            self.at = -1
            raise SoftTimeLimitExceeded()
        self.got.append(kwargs["outcome"]["rebook_id"])


def test_a_pass_cut_by_the_soft_time_limit_stops_and_the_next_resumes(
    setup: tuple[Store, Any],
) -> None:
    """The limit is not swallowed (the pass stops, its lock goes); the entries it had read stay
    pending and the next pass reclaims them: every outcome delivered, none twice."""
    store, settings = setup
    receiver = Cut(at=3)
    fanout = Fanout(store, settings, receiver)
    fanout.ensure_group()
    rids = outcomes_of(store, 10, "cut")
    with pytest.raises(SoftTimeLimitExceeded):
        fanout.run()
    assert receiver.got == rids[:3]
    assert not store.r.exists(store.key("fanout", "lock"))
    assert fanout.run()["delivered"] == 7
    assert receiver.got == rids
    assert store.r.xpending(store.key("outcomes"), "fanout")["pending"] == 0


def test_each_receiver_keeps_its_own_progress(redis_url: str, prefix: str) -> None:
    """A webhook that is down does not hold back the outcome task (and is called once a pass,
    not once an entry); when it is back it gets every outcome, in order, each once."""
    settings = fast_settings(redis_url, "http://127.0.0.1:9", prefix, outcome_task="acme.out")
    store = Store.from_settings(settings)
    task = Receiver()
    hook = Hook(down=True)
    clock = Clock()
    fanout = Fanout(store, settings, task, webhook=hook, clock=clock)  # type: ignore[arg-type]
    fanout.ensure_group()
    first = outcomes_of(store, 5, "pr")
    fanout.run()
    assert [rid for rid, _ in task.got] == first
    assert hook.calls == 1 and hook.got == []
    second = outcomes_of(store, 3, "pr2")
    fanout.run()  # the task receiver goes on; the webhook is tried once in this pass, too
    assert [rid for rid, _ in task.got] == first + second and hook.calls == 2
    assert store.r.xpending(store.key("outcomes"), "fanout")["pending"] == 8
    hook.down = False
    clock.now += 3600
    for _ in range(3):
        fanout.run()
    assert sorted(hook.got) == sorted(first + second) and len(hook.got) == 8
    assert [rid for rid, _ in task.got] == first + second  # nothing sent twice
    assert store.r.xpending(store.key("outcomes"), "fanout")["pending"] == 0
    assert not store.r.hlen(store.key("fanout", "done"))


class Hook:
    """Stands in for WebhookSender (same `send`), down or up."""

    def __init__(self, down: bool) -> None:
        self.down = down
        self.calls = 0
        self.got: list[str] = []

    def send(self, delivery_id: str, payload: dict[str, Any]) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("webhook down")
        self.got.append(payload["rebook_id"])


KILLED_CHILD = """
import sys, time
from tests.conftest import fast_settings
from worker.celeryapp.fanout import Fanout
from worker.core.store import Store
settings = fast_settings(sys.argv[1], "http://127.0.0.1:9", sys.argv[2], outcome_task="acme.out")
store = Store.from_settings(settings)
def slow(name, kwargs, queue):
    store.r.rpush(sys.argv[2] + "got", kwargs["outcome"]["rebook_id"])
    time.sleep(0.05)
Fanout(store, settings, slow).run()
"""


def test_a_killed_pass_is_resumed_where_it_stopped(
    setup: tuple[Store, Any], redis_url: str
) -> None:
    """A worker killed (SIGKILL) in the middle of a pass: once its lock has expired, the next
    pass delivers the rest; only the one delivery in flight may come twice."""
    store, settings = setup
    fanout = Fanout(store, settings, Receiver())
    fanout.ensure_group()
    rids = outcomes_of(store, 40, "kill")
    got = store.key("got")
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD, redis_url, settings.key_prefix],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        wait_for(lambda: store.r.llen(got) >= 5, 20, "the child delivering")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    before = store.r.lrange(got, 0, -1)
    assert 5 <= len(before) < 40
    store.r.delete(store.key("fanout", "lock"))  # its 120 s lock, expired
    rest = Receiver()
    Fanout(store, settings, rest).run()
    after = [rid for rid, _ in rest.got]
    assert sorted(set(before) | set(after)) == sorted(rids)
    assert len(set(before) & set(after)) <= 1
    assert store.r.xpending(store.key("outcomes"), "fanout")["pending"] == 0
