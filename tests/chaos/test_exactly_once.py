"""A misbehaving upstream, end to end with a real worker and beat: commits that land after the
gateway gave up, the list under another name, another site zone than the one configured, unset
dates written as year 1, a lost "POST sent" mark. One booking per rebook, every rebook settled."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import wait_for
from tests.integration.conftest import System, running_system
from worker.core.states import State

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hostile(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(
        redis_url,
        tmp_path_factory.mktemp("exactly-once"),
        http_timeout_seconds=0.5,
        step_lease_seconds=3.0,
        reconcile_grace_seconds=0.3,
        reconcile_window_seconds=2.5,  # the upstream commits up to 1.5 s after it answered
        reconcile_proof_reads=3,
        api_timezone="Europe/London",
    ) as system:
        system.sandbox.configure(
            documented=True,  # StartDate as a date, year-1 unset dates
            site_zone="Europe/Athens",  # two hours off what the settings say
            list_name="Bookings",
            accept_by_seconds=600,
        )
        yield system


def test_late_commits_in_another_zone_get_one_booking_each(hostile: System) -> None:
    system = hostile
    user = system.member()
    made: list[tuple[str, int]] = []
    for i, kind in enumerate(["http_504_commit_later", "timeout_commit_later"] * 3):
        performer = system.performer(online=True)
        system.sandbox.fault("RescheduleMadeBooking", kind, commit_delay=0.4 + 0.2 * i, delay=0.6)
        made.append(system.rebook(user, performer))
    for rid, _ in made:
        system.wait_state(rid, State.WATCHING, timeout=60)
    new = system.sandbox.stats()["new_bookings"]
    for rid, original in made:
        assert new[str(original)] == 1, (rid, new)
        rec = system.store.records.get(rid)
        assert rec is not None and rec.new_booking_id is not None
        assert system.sandbox.booking(rec.new_booking_id)["original_id"] == original


def test_a_lost_mark_is_found_upstream_not_posted_again(hostile: System) -> None:
    system = hostile
    user = system.member()
    performer = system.performer(online=False)
    rid, original = system.rebook(user, performer)
    # committed, answered 500; the reconcile reads fail for a while, so the mark is still there
    system.sandbox.fault("RescheduleMadeBooking", "http_500_after_commit")
    system.sandbox.fault("MadeBookings", "http_503", count=2)
    system.sandbox.set_online(performer, True)
    key = system.store.key("r", rid)

    def marked() -> bool:
        return bool(system.store.r.hget(key, "answer_ts"))

    wait_for(marked, 30, "an ambiguous POST")
    # a failover to a replica that missed the mark: the record is as before the POST
    system.store.r.hdel(key, "post_sent_ts", "answer_ts", "known_ids", "empty_reads", "attempts")
    system.wait_state(rid, State.WATCHING, timeout=60)
    assert system.sandbox.stats()["new_bookings"][str(original)] == 1
