"""Deployment faults are not member faults; presence answers checked; members' money.

The real store and the real sandbox over HTTP, the flow's steps called one by one (see
test_flow.py, whose fixtures these are).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.component import test_flow
from tests.component.test_flow import Env, rescheduling, rescheduling_many
from tests.conftest import wait_for
from worker.core.circuit import Circuit, fingerprint
from worker.core.errors import DeploymentFault
from worker.core.flow import Flow
from worker.core.states import State

make_env = test_flow.make_env  # the fixtures of test_flow.py
env = test_flow.env


def refreshes(env: Env) -> int:
    return int(env.sandbox.stats()["refreshes"])


def sweep_until_resumed(env: Env) -> None:
    """Sweeps (the probe goes once its interval is over) until the circuit has closed."""

    def closed() -> bool:
        env.flow.sweep()
        return env.store.circuit.state(fresh=True) is None

    wait_for(closed, 10, "the circuit to close")


def test_an_api_key_refusal_pauses_without_a_refresh_and_resumes_within_a_sweep(
    make_env: Callable[..., Env],
) -> None:
    env = make_env(pause_probe_seconds=0.2)
    rid, _ = rescheduling(env)
    env.sandbox.fault("*", "api_key_refused", count=1000)
    assert env.flow.reschedule(rid) == "paused"
    rec = env.get(rid)
    assert rec.state is State.RESCHEDULING and rec.post_sent_ts is None
    assert rec.errors == 0 and rec.attempts == 0 and "REBOOK_API_KEY" in rec.reason
    paused = env.store.sweep.stats()["paused"]
    assert paused["reason"] == "api_key" and paused["setting"] == "REBOOK_API_KEY"
    assert paused["since"].endswith("Z")
    # paused: the next run sends nothing (the probe slot is taken for this interval)
    before = env.sandbox.stats()["calls"]
    assert env.flow.reschedule(rid) == "paused"
    assert env.sandbox.stats()["calls"] == before
    assert refreshes(env) == 0
    assert env.outcomes(rid) == []  # nothing parked
    # the key works again: a probe closes the circuit, the held step is due in that sweep
    env.sandbox.clear_faults()
    env.rec.calls.clear()
    sweep_until_resumed(env)
    assert ("reschedule", rid) in env.rec.calls  # in the sweep that closed it
    assert env.flow.reschedule(rid) == "booked"
    assert refreshes(env) == 0


def test_a_bare_401_is_told_apart_by_a_call_that_needs_no_member_token(env: Env) -> None:
    rid, _ = rescheduling(env)
    # the list read and the key-only call both refused, the text saying nothing: the key
    env.sandbox.fault("*", "unauthorized_bare", count=2)
    assert env.flow.reschedule(rid) == "paused"
    assert refreshes(env) == 0
    assert env.store.circuit.state(fresh=True)["reason"] == "api_key"
    env.store.circuit.close("test")
    # only the member call refused: the access token's, refreshed once, and it books
    env.sandbox.fault("MadeBookings", "unauthorized_bare", count=1)
    assert env.flow.reschedule(rid) == "booked"
    assert refreshes(env) == 1


def test_a_missing_scope_on_the_post_pauses_and_takes_its_mark_back(env: Env) -> None:
    rid, _ = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "missing_scope")
    assert env.flow.reschedule(rid) == "paused"
    rec = env.get(rid)
    assert rec.state is State.RESCHEDULING
    assert rec.post_sent_ts is None and rec.attempts == 0
    assert env.store.circuit.state(fresh=True)["reason"] == "scope"
    assert env.new_bookings() == {}
    assert env.store.transitions.gate_holder(rec) is None


def test_a_refused_client_parks_no_member_and_rotates_nothing(
    make_env: Callable[..., Env],
) -> None:
    env = make_env(oauth_client_secret="typo")
    env.member(expires_in=0)  # every step needs a refresh
    (r1, _), (r2, _) = rescheduling_many(env, 2)
    stored = env.svc.token_store.load("alice")
    assert env.flow.reschedule(r1) == "paused"
    assert env.flow.reschedule(r2) == "paused"
    for rid in (r1, r2):
        assert env.get(rid).state is State.RESCHEDULING
    assert env.svc.token_store.load("alice") == stored
    assert env.store.sweep.stats()["paused"]["reason"] == "oauth_client"
    assert env.sandbox.stats()["calls"]["token"] == 1  # the second was paused, not sent


def test_a_new_value_of_the_setting_clears_the_fault_at_start(env: Env) -> None:
    old = Circuit(env.store.r, env.store.keys, fingerprints={"api_key": fingerprint("old")})
    old.open(DeploymentFault("api_key", "refused"))
    same = Circuit(env.store.r, env.store.keys, fingerprints={"api_key": fingerprint("old")})
    assert same.check_setting() is False and same.state(fresh=True) is not None
    new = Circuit(env.store.r, env.store.keys, fingerprints={"api_key": fingerprint("new")})
    assert new.check_setting() is True and new.state(fresh=True) is None


def test_rebooks_an_older_version_parked_for_a_refused_client_resume(env: Env) -> None:
    rid, _ = rescheduling(env)
    other, _ = rescheduling(env, performer=8)
    # as the previous version parked them: `reauth`, its detail the token endpoint's code
    assert env.flow.kit._park(None, env.get(rid), "reauth", action="sign in", why="invalid_client")
    assert env.flow.kit._park(None, env.get(other), "reauth", action="sign in", why="invalid_grant")
    # the client refusal is no longer parked at all
    assert env.flow.park_member("alice", "invalid_client") == 0
    fresh = Flow(env.settings, env.store, env.svc.client, env.svc.tokens, env.rec, env.clock)
    fresh.sweep()
    assert env.get(rid).state is State.RESCHEDULING
    assert env.get(other).state is State.NEEDS_ATTENTION  # the member's: stays


def test_no_credits_parks_and_retry_books_after_the_top_up(env: Env) -> None:
    rid, orig = rescheduling(env)
    env.sandbox.set_credits("alice", 0)
    assert env.flow.reschedule(rid) == "parked"
    rec = env.get(rid)
    assert rec.state is State.NEEDS_ATTENTION and rec.reason == "no_credits"
    assert rec.post_sent_ts is None
    (out,) = env.outcomes(rid)
    assert out["reason"] == "no_credits" and "credits" in out["detail"]
    assert env.new_bookings() == {}
    env.sandbox.set_credits("alice", 100)
    assert env.flow.retry(rid).state is State.RESCHEDULING
    assert env.flow.reschedule(rid) == "booked"
    assert env.new_bookings() == {str(orig): 1}


def test_the_member_cap_parks_before_any_post(make_env: Callable[..., Env]) -> None:
    env = make_env(max_rebooks_per_member_per_day=1)
    (r1, _), (r2, _) = rescheduling_many(env, 2)
    assert env.flow.reschedule(r1) == "booked"
    assert env.flow.reschedule(r2) == "parked"
    rec = env.get(r2)
    assert rec.state is State.NEEDS_ATTENTION and rec.reason == "member_cap"
    assert env.calls("RescheduleMadeBooking") == 1
    # a retry the same day parks again, still before any POST
    env.flow.retry(r2)
    assert env.flow.reschedule(r2) == "parked"
    assert env.calls("RescheduleMadeBooking") == 1


def test_a_presence_answer_without_the_flag_is_unreadable_not_offline(env: Env) -> None:
    env.member()
    rid = env.submit(env.sandbox.add_booking("alice", 7))
    env.sandbox.set_online(7, True)
    env.sandbox.fault("getUserSummary", "presence_no_flag")
    assert env.flow.check_presence(7) == "error"
    assert env.get(rid).state is State.WAITING
    assert env.store.presence.presence_seen(7).answer == "unknown"
    assert env.store.sweep.stats()["presence"]["unreadable"] == 1
    last = env.store.presence.last_presence_unreadable()
    assert last["performer_id"] == 7 and "AvailableNowWebcam" in last["why"]


def test_a_presence_answer_about_another_user_is_unreadable(env: Env) -> None:
    env.member()
    rid = env.submit(env.sandbox.add_booking("alice", 7))
    env.sandbox.fault("getUserSummary", "presence_other_user")  # says "online", of user 8
    assert env.flow.check_presence(7) == "error"
    assert env.get(rid).state is State.WAITING
    assert "UserID 8" in env.store.presence.last_presence_unreadable()["why"]
    env.store.r.delete(env.store.keys.window("presence:7"))  # the next interval
    env.sandbox.set_online(7, True)
    assert env.flow.check_presence(7) == "online"


def test_a_fault_is_logged_once_as_an_error_not_per_call(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """One ERROR (one Sentry event through the logging integration) per fault."""
    members = [f"m{i}" for i in range(3)]
    for m in members:
        env.member(m)
    rids = [rescheduling(env, performer=20 + i, user=m)[0] for i, m in enumerate(members)]
    env.sandbox.fault("*", "missing_scope", count=100)
    env.store.circuit.cache_seconds = 0.0
    with caplog.at_level("INFO"):
        for rid in rids:
            env.store.r.delete(env.store.keys.paused("probe"))  # a new probe interval each
            assert env.flow.reschedule(rid) == "paused"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "deployment fault" in errors[0].getMessage()
    assert env.calls("MadeBookings") == 3  # refused three times, logged as an error once


def test_nobody_gives_up_while_a_wrong_key_hides_presence(env: Env) -> None:
    env.member()
    rid = env.submit(env.sandbox.add_booking("alice", 7), max_wait_seconds=1)
    env.sandbox.fault("getUserSummary", "api_key_refused")
    assert env.flow.check_presence(7) == "paused"
    env.clock.advance(5)  # past the max wait
    env.flow.sweep()  # the probe may go: the fault is still there (a second refusal below)
    env.sandbox.fault("getUserSummary", "api_key_refused", count=10)
    env.flow.sweep()
    assert env.get(rid).state is State.WAITING
    env.store.circuit.close("fixed")
    env.clock.advance(1.25 * env.flow.kit._pause_wait() + 1)  # past any jittered pause
    env.flow.sweep()
    assert env.get(rid).state is State.GAVE_UP  # after the fix, the wait ends as it would have
