"""Flow decisions, step by step, with the real store and the real sandbox over HTTP.

Celery is replaced by a recording dispatcher: each test calls the flow's steps itself and checks
what the flow asked to run next. Time that must pass (grace periods, AcceptBy, max wait) is moved
with the flow's `clock`, never slept.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from rebook_dev.sandbox import SandboxClient, SandboxServer
from tests.conftest import wait_for
from worker.adapters.upstream import UpstreamClient
from worker.celeryapp.runtime import Services, build_services
from worker.core.capacity import presence_budget
from worker.core.errors import StoreUnavailable, Throttled
from worker.core.flow import LEARNING_READS, PERFORMER_FIELD_ANSWERS, Flow, Refused
from worker.core.models import TokenSet
from worker.core.settings import Settings
from worker.core.states import State
from worker.core.store import Rebook, rebook_id_for
from worker.core.store.client import is_store_fault

from ..conftest import fast_settings


class Recorder:
    """A Dispatcher that only writes down what it was asked to run."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.urgent: list[bool] = []
        self.at: list[float | None] = []

    def check_presence(
        self, performer_id: int | None, rebook_id: str | None = None, at: float | None = None
    ) -> None:
        self.calls.append(("check_presence", performer_id, rebook_id))
        self.at.append(at)

    def reschedule(self, rebook_id: str, urgent: bool = False) -> None:
        self.calls.append(("reschedule", rebook_id))
        self.urgent.append(urgent)

    def watch(self, rebook_id: str, booking: dict[str, Any]) -> None:
        self.calls.append(("watch", rebook_id, booking))

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]


class Clock:
    """Real time plus an offset the test moves forward: the flow's clock, and the server's
    (`Store.server_clock`: the proof's windows are timed on Redis's clock, so moving time past
    them moves that one too; the skew tests below give a flow a clock of its own, and the
    `real_time` ones keep Redis's own `TIME`)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Env:
    settings: Settings
    svc: Services
    sandbox: SandboxClient
    rec: Recorder
    clock: Clock
    flow: Flow
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def store(self) -> Any:
        return self.svc.store

    def get(self, rid: str) -> Rebook:
        found = self.store.records.get(rid)
        assert found is not None
        return found

    def member(self, user: str = "alice", **kw: Any) -> dict[str, Any]:
        answer = self.sandbox.add_user(user, **kw)
        self.svc.token_store.save(user, TokenSet.from_token_response(answer, time.time()))
        return answer

    def submit(
        self,
        booking_id: int,
        event_id: str | None = None,
        *,
        user: str = "alice",
        performer: int | None = 7,
        **extra: Any,
    ) -> str:
        event_id = event_id or f"evt-{booking_id}"
        kwargs: dict[str, Any] = {"event_id": event_id, "booking_id": booking_id, "user_id": user}
        if performer is not None:
            kwargs["performer_id"] = performer
        kwargs.update(extra)
        result = self.flow.intake((), kwargs)
        assert result in ("created", "exists", "duplicate"), result
        return rebook_id_for(event_id)

    def outcomes(self, rid: str | None = None) -> list[dict[str, str]]:
        rows = self.store.outcomes.outcomes(count=1000)
        return [o for o in rows if rid is None or o["rebook_id"] == rid]

    def new_bookings(self) -> dict[str, int]:
        result: dict[str, int] = self.sandbox.stats()["new_bookings"]
        return result

    def calls(self, endpoint: str) -> int:
        return int(self.sandbox.stats()["calls"][endpoint])


@pytest.fixture
def make_env(
    redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient, prefix: str
) -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def build(*, real_time: bool = False, **extra: Any) -> Env:
        settings = fast_settings(redis_url, sandbox_server.url, prefix, **extra)
        svc = build_services(settings)
        rec, clock = Recorder(), Clock()
        if not real_time:
            svc.store.server_clock = clock
        env = Env(
            settings,
            svc,
            sandbox,
            rec,
            clock,
            Flow(settings, svc.store, svc.client, svc.tokens, rec, clock=clock),
        )
        made.append(env)
        return env

    yield build
    for env in made:
        for close in env.closers:
            close()
        env.svc.client.close()
        keys = list(env.store.r.scan_iter(match=prefix + "*", count=1000))
        if keys:
            env.store.r.delete(*keys)
        env.store.r.close()


@pytest.fixture
def env(make_env: Callable[..., Env]) -> Env:
    return make_env()


def confirm_field(env: Env, key: str = "UserID") -> None:
    """The performer field confirmed, as answers of known meaning would (3 over 2 performers)."""
    for bid, pid in ((900_001, 7), (900_002, 8), (900_003, 7)):
        env.store.performer_field.learn_performer_field(
            {key: pid}, pid, bid, answers=PERFORMER_FIELD_ANSWERS, performers=2
        )
    assert env.store.performer_field.performer_field() == key


def rescheduling_many(
    env: Env, n: int, performer: int = 7, user: str = "alice"
) -> list[tuple[str, int]]:
    """A member, `n` original bookings, their rebooks, the performer online: RESCHEDULING.

    One presence check moves them all, so call this once per performer and test.
    """
    if env.svc.token_store.load(user) is None:
        env.member(user)
    made = []
    for _ in range(n):
        orig = env.sandbox.add_booking(user, performer)
        made.append((env.submit(orig, performer=performer, user=user), orig))
    env.sandbox.set_online(performer, True)
    assert env.flow.check_presence(performer) == "online"
    for rid, _ in made:
        assert env.get(rid).state is State.RESCHEDULING
    return made


def rescheduling(env: Env, performer: int = 7, user: str = "alice") -> tuple[str, int]:
    (one,) = rescheduling_many(env, 1, performer, user)
    return one


def watching(env: Env, performer: int = 7) -> tuple[str, int, int]:
    rid, orig = rescheduling(env, performer)
    assert env.flow.reschedule(rid) == "booked"
    rec = env.get(rid)
    assert rec.state is State.WATCHING and rec.new_booking_id is not None
    return rid, orig, rec.new_booking_id


def reconcile_until(env: Env, rid: str, want: str, limit: int = 12) -> list[str]:
    """Runs `reschedule` as the proof's reads come due, until it answers `want`."""
    seen = []
    for _ in range(limit):
        got = env.flow.reschedule(rid)
        seen.append(got)
        if got == want:
            return seen
        assert got in ("grace", "proving", "retry", "throttled"), seen
        env.clock.advance(env.settings.reconcile_window_seconds / 2)
    raise AssertionError(f"never {want}: {seen}")


# --- intake ---------------------------------------------------------------------------------------


def test_intake_created_dispatches_one_presence_check(env: Env) -> None:
    confirm_field(env)  # (while it is not, intake also asks for a read of the original)
    env.member()
    b1 = env.sandbox.add_booking("alice", 7)
    before = env.clock()
    assert (
        env.flow.intake(
            (),
            {
                "event_id": "e1",
                "booking_id": b1,
                "user_id": "alice",
                "performer_id": 7,
                "trace": "ignored",
            },
        )
        == "created"
    )
    rid = rebook_id_for("e1")
    assert env.rec.calls == [("check_presence", 7, None)]
    rec = env.get(rid)
    assert rec.state is State.WAITING
    assert rec.performer_id == 7 and rec.booking_id == b1 and rec.user_id == "alice"
    assert before + 43200 <= rec.deadline_ts <= env.clock() + 43200
    # redelivery of the same event: nothing new
    assert env.flow.intake((), {"event_id": "e1", "booking_id": b1, "user_id": "alice"}) == "exists"
    assert env.rec.calls == [("check_presence", 7, None)]
    # another rebook waiting on the same performer does not need another check
    b2 = env.sandbox.add_booking("alice", 7)
    env.submit(b2, "e2")
    assert env.rec.calls == [("check_presence", 7, None)]


def test_intake_max_wait_counts_from_receipt(env: Env) -> None:
    rid = env.submit(123, max_wait_seconds=60)
    rec = env.get(rid)
    assert rec.deadline_ts - rec.created_ts == pytest.approx(60, abs=0.01)


def test_intake_invalid_goes_to_the_dead_letters(env: Env) -> None:
    bad = {
        "event_id": "has space",
        "booking_id": "12",
        "user_id": "u",
        "access_token": "SECRET-TOKEN",
    }
    assert env.flow.intake((), bad, task_id="task-1") == "invalid"
    assert env.flow.intake(("positional",), {}, task_id="task-2") == "invalid"
    assert env.rec.calls == []
    assert env.store.records.list_rebooks(limit=0) == []
    letters = env.store.outcomes.deadletters()
    assert len(letters) == 2
    first = next(d for d in letters if d["task_id"] == "task-1")
    assert "event_id" in first["reason"] and "booking_id" in first["reason"]
    assert first["task"] == "rebook.request"
    assert "SECRET-TOKEN" not in first["payload"]
    assert json.loads(first["payload"])["kwargs"]["user_id"] == "u"
    assert env.store.sweep.stats()["deadletter"] == 2


def test_intake_duplicate(env: Env) -> None:
    first = env.submit(555, "e1")
    calls = list(env.rec.calls)
    assert (
        env.flow.intake(
            (), {"event_id": "e2", "booking_id": 555, "user_id": "alice", "performer_id": 7}
        )
        == "duplicate"
    )
    assert env.rec.calls == calls
    dup = env.get(rebook_id_for("e2"))
    assert dup.state is State.DUPLICATE and dup.duplicate_of == first
    (out,) = env.outcomes(dup.rebook_id)
    assert out["state"] == "DUPLICATE"
    assert env.get(first).state is State.WAITING


def test_intake_is_not_acknowledged_before_the_replicas_have_it(
    make_env: Callable[..., Env],
) -> None:
    """With `REBOOK_REDIS_WAIT_REPLICAS`, an event the replicas do not hold is handed back (a
    store fault), never acknowledged: a failover to a replica without it would lose it. The
    test Redis has no replica, so `WAIT` answers 0."""
    env = make_env(redis_wait_replicas=1, redis_wait_timeout_ms=20)
    with pytest.raises(StoreUnavailable, match="0 of 1 replicas"):
        env.submit(555, "e1")
    assert is_store_fault(StoreUnavailable("x"))
    with pytest.raises(StoreUnavailable):  # redelivered: the same answer, still unacknowledged
        env.submit(555, "e1")
    assert env.rec.calls == []


# --- presence -------------------------------------------------------------------------------------


def test_offline_stays_waiting_and_checks_coalesce(env: Env) -> None:
    env.member()
    rids = [env.submit(env.sandbox.add_booking("alice", 7)) for _ in range(5)]
    assert env.flow.check_presence(7) == "offline"
    for _ in range(5):
        assert env.flow.check_presence(7) == "coalesced"
    assert env.sandbox.stats()["presence_calls"] == {"7": 1}
    assert all(env.get(r).state is State.WAITING for r in rids)
    assert env.rec.of("reschedule") == []
    due = env.store.presence.performer_due(7)
    assert due is not None and env.clock() < due <= env.clock() + 0.3 + 0.05


def test_online_moves_every_waiting_rebook(env: Env) -> None:
    env.member()
    on7 = [env.submit(env.sandbox.add_booking("alice", 7)) for _ in range(3)]
    on8 = env.submit(env.sandbox.add_booking("alice", 8), performer=8)
    env.sandbox.set_online(7, True)
    assert env.flow.check_presence(7) == "online"
    assert sorted(c[1] for c in env.rec.of("reschedule")) == sorted(on7)
    assert env.rec.urgent == [True, False, False], "only the first jumps the queue"
    assert all(env.get(r).state is State.RESCHEDULING for r in on7)
    assert env.get(on8).state is State.WAITING
    assert env.store.presence.waiting_for(7) == []
    assert env.sandbox.stats()["presence_calls"] == {"7": 1}


def test_presence_is_checked_again_after_the_interval(env: Env) -> None:
    rid = env.submit(env.sandbox.add_booking("alice", 7))
    assert env.flow.check_presence(7) == "offline"
    env.sandbox.set_online(7, True)
    results: list[str] = []
    wait_for(
        lambda: results.append(env.flow.check_presence(7)) or results[-1] != "coalesced",
        5,
        "the presence interval passing",
    )
    assert results[-1] == "online"
    assert env.sandbox.stats()["presence_calls"] == {"7": 2}
    assert env.get(rid).state is State.RESCHEDULING


def test_presence_idle_costs_no_call(env: Env) -> None:
    assert env.flow.check_presence(42) == "idle"
    assert env.sandbox.stats()["presence_calls"] == {}


def test_presence_error_keeps_waiting(env: Env) -> None:
    rid = env.submit(env.sandbox.add_booking("alice", 7))
    env.sandbox.fault("getUserSummary", "http_503")
    assert env.flow.check_presence(7) == "error"
    assert env.get(rid).state is State.WAITING
    due = env.store.presence.performer_due(7)
    assert due is not None and due >= env.clock() + 0.25


def test_presence_gives_way_to_the_rate_budget_without_losing_its_turn(
    make_env: Callable[..., Env],
) -> None:
    env = make_env(upstream_rate_per_second=1)  # one call a second, no burst
    env.submit(env.sandbox.add_booking("alice", 7))
    env.submit(env.sandbox.add_booking("alice", 8), performer=8)
    assert env.flow.check_presence(7) == "offline"  # spends this second's budget
    assert env.flow.check_presence(8) == "throttled"  # a presence poll does not sit and wait
    due = env.store.presence.performer_due(8)
    due7 = env.store.presence.performer_due(7)
    # it keeps its place in the line: due now, ahead of the one just polled (not pushed back)
    assert due is not None and due7 is not None and due <= env.clock() < due7
    # the call was not made, so the performer's turn was not used up: not "coalesced"
    assert env.flow.check_presence(8) == "throttled"
    assert env.sandbox.stats()["presence_calls"] == {"7": 1}


def test_performer_is_resolved_from_the_original_booking(env: Env) -> None:
    confirm_field(env)
    env.member()
    orig = env.sandbox.add_booking("alice", 9)
    rid = env.submit(orig, performer=None)
    assert env.rec.calls == [("check_presence", None, rid)]
    assert env.get(rid).performer_id is None
    assert env.flow.check_presence(None, rid) == "resolved"
    rec = env.get(rid)
    assert rec.performer_id == 9 and rec.state is State.WAITING
    assert env.rec.calls[-1] == ("check_presence", 9, None)
    assert env.store.presence.waiting_for(9) == [rid]
    # resolving again is a no-op
    assert env.flow.check_presence(None, rid) == "noop"


def test_unreadable_original_booking_fails(env: Env) -> None:
    confirm_field(env)
    env.member()
    env.member("bob")
    not_hers = env.sandbox.add_booking("bob", 9)
    rid = env.submit(not_hers, performer=None)
    assert env.flow.check_presence(None, rid) == "failed"
    rec = env.get(rid)
    assert rec.state is State.FAILED
    assert "Booking not found" in rec.reason


# --- reschedule -----------------------------------------------------------------------------------


def test_reschedule_books_and_hands_over_to_watch(env: Env) -> None:
    rid, orig = rescheduling(env)
    assert env.rec.of("reschedule") == [("reschedule", rid)]
    assert env.flow.reschedule(rid) == "booked"
    rec = env.get(rid)
    assert rec.state is State.WATCHING and rec.new_booking_id is not None
    assert rec.accept_by.endswith("Z")
    assert rec.accept_by_ts == pytest.approx(time.time() + 600, abs=30)
    assert rec.status == "Pending"
    assert env.rec.of("watch") == [
        (
            "watch",
            rid,
            {"booking_id": rec.new_booking_id, "accept_by": rec.accept_by, "status": "Pending"},
        )
    ]
    (booked,) = env.outcomes(rid)
    assert booked["state"] == "BOOKED"
    assert booked["new_booking_id"] == str(rec.new_booking_id)
    assert booked["accept_by"] == rec.accept_by
    assert booked["booking_id"] == str(orig)
    assert booked["at"].endswith("Z")
    assert env.store.records.owner_of(rec.new_booking_id) == rid
    assert env.new_bookings() == {str(orig): 1}
    # a redelivered reschedule message does nothing
    assert env.flow.reschedule(rid) == "noop"
    assert env.new_bookings() == {str(orig): 1}
    hist = [(h["from"], h["to"]) for h in env.store.records.history(rid)]
    assert hist == [("", "WAITING"), ("WAITING", "RESCHEDULING"), ("RESCHEDULING", "WATCHING")]


def test_concurrent_reschedules_make_one_booking(env: Env) -> None:
    rid, orig = rescheduling(env)
    barrier = threading.Barrier(4)
    results: list[str] = []

    def run() -> None:
        barrier.wait(timeout=5)
        results.append(env.flow.reschedule(rid))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results).count("booked") == 1
    assert set(results) <= {"booked", "busy", "noop"}
    assert env.new_bookings() == {str(orig): 1}


@pytest.mark.parametrize("kind", ["http_500_after_commit", "timeout_after_commit", "bad_json"])
def test_ambiguous_after_commit_is_reconciled_not_reposted(
    make_env: Callable[..., Env], kind: str
) -> None:
    env = make_env(http_timeout_seconds=0.3)
    rid, orig = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", kind, delay=0.8)
    assert env.flow.reschedule(rid) == "ambiguous"
    rec = env.get(rid)
    assert rec.state is State.RESCHEDULING and rec.post_sent_ts is not None
    assert env.rec.of("watch") == []
    assert env.new_bookings() == {str(orig): 1}
    made = env.sandbox.stats()
    env.clock.advance(env.settings.reconcile_grace_seconds + 0.1)
    assert env.flow.reschedule(rid) == "booked"
    rec = env.get(rid)
    assert rec.state is State.WATCHING
    # the booking found is the one the ambiguous POST made, and no second POST went out
    assert env.sandbox.booking(rec.new_booking_id)["original_id"] == orig
    assert env.new_bookings() == {str(orig): 1}
    assert env.calls("RescheduleMadeBooking") == made["calls"]["RescheduleMadeBooking"] == 1
    assert [o["state"] for o in env.outcomes(rid)] == ["BOOKED"]


def test_http_500_without_commit_posts_again_only_after_the_proof(env: Env) -> None:
    rid, orig = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_500")
    assert env.flow.reschedule(rid) == "ambiguous"
    assert env.new_bookings() == {}
    # no read counts within the grace period after the answer
    assert env.flow.reschedule(rid) == "grace"
    env.clock.advance(env.settings.reconcile_grace_seconds + 0.01)
    # one empty read is no proof: the next is due at the end of the window
    assert env.flow.reschedule(rid) == "proving"
    assert env.get(rid).empty_reads == 1
    assert env.flow.reschedule(rid) == "grace"
    assert env.calls("RescheduleMadeBooking") == 1
    env.clock.advance(env.settings.reconcile_window_seconds)
    assert env.flow.reschedule(rid) == "booked"
    assert env.calls("RescheduleMadeBooking") == 2
    assert env.new_bookings() == {str(orig): 1}
    assert env.get(rid).state is State.WATCHING


def test_a_booking_the_member_made_meanwhile_is_neither_adopted_nor_taken_for_proof(
    env: Env,
) -> None:
    """The POST fails without committing; meanwhile the member books the same performer
    themselves. That booking is new to the list, so it is no proof that the POST made nothing,
    and it does not look made by a reschedule, so it is not adopted either: the rebook parks,
    and an operator who has checked it upstream says so (`retry --not-ours`). (The performer
    field is confirmed: see the `unverified_shape` tests for the same while it is not.)"""
    confirm_field(env)
    rid, orig = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_500")
    assert env.flow.reschedule(rid) == "ambiguous"
    theirs = env.sandbox.add_booking("alice", 7, age_seconds=0)
    env.clock.advance(env.settings.reconcile_grace_seconds + 0.01)
    assert env.flow.reschedule(rid) == "proving"
    assert str(theirs) in env.get(rid).reason
    env.clock.advance(env.settings.reconcile_window_seconds)
    assert env.flow.reschedule(rid) == "parked"
    rec = env.get(rid)
    assert rec.state is State.NEEDS_ATTENTION and rec.reason == "ambiguous_reschedule"
    assert rec.new_booking_id is None and env.calls("RescheduleMadeBooking") == 1
    with pytest.raises(Refused):  # only an unsettled POST has anything to vouch for
        env.flow.retry(watching(env, performer=8)[0], not_ours=[theirs])
    env.flow.retry(rid, not_ours=[theirs])
    assert theirs in (env.get(rid).known_ids or [])
    reconcile_until(env, rid, "booked")
    new = env.get(rid).new_booking_id
    assert new is not None and new != theirs
    assert env.sandbox.booking(new)["original_id"] == orig
    assert env.new_bookings()[str(orig)] == 1


def test_another_rebooks_original_is_not_taken_for_what_the_post_made(env: Env) -> None:
    """The site creates a second original for the same member and performer just after the
    first POST, and sends its event: it is that rebook's booking, never the first one's."""
    rid, orig = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_500")
    assert env.flow.reschedule(rid) == "ambiguous"
    second = env.sandbox.add_booking("alice", 7, age_seconds=0)
    env.submit(second)
    reconcile_until(env, rid, "booked")
    new = env.get(rid).new_booking_id
    assert new != second and env.sandbox.booking(new)["original_id"] == orig
    assert env.new_bookings()[str(orig)] == 1


def test_a_late_commit_inside_the_window_is_adopted_not_doubled(env: Env) -> None:
    rid, orig = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_504_commit_later", commit_delay=0.5)
    assert env.flow.reschedule(rid) == "ambiguous"
    env.clock.advance(env.settings.reconcile_grace_seconds + 0.01)
    assert env.flow.reschedule(rid) == "proving"  # nothing yet
    wait_for(lambda: env.new_bookings(), what="the late commit")
    env.clock.advance(env.settings.reconcile_window_seconds)
    assert env.flow.reschedule(rid) == "booked"
    assert env.calls("RescheduleMadeBooking") == 1
    assert env.new_bookings() == {str(orig): 1}


def skewed(env: Env, seconds: float) -> Flow:
    """Another worker of the same deployment, its clock `seconds` off the test's."""
    return Flow(
        env.settings,
        env.store,
        env.svc.client,
        env.svc.tokens,
        env.rec,
        clock=lambda: env.clock() + seconds,
    )


def test_the_proof_s_times_are_redis_s_clock_not_the_worker_s(
    make_env: Callable[..., Env],
) -> None:
    """The mark and the answer are Redis's `TIME`, whatever the POSTing worker's clock says
    (here two minutes behind), and the mark compares as the record has it."""
    env = make_env(real_time=True)
    rid, _ = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_500")
    before = env.store.server_time()
    assert skewed(env, -120).reschedule(rid) == "ambiguous"
    after = env.store.server_time()
    rec = env.get(rid)
    assert rec.post_sent_ts is not None and rec.answer_ts is not None
    assert before <= rec.post_sent_ts <= rec.answer_ts <= after
    assert env.store.r.hget(env.store.key("r", rid), "post_sent_ts") == repr(rec.post_sent_ts)


@pytest.mark.parametrize("ahead", [120.0, 7200.0])
def test_a_worker_clock_ahead_cannot_end_the_proof_early(
    make_env: Callable[..., Env], ahead: float
) -> None:
    """The POST's answer is ambiguous and its booking commits late, inside the window. A worker
    whose clock runs minutes ahead reconciles: on its own clock the window is long past, yet
    its first read is not even due (Redis's clock says so), and the booking it finds in the
    end is adopted: one POST, one booking."""
    env = make_env(real_time=True)
    rid, orig = rescheduling(env)
    window = env.settings.reconcile_window_seconds
    env.sandbox.fault("RescheduleMadeBooking", "http_504_commit_later", commit_delay=window * 0.75)
    assert env.flow.reschedule(rid) == "ambiguous"
    fast = skewed(env, ahead)
    assert fast.reschedule(rid) == "grace"
    assert env.new_bookings() == {} and env.get(rid).empty_reads == 0
    seen: list[str] = []

    def step() -> bool:
        seen.append(fast.reschedule(rid))
        assert seen[-1] in ("grace", "proving", "booked"), seen
        return seen[-1] == "booked"

    wait_for(step, timeout=10, what="the proof, on Redis's clock")
    assert env.calls("RescheduleMadeBooking") == 1
    assert env.new_bookings() == {str(orig): 1}
    assert env.sandbox.booking(env.get(rid).new_booking_id)["original_id"] == orig


def test_a_worker_clock_behind_is_no_reason_to_wait_longer(make_env: Callable[..., Env]) -> None:
    """The other way round: a worker two minutes behind proves "not made" once Redis's clock
    says the window has passed (its due times are its own clock's: the proof's delay from
    now), and POSTs again: no two-minute stall."""
    env = make_env(real_time=True)
    rid, orig = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_500")
    assert env.flow.reschedule(rid) == "ambiguous"
    slow = skewed(env, -120)
    assert slow.reschedule(rid) == "grace"
    due = env.store.r.zscore(env.store.key("due"), rid)
    assert due is not None and due <= slow.clock() + env.settings.reconcile_window_seconds
    wait_for(lambda: slow.reschedule(rid) == "booked", timeout=10, what="proof, then POST")
    assert env.calls("RescheduleMadeBooking") == 2
    assert env.new_bookings() == {str(orig): 1}


def test_a_throttled_reconcile_read_counts_nothing(make_env: Callable[..., Env]) -> None:
    env = make_env(reconcile_max_tries=1)
    rid, _ = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_500_after_commit")
    assert env.flow.reschedule(rid) == "ambiguous"
    env.clock.advance(env.settings.reconcile_grace_seconds + 0.01)
    limiter = env.svc.client._limiter
    env.svc.client._limiter = _Refusing()
    try:
        for _ in range(5):
            assert env.flow.reschedule(rid) == "throttled"
            env.clock.advance(1)
    finally:
        env.svc.client._limiter = limiter
    rec = env.get(rid)
    assert rec.state is State.RESCHEDULING and rec.reconcile_tries == 0
    assert env.flow.reschedule(rid) == "booked"


class _Refusing:
    """A limiter whose budget is always spent."""

    def acquire(self, share: float = 1.0) -> None:
        raise Throttled("shared upstream rate limit", retry_after=0.5)


def test_unreadable_list_parks_after_bounded_tries_then_retry_resumes(
    make_env: Callable[..., Env],
) -> None:
    env = make_env(reconcile_max_tries=2)
    rid, orig = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_500")
    assert env.flow.reschedule(rid) == "ambiguous"
    env.sandbox.fault("MadeBookings", "http_503", count=10)
    env.clock.advance(1)
    assert env.flow.reschedule(rid) == "retry"
    assert env.flow.reschedule(rid) == "parked"
    rec = env.get(rid)
    assert rec.state is State.NEEDS_ATTENTION and rec.reason == "ambiguous_reschedule"
    assert env.calls("RescheduleMadeBooking") == 1  # never a blind re-POST
    (parked,) = [o for o in env.outcomes(rid) if o["state"] == "NEEDS_ATTENTION"]
    assert parked["reason"] == "ambiguous_reschedule"
    # an operator retries once the upstream is readable again
    env.sandbox.clear_faults()
    resumed = env.flow.retry(rid)
    assert resumed.state is State.RESCHEDULING and resumed.post_sent_ts is not None
    assert env.rec.calls[-1] == ("reschedule", rid)
    # the retry reconciles first: the proof starts afresh, then the POST goes again
    assert reconcile_until(env, rid, "booked")[0] == "grace"
    assert env.new_bookings() == {str(orig): 1}


def test_a_list_that_never_reads_before_the_post_parks_after_bounded_tries(
    make_env: Callable[..., Env],
) -> None:
    """The read before a POST fails every time (sim seed 165: an unparseable list, 5xx): the
    rebook parks `list_unreadable` at REBOOK_RECONCILE_MAX_TRIES, nothing sent, instead of
    retrying for hours; a retry once the list reads goes on to the POST."""
    env = make_env(reconcile_max_tries=3)
    rid, orig = rescheduling(env)
    env.sandbox.fault("MadeBookings", "http_503", count=10)
    assert [env.flow.reschedule(rid) for _ in range(3)] == ["retry", "retry", "parked"]
    rec = env.get(rid)
    assert rec.state is State.NEEDS_ATTENTION and rec.reason == "list_unreadable"
    assert rec.post_sent_ts is None and env.calls("RescheduleMadeBooking") == 0
    env.sandbox.clear_faults()
    env.flow.retry(rid)
    assert env.get(rid).reconcile_tries == 0
    assert env.flow.reschedule(rid) == "booked"
    assert env.new_bookings() == {str(orig): 1}


def test_too_many_attempts_parks(make_env: Callable[..., Env]) -> None:
    env = make_env(reschedule_max_attempts=1)
    rid, _ = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_500")
    assert env.flow.reschedule(rid) == "ambiguous"
    env.clock.advance(1)
    reconcile_until(env, rid, "parked")
    rec = env.get(rid)
    assert rec.state is State.NEEDS_ATTENTION and rec.reason == "too_many_attempts"
    assert env.calls("RescheduleMadeBooking") == 1


def test_rate_limited_post_was_not_sent(env: Env) -> None:
    rid, orig = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_429", retry_after=1)
    before = env.clock()
    assert env.flow.reschedule(rid) == "retry"
    rec = env.get(rid)
    assert rec.state is State.RESCHEDULING and rec.post_sent_ts is None and rec.errors == 1
    due = env.store.r.zscore(env.store.key("due"), rid)
    assert before + 1 <= due <= env.clock() + 1.3
    assert env.new_bookings() == {}
    assert env.flow.reschedule(rid) == "booked"
    assert env.new_bookings() == {str(orig): 1}


def test_4xx_while_offline_goes_back_to_waiting(env: Env) -> None:
    rid, _ = rescheduling(env)
    env.sandbox.set_online(7, False)
    assert env.flow.reschedule(rid) == "waiting"
    rec = env.get(rid)
    assert rec.state is State.WAITING and rec.post_sent_ts is None
    assert env.store.presence.waiting_for(7) == [rid]
    assert env.store.presence.performer_due(7) is not None
    assert env.new_bookings() == {}
    assert env.outcomes(rid) == []


def test_4xx_while_online_fails_with_the_upstream_message(env: Env) -> None:
    rid, _ = rescheduling(env)
    env.sandbox.set_online(7, False)

    def back_online(endpoint: str, outcome: str) -> None:
        # the performer comes back between the refused POST and the fresh presence check
        if endpoint == "RescheduleMadeBooking" and outcome == "Rejected":
            env.sandbox.set_online(7, True)

    client = UpstreamClient(
        env.settings.api_base_url,
        env.settings.api_key.get_secret_value(),
        timeout=2.0,
        on_call=back_online,
    )
    env.closers.append(client.close)
    flow = Flow(env.settings, env.store, client, env.svc.tokens, env.rec, clock=env.clock)
    assert flow.reschedule(rid) == "failed"
    rec = env.get(rid)
    assert rec.state is State.FAILED
    assert "The performer is not online" in rec.reason
    (out,) = env.outcomes(rid)
    assert out["state"] == "FAILED" and "The performer is not online" in out["reason"]
    assert env.new_bookings() == {}


def test_404_on_reschedule_fails(env: Env) -> None:
    env.member()
    env.member("bob")
    not_hers = env.sandbox.add_booking("bob", 7)
    rid = env.submit(not_hers)
    env.sandbox.set_online(7, True)
    assert env.flow.check_presence(7) == "online"
    assert env.flow.reschedule(rid) == "failed"
    assert env.get(rid).state is State.FAILED
    assert "Booking not found" in env.get(rid).reason


def test_reconcile_does_not_take_a_sibling_rebooks_booking(env: Env) -> None:
    env.member()
    b1 = env.sandbox.add_booking("alice", 7)
    b2 = env.sandbox.add_booking("alice", 7)
    r1, r2 = env.submit(b1), env.submit(b2)
    env.sandbox.set_online(7, True)
    assert env.flow.check_presence(7) == "online"
    # r1's POST fails before the upstream acts; r2's POST commits but its answer is lost
    env.sandbox.fault("RescheduleMadeBooking", "http_500")
    assert env.flow.reschedule(r1) == "ambiguous"
    env.sandbox.fault("RescheduleMadeBooking", "http_500_after_commit")
    # r2 may not POST while r1's POST of the same member and performer is unsettled: their
    # bookings could not be told apart in reconciliation
    assert env.flow.reschedule(r2) == "gated"
    assert "waiting for" in env.get(r2).reason
    for _ in range(6):  # r1 settles (proves none, re-POSTs, reconciles), then r2 goes
        env.clock.advance(env.settings.reconcile_grace_seconds + 1)
        env.flow.reschedule(r1)
        env.flow.reschedule(r2)
    assert env.get(r1).state is State.WATCHING and env.get(r2).state is State.WATCHING
    # never two new bookings made from one original (what the sandbox counts) ...
    assert all(n <= 1 for n in env.new_bookings().values()), env.new_bookings()
    # ... and each rebook watches a booking made from its own original
    for rid, orig in ((r1, b1), (r2, b2)):
        new = env.get(rid).new_booking_id
        if new is not None:
            assert env.sandbox.booking(new)["original_id"] == orig


# --- watch ----------------------------------------------------------------------------------------


def test_watch_pending_stays_watching(env: Env) -> None:
    rid, _, _ = watching(env)
    assert env.flow.watch(rid) == "pending"
    rec = env.get(rid)
    assert rec.state is State.WATCHING and rec.status == "Pending"
    due = env.store.r.zscore(env.store.key("due"), rid)
    assert env.clock() < due <= env.clock() + env.settings.watch_interval_seconds
    assert [o["state"] for o in env.outcomes(rid)] == ["BOOKED"]


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("Accepted", State.ACCEPTED),
        ("Rejected", State.REJECTED),
        ("Confirmed", State.CONFIRMED),
        ("Cancelled", State.CANCELLED),
    ],
)
def test_watch_final_status_is_terminal(env: Env, status: str, state: State) -> None:
    rid, orig, new = watching(env)
    env.sandbox.set_status(new, status, reason="because")
    assert env.flow.watch(rid) == state.value.lower()
    rec = env.get(rid)
    assert rec.state is state and rec.status == status
    if status in ("Rejected", "Cancelled"):
        assert rec.reason == "because"
    final = env.outcomes(rid)[-1]
    assert final["state"] == state.value and final["status"] == status
    assert final["new_booking_id"] == str(new) and final["at"].endswith("Z")
    assert final["accept_by"].endswith("Z")
    assert env.calls("ConfirmMadeBooking") == 0  # REBOOK_AUTO_CONFIRM is off by default
    assert env.flow.watch(rid) == "noop"
    # the original booking is free for a new rebook again
    assert (
        env.flow.intake(
            (), {"event_id": "again", "booking_id": orig, "user_id": "alice", "performer_id": 7}
        )
        == "created"
    )


def test_accept_by_passed_while_pending_expires(env: Env) -> None:
    env.sandbox.configure(accept_by_seconds=30)
    rid, _, _ = watching(env)
    assert env.flow.watch(rid) == "pending"
    env.clock.advance(31)
    assert env.flow.watch(rid) == "expired"
    rec = env.get(rid)
    assert rec.state is State.EXPIRED and rec.status == "Pending"
    assert env.outcomes(rid)[-1]["state"] == "EXPIRED"


def test_accepted_at_the_last_read_wins_over_accept_by(env: Env) -> None:
    env.sandbox.configure(accept_by_seconds=30)
    rid, _, new = watching(env)
    env.sandbox.set_status(new, "Accepted")
    env.clock.advance(31)
    assert env.flow.watch(rid) == "accepted"
    assert env.get(rid).state is State.ACCEPTED


def test_watch_refreshes_the_token_on_401(env: Env) -> None:
    rid, _, _ = watching(env)
    env.sandbox.expire_user("alice")  # the upstream says 401; our clock still says valid
    assert env.flow.watch(rid) == "pending"
    assert env.sandbox.stats()["refreshes"] == 1


def test_watching_costs_one_made_bookings_call_per_member_per_interval(env: Env) -> None:
    env.member()
    rids = []
    for performer in (21, 22, 23, 24):
        rid, _, _ = watching(env, performer=performer)
        rids.append(rid)
    details_before = env.calls("MadeBookingDetails")
    list_before = env.calls("MadeBookings")
    assert [env.flow.watch(rid) for rid in rids] == ["pending"] * 4
    assert env.calls("MadeBookings") - list_before == 1  # one list read covers all four
    assert env.calls("MadeBookingDetails") == details_before
    # a decision upstream is seen at the next interval, by the same single read
    env.sandbox.set_status(env.get(rids[0]).new_booking_id, "Accepted")
    next_watch_interval(env)
    assert [env.flow.watch(rid) for rid in rids] == ["accepted"] + ["pending"] * 3
    assert env.calls("MadeBookings") - list_before == 2


def test_a_watch_while_another_worker_reads_the_list_comes_back_instead_of_reading(
    env: Env,
) -> None:
    """Watches of one member that run at the same moment share the one list read: those that
    find it in progress come back a sweep later rather than each calling MadeBookingDetails."""
    rid, _, _ = watching(env)
    env.store.claim_window("watchlist:alice", 60)  # another worker has just begun the read
    details, lists = env.calls("MadeBookingDetails"), env.calls("MadeBookings")
    before = env.clock()
    assert env.flow.watch(rid) == "deferred"
    assert (env.calls("MadeBookingDetails"), env.calls("MadeBookings")) == (details, lists)
    rec = env.get(rid)
    assert rec.state is State.WATCHING
    due = float(env.store.r.zscore(env.store.key("due"), rid))
    assert before < due <= env.clock() + env.settings.sweep_interval_seconds
    # that worker's read lands in the cache: the next try uses it, with no list read of its own
    env.store.watch.cache_bookings("alice", {}, ttl=60)
    assert env.flow.watch(rid) == "pending"  # not in the list: one MadeBookingDetails, as before
    assert env.calls("MadeBookingDetails") == details + 1
    assert env.calls("MadeBookings") == lists


def test_the_last_read_at_accept_by_is_fresh(env: Env) -> None:
    rid, _, new = watching(env)
    assert env.flow.watch(rid) == "pending"  # caches Pending for the interval
    env.sandbox.set_status(new, "Accepted")
    env.clock.advance(env.settings.reconcile_grace_seconds + 10_000)  # past AcceptBy
    before = env.calls("MadeBookingDetails")
    assert env.flow.watch(rid) == "accepted"  # not EXPIRED from a stale cached Pending
    assert env.calls("MadeBookingDetails") == before + 1


def test_watch_transient_error_retries_later(env: Env) -> None:
    rid, _, _ = watching(env)
    env.sandbox.fault("MadeBookings", "http_503")
    assert env.flow.watch(rid) == "retry"
    rec = env.get(rid)
    assert rec.state is State.WATCHING and rec.errors == 1


# --- sweep ----------------------------------------------------------------------------------------


def test_sweep_gives_up_after_max_wait(env: Env) -> None:
    rid = env.submit(env.sandbox.add_booking("alice", 7), max_wait_seconds=1)
    env.clock.advance(0.5)
    assert env.flow.sweep()["gave_up"] == 0
    env.clock.advance(1)
    counts = env.flow.sweep()
    assert counts["gave_up"] == 1
    rec = env.get(rid)
    assert rec.state is State.GAVE_UP
    (out,) = env.outcomes(rid)
    assert out["state"] == "GAVE_UP"
    assert env.store.presence.waiting_for(7) == []


def test_sweep_redispatches_lost_steps(env: Env) -> None:
    lost_reschedule, _ = rescheduling(env)
    watched, _, new = watching(env, performer=17)
    no_performer = env.submit(999_001, performer=None)
    env.rec.calls.clear()
    env.clock.advance(env.settings.step_lease_seconds + 0.1)
    counts = env.flow.sweep()
    assert counts["rebooks"] >= 3
    assert ("reschedule", lost_reschedule) in env.rec.calls
    assert ("check_presence", None, no_performer) in env.rec.calls
    (w,) = [c for c in env.rec.of("watch") if c[1] == watched]
    assert w[2]["booking_id"] == new
    # claimed: the next sweep within the lease dispatches nothing again
    env.rec.calls.clear()
    env.flow.sweep()
    assert env.rec.calls == []


def test_sweep_dispatches_due_presence_checks(env: Env) -> None:
    env.submit(env.sandbox.add_booking("alice", 7))
    env.rec.calls.clear()
    env.rec.at.clear()
    assert env.flow.sweep()["performers"] == 0
    env.clock.advance(env.settings.step_lease_seconds + 0.1)
    assert env.flow.sweep()["performers"] == 1
    assert env.rec.calls == [("check_presence", 7, None)]
    assert env.rec.at == [None]  # overdue: at once


def test_sweep_sends_a_presence_check_due_before_the_next_sweep_to_run_on_time(env: Env) -> None:
    env.submit(env.sandbox.add_booking("alice", 7))
    assert env.flow.check_presence(7) == "offline"
    due = env.store.presence.performer_due(7)
    assert due is not None
    env.rec.calls.clear()
    env.rec.at.clear()
    env.clock.advance(due - env.clock() - env.settings.sweep_interval_seconds / 2)
    assert env.flow.sweep()["performers"] == 1
    assert env.rec.calls == [("check_presence", 7, None)] and env.rec.at == [due]
    assert env.store.presence.performer_due(7) == due + env.settings.step_lease_seconds


def test_sweep_hands_out_the_presence_budget_least_recently_polled_first(
    make_env: Callable[..., Env],
) -> None:
    """A short budget: one sweep claims only its budget's worth, the longest due first, paced one
    budget slot apart; the rest keep their place for the next sweep."""
    env = make_env(upstream_rate_per_second=10, sweep_interval_seconds=0.5)
    budget = presence_budget(10)  # 9 calls per 1.05 s
    exact = budget * 0.5
    share = math.floor(exact)
    pids = list(range(100, 112))
    for pid in pids:
        env.submit(env.sandbox.add_booking("alice", pid), performer=pid)
    # due times: performer 111 the longest overdue, 100 the least
    now = env.clock()
    for k, pid in enumerate(pids):
        env.store.presence.schedule_performer(pid, now - 1 - k * 0.01)
    env.rec.calls.clear()
    env.rec.at.clear()
    share = env.flow.sweep()["performers"]
    assert share in (math.floor(exact), math.floor(exact) + 1)
    got = [c[1] for c in env.rec.of("check_presence")]
    assert got == list(reversed(pids))[:share]
    ats = [a or now for a in env.rec.at]
    gaps = [b - a for a, b in itertools.pairwise(ats)]
    assert all(abs(g - 1 / budget) < 0.05 for g in gaps[1:]), gaps
    # the next sweep hands out the next in line, the ones just claimed are not among them
    env.rec.calls.clear()
    more = env.flow.sweep()["performers"]
    assert [c[1] for c in env.rec.of("check_presence")] == list(reversed(pids))[
        share : share + more
    ]


def test_a_throttled_check_goes_back_to_its_place_in_the_line(
    make_env: Callable[..., Env],
) -> None:
    """Throttled after the sweep claimed it: back to the due time it was claimed at, ahead of
    those due after it, not behind everyone polled since."""
    env = make_env(upstream_rate_per_second=1)
    for pid in (7, 8, 9):
        env.submit(env.sandbox.add_booking("alice", pid), performer=pid)
    now = env.clock()
    env.store.presence.schedule_performer(8, now - 3)  # the least recently polled
    env.store.presence.schedule_performer(9, now - 2)
    env.store.presence.schedule_performer(7, now - 1)
    env.rec.calls.clear()
    env.flow.sweep()  # a budget of one per sweep: 8 alone
    assert [c[1] for c in env.rec.of("check_presence")] == [8]
    claimed = env.store.presence.performer_due(8)
    assert claimed is not None and claimed > now + env.settings.step_lease_seconds / 2
    sec, usec = env.store.r.time()
    env.store.r.zadd(env.store.key("ratelimit", "log"), {"busy": sec * 1_000_000 + usec})
    assert env.flow.check_presence(8) == "throttled"
    assert env.store.presence.performer_due(8) == pytest.approx(now - 3)
    env.rec.calls.clear()
    env.flow.sweep()  # first in line again
    assert [c[1] for c in env.rec.of("check_presence")] == [8]
    assert env.sandbox.stats()["presence_calls"] == {}


def test_a_presence_check_on_time_waits_out_the_last_window_s_last_moment(env: Env) -> None:
    """The window of the last check began a round trip after its due time was taken: a check
    sent for that due time finds it open a hair longer and waits, rather than a whole sweep."""
    env.submit(env.sandbox.add_booking("alice", 7))
    env.store.r.set(env.store.key("presence", 7), "1", px=20)  # the last window: 20 ms to go
    assert env.flow.check_presence(7) == "offline"
    assert env.sandbox.stats()["presence_calls"] == {"7": 1}
    env.store.r.set(env.store.key("presence", 7), "1", px=5_000)  # far from over: coalesced
    assert env.flow.check_presence(7) == "coalesced"


# --- members --------------------------------------------------------------------------------------


def test_revoked_member_parks_all_their_rebooks_and_resumes(env: Env) -> None:
    env.member()
    env.member("bob")
    (r1, _), (r2, _) = rescheduling_many(env, 2)
    r3 = env.submit(env.sandbox.add_booking("alice", 8), performer=8)  # offline performer
    bobs = env.submit(env.sandbox.add_booking("bob", 8), performer=8, user="bob")
    env.sandbox.revoke_user("alice")
    assert env.flow.reschedule(r1) == "reauth"
    for rid in (r1, r2, r3):
        rec = env.get(rid)
        assert rec.state is State.NEEDS_ATTENTION and rec.reason == "reauth", rid
    assert env.get(bobs).state is State.WAITING
    parked = [o for o in env.outcomes() if o["state"] == "NEEDS_ATTENTION"]
    assert sorted(o["rebook_id"] for o in parked) == sorted([r1, r2, r3])
    assert all(o["reason"] == "reauth" for o in parked)
    assert env.new_bookings() == {}
    # new tokens: everything goes on where it stopped
    answer = env.member()
    assert all(answer["access_token"] not in json.dumps(o) for o in env.outcomes())
    env.rec.calls.clear()
    assert env.flow.resume_member("alice") == 3
    assert env.get(r1).state is State.RESCHEDULING
    assert env.get(r2).state is State.RESCHEDULING
    assert env.get(r3).state is State.WAITING
    assert ("reschedule", r1) in env.rec.calls and ("reschedule", r2) in env.rec.calls
    assert ("check_presence", 8, None) in env.rec.calls
    assert env.flow.reschedule(r1) == "booked"
    assert env.flow.resume_member("alice") == 0


# --- operators ------------------------------------------------------------------------------------


def test_cancel(env: Env) -> None:
    rid = env.submit(env.sandbox.add_booking("alice", 7), "evt-cancel")
    cancelled = env.flow.cancel("evt-cancel")  # by event id
    assert cancelled.state is State.ABORTED and cancelled.rebook_id == rid
    assert env.outcomes(rid)[-1]["state"] == "ABORTED"
    with pytest.raises(Refused, match="already ABORTED"):
        env.flow.cancel(rid)
    # nothing was booked: an operator may start it again, and it owns its booking again
    restarted = env.flow.retry(rid)
    assert restarted.state is State.WAITING and restarted.reason == "retried by operator"
    assert env.store.r.get(env.store.key("active", restarted.booking_id)) == rid
    assert env.store.r.ttl(env.store.key("r", rid)) == -1  # no longer expiring
    with pytest.raises(LookupError):
        env.flow.cancel("no-such-rebook")


def test_retry_refuses_what_made_a_booking_and_duplicates(env: Env) -> None:
    rid, _, new = watching(env)
    env.sandbox.set_status(new, "Rejected", "no")
    env.flow.watch(rid)
    with pytest.raises(Refused, match="new event"):
        env.flow.retry(rid)
    with pytest.raises(Refused, match="in progress"):
        env.flow.retry(env.submit(env.sandbox.add_booking("alice", 7)))


def test_retry_of_a_finished_rebook_refused_while_its_booking_has_another(env: Env) -> None:
    booking = env.sandbox.add_booking("alice", 7)
    first = env.submit(booking, "evt-first")
    env.flow.cancel(first)
    second = env.submit(booking, "evt-second")  # the booking is free again: a new rebook
    assert env.get(second).state is State.WAITING
    with pytest.raises(Refused, match="another active rebook"):
        env.flow.retry(first)
    assert env.get(first).state is State.ABORTED


def test_cancel_of_an_unsettled_post_keeps_the_mark_and_retry_reconciles_first(env: Env) -> None:
    rid, orig = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_500_after_commit")
    assert env.flow.reschedule(rid) == "ambiguous"
    cancelled = env.flow.cancel(rid)
    assert cancelled.state is State.ABORTED and cancelled.post_sent_ts is not None
    assert "unsettled" in cancelled.reason
    # the gate stays held: a sibling of the same member and performer may not POST
    sibling = env.submit(env.sandbox.add_booking("alice", 7))
    assert env.store.transitions.transition(sibling, State.RESCHEDULING, reason="performer online")
    assert env.flow.reschedule(sibling) == "gated"
    assert rid in env.get(sibling).reason
    # retry reconciles before any request: it finds the booking the POST made
    assert env.flow.retry(rid).state is State.RESCHEDULING
    reconcile_until(env, rid, "booked")
    assert env.calls("RescheduleMadeBooking") == 1 and env.new_bookings() == {str(orig): 1}
    other, _ = rescheduling(env, performer=17)
    assert env.flow.cancel(other).state is State.ABORTED


def test_retry_resumes_needs_attention(env: Env) -> None:
    rid = env.submit(env.sandbox.add_booking("alice", 7))
    with pytest.raises(Refused, match="WAITING"):
        env.flow.retry(rid)
    env.store.transitions.transition(
        rid, State.NEEDS_ATTENTION, reason="performer_unknown", due="-"
    )
    env.clock.advance(10)
    resumed = env.flow.retry(rid)
    assert resumed.state is State.WAITING and resumed.reason == "retried by operator"
    assert resumed.deadline_ts >= env.clock()
    assert env.rec.calls[-1] == ("check_presence", 7, None)


def test_housekeeping_removes_old_finished_records(make_env: Callable[..., Env]) -> None:
    env = make_env(retention_days=0.0001)  # ~8 s
    rid = env.submit(4242)
    env.flow.cancel(rid)
    assert env.flow.housekeeping() == 0
    env.clock.advance(20)
    assert env.flow.housekeeping() == 1
    assert env.store.records.get(rid) is None


def test_token_endpoint_down_during_watch_retries_later(env: Env) -> None:
    rid, _, _ = watching(env)
    env.member(expires_in=0)  # the stored access token is expired: the next call refreshes
    env.sandbox.fault("token", "http_503")
    assert env.flow.watch(rid) == "retry"
    assert env.get(rid).state is State.WATCHING


def test_token_endpoint_down_during_reschedule_retries_later(env: Env) -> None:
    rid, _ = rescheduling(env)
    env.member(expires_in=0)
    env.sandbox.fault("token", "http_503")
    result = env.flow.reschedule(rid)  # must not raise: a step decides, it does not crash
    assert result == "retry"
    rec = env.get(rid)
    assert rec.state is State.RESCHEDULING and rec.post_sent_ts is None
    assert env.new_bookings() == {}


# --- auto-confirm ----------------------------------------------------------------------------


def next_watch_interval(env: Env, user: str = "alice") -> None:
    """What passing one watch interval does to the member's shared MadeBookings read."""
    env.store.r.delete(env.store.key("watchlist", user), env.store.key("watchcache", user))


def test_auto_confirm_confirms_an_accepted_booking(make_env: Callable[..., Env]) -> None:
    env = make_env(auto_confirm=True)
    rid, _, new = watching(env)
    assert env.flow.watch(rid) == "pending"
    assert env.calls("ConfirmMadeBooking") == 0
    env.sandbox.set_status(new, "Accepted")
    next_watch_interval(env)
    assert env.flow.watch(rid) == "confirmed"
    assert env.get(rid).state is State.CONFIRMED
    assert env.sandbox.booking(new)["Status"] == "Confirmed"
    assert env.calls("ConfirmMadeBooking") == 1
    assert env.outcomes(rid)[-1]["state"] == "CONFIRMED"


def test_auto_confirm_ambiguous_is_read_back_not_resent(make_env: Callable[..., Env]) -> None:
    env = make_env(auto_confirm=True)
    rid, _, new = watching(env)
    env.sandbox.set_status(new, "Accepted")
    env.sandbox.fault("ConfirmMadeBooking", "http_500_after_commit")
    assert env.flow.watch(rid) == "confirm-retry"
    assert env.get(rid).state is State.WATCHING
    assert env.flow.watch(rid) == "confirmed"
    assert env.calls("ConfirmMadeBooking") == 1


def test_auto_confirm_not_done_is_sent_again_after_grace(make_env: Callable[..., Env]) -> None:
    env = make_env(auto_confirm=True)
    rid, _, new = watching(env)
    env.sandbox.set_status(new, "Accepted")
    env.sandbox.fault("ConfirmMadeBooking", "http_500")
    assert env.flow.watch(rid) == "confirm-retry"
    assert env.flow.watch(rid) == "confirm-pending"
    assert env.calls("ConfirmMadeBooking") == 1
    env.clock.advance(env.settings.reconcile_grace_seconds + 0.01)
    assert env.flow.watch(rid) == "confirm-proving"  # still Accepted: one read of the proof
    assert env.calls("ConfirmMadeBooking") == 1
    env.clock.advance(env.settings.reconcile_window_seconds)
    assert env.flow.watch(rid) == "confirmed"
    assert env.calls("ConfirmMadeBooking") == 2
    assert env.sandbox.booking(new)["Status"] == "Confirmed"


# --- exactly one booking: lost marks, stale steps, the gate ---------------------------------------


def test_a_lost_post_sent_mark_adopts_the_booking_instead_of_posting_again(env: Env) -> None:
    rid, orig = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_500_after_commit")
    assert env.flow.reschedule(rid) == "ambiguous"
    # a failover to a replica that had not seen the mark: the record is as before the POST
    env.store.r.hdel(
        env.store.key("r", rid), "post_sent_ts", "answer_ts", "known_ids", "attempts", "errors"
    )
    assert env.get(rid).post_sent_ts is None
    assert env.flow.reschedule(rid) == "booked"
    assert env.calls("RescheduleMadeBooking") == 1 and env.new_bookings() == {str(orig): 1}
    (booked,) = [o for o in env.outcomes(rid) if o["state"] == "BOOKED"]
    assert json.loads(booked["detail"])["adopted"] == "found upstream before the POST"


def test_a_sibling_original_is_never_taken_for_a_lost_booking(env: Env) -> None:
    env.member()
    b1, b2 = env.sandbox.add_booking("alice", 7), env.sandbox.add_booking("alice", 7)
    r1 = env.submit(b1)
    env.submit(b2)
    env.sandbox.set_online(7, True)
    assert env.flow.check_presence(7) == "online"
    assert env.flow.reschedule(r1) == "booked"
    assert env.sandbox.booking(env.get(r1).new_booking_id)["original_id"] == b1


def test_a_step_that_outlived_its_lease_is_fenced_off(env: Env) -> None:
    rid, orig = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "timeout_after_commit", delay=0.5)
    results: list[str] = []
    stale = threading.Thread(target=lambda: results.append(env.flow.reschedule(rid)))
    stale.start()
    wait_for(lambda: env.new_bookings(), what="the stale step's POST to commit")
    env.store.r.delete(env.store.key("lock", rid))  # its lease ran out meanwhile
    assert env.flow.reschedule(rid) == "grace"  # the new step sees the mark: no POST
    stale.join(10)
    assert results == ["fenced"]  # its answer came back, but the rebook is no longer its own
    assert env.get(rid).state is State.RESCHEDULING
    env.clock.advance(env.settings.send_bound_seconds)
    reconcile_until(env, rid, "booked")
    assert env.calls("RescheduleMadeBooking") == 1 and env.new_bookings() == {str(orig): 1}


def test_a_gated_sibling_says_so_parks_past_its_bound_and_goes_on_when_settled(
    make_env: Callable[..., Env],
) -> None:
    env = make_env(gate_max_wait_seconds=5)
    env.member()
    b1, b2 = env.sandbox.add_booking("alice", 7), env.sandbox.add_booking("alice", 7)
    r1, r2 = env.submit(b1), env.submit(b2)
    env.sandbox.set_online(7, True)
    assert env.flow.check_presence(7) == "online"
    env.sandbox.fault("RescheduleMadeBooking", "http_500")
    assert env.flow.reschedule(r1) == "ambiguous"
    assert env.flow.reschedule(r2) == "gated"
    assert r1 in env.get(r2).reason and env.store.sweep.stats()["gated"] == 1
    env.clock.advance(6)
    assert env.flow.reschedule(r2) == "parked"
    parked = env.get(r2)
    assert parked.state is State.NEEDS_ATTENTION and parked.reason == "blocked"
    assert parked.blocked_by == r1 and r1 in parked.action
    reconcile_until(env, r1, "booked")  # r1 settles: r2 goes on by itself
    assert env.get(r2).state is State.RESCHEDULING
    assert env.flow.reschedule(r2) == "booked"
    assert env.new_bookings() == {str(b1): 1, str(b2): 1}


def test_retry_of_a_finished_unsettled_rebook_reconciles_and_keeps_the_mark(env: Env) -> None:
    rid, orig = rescheduling(env)
    env.sandbox.fault("RescheduleMadeBooking", "http_500_after_commit")
    assert env.flow.reschedule(rid) == "ambiguous"
    env.flow.cancel(rid)
    again = env.flow.retry(rid)
    assert again.state is State.RESCHEDULING and again.post_sent_ts is not None
    assert env.rec.calls[-1] == ("reschedule", rid)
    reconcile_until(env, rid, "booked")
    assert env.calls("RescheduleMadeBooking") == 1 and env.new_bookings() == {str(orig): 1}


# --- the performer field: whose a booking is, from evidence -------------------------------------

SHAPES = ("user_id", "profile_id", "no_id")
SETTLED = (State.WATCHING, State.NEEDS_ATTENTION)


def settle(env: Env, rids: list[str], rounds: int = 40) -> None:
    """Runs every rebook's reschedule step as time passes, until each is WATCHING or parked."""
    for _ in range(rounds):
        if all(env.get(rid).state in SETTLED for rid in rids):
            return
        for rid in rids:
            if env.get(rid).state is State.RESCHEDULING:
                env.flow.reschedule(rid)
        env.clock.advance(env.settings.reconcile_grace_seconds + 0.2)
    raise AssertionError({rid: (env.get(rid).state, env.get(rid).reason) for rid in rids})


def assert_exactly_once(env: Env, made: dict[str, int]) -> None:
    """Never two new bookings from one original, and each rebook owns only what was made from
    its own original (`made`: rebook -> original)."""
    per_original = env.new_bookings()
    assert all(n <= 1 for n in per_original.values()), per_original
    for rid, orig in made.items():
        new = env.get(rid).new_booking_id
        if new is not None:
            assert env.sandbox.booking(new)["original_id"] == orig, (rid, orig, new)
            assert env.store.records.owner_of(new) == rid


@pytest.mark.parametrize("kind", ["timeout_after_commit", "http_500_after_commit"])
@pytest.mark.parametrize("shape", SHAPES)
def test_ambiguous_posts_in_every_performer_shape_make_one_booking_each(
    make_env: Callable[..., Env], shape: str, kind: str
) -> None:
    """The holes of issue 20: with `{"ID": profile id}` the guess set our own booking aside as
    another performer's and POSTed again; with no id, a rebook adopted a sibling's booking made
    for another performer. Unconfirmed, nothing is set aside for its performer and one POST of
    the member is unsettled at a time."""
    env = make_env(http_timeout_seconds=0.3)
    env.sandbox.configure(performer_shape=shape)
    env.member("alice")
    env.member("bob")
    made: dict[str, int] = {}
    for user, performer in (("alice", 7), ("alice", 8), ("bob", 7)):
        orig = env.sandbox.add_booking(user, performer)
        made[env.submit(orig, user=user, performer=performer)] = orig
    r_a7, r_a8, r_b7 = made
    for performer in (7, 8):
        env.sandbox.set_online(performer, True)
        assert env.flow.check_presence(performer) == "online"
    env.sandbox.fault("RescheduleMadeBooking", kind, count=2, delay=0.8)
    assert env.flow.reschedule(r_a8) == "ambiguous"  # committed: a booking for performer 8
    # unconfirmed: alice's other rebook may not POST while her POST for 8 is unsettled (its
    # booking could not be told apart from one made for 7) ...
    assert env.store.performer_field.performer_field() is None
    assert env.flow.reschedule(r_a7) == "gated"
    assert env.get(r_a7).blocked_by == r_a8
    # ... and bob's own POST is not held by alice's
    assert env.flow.reschedule(r_b7) == "ambiguous"
    settle(env, list(made))
    assert_exactly_once(env, made)
    for rid in made:  # alone in its window, each found its own booking: nothing parked
        assert env.get(rid).state is State.WATCHING, env.get(rid).reason
    assert env.calls("RescheduleMadeBooking") == 3
    assert env.new_bookings() == {str(orig): 1 for orig in made.values()}


def test_unconfirmed_a_booking_another_unsettled_post_may_have_made_is_not_adopted(
    env: Env,
) -> None:
    """Two POSTs of one member overlapped while the field was confirmed; then an answer dropped
    it. A booking the other POST may have made is never adopted: where each POST's list before
    it tells them apart they settle by themselves; where it cannot, both park `unverified_shape`
    (never a second POST), and an operator's `--not-ours` settles them."""
    confirm_field(env)
    env.member()
    made: dict[str, int] = {}
    for performer in (7, 8):
        orig = env.sandbox.add_booking("alice", performer)
        made[env.submit(orig, performer=performer)] = orig
        env.sandbox.set_online(performer, True)
        assert env.flow.check_presence(performer) == "online"
    r7, r8 = made
    # r7's booking is committed only after r8's list was read: neither list shows the other's
    env.sandbox.fault("RescheduleMadeBooking", "http_504_commit_later", commit_delay=0.4)
    assert env.flow.reschedule(r7) == "ambiguous"
    env.sandbox.fault("RescheduleMadeBooking", "http_500_after_commit")
    # confirmed: the gate is the member's and performer's, so both POSTs go out
    assert env.flow.reschedule(r8) == "ambiguous"
    wait_for(lambda: len(env.new_bookings()) == 2, what="the late commit")
    # an answer of known meaning without the key: the field is dropped
    env.sandbox.configure(performer_shape="no_id")
    env.member("carol")
    c9 = env.sandbox.add_booking("carol", 9)
    rc = env.submit(c9, user="carol", performer=9)
    env.sandbox.set_online(9, True)
    assert env.flow.check_presence(9) == "online"
    assert env.flow.reschedule(rc) == "booked"
    assert env.store.performer_field.performer_field() is None
    assert env.store.performer_field.performer_field_stats()["contradictions"] == 1
    settle(env, [r7, r8])
    for rid in (r7, r8):
        rec = env.get(rid)
        assert rec.state is State.NEEDS_ATTENTION and rec.reason == "unverified_shape", rec.reason
        assert rec.new_booking_id is None
    assert env.calls("RescheduleMadeBooking") == 3
    assert_exactly_once(env, made)
    # the operator looks upstream and vouches, for each, the booking that is not its own
    by_original = {env.sandbox.booking(b)["original_id"]: b for b in _new_ids(env)}
    env.flow.retry(r8, not_ours=[by_original[made[r7]]])
    env.flow.retry(r7, not_ours=[by_original[made[r8]]])
    settle(env, [r7, r8])
    for rid in (r7, r8):
        assert env.get(rid).new_booking_id == by_original[made[rid]], env.get(rid).reason
    assert env.calls("RescheduleMadeBooking") == 3
    assert_exactly_once(env, {**made, rc: c9})


def test_unconfirmed_the_list_before_a_post_tells_overlapping_posts_apart(env: Env) -> None:
    """As above, but r8's list before its POST already showed r7's booking: r8 cannot have made
    it, so r7 takes it, and then r8 its own — no operator needed, nothing doubled."""
    confirm_field(env)
    env.member()
    made: dict[str, int] = {}
    for performer in (7, 8):
        orig = env.sandbox.add_booking("alice", performer)
        made[env.submit(orig, performer=performer)] = orig
        env.sandbox.set_online(performer, True)
        assert env.flow.check_presence(performer) == "online"
    r7, r8 = made
    env.sandbox.fault("RescheduleMadeBooking", "http_500_after_commit", count=2)
    assert env.flow.reschedule(r7) == "ambiguous"
    assert env.flow.reschedule(r8) == "ambiguous"
    env.store.performer_field.learn_performer_field(
        {"Nickname": "x"}, 7, 1, answers=3, performers=2
    )
    assert env.store.performer_field.performer_field() is None
    settle(env, [r8, r7])
    assert all(env.get(rid).state is State.WATCHING for rid in made)
    assert env.calls("RescheduleMadeBooking") == 2
    assert_exactly_once(env, made)


def _new_ids(env: Env) -> list[int]:
    listed = env.svc.client.list_made_bookings(
        env.svc.tokens.access_token("alice"), start=None, max_pages=5
    )[0]
    return [b.booking_id for b in listed if env.sandbox.booking(b.booking_id)["original_id"]]


def test_the_field_is_confirmed_by_known_answers_and_dropped_on_a_contradiction(
    env: Env,
) -> None:
    env.member()
    rids = []
    for performer in (7, 8):
        orig = env.sandbox.add_booking("alice", performer)
        rid = env.submit(orig, performer=performer)
        # unconfirmed: intake asks for one read of the original (an answer to learn from)
        assert ("check_presence", None, rid) in env.rec.calls
        assert env.flow.check_presence(None, rid) == "learned"
        rids.append(rid)
    figures = env.store.sweep.stats()["performer_field"]
    assert figures["field"] is None and figures["candidate"] == "UserID"
    assert (figures["answers"], figures["performers"]) == (2, 2)
    # the same original read again is the same answer, not a new one
    assert env.flow.check_presence(None, rids[0]) == "learned"
    assert env.store.performer_field.performer_field_stats()["answers"] == 2
    # the third: a POST's own answer (a booking for the original's performer)
    env.sandbox.set_online(7, True)
    assert env.flow.check_presence(7) == "online"
    assert env.flow.reschedule(rids[0]) == "booked"
    figures = env.store.sweep.stats()["performer_field"]
    assert figures == {
        "field": "UserID",
        "candidate": "UserID",
        "answers": 3,
        "performers": 2,
        "contradictions": 0,
        "last_contradiction": None,
    }
    # confirmed: intake spends no more reads on originals
    calls = len(env.rec.calls)
    env.submit(env.sandbox.add_booking("alice", 7), performer=7)
    assert all(c[1] is not None for c in env.rec.calls[calls:]), env.rec.calls[calls:]
    # the upstream's shape changes: the watched booking of a definite POST lacks the key
    env.sandbox.configure(performer_shape="profile_id")
    assert env.flow.watch(rids[0]) == "pending"
    figures = env.store.sweep.stats()["performer_field"]
    assert figures["field"] is None and figures["contradictions"] == 1
    assert figures["last_contradiction"]["key"] == "UserID"
    assert figures["answers"] == 0


def test_an_event_without_performer_parks_until_the_field_is_confirmed(env: Env) -> None:
    env.member()
    orig = env.sandbox.add_booking("alice", 9)
    rid = env.submit(orig, performer=None)
    assert env.flow.check_presence(None, rid) == "parked"
    rec = env.get(rid)
    assert rec.state is State.NEEDS_ATTENTION and rec.reason == "unverified_shape"
    assert "performer_id" in rec.action
    assert env.calls("MadeBookingDetails") == 0  # no guess read through an unconfirmed key
    # a retry while unconfirmed parks it again, having read nothing
    env.flow.retry(rid)
    assert env.flow.check_presence(None, rid) == "parked"
    # answers of known meaning confirm the field; the parked rebook resumes by itself
    learned = []
    for performer in (7, 8):
        o = env.sandbox.add_booking("alice", performer)
        learned.append(env.submit(o, performer=performer))
        assert env.flow.check_presence(None, learned[-1]) == "learned"
    env.sandbox.set_online(7, True)
    assert env.flow.check_presence(7) == "online"
    assert env.flow.reschedule(learned[0]) == "booked"
    assert env.store.performer_field.performer_field() == "UserID"
    rec = env.get(rid)
    assert rec.state is State.WAITING, rec.reason
    assert ("check_presence", None, rid) in env.rec.calls[-2:]
    assert env.flow.check_presence(None, rid) == "resolved"
    assert env.get(rid).performer_id == 9


@pytest.mark.parametrize("shape", ["profile_id", "no_id"])
def test_without_an_id_of_the_user_the_field_is_never_confirmed(env: Env, shape: str) -> None:
    """No key names the user id: nothing is ever confirmed, however many answers come."""
    env.sandbox.configure(performer_shape=shape)
    env.member()
    for performer in (7, 8, 7, 8):
        rid = env.submit(env.sandbox.add_booking("alice", performer), performer=performer)
        assert env.flow.check_presence(None, rid) == "learned"
    figures = env.store.performer_field.performer_field_stats()
    assert figures["field"] is None and figures["answers"] == 0


def test_a_learning_read_refused_for_the_member_parks_nobody(env: Env) -> None:
    """The original's details read only to learn the field is a side road: a member whose
    refresh is refused is parked by the rebook's own POST, if ever, not by it (a rebook waiting
    hours on an offline performer stays WAITING, and a pair the site stores meanwhile serves)."""
    env.member()
    env.sandbox.expire_user("alice")
    env.sandbox.revoke_user("alice")
    rid = env.submit(env.sandbox.add_booking("alice", 7), performer=7)
    assert ("check_presence", None, rid) in env.rec.calls
    assert env.flow.check_presence(None, rid) == "noop"
    rec = env.get(rid)
    assert rec.state is State.WAITING, rec.reason
    assert env.store.performer_field.performer_field_stats()["answers"] == 0


def test_a_burst_of_events_before_the_field_is_known_reads_few_originals(env: Env) -> None:
    env.member()
    for _ in range(LEARNING_READS + 5):
        env.submit(env.sandbox.add_booking("alice", 7))
    learning = [c for c in env.rec.of("check_presence") if c[1] is None]
    assert len(learning) == LEARNING_READS


def test_a_post_under_the_member_s_gate_still_holds_when_the_field_is_confirmed(
    env: Env,
) -> None:
    """The gate kinds see each other: a POST sent while the field was unconfirmed (the member's
    gate) keeps a sibling of another performer waiting after the field is confirmed, and the
    sibling goes once it settles."""
    env.member()
    made: dict[str, int] = {}
    for performer in (7, 8):
        orig = env.sandbox.add_booking("alice", performer)
        made[env.submit(orig, performer=performer)] = orig
        env.sandbox.set_online(performer, True)
        assert env.flow.check_presence(performer) == "online"
    r7, r8 = made
    env.sandbox.fault("RescheduleMadeBooking", "http_500_after_commit")
    assert env.flow.reschedule(r8) == "ambiguous"
    confirm_field(env)
    # the script decides (the flow's read-only look before it aside)
    assert env.store.records.claim_step(r7, "t") is not None
    now = env.clock()
    marked = env.store.transitions.start_post(
        r7, now=now, attempts=1, claim="t", known_ids=[], due=now + 5
    )
    assert marked == (False, r8, 0, None)
    assert env.flow.reschedule(r7) == "gated"
    assert env.get(r7).blocked_by == r8
    settle(env, [r8, r7])
    assert all(env.get(rid).state is State.WATCHING for rid in made)
    assert_exactly_once(env, made)


def test_doctor_says_which_field_is_confirmed_and_warns_while_none_is(env: Env) -> None:
    from worker.operations import doctor

    check = doctor._performer_field(env.settings)
    assert check.ok and check.warn and check.detail.startswith("unconfirmed")
    env.store.performer_field.learn_performer_field({"UserID": 7}, 7, 1, answers=3, performers=2)
    env.store.performer_field.learn_performer_field(
        {"ID": 1_000_008}, 8, 2, answers=3, performers=2
    )
    check = doctor._performer_field(env.settings)
    assert check.warn and "last contradiction: Performer.UserID" in check.hint
    confirm_field(env)
    check = doctor._performer_field(env.settings)
    assert check.ok and not check.warn
    assert check.detail == (
        "Performer.UserID names the performer (3 answer(s) over 2 performer(s), "
        "1 contradiction(s) seen)"
    )


def test_retry_of_a_rebook_whose_original_was_rebooked_meanwhile_is_refused(env: Env) -> None:
    """Simulation seed 106551: a rebook ended without a booking, a second event for the same
    original booked it, then an operator retried the first: a second booking of one original.
    The retry is refused; the original's new booking stays its only one."""
    env.member()
    orig = env.sandbox.add_booking("alice", 7)
    first = env.submit(orig, "evt-first")
    env.flow.cancel(first)
    assert env.get(first).state is State.ABORTED
    second = env.submit(orig, "evt-second")
    assert env.get(second).state is State.WAITING  # the first is not active: no DUPLICATE
    env.sandbox.set_online(7, True)
    assert env.flow.check_presence(7) == "online"
    assert env.flow.reschedule(second) == "booked"
    with pytest.raises(Refused, match="rebooked meanwhile by"):
        env.flow.retry(first)
    assert env.get(first).state is State.ABORTED
    assert len(env.new_bookings()) == 1
