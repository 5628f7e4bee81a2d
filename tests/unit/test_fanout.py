"""Outcome fan-out against a real Redis: order per rebook, retries, dead-lettering."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from tests.conftest import fast_settings
from worker.fanout import Fanout
from worker.models import State
from worker.store import Store, rebook_id_for


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
    store.create(
        rebook_id=rid,
        event_id=event,
        booking_id=abs(hash(event)) % 10**6 + 1,
        user_id="u",
        performer_id=1,
        deadline=time.time() + 60,
        now=time.time(),
    )
    store.transition(rid, State.WATCHING, reason="booked", outcome="BOOKED")
    store.transition(rid, final, reason="x", outcome=final.value)
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
    store.create(
        rebook_id=b_receiver_free,
        event_id="b",
        booking_id=77,
        user_id="u",
        performer_id=1,
        deadline=time.time() + 60,
        now=time.time(),
    )
    store.transition(b_receiver_free, State.ABORTED, reason="x", outcome="ABORTED")
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
    reasons = [d["reason"] for d in store.deadletters(10)]
    assert sum("fan-out gave up after 3 attempts" in r for r in reasons) == 2
    assert isinstance(store.r, redis.Redis)
