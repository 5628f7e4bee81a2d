"""Shadow mode's flow decisions, step by step (the real store and sandbox, a recording
dispatcher; see test_flow.py): a rebook ends SHADOWED where it would have POSTed, and a booking
made before shadow mode was switched on is watched to its end but never confirmed."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.component.test_flow import (  # noqa: F401 (make_env: the fixture)
    Env,
    make_env,
    next_watch_interval,
    rescheduling,
    watching,
)
from worker.core.flow import Refused
from worker.core.states import State


def booking_calls(env: Env) -> dict[str, int]:
    calls = env.sandbox.stats()["calls"]
    return {op: int(calls.get(op, 0)) for op in ("RescheduleMadeBooking", "ConfirmMadeBooking")}


def test_a_rebook_ends_shadowed_where_it_would_have_posted(
    make_env: Callable[..., Env],  # noqa: F811
) -> None:
    env = make_env(shadow=True)
    rid, _ = rescheduling(env)
    online_ts = env.get(rid).online_ts
    assert online_ts is not None
    lists = int(env.sandbox.stats()["calls"].get("MadeBookings", 0))
    assert env.flow.reschedule(rid) == "shadowed"
    rec = env.get(rid)
    assert rec.state is State.SHADOWED and rec.post_sent_ts is None and rec.new_booking_id is None
    assert rec.would_post_ts is not None and rec.would_post_ts >= online_ts
    assert booking_calls(env) == {"RescheduleMadeBooking": 0, "ConfirmMadeBooking": 0}
    assert int(env.sandbox.stats()["calls"]["MadeBookings"]) == lists + 1  # the read before it
    (outcome,) = env.outcomes(rid)
    assert outcome["state"] == "SHADOWED"
    detail = json.loads(outcome["detail"])
    assert detail["would_post_at"].endswith("Z")
    assert detail["online_to_post_seconds"] == round(rec.would_post_ts - online_ts, 3)
    assert (
        env.store.records.active_owner(rec.booking_id, rec.user_id) is None
    )  # the booking is free
    with pytest.raises(Refused, match="SHADOWED"):
        env.flow.retry(rid)
    figures = env.store.sweep.stats()["shadow"]
    assert figures["enabled"] is True and figures["would_book"] == 1
    assert figures["online_to_post_seconds"]["count"] == 1


def test_a_booking_made_before_shadow_mode_is_never_confirmed(
    make_env: Callable[..., Env],  # noqa: F811
) -> None:
    real = make_env(auto_confirm=True)
    rid, _, new = watching(real)
    assert booking_calls(real)["RescheduleMadeBooking"] == 1
    shadow = make_env(auto_confirm=True, shadow=True)  # switched on while it is watched
    shadow.sandbox.set_status(new, "Accepted")
    next_watch_interval(shadow)
    assert shadow.flow.watch(rid) == "accepted"
    rec = shadow.get(rid)
    assert rec.state is State.ACCEPTED and "shadow mode" in rec.reason
    assert booking_calls(shadow)["ConfirmMadeBooking"] == 0
    assert shadow.sandbox.booking(new)["Status"] == "Accepted"
