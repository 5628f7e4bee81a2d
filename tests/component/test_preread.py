"""The read before a POST, shared by the member's POSTs where it is evidence for them.

README "Exactly one booking": the read before a POST. Real Redis, the sandbox over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from worker.core.states import State

from .test_flow import Env, assert_exactly_once, confirm_field, env, make_env, settle

__all__ = ["env", "make_env"]  # the fixtures, imported for pytest


def online_rebooks(env: Env, performers: list[int], user: str = "alice") -> dict[str, int]:
    """One rebook of `user` per performer, each performer online: RESCHEDULING."""
    if env.svc.token_store.load(user) is None:
        env.member(user)
    made: dict[str, int] = {}
    for performer in performers:
        orig = env.sandbox.add_booking(user, performer)
        made[env.submit(orig, performer=performer, user=user)] = orig
        env.sandbox.set_online(performer, True)
        assert env.flow.check_presence(performer) == "online"
    assert all(env.get(rid).state is State.RESCHEDULING for rid in made)
    return made


@pytest.mark.parametrize("confirmed", [True, False])
def test_a_burst_of_one_member_reads_the_list_once(env: Env, confirmed: bool) -> None:
    if confirmed:
        confirm_field(env)
    made = online_rebooks(env, [7, 8, 9, 10, 11, 12])
    before = env.calls("MadeBookings")
    for rid in made:
        assert env.flow.reschedule(rid) == "booked"
    assert env.calls("MadeBookings") - before == 1
    assert env.calls("RescheduleMadeBooking") == 6
    assert_exactly_once(env, made)


def test_a_read_serves_no_post_after_its_age(env: Env) -> None:
    made = online_rebooks(env, [7, 8])
    r7, r8 = made
    before = env.calls("MadeBookings")
    assert env.flow.reschedule(r7) == "booked"
    env.clock.advance(env.settings.shared_read_seconds + 0.5)
    assert env.flow.reschedule(r8) == "booked"
    assert env.calls("MadeBookings") - before == 2
    assert_exactly_once(env, made)


def test_an_unsettled_post_of_the_member_means_a_fresh_read(env: Env) -> None:
    """r7's POST is ambiguous (its booking made after the shared read): r8 reads afresh, so its
    `known_ids` show r7's booking — should the field be dropped, the two stay apart (test_flow:
    the list before a POST tells overlapping POSTs apart)."""
    confirm_field(env)
    made = online_rebooks(env, [7, 8])
    r7, r8 = made
    env.sandbox.fault("RescheduleMadeBooking", "http_500_after_commit")
    before = env.calls("MadeBookings")
    assert env.flow.reschedule(r7) == "ambiguous"
    assert env.flow.reschedule(r8) == "booked"
    assert env.calls("MadeBookings") - before == 2
    assert env.new_bookings() == {str(made[r7]): 1, str(made[r8]): 1}
    settle(env, [r7])
    assert_exactly_once(env, made)


def test_a_post_settled_without_a_booking_since_the_read_means_a_fresh_read(env: Env) -> None:
    """r7's POST refused (4xx) after the shared read: the read serves r8 no longer (a POST that
    settled without a booking to own is not known to have made nothing, in general)."""
    made = online_rebooks(env, [7, 8])
    r7, r8 = made
    env.sandbox.fault("RescheduleMadeBooking", "http_400")
    before = env.calls("MadeBookings")
    assert env.flow.reschedule(r7) not in ("booked", "ambiguous")
    assert env.get(r7).post_sent_ts is None and env.get(r7).new_booking_id is None
    assert env.flow.reschedule(r8) == "booked"
    assert env.calls("MadeBookings") - before == 2


def test_a_rebook_this_process_posted_for_since_the_read_reads_afresh(env: Env) -> None:
    """Its own earlier POST's booking must be in the list, were its mark lost (test_flow's
    lost-mark test: adopted, not POSTed again). Here a POST not sent (a CDN challenge): no attempt
    counted, and still a fresh read."""
    made = online_rebooks(env, [7])
    (r7,) = made
    env.sandbox.fault("RescheduleMadeBooking", "html_challenge")
    before = env.calls("MadeBookings")
    env.flow.reschedule(r7)
    assert env.get(r7).state is State.RESCHEDULING and env.get(r7).post_sent_ts is None
    env.clock.advance(env.settings.retry_max_seconds)
    assert env.flow.reschedule(r7) == "booked"
    assert env.calls("MadeBookings") - before == 2


def test_a_read_from_before_the_store_server_changed_serves_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart or a failover may have lost marks written since the read: a fresh read."""
    made = online_rebooks(env, [7, 8])
    r7, r8 = made
    before = env.calls("MadeBookings")
    assert env.flow.reschedule(r7) == "booked"
    monkeypatch.setattr(env.store, "server_id", lambda user_id: "another-run-id")
    assert env.flow.reschedule(r8) == "booked"
    assert env.calls("MadeBookings") - before == 2


@pytest.mark.parametrize("shared", [0.0, 10.0])
def test_a_server_change_between_the_read_and_the_mark_sends_nothing(
    make_env: Callable[..., Env], monkeypatch: pytest.MonkeyPatch, shared: float
) -> None:
    """A restart or a failover after the read went out may have lost a sibling's mark, and the
    gate then lets the POST by with a read that cannot show the sibling's booking (sim seed 86):
    nothing is sent, the mark goes, and the next try reads again."""
    env = make_env(shared_read_seconds=shared)
    made = online_rebooks(env, [7])
    (rid,) = made
    names = iter(["before-the-read", "after-a-failover"])
    monkeypatch.setattr(env.store, "server_id", lambda user_id: next(names, "after-a-failover"))
    before = env.calls("MadeBookings")
    assert env.flow.reschedule(rid) == "retry"
    rec = env.get(rid)
    assert rec.state is State.RESCHEDULING and rec.post_sent_ts is None and rec.attempts == 0
    assert env.calls("RescheduleMadeBooking") == 0
    env.clock.advance(env.settings.retry_max_seconds)
    assert env.flow.reschedule(rid) == "booked"
    assert env.calls("MadeBookings") - before == 2
    assert_exactly_once(env, made)


def test_zero_seconds_reads_before_every_post(make_env: Callable[..., Env]) -> None:
    env = make_env(shared_read_seconds=0)
    made = online_rebooks(env, [7, 8, 9])
    before = env.calls("MadeBookings")
    for rid in made:
        assert env.flow.reschedule(rid) == "booked"
    assert env.calls("MadeBookings") - before == 3


def test_the_store_names_its_server_and_never_the_same_when_it_cannot(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = env.store.server_id("alice")
    assert first and first == env.store.server_id("bob")
    assert first == env.store.r.info("server")["run_id"]

    def refused(*args: object, **kwargs: object) -> None:
        raise redis.ResponseError("unknown command 'INFO'")

    monkeypatch.setattr(env.store.r, "info", refused)
    assert env.store.server_id("alice") != env.store.server_id("alice")
    # so a read made then serves no later POST
    made = online_rebooks(env, [7, 8])
    before = env.calls("MadeBookings")
    for rid in made:
        assert env.flow.reschedule(rid) == "booked"
    assert env.calls("MadeBookings") - before == 2
