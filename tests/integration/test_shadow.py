"""Shadow mode through a real worker, beat and the sandbox (REBOOK_SHADOW=true): the upstream
sees reads only — no Reschedule, Confirm or Cancel — every rebook whose performer came online ends
SHADOWED within one presence interval plus a sweep with `would_post_at` in its outcome, one whose
performer never comes online still gives up, an unsettled mark from before shadow mode is
reconciled first, and `stats --json` and the console show the figures."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
import requests

from tests.integration.conftest import System, running_system
from tests.integration.console_helpers import AUTH, flower_for
from worker.core.models import from_ts, iso_z
from worker.core.states import State

pytestmark = pytest.mark.integration

SLACK = 1.5  # a busy 2-core machine: process start-up jitter, Redis and HTTP round trips
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
BOOKING_CALLS = ("RescheduleMadeBooking", "ConfirmMadeBooking", "CancelMadeBooking")


@pytest.fixture(scope="module")
def shadow(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    # auto-confirm on: shadow mode must not confirm either
    with running_system(
        redis_url, tmp_path_factory.mktemp("shadow"), shadow=True, auto_confirm=True
    ) as sysm:
        yield sysm


def outcome_of(system: System, rid: str, state: State) -> dict[str, str]:
    for entry in system.store.outcomes.outcomes(count=10_000):
        if entry["rebook_id"] == rid and entry["state"] == state.value:
            return entry
    raise AssertionError(f"no {state.value} outcome for {rid}")


def test_shadow_mode_books_nothing_and_says_what_it_would_have_done(shadow: System) -> None:
    s = shadow.settings
    a, b, ghost = (shadow.performer(online=False) for _ in range(3))
    member = shadow.member()
    on_a = [shadow.rebook(member, a)[0], shadow.rebook(shadow.member(), a)[0]]
    on_b = [shadow.rebook(member, b)[0]]
    never, _ = shadow.rebook(shadow.member(), ghost, max_wait_seconds=2)
    for rid in [*on_a, *on_b, never]:
        shadow.wait_state(rid, State.WAITING)

    online_at = time.time()
    shadow.sandbox.set_online(a, True)
    shadow.sandbox.set_online(b, True)
    bound = s.presence_interval_seconds + s.sweep_interval_seconds + SLACK
    for rid in [*on_a, *on_b]:
        rec = shadow.wait_state(rid, State.SHADOWED, timeout=15)
        assert rec.new_booking_id is None and rec.post_sent_ts is None
        assert rec.would_post_ts is not None and rec.online_ts is not None
        assert rec.would_post_ts - online_at <= bound, (rid, rec.would_post_ts - online_at)
        detail = json.loads(outcome_of(shadow, rid, State.SHADOWED)["detail"])
        assert ISO_Z.match(detail["would_post_at"]), detail
        assert detail["would_post_at"] == iso_z(from_ts(rec.would_post_ts))
        assert 0 <= detail["online_to_post_seconds"] <= bound
        assert detail["online_at"] == iso_z(from_ts(rec.online_ts))
    shadow.wait_state(never, State.GAVE_UP, timeout=15)

    stats = shadow.sandbox.stats()
    assert {op: stats["calls"].get(op, 0) for op in BOOKING_CALLS} == dict.fromkeys(
        BOOKING_CALLS, 0
    )
    assert not stats["new_bookings"]
    # it did get as far as the POST: the read before it went out, once per rebook at least
    assert stats["calls"].get("MadeBookings", 0) >= len(on_a) + len(on_b)

    shown = shadow.cli("stats", "--json")
    assert shown.returncode == 0, shown.stderr
    figures = json.loads(shown.stdout)["shadow"]
    assert figures["enabled"] is True
    assert figures["would_book"] == 3 and figures["gave_up"] == 1
    lag = figures["online_to_post_seconds"]
    assert lag["count"] == 3 and 0 <= lag["p50"] <= lag["p99"] <= bound
    assert json.loads(shown.stdout)["states"]["SHADOWED"] == 3
    text = shadow.cli("stats")
    assert "shadow mode: nothing is booked" in text.stdout and "would have booked 3" in text.stdout

    refused = shadow.cli("retry", on_b[0])
    assert refused.returncode == 1 and "SHADOWED" in refused.stdout + refused.stderr

    with flower_for(shadow) as base:
        page = requests.get(f"{base}/rebooks", auth=AUTH, timeout=10)
        assert page.status_code == 200
        assert 'id="shadow-banner"' in page.text and "shadow mode: nothing is booked" in page.text
        assert 'id="shadow-would-book"' in page.text
        assert re.search(r'id="shadow-would-book"[^>]*>3</a>', page.text)
        one = requests.get(f"{base}/rebooks/{on_b[0]}", auth=AUTH, timeout=10)
        assert one.status_code == 200
        assert 'id="shadow-banner"' in one.text and 'id="why-shadowed"' in one.text


def test_an_unsettled_post_from_before_shadow_mode_is_reconciled_first(shadow: System) -> None:
    """A POST may have gone out before shadow mode was switched on: its mark is settled as ever
    (MadeBookings reads), and only a proof that it made nothing lets the rebook end SHADOWED."""
    performer = shadow.performer(online=False)
    rid, _ = shadow.rebook(shadow.member(), performer)
    shadow.wait_state(rid, State.WAITING)
    lists_before = shadow.sandbox.stats()["calls"].get("MadeBookings", 0)
    now = time.time()
    # what a worker in real mode left: "POST sent", no answer
    assert shadow.store.transitions.transition(
        rid,
        State.RESCHEDULING,
        from_=[State.WAITING],
        reason="test: POST sent before shadow mode",
        fields={"post_sent_ts": now, "answer_ts": now, "attempts": 1},
        due=now,
    )
    rec = shadow.wait_state(rid, State.SHADOWED, timeout=20)
    assert rec.post_sent_ts is None  # settled: proven not made
    assert rec.would_post_ts is not None
    # not before the proof's window closed (its last read starts there)
    assert rec.would_post_ts >= now + shadow.settings.reconcile_window_seconds
    stats = shadow.sandbox.stats()
    # the proof's reads (REBOOK_RECONCILE_PROOF_READS; the last one also serves as the read
    # before the POST) — a rebook that skipped reconciling would have read once
    reads = stats["calls"].get("MadeBookings", 0) - lists_before
    assert reads >= shadow.settings.reconcile_proof_reads >= 2, reads
    assert all(stats["calls"].get(op, 0) == 0 for op in BOOKING_CALLS), stats["calls"]
