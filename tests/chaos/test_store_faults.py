"""A sick store: events arrive while the store Redis refuses writes for reasons of its own (OOM at
`maxmemory` with noeviction, READONLY after it became a replica). Intake must hand each event back
to the broker, never acknowledge it; once the store heals every event is recorded exactly once.

Before the fix intake re-queued only on connection errors and timeouts: an OOM or READONLY
intake failed, its dead letter failed too, and the event was acknowledged, i.e. lost.

The store is a private `redis-server`; the broker stays on the suite's Redis, so producers can
still send while the store is sick.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from rebook_dev.embedded import EmbeddedRedis, free_port
from tests.integration.conftest import System, running_system, wait_for
from worker.core.store import rebook_id_for

pytestmark = pytest.mark.integration

EVENTS = 12


@pytest.fixture(scope="module")
def sick_store() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def sick_system(
    sick_store: EmbeddedRedis, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    with running_system(
        sick_store.url, tmp_path_factory.mktemp("sick-store"), broker_url=redis_url
    ) as sysm:
        yield sysm


def handed_back(system: System) -> int:
    return system.worker.text().count("handed back to the broker")


def run_while_sick(system: System, sicken: Callable[[], None], heal: Callable[[], None]) -> None:
    user = system.member()
    performer = system.performer(online=False)
    bookings = [system.sandbox.add_booking(user, performer) for _ in range(EVENTS)]
    before = handed_back(system)
    sicken()
    try:
        event_ids = []
        for booking in bookings:
            event_id = f"sick-{uuid.uuid4().hex}"
            event_ids.append(event_id)
            system.submit(
                event_id=event_id, booking_id=booking, user_id=user, performer_id=performer
            )
        # at least one event went back to the broker (not only waited for), none recorded
        wait_for(lambda: handed_back(system) > before, 30, "an event handed back")
        assert not [e for e in event_ids if system.get(rebook_id_for(e))]
    finally:
        heal()
    for event_id in event_ids:
        rid = rebook_id_for(event_id)
        wait_for(lambda rid=rid: system.get(rid), 30, f"record of {event_id}")
        received = [h for h in system.store.records.history(rid) if h.get("reason") == "received"]
        assert len(received) == 1, system.store.records.history(rid)
    letters = " ".join(d.get("payload", "") for d in system.store.outcomes.deadletters(500))
    assert not [e for e in event_ids if e in letters], "an event was dead-lettered"


def test_oom_at_maxmemory_hands_events_back(sick_system: System, sick_store: EmbeddedRedis) -> None:
    admin = redis.Redis.from_url(sick_store.url)
    try:
        run_while_sick(
            sick_system,
            lambda: admin.config_set("maxmemory", 1),
            lambda: admin.config_set("maxmemory", 0),
        )
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


def test_a_read_only_store_hands_events_back(
    sick_system: System, sick_store: EmbeddedRedis
) -> None:
    admin = redis.Redis.from_url(sick_store.url)
    nowhere = free_port()  # a primary that does not exist: the data stays, writes are refused
    try:
        run_while_sick(
            sick_system,
            lambda: admin.replicaof("127.0.0.1", nowhere),
            lambda: admin.replicaof("NO", "ONE"),
        )
    finally:
        admin.replicaof("NO", "ONE")
        admin.close()
