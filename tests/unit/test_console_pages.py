"""The console's words and pages as pure functions: "why is it where it is" for every state an
operator asks about, the bulk preview and its confirm, a bad filter shown with the form again,
and untrusted text escaped everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.records import NOW, rec
from worker.core.actions import Outcome
from worker.core.search import Filters, Summary
from worker.core.settings import Settings
from worker.core.states import State
from worker.core.store import PresenceSeen, Rebook
from worker.operations.console import pages
from worker.operations.console.why import Situation, explain, span


def situation(**given: Any) -> Situation:
    """A situation under the settings' defaults (read from `Settings`), but for `given`."""
    d = Settings.model_construct()
    return Situation(
        **{
            "presence_interval": d.presence_interval_seconds,
            "gate_max_wait": d.gate_max_wait_seconds,
            "reconcile_proof_reads": d.reconcile_proof_reads,
            **given,
        }
    )


def facts(r: Rebook, s: Situation) -> dict[str, str]:
    return dict(explain(r, s).facts)


def test_span_is_precise_enough_to_act_on() -> None:
    assert [span(x) for x in (0.3, 4, 61, 490, 3600 * 11 + 52 * 60, 86400 * 2 + 3 * 3600)] == [
        "0.3s",
        "4s",
        "1m 1s",
        "8m 10s",
        "11h 52m",
        "2d 3h",
    ]


def test_waiting_says_offline_since_when_last_and_next_check_and_deadline() -> None:
    seen = PresenceSeen(at=NOW - 5, answer="offline", offline_since=NOW - 590)
    s = situation(
        now=NOW,
        entered_at=NOW - 600,
        presence=seen,
        presence_next=NOW + 25,
        presence_interval=30,
        waiting_on_performer=3,
    )
    ex = explain(rec(State.WAITING), s)
    assert ex.headline == "Waiting for performer 102 to come online"
    f = dict(ex.facts)
    assert "offline" in f["why-presence"] and "(5s ago)" in f["why-presence"]
    assert "every check since" in f["why-presence"] and "(9m 50s ago)" in f["why-presence"]
    assert "(in 25s)" in f["why-next"] and "every 30s" in f["why-next"]
    assert "all 3 rebooks waiting" in f["why-next"]
    assert "(in 1h 0m)" in f["why-deadline"] and "GAVE_UP" in f["why-deadline"]
    assert "why-budget" not in f


def test_waiting_with_a_failed_check_a_short_budget_or_no_check_yet() -> None:
    failed = PresenceSeen(at=NOW - 3, answer="unknown", error="getUserSummary HTTP 503")
    short = "400 performers need 13.3 presence calls/s"
    f = facts(rec(State.WAITING), situation(now=NOW, presence=failed, budget_short=short))
    assert "failed: getUserSummary HTTP 503" in f["why-presence"]
    assert short in f["why-budget"]
    assert "No presence check is scheduled" in f["why-next"]
    stale = PresenceSeen(at=NOW - 900, answer="offline", offline_since=NOW - 900)
    f = facts(rec(State.WAITING), situation(now=NOW, entered_at=NOW - 10, presence=stale))
    assert "has not been checked since this rebook started waiting" in f["why-presence"]


def test_rescheduling_names_the_sibling_that_holds_the_gate_and_the_park_time() -> None:
    holder = rec(State.RESCHEDULING, rebook_id="rb-holder", post_sent_ts=NOW - 60)
    gated = rec(State.RESCHEDULING, blocked_by="rb-holder", gated_since=NOW - 120)
    ex = explain(gated, situation(now=NOW, holder=holder, gate_max_wait=900, due_at=NOW + 4))
    f = dict(ex.facts)
    assert "rb-holder" in ex.headline
    assert "rb-holder (it is RESCHEDULING)" in f["why-gate"] and "(2m ago)" in f["why-gate"]
    assert "(in 13m)" in f["why-deadline"] and "blocked" in f["why-deadline"]
    html = pages.detail_page(
        base="",
        rec=gated,
        history=[],
        outcomes=[],
        upstream="no new booking",
        refusals={"retry": "in progress", "cancel": None},
        xsrf="x",
        situation=situation(now=NOW, holder=holder),
    )
    assert 'href="/rebooks/rb-holder"' in html and 'id="why"' in html


def test_rescheduling_unsettled_or_failing_says_what_happens_next() -> None:
    unsettled = rec(State.RESCHEDULING, post_sent_ts=NOW - 40, empty_reads=1)
    f = facts(unsettled, situation(now=NOW, due_at=NOW + 30, reconcile_proof_reads=3))
    assert "1 of 3 reads" in f["why-unsettled"] and "(in 30s)" in f["why-unsettled"]
    failing = rec(State.RESCHEDULING, errors=6)
    f = facts(failing, situation(now=NOW, entered_at=NOW - 50, due_at=NOW + 20))
    assert "6 attempt(s) failed" in f["why-errors"] and "rebook_id=rb-0123" in f["why-errors"]
    assert "(in 20s)" in f["why-errors"]


def test_watching_and_finished() -> None:
    watching = rec(State.WATCHING, new_booking_id=555, status="Pending", accept_by_ts=NOW + 300)
    f = facts(watching, situation(now=NOW, due_at=NOW + 10))
    assert "555" in f["why-watch"] and "Pending" in f["why-watch"]
    assert "(in 5m)" in f["why-deadline"] and "(in 10s)" in f["why-next"]
    done = explain(rec(State.ACCEPTED, reason="upstream status Accepted"), situation(now=NOW))
    assert done.headline == "Finished: ACCEPTED" and done.todo == ""


def test_reauth_says_whether_a_new_token_came_since_it_parked() -> None:
    parked = rec(State.NEEDS_ATTENTION, reason="reauth", action="the member must sign in again")
    before = situation(now=NOW, entered_at=NOW - 300, token_stored_at=NOW - 900)
    ex = explain(parked, before)
    assert ex.headline == "Parked: reauth"
    assert "parks again" in dict(ex.facts)["why-token"]
    assert "rebook tokens set dave" in ex.todo
    after = situation(now=NOW, entered_at=NOW - 300, token_stored_at=NOW - 60)
    assert "should now go through" in facts(parked, after)["why-token"]
    html = pages.detail_page(
        base="/flower",
        rec=parked,
        history=[],
        outcomes=[],
        upstream="",
        refusals={"retry": None, "cancel": None},
        xsrf="x",
        situation=after,
    )
    assert 'href="/flower/rebooks?state=NEEDS_ATTENTION&amp;reason=reauth&amp;user_id=dave"' in html


def test_list_summary_and_quick_since_links() -> None:
    f = Filters.parse({"user_id": "dave", "since": "today"})
    html = pages.list_page(
        base="",
        filters=f,
        counts={},
        items=[],
        next_cursor=None,
        cursor="",
        limit=50,
        per_hour=[],
        histogram=[],
        xsrf="x",
        summary=Summary({"ACCEPTED": 2, "NEEDS_ATTENTION": 3}, 5, True),
    )
    assert 'id="sum-total">5 rebooks</b> match member dave · since today' in html
    assert 'href="/rebooks?user_id=dave&amp;since=today&amp;state=NEEDS_ATTENTION"' in html
    assert 'id="since-today" class="on"' in html
    assert 'id="since-any" href="/rebooks?user_id=dave"' in html
    assert 'id="bulk-retry"' in html and 'name="f_since" value="today"' in html


def test_bad_filter_shows_the_form_again_with_what_was_typed_escaped() -> None:
    raw = {"user_id": "dave", "since": '"><b>x', "state": "parked"}
    html = pages.bad_filter_page(base="", raw=raw, error="since: expected today")
    assert 'id="filter-error"' in html and 'value="dave"' in html
    assert "<b>x" not in html and "&quot;&gt;&lt;b&gt;x" in html
    assert '<option value="NEEDS_ATTENTION" selected>' in html


def test_preview_confirms_exactly_what_it_showed() -> None:
    a, b = rec(State.NEEDS_ATTENTION, reason="reauth"), rec(State.ACCEPTED, rebook_id="rb-b")
    outcome = Outcome(
        "retry",
        True,
        matched=[a.rebook_id, b.rebook_id],
        would_do=[a.rebook_id],
        refused=[{"rebook_id": "rb-b", "why": "rb-b is ACCEPTED: <decided>"}],
        records={a.rebook_id: a, b.rebook_id: b},
    )
    f = Filters.parse({"user_id": "dave"})
    html = pages.preview_page(
        base="", outcome=outcome, filters=f, xsrf="tok", notes={a.rebook_id: "new token"}
    )
    assert "Nothing has been done yet" in html
    assert f'name="ids" value="{a.rebook_id}"' in html and 'name="ids" value="rb-b"' not in html
    assert 'name="confirm" value="1"' in html and 'name="_xsrf" value="tok"' in html
    assert 'name="f_user_id" value="dave"' in html and ">Retry this rebook</button>" in html
    assert "&lt;decided&gt;" in html and "new token" in html
    nothing = Outcome("retry", True, matched=["rb-b"], refused=outcome.refused)
    assert 'id="bulk-confirm"' not in pages.preview_page(
        base="", outcome=nothing, filters=f, xsrf="tok", notes={}
    )


def test_a_deployment_fault_puts_a_banner_on_the_page() -> None:
    page = pages.audit_page(base="", findings=[], counts={})
    assert pages.with_banner(page, None) == page
    paused = {"reason": "oauth_client", "setting": "REBOOK_OAUTH_CLIENT_ID <x>", "since": "Z"}
    shown = pages.with_banner(page, paused)
    assert 'class="paused"' in shown and "REBOOK_OAUTH_CLIENT_ID &lt;x&gt;" in shown
    assert shown.index('class="paused"') > shown.index("<main>")


HOSTILE = '<img src=x onerror="alert(1)">\''


def test_every_page_escapes_untrusted_text_in_text_and_attributes() -> None:
    """Ids, reasons, members and upstream words hostile everywhere: no page writes them raw."""
    bad = rec(
        State.NEEDS_ATTENTION,
        rebook_id="rb-" + HOSTILE,
        event_id=HOSTILE,
        user_id=HOSTILE,
        reason=HOSTILE,
        blocked_by=HOSTILE,
        accept_by=HOSTILE,
    )
    f = Filters.parse({"user_id": HOSTILE})
    outcome = Outcome(
        "retry",
        True,
        matched=[bad.rebook_id, HOSTILE],
        would_do=[bad.rebook_id],
        refused=[{"rebook_id": HOSTILE, "why": HOSTILE}],
        records={bad.rebook_id: bad},
    )
    history = [{"at": HOSTILE, "from": HOSTILE, "to": "WAITING", "reason": HOSTILE}]
    shown = [
        pages.list_page(
            base=HOSTILE,
            filters=f,
            counts={},
            items=[bad],
            next_cursor=HOSTILE,
            cursor=HOSTILE,
            limit=50,
            per_hour=[(int(NOW), {"ACCEPTED": 1})],
            histogram=[("<1s", 2)],
            xsrf=HOSTILE,
            summary=Summary({"ACCEPTED": 1}, 1, True),
        ),
        pages.detail_page(
            base=HOSTILE,
            rec=bad,
            history=history,
            outcomes=[{"at": HOSTILE, "state": HOSTILE, "detail": HOSTILE}],
            upstream=HOSTILE,
            refusals={"retry": None, "cancel": HOSTILE},
            xsrf=HOSTILE,
            message=HOSTILE,
            situation=situation(now=NOW),
        ),
        pages.preview_page(base=HOSTILE, outcome=outcome, filters=f, xsrf=HOSTILE, notes={}),
        pages.result_page(base=HOSTILE, outcome=outcome, filters=f),
        pages.bad_filter_page(base=HOSTILE, raw={"q": HOSTILE}, error=HOSTILE),
        pages.audit_page(
            base=HOSTILE,
            findings=[{"kind": HOSTILE, "user_id": HOSTILE, "rebook_ids": [HOSTILE]}],
            counts={HOSTILE: 1},
            last={"at": HOSTILE},
        ),
        pages.with_banner(pages.audit_page(base="", findings=[], counts={}), {"reason": HOSTILE}),
    ]
    for html in shown:
        assert "<img" not in html and 'alert(1)"' not in html and "'<" not in html
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&#x27;" in html


def test_no_template_turns_escaping_off() -> None:
    folder = Path(pages.__file__).with_name("templates")
    names = sorted(p.name for p in folder.iterdir())
    assert "base.html" in names and "list.html" in names
    for name in names:
        text = (folder / name).read_text()
        assert "{% raw" not in text and "{% autoescape" not in text and "{% module" not in text
