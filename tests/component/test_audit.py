"""The audit against the real store and the sandbox over HTTP: records made by the flow's own
steps, bookings made behind rebook's back by the sandbox's control endpoints."""

from __future__ import annotations

from collections.abc import Callable

from tests.component.test_flow import Env, env, make_env, watching  # noqa: F401 (fixtures)
from worker.core.audit import Auditor, Report, append_new, counts, recorded
from worker.core.errors import DeploymentFault
from worker.core.states import State


def audit(env: Env) -> Report:  # noqa: F811
    return Auditor(env.settings, env.store, env.svc.client, env.svc.tokens, clock=env.clock).run()


def test_a_clean_run_checks_the_member_and_finds_nothing(env: Env) -> None:  # noqa: F811
    watching(env)
    # the member also books by hand: not a finding
    env.sandbox.add_booking("alice", 7, age_seconds=0)
    report = audit(env)
    assert report.as_json()["findings"] == []
    assert report.checked_members == 1 and not report.unchecked
    assert report.calls == 1


def test_a_double_made_elsewhere_is_found_once(env: Env) -> None:  # noqa: F811
    rid, orig, new = watching(env)
    other = env.sandbox.reschedule_elsewhere(orig)
    (finding,) = audit(env).findings
    assert finding.kind == "double"
    assert finding.booking_id == orig
    assert finding.new_booking_ids == tuple(sorted((new, other)))
    assert finding.rebook_ids == (rid,)
    assert [f.kind for f in append_new(env.store, [finding])] == ["double"]
    again = audit(env).findings
    assert again == [] or append_new(env.store, again) == []
    assert [f for _, f in recorded(env.store)] == [finding]
    assert counts(env.store) == {"double": 1, "orphan": 0, "missing": 0}


def test_an_orphan_and_a_missing_booking(env: Env) -> None:  # noqa: F811
    env.member()
    waiting_orig = env.sandbox.add_booking("alice", 8)
    waiting = env.submit(waiting_orig, performer=8)
    assert env.get(waiting).state is State.WAITING
    _rid, orig, new = watching(env)
    stray = env.sandbox.reschedule_elsewhere(waiting_orig)
    env.sandbox.remove_booking(new)
    found = {(f.kind, f.booking_id, f.new_booking_ids) for f in audit(env).findings}
    assert found == {("orphan", waiting_orig, (stray,)), ("missing", orig, (new,))}


def test_an_unreadable_list_is_not_clean(make_env: Callable[..., Env]) -> None:  # noqa: F811
    env = make_env()  # noqa: F811
    watching(env)
    env.sandbox.fault("MadeBookings", "http_500", count=50)
    report = audit(env)
    assert report.checked_members == 0
    assert [u.user_id for u in report.unchecked] == ["alice"]
    assert report.findings == []


def test_a_run_out_of_time_defers_and_a_pass_goes_on_where_it_stopped(env: Env) -> None:  # noqa: F811
    watching(env)
    env.member("bob")
    orig = env.sandbox.add_booking("bob", 9)
    env.submit(orig, user="bob", performer=9)
    auditor = Auditor(env.settings, env.store, env.svc.client, env.svc.tokens, clock=env.clock)
    out_of_time = auditor.run(budget_seconds=0)
    assert (out_of_time.checked_members, out_of_time.deferred) == (0, 2)
    started = env.clock()
    auditor.mark_checked("alice")
    rest = auditor.run(done_since=started)
    assert rest.checked_members == 1 and rest.unchecked == []
    # a new pass: the least recently checked first, everyone again
    assert auditor._least_recently_checked(["alice", "bob"], None) == ["bob", "alice"]
    assert auditor.run().checked_members == 2


def test_a_refused_api_key_leaves_members_unchecked(env: Env) -> None:  # noqa: F811
    watching(env)
    env.store.circuit.open(DeploymentFault("api_key", "refused"))  # calls paused, none sent
    report = audit(env)
    assert report.checked_members == 0 and report.findings == []
    assert [u.user_id for u in report.unchecked] == ["alice"]
