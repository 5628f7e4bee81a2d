"""The Redis state store against a real (private) Redis: records, indexes, streams, sweeping."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.conftest import PUBLIC_FIELDS, wait_for
from tests.inspect_store import ids_in_state, new_store, store_options
from worker.core.errors import StoreUnavailable
from worker.core.states import ACTIVE_STATES, State
from worker.core.store import (
    DEADLETTER_PAYLOAD_LIMIT,
    KEEP,
    REMOVE,
    Rebook,
    Store,
    rebook_id_for,
    redact,
)

LEASE = 10.0
RETENTION = 1000


@pytest.fixture
def store(redis_client: redis.Redis, prefix: str) -> Iterator[Store]:
    s = new_store(redis_client, prefix=prefix, retention_seconds=RETENTION, lease_seconds=LEASE)
    yield s
    keys = list(redis_client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        redis_client.delete(*keys)


T0 = 1_700_000_000.0


def make(
    store: Store,
    event_id: str = "evt-1",
    booking_id: int = 100,
    *,
    user_id: str = "u1",
    performer_id: int | None = 7,
    now: float = T0,
    wait: float = 3600.0,
) -> Any:
    return store.records.create(
        rebook_id=rebook_id_for(event_id),
        event_id=event_id,
        booking_id=booking_id,
        user_id=user_id,
        performer_id=performer_id,
        deadline=now + wait,
        now=now,
    )


def get(store: Store, rid: str) -> Rebook:
    rec = store.records.get(rid)
    assert rec is not None
    return rec


def due_score(store: Store, rid: str) -> float | None:
    score = store.r.zscore(store.key("due"), rid)
    return None if score is None else float(score)


# --- ids ------------------------------------------------------------------------------------------


def test_rebook_id_is_deterministic() -> None:
    assert rebook_id_for("a") == rebook_id_for("a")
    assert rebook_id_for("a") != rebook_id_for("b")
    assert rebook_id_for("a").startswith("rb-")


# --- create ---------------------------------------------------------------------------------------


def test_create_records_a_waiting_rebook(store: Store) -> None:
    res = make(store)
    assert res.kind == "created" and res.rebook_id == rebook_id_for("evt-1")
    assert res.dispatch_presence is True
    rec = get(store, res.rebook_id)
    assert rec.state is State.WAITING and rec.reason == "received"
    assert (rec.event_id, rec.booking_id, rec.user_id, rec.performer_id) == ("evt-1", 100, "u1", 7)
    assert rec.created_ts == T0 and rec.deadline_ts == T0 + 3600
    assert rec.created_at.endswith("Z")
    assert ids_in_state(store, State.WAITING) == [res.rebook_id]
    assert store.presence.waiting_for(7) == [res.rebook_id]
    assert store.records.active_of_user("u1") == [res.rebook_id]
    # the record waits on its deadline; the performer is checked one lease after intake at latest
    assert due_score(store, res.rebook_id) == T0 + 3600
    assert store.presence.performer_due(7) == T0 + LEASE
    assert store.records.find("evt-1") == rec
    hist = store.records.history(res.rebook_id)
    assert [(h["from"], h["to"], h["reason"]) for h in hist] == [("", "WAITING", "received")]


def test_create_without_performer_is_due_at_once(store: Store) -> None:
    res = make(store, performer_id=None)
    assert res.kind == "created" and res.dispatch_presence is False
    rec = get(store, res.rebook_id)
    assert rec.performer_id is None
    assert due_score(store, res.rebook_id) == T0
    assert store.presence.performer_due(7) is None


def test_second_rebook_on_the_same_performer_does_not_dispatch_again(store: Store) -> None:
    assert make(store, "e1", 100).dispatch_presence is True
    second = make(store, "e2", 101)
    assert second.kind == "created" and second.dispatch_presence is False
    assert store.presence.waiting_for(7) == sorted([rebook_id_for("e1"), rebook_id_for("e2")])


def test_same_event_again_is_exists(store: Store) -> None:
    first = make(store)
    again = make(store, now=T0 + 5)
    assert again.kind == "exists" and again.rebook_id == first.rebook_id
    assert len(store.records.history(first.rebook_id)) == 1
    assert get(store, first.rebook_id).created_ts == T0


def test_another_event_for_an_active_booking_is_duplicate(store: Store) -> None:
    first = make(store, "e1", 100)
    dup = make(store, "e2", 100, now=T0 + 1)
    assert dup.kind == "duplicate"
    assert dup.rebook_id == rebook_id_for("e2")
    assert dup.other == first.rebook_id
    rec = get(store, dup.rebook_id)
    assert rec.state is State.DUPLICATE
    assert rec.duplicate_of == first.rebook_id
    assert first.rebook_id in rec.reason
    assert rec.public()["duplicate_of"] == first.rebook_id
    # not waiting, not due, not the member's active rebook
    assert store.presence.waiting_for(7) == [first.rebook_id]
    assert due_score(store, dup.rebook_id) is None
    assert store.records.active_of_user("u1") == [first.rebook_id]
    (out,) = [o for o in store.outcomes.outcomes() if o["rebook_id"] == dup.rebook_id]
    assert out["state"] == "DUPLICATE" and out["event_id"] == "e2" and out["booking_id"] == "100"
    assert json.loads(out["detail"]) == {"duplicate_of": first.rebook_id}
    assert out["at"].endswith("Z")
    # the duplicate event redelivered is still just "exists"
    assert make(store, "e2", 100).kind == "exists"


def test_a_parked_rebook_still_makes_the_next_event_a_duplicate(store: Store) -> None:
    first = make(store, "e1", 100)
    assert store.transitions.transition(
        first.rebook_id, State.NEEDS_ATTENTION, reason="reauth", due=REMOVE
    )
    assert make(store, "e2", 100).kind == "duplicate"


# --- transition -----------------------------------------------------------------------------------


def test_transition_is_compare_and_set(store: Store) -> None:
    rid = make(store).rebook_id
    assert not store.transitions.transition(
        rid, State.WATCHING, from_=[State.RESCHEDULING], reason="no"
    )
    rec = get(store, rid)
    assert rec.state is State.WAITING and rec.reason == "received"
    assert len(store.records.history(rid)) == 1
    assert store.transitions.transition(
        rid, State.RESCHEDULING, from_=[State.WAITING], reason="online"
    )
    assert get(store, rid).state is State.RESCHEDULING
    assert not store.transitions.transition("rb-missing", State.WAITING, reason="x")


def test_transition_require_guard_and_field_updates(store: Store) -> None:
    rid = make(store).rebook_id
    store.transitions.transition(rid, State.RESCHEDULING, from_=[State.WAITING], reason="online")
    # "" means absent
    assert store.transitions.transition(
        rid,
        State.RESCHEDULING,
        from_=[State.RESCHEDULING],
        reason="POST sent",
        require={"post_sent_ts": ""},
        fields={"post_sent_ts": 123.25, "attempts": 1},
    )
    rec = get(store, rid)
    assert rec.post_sent_ts == 123.25 and rec.attempts == 1
    assert not store.transitions.transition(
        rid, State.RESCHEDULING, from_=[State.RESCHEDULING], require={"post_sent_ts": ""}
    )
    assert not store.transitions.transition(
        rid, State.RESCHEDULING, from_=[State.RESCHEDULING], require={"post_sent_ts": 1.0}
    )
    assert store.transitions.transition(
        rid,
        State.RESCHEDULING,
        from_=[State.RESCHEDULING],
        reason="cleared",
        require={"post_sent_ts": repr(123.25)},
        fields={"post_sent_ts": None},
    )
    rec = get(store, rid)
    assert rec.post_sent_ts is None and rec.reason == "cleared"
    assert "post_sent_ts" not in store.r.hgetall(store.key("r", rid))


def test_transition_history_and_state_index(store: Store) -> None:
    rid = make(store).rebook_id
    store.transitions.transition(
        rid, State.RESCHEDULING, from_=[State.WAITING], reason="online", now=T0 + 1
    )
    store.transitions.transition(
        rid, State.RESCHEDULING, from_=[State.RESCHEDULING], reason="POST sent", now=T0 + 2
    )
    store.transitions.transition(
        rid, State.WATCHING, from_=[State.RESCHEDULING], reason="booked", now=T0 + 3
    )
    hist = store.records.history(rid)
    # a self-transition is not history
    assert [(h["from"], h["to"], h["reason"]) for h in hist] == [
        ("", "WAITING", "received"),
        ("WAITING", "RESCHEDULING", "online"),
        ("RESCHEDULING", "WATCHING", "booked"),
    ]
    assert all(h["at"].endswith("Z") for h in hist)
    assert ids_in_state(store, State.WAITING) == []
    assert ids_in_state(store, State.RESCHEDULING) == []
    assert ids_in_state(store, State.WATCHING) == [rid]
    assert store.presence.waiting_for(7) == []  # left WAITING: no longer waits on the performer
    rec = get(store, rid)
    assert rec.updated_at.endswith("Z")


def test_history_of_a_rebook_that_gave_up_and_was_retried(store: Store) -> None:
    """The GAVE_UP entry the record held (no list key) goes to the list, in order, before a
    later transition changes the state and reason it was read from."""
    rid = make(store).rebook_id
    assert store.transitions.transition(rid, State.GAVE_UP, reason="max wait", now=T0 + 1)
    assert store.r.exists(store.key("h", rid)) == 0
    assert store.transitions.transition(
        rid, State.WAITING, from_=[State.GAVE_UP], reason="retry", now=T0 + 2
    )
    assert store.transitions.transition(rid, State.CANCELLED, reason="by operator", now=T0 + 3)
    assert [(h["from"], h["to"], h["reason"]) for h in store.records.history(rid)] == [
        ("", "WAITING", "received"),
        ("WAITING", "GAVE_UP", "max wait"),
        ("GAVE_UP", "WAITING", "retry"),
        ("WAITING", "CANCELLED", "by operator"),
    ]
    assert store.r.hget(store.key("r", rid), "history_at") is None
    assert 0 < store.r.ttl(store.key("h", rid)) <= RETENTION + 86400


def test_transition_due_index(store: Store) -> None:
    rid = make(store).rebook_id
    store.transitions.transition(rid, State.WAITING, from_=[State.WAITING], due=T0 + 5)
    assert due_score(store, rid) == T0 + 5
    store.transitions.transition(rid, State.WAITING, from_=[State.WAITING], due=KEEP)
    assert due_score(store, rid) == T0 + 5
    store.transitions.transition(rid, State.WAITING, from_=[State.WAITING], due=REMOVE)
    assert due_score(store, rid) is None


def test_back_to_waiting_rejoins_the_performer(store: Store) -> None:
    rid = make(store).rebook_id
    store.transitions.transition(rid, State.RESCHEDULING, from_=[State.WAITING], reason="online")
    store.r.zrem(store.key("performers"), 7)
    store.transitions.transition(
        rid, State.WAITING, from_=[State.RESCHEDULING], reason="offline", now=T0 + 9
    )
    assert store.presence.waiting_for(7) == [rid]
    assert store.presence.performer_due(7) == T0 + 9


def test_needs_attention_remembers_where_it_was(store: Store) -> None:
    rid = make(store).rebook_id
    store.transitions.transition(rid, State.RESCHEDULING, from_=[State.WAITING])
    store.transitions.transition(rid, State.NEEDS_ATTENTION, reason="reauth", due=REMOVE)
    rec = get(store, rid)
    assert rec.state is State.NEEDS_ATTENTION and rec.resume_state is State.RESCHEDULING
    assert rec.reason == "reauth"
    assert store.records.active_of_user("u1") == [rid]  # parked is still active


@pytest.mark.parametrize("terminal", sorted(s for s in State if s not in ACTIVE_STATES))
def test_terminal_frees_the_booking(store: Store, terminal: State) -> None:
    rid = make(store).rebook_id
    assert store.r.get(store.key("active", 100)) == rid
    assert store.transitions.transition(rid, terminal, reason="done", now=T0 + 10)
    assert store.r.get(store.key("active", 100)) is None
    assert store.records.active_of_user("u1") == []
    assert due_score(store, rid) is None
    assert store.presence.waiting_for(7) == []
    assert store.r.zscore(store.key("finished"), rid) == T0 + 10
    assert 0 < store.r.ttl(store.key("r", rid)) <= RETENTION + 86400
    # straight from WAITING, its one history entry is the record's (no list key of its own)
    assert store.r.exists(store.key("h", rid)) == 0
    assert store.records.history(rid)[1:] == [
        {
            "at": "2023-11-14T22:13:30.000Z",
            "from": "WAITING",
            "to": terminal.value,
            "reason": "done",
        }
    ]
    # a new event for the same booking is a new rebook, not a duplicate
    again = make(store, "evt-2", 100, now=T0 + 11)
    assert again.kind == "created"
    assert get(store, again.rebook_id).state is State.WAITING
    # one with a history list: the list expires with the record
    assert store.transitions.transition(
        again.rebook_id, State.RESCHEDULING, reason="online", now=T0 + 12
    )
    assert store.transitions.transition(again.rebook_id, terminal, reason="done", now=T0 + 13)
    assert 0 < store.r.ttl(store.key("r", again.rebook_id)) <= RETENTION + 86400
    assert 0 < store.r.ttl(store.key("h", again.rebook_id)) <= RETENTION + 86400


def test_outcome_stream_fields(store: Store) -> None:
    rid = make(store).rebook_id
    store.transitions.transition(rid, State.RESCHEDULING, from_=[State.WAITING])
    assert store.transitions.transition(
        rid,
        State.WATCHING,
        from_=[State.RESCHEDULING],
        reason="booked",
        fields={
            "new_booking_id": 555,
            "accept_by": "2030-01-01T00:10:00.000Z",
            "accept_by_ts": 1893456600.0,
            "status": "Pending",
        },
        outcome="BOOKED",
        detail={"duration": 15},
        now=T0 + 3,
    )
    (out,) = store.outcomes.outcomes()
    assert set(out) >= {
        "rebook_id",
        "event_id",
        "state",
        "booking_id",
        "new_booking_id",
        "accept_by",
        "status",
        "reason",
        "at",
        "detail",
    }
    assert out["rebook_id"] == rid and out["event_id"] == "evt-1"
    assert out["state"] == "BOOKED" and out["booking_id"] == "100"
    assert out["new_booking_id"] == "555" and out["status"] == "Pending"
    assert out["accept_by"] == "2030-01-01T00:10:00.000Z"
    assert out["reason"] == "booked"
    assert out["at"].endswith("Z") and out["at"].startswith("2023-11-14T22:13:23")
    assert json.loads(out["detail"]) == {"duration": 15}
    rec = get(store, rid)
    assert rec.new_booking_id == 555 and rec.accept_by_ts == 1893456600.0
    # no outcome unless asked
    store.transitions.transition(
        rid, State.WATCHING, from_=[State.WATCHING], reason="still pending"
    )
    assert len(store.outcomes.outcomes()) == 1


def test_public_shape(store: Store) -> None:
    rid = make(store).rebook_id
    pub = get(store, rid).public()
    for name in PUBLIC_FIELDS:
        assert name in pub
    assert pub["state"] == "WAITING" and pub["booking_id"] == 100
    json.dumps(pub)


# --- sweep ----------------------------------------------------------------------------------------


def test_claim_due_pushes_claimed_entries_a_lease_ahead(store: Store) -> None:
    rid = make(store, performer_id=None).rebook_id  # due at T0
    later = make(store, "evt-later", 101, performer_id=None, now=T0 + 100).rebook_id
    assert store.sweep.claim_due(T0 - 1, 10) == ([], {})
    assert store.sweep.claim_due(T0 + 1, 10) == ([rid], {})
    assert due_score(store, rid) == T0 + 1 + LEASE
    # claimed once: not again within the lease
    assert store.sweep.claim_due(T0 + 2, 10) == ([], {})
    assert store.sweep.claim_due(T0 + 1 + LEASE - 0.5, 10) == ([], {})
    # a lost step is claimed again after the lease
    assert store.sweep.claim_due(T0 + 1 + LEASE, 10) == ([rid], {})
    assert due_score(store, later) == T0 + 100
    assert store.sweep.last_sweep() == T0 + 1 + LEASE


def test_claim_due_performers(store: Store) -> None:
    make(store, "a", 100, performer_id=7)
    make(store, "b", 101, performer_id=8)
    ids, pids = store.sweep.claim_due(T0 + LEASE, 10)
    assert ids == [] and sorted(pids) == [7, 8]
    assert store.presence.performer_due(7) == T0 + 2 * LEASE
    assert store.sweep.claim_due(T0 + LEASE + 1, 10) == ([], {})


def test_claim_due_performers_due_soon_come_with_their_time(store: Store) -> None:
    make(store, "a", 100, performer_id=7)  # the first check is due one lease after intake
    make(store, "b", 101, performer_id=8, now=T0 + 5)
    assert store.sweep.claim_due(T0 + LEASE - 2, 10, ahead=1) == ([], {})
    ids, pids = store.sweep.claim_due(T0 + LEASE - 1, 10, ahead=1)
    assert ids == [] and pids == {7: T0 + LEASE}
    assert store.presence.performer_due(7) == T0 + 2 * LEASE  # one lease past its own time
    assert store.presence.performer_due(8) == T0 + 5 + LEASE


def test_claim_due_respects_the_batch(store: Store) -> None:
    for i in range(5):
        make(store, f"e{i}", 100 + i, performer_id=None, now=T0 + i)
    first, _ = store.sweep.claim_due(T0 + 10, 2)
    second, _ = store.sweep.claim_due(T0 + 10, 2)
    third, _ = store.sweep.claim_due(T0 + 10, 2)
    assert len(first) == 2 and len(second) == 2 and len(third) == 1
    assert len(set(first + second + third)) == 5


def test_claim_presence_call_coalesces(store: Store) -> None:
    assert store.presence.claim_presence_call(7, 5.0) == 0.0
    wait = store.presence.claim_presence_call(7, 5.0)
    assert 4.0 < wait <= 5.0
    assert store.presence.claim_presence_call(8, 5.0) == 0.0  # per performer
    assert store.presence.claim_presence_call(9, 0.05) == 0.0
    wait_for(
        lambda: store.presence.claim_presence_call(9, 0.05) == 0.0, 2, "the presence claim expiring"
    )


def test_schedule_performer(store: Store) -> None:
    rid = make(store).rebook_id
    assert store.presence.schedule_performer(7, T0 + 30) is True
    assert store.presence.performer_due(7) == T0 + 30
    store.transitions.transition(rid, State.RESCHEDULING, from_=[State.WAITING])
    assert store.presence.schedule_performer(7, T0 + 60) is False
    assert store.presence.performer_due(7) is None
    assert store.presence.schedule_performer(99, T0) is False


def test_claim_booking(store: Store) -> None:
    assert store.records.claim_booking(555, "rb-a") is True
    assert store.records.claim_booking(555, "rb-a") is True  # idempotent for the owner
    assert store.records.claim_booking(555, "rb-b") is False
    assert store.records.owner_of(555) == "rb-a"
    assert store.records.owner_of(556) is None
    assert store.r.ttl(store.key("claimed", 555)) > RETENTION


def test_lock_is_exclusive(store: Store) -> None:
    a = store.records.lock("rb-x")
    b = store.records.lock("rb-x")
    assert a.acquire()
    try:
        assert not b.acquire()
    finally:
        a.release()
    assert b.acquire()
    b.release()


# --- dead letters ---------------------------------------------------------------------------------


def test_deadletter_redacts_secrets(store: Store) -> None:
    payload = {
        "args": [],
        "kwargs": {
            "event_id": "e",
            "access_token": "AT-123",
            "Refresh-Token": "RT-456",
            "client_secret": "CS-789",
            "apiKey": "AK-000",
            "Authorization": "Bearer XYZ",
            "password": "PW",
            "nested": {"deep": [{"token": "TK-1"}], "ok": "visible"},
        },
    }
    entry_id = store.outcomes.deadletter("bad event", payload, task_id="t-1", task="rebook.request")
    (entry,) = store.outcomes.deadletters()
    assert entry["id"] == entry_id
    assert entry["reason"] == "bad event"
    assert entry["task_id"] == "t-1" and entry["task"] == "rebook.request"
    assert entry["at"].endswith("Z")
    for secret in ("AT-123", "RT-456", "CS-789", "AK-000", "XYZ", "PW", "TK-1"):
        assert secret not in entry["payload"]
    body = json.loads(entry["payload"])
    kw = body["kwargs"]
    for name in ("access_token", "Refresh-Token", "client_secret", "apiKey", "Authorization"):
        assert kw[name] == "[redacted]"
    assert kw["event_id"] == "e"
    assert kw["nested"]["deep"][0]["token"] == "[redacted]"
    assert kw["nested"]["ok"] == "visible"
    assert store.outcomes.deadletter_entry(entry_id) == entry
    assert store.outcomes.deadletter_entry("0-1") is None


def test_deadletter_payload_is_bounded(store: Store) -> None:
    huge = {f"field{i}": "x" * 10_000 for i in range(200)}
    store.outcomes.deadletter("too big", {"kwargs": huge, "args": list(range(10_000))})
    (entry,) = store.outcomes.deadletters()
    assert len(entry["payload"]) <= DEADLETTER_PAYLOAD_LIMIT + 20
    assert entry["payload"].endswith("(truncated)")


def test_deadletter_handles_odd_values(store: Store) -> None:
    odd: dict[Any, Any] = {1: {1, 2}, "b": b"bytes", "c": object(), "d": float("inf")}
    store.outcomes.deadletter("odd", odd)
    assert store.outcomes.deadletters()[0]["reason"] == "odd"


def test_redact_is_bounded_in_depth_and_width() -> None:
    deep: Any = "leaf"
    for _ in range(20):
        deep = {"d": deep}
    out = json.dumps(redact(deep))
    assert "leaf" not in out
    wide = redact(list(range(500)))
    assert len(wide) == 50


# --- stats & housekeeping -------------------------------------------------------------------------


def test_stats_shape(store: Store) -> None:
    empty = store.sweep.stats(now=T0)
    assert set(empty["states"]) == {s.value for s in State}
    assert all(v == 0 for v in empty["states"].values())
    assert empty["due_lag_seconds"] == 0
    assert empty["deadletter"] == 0
    make(store, "a", 100, performer_id=None, now=T0)  # due at T0
    make(store, "b", 101, now=T0)  # due at its deadline
    make(store, "c", 100, now=T0)  # duplicate
    store.outcomes.deadletter("x", {})
    s = store.sweep.stats(now=T0 + 12.5)
    assert s["states"]["WAITING"] == 2 and s["states"]["DUPLICATE"] == 1
    assert sum(s["states"].values()) == 3
    assert s["due_lag_seconds"] == 12.5
    assert s["deadletter"] == 1
    assert s["outcomes"] == 1
    assert s["active"] == 2
    json.dumps(s)


def test_expire_finished(store: Store) -> None:
    done = make(store, "old", 100).rebook_id
    alive = make(store, "alive", 101).rebook_id
    store.transitions.transition(done, State.ABORTED, reason="x", now=T0 + 1)
    assert store.sweep.expire_finished(T0 + 1 + RETENTION - 1) == 0
    assert store.records.get(done) is not None
    assert store.sweep.expire_finished(T0 + 1 + RETENTION + 1) == 1
    assert store.records.get(done) is None
    assert store.records.find("old") is None
    assert store.records.history(done) == []
    assert ids_in_state(store, State.ABORTED) == []
    assert store.r.zscore(store.key("created"), done) is None
    assert store.r.zscore(store.key("finished"), done) is None
    assert get(store, alive).state is State.WAITING
    # the event id is free again once its record is gone
    assert make(store, "old", 100, now=T0 + RETENTION + 5).kind == "created"


def test_list_rebooks(store: Store) -> None:
    ids = [make(store, f"e{i}", 100 + i, now=T0 + i).rebook_id for i in range(3)]
    store.transitions.transition(ids[0], State.ABORTED, reason="x")
    assert [r.rebook_id for r in store.records.list_rebooks()] == ids[::-1]
    assert [r.rebook_id for r in store.records.list_rebooks(limit=2)] == ids[:0:-1]
    assert [r.rebook_id for r in store.records.list_rebooks(limit=0)] == ids[::-1]
    assert [r.rebook_id for r in store.records.list_rebooks(State.WAITING)] == [ids[2], ids[1]]
    assert [r.rebook_id for r in store.records.list_rebooks(State.ABORTED)] == [ids[0]]


def test_ping_names_the_url_without_password(prefix: str) -> None:
    s = Store.from_url("redis://:hunter2@127.0.0.1:1/0", **store_options(prefix=prefix))
    with pytest.raises(StoreUnavailable) as info:
        s.ping()
    assert "hunter2" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


def test_transition_many_applies_to_those_still_in_the_state(store: Store) -> None:
    ids = [make(store, f"many-{i}", 500 + i).rebook_id for i in range(5)]
    store.transitions.transition(ids[0], State.RESCHEDULING, from_=[State.WAITING], reason="online")
    applied = store.transitions.transition_many(
        [*ids, "rb-missing"],
        State.GAVE_UP,
        from_=[State.WAITING],
        reason="late",
        outcome="GAVE_UP",
        now=T0 + 10,
    )
    assert applied == ids[1:]
    assert get(store, ids[0]).state is State.RESCHEDULING
    for rid in ids[1:]:
        rec = get(store, rid)
        assert rec.state is State.GAVE_UP and rec.reason == "late"
        assert store.records.history(rid)[-1]["to"] == "GAVE_UP"
        assert store.r.zscore(store.key("due"), rid) is None
    outcomes = [o for o in store.outcomes.outcomes(100) if o["state"] == "GAVE_UP"]
    assert sorted(o["rebook_id"] for o in outcomes) == sorted(ids[1:])
    assert (
        store.transitions.transition_many(
            [ids[1]], State.GAVE_UP, from_=[State.WAITING], reason="x"
        )
        == []
    )


def test_transition_many_sets_due_and_fields(store: Store) -> None:
    ids = [make(store, f"online-{i}", 600 + i).rebook_id for i in range(3)]
    moved = store.transitions.transition_many(
        ids,
        State.RESCHEDULING,
        from_=[State.WAITING],
        reason="performer online",
        due=T0 + 42,
        fields={"errors": 0},
        now=T0,
    )
    assert moved == ids
    for rid in ids:
        assert get(store, rid).state is State.RESCHEDULING
        assert due_score(store, rid) == T0 + 42
        assert store.r.hget(store.key("r", rid), "errors") == "0"
    assert store.presence.waiting_for(7) == []


def test_stats_presence_figures_from_the_record_of_calls_made(store: Store) -> None:
    """`stats` `presence`: needed and budget from the settings, achieved from what was made."""
    store = new_store(store.r, prefix=store.keys.prefix, presence_interval=2.0, upstream_rate=10.0)
    for k in range(40):
        make(store, f"e-{k}", booking_id=1000 + k, performer_id=500 + k)
    now = 1_800_000_000.0  # a bucket boundary: 60 s of record below
    assert (
        store.sweep.stats(now)["presence"]["achieved_interval_seconds"] is None
    )  # nothing made yet
    for second in range(60):
        store.presence.note_presence_performers(now - 60 + second)
        for _ in range(10):  # 10 calls a second for 40 performers: each every 4 s
            store.presence.note_presence_call(now - 60 + second)
    presence = store.sweep.stats(now)["presence"]
    assert presence["performers"] == 40
    assert presence["interval_seconds"] == 2.0
    assert presence["needed_calls_per_second"] == 20.0
    assert presence["budget_calls_per_second"] == pytest.approx(7 / 1.05, abs=1e-3)
    assert presence["achieved_interval_seconds"] == pytest.approx(4.0, rel=0.01)


def test_presence_seen_keeps_the_last_answer_and_the_offline_run(store: Store) -> None:
    """The console's "why is it waiting": last answer, when, and since when offline."""
    assert store.presence.presence_seen(42) is None
    store.presence.note_presence_call(100.0, 42, False)
    store.presence.note_presence_call(130.0, 42, False)
    seen = store.presence.presence_seen(42)
    assert seen is not None
    assert (seen.at, seen.answer, seen.offline_since) == (130.0, "offline", 100.0)
    store.presence.note_presence_call(160.0, 42, None, "getUserSummary HTTP 503 token=abc123secret")
    seen = store.presence.presence_seen(42)
    assert seen is not None and seen.answer == "unknown" and seen.offline_since == 100.0
    assert "abc123secret" not in seen.error and "503" in seen.error  # scrubbed
    store.presence.note_presence_call(190.0, 42, True)
    seen = store.presence.presence_seen(42)
    assert seen is not None and seen.answer == "online" and seen.offline_since is None
    store.presence.note_presence_call(220.0, 42, False)
    assert store.presence.presence_seen(42).offline_since == 220.0  # type: ignore[union-attr]
    assert 0 < store.r.ttl(store.key("presence", "seen", 42)) <= 8 * 86400
