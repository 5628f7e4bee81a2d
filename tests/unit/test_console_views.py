"""What the console's views gather, without a server: the JSON API's action body checked with
the messages it returns, the notes before a bulk retry, the upstream status that never raises,
and every view's fields exactly the keyword arguments its page takes."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import pytest

from tests.unit.records import NOW, rec
from worker.core.actions import MAX_BULK, Outcome
from worker.core.search import Filters
from worker.core.states import State
from worker.operations.console import pages, views


@pytest.mark.parametrize(
    ("view", "page"),
    [
        (views.ListView, pages.list_page),
        (views.DetailView, pages.detail_page),
        (views.PreviewView, pages.preview_page),
    ],
)
def test_a_views_fields_are_its_pages_arguments_but_base_and_xsrf(view: Any, page: Any) -> None:
    params = inspect.signature(page).parameters
    required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
    names = set(view.__dataclass_fields__)
    assert names <= set(params)
    assert required - names == {"base", "xsrf"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([], 'action: "retry" or "cancel"'),
        ({"action": "delete", "ids": ["a"]}, 'action: "retry" or "cancel"'),
        ({"action": "retry"}, 'give "ids" or "filter", one of them'),
        ({"action": "retry", "ids": ["a"], "filter": {}}, 'give "ids" or "filter", one of them'),
        ({"action": "retry", "ids": ["a"], "dry_run": "yes"}, "dry_run: true or false"),
        ({"action": "retry", "ids": "a"}, "ids: a list of rebook ids"),
        ({"action": "retry", "ids": [1]}, "ids: a list of rebook ids"),
        ({"action": "retry", "ids": ["a"] * (MAX_BULK + 1)}, f"ids: at most {MAX_BULK}"),
        ({"action": "cancel", "filter": ["state"]}, "filter: an object of filters"),
        ({"action": "cancel", "filter": {"state": "nope"}}, "state"),
        ({"action": "cancel", "filter": {}}, "filter: at least one filter (never every rebook)"),
    ],
)
def test_an_action_body_is_refused_with_the_apis_message(body: Any, error: str) -> None:
    with pytest.raises(views.Invalid) as caught:
        views.action_request(body)
    assert error in str(caught.value)


def test_an_action_body_gives_ids_or_a_filter() -> None:
    by_ids = views.action_request({"action": "retry", "ids": ["a", "b"], "dry_run": True})
    assert by_ids == views.ActionRequest("retry", ["a", "b"], None, True)
    by_filter = views.action_request({"action": "cancel", "filter": {"user_id": "dave"}})
    assert by_filter.action == "cancel" and by_filter.ids is None and not by_filter.dry_run
    assert by_filter.filters == Filters.parse({"user_id": "dave"})


def test_entered_at_is_the_last_history_entry_else_none() -> None:
    assert views.entered_at([]) is None
    history = [{"at": "2027-01-15T07:00:00Z"}, {"at": "2027-01-15T08:00:00Z"}]
    assert views.entered_at(history) == NOW
    assert views.entered_at([{"at": "yesterday"}]) is None
    assert views.entered_at([{"state": "waiting"}]) is None


def test_an_unreadable_circuit_shows_no_banner() -> None:
    def broken() -> None:
        raise ConnectionError("down")

    store: Any = SimpleNamespace(circuit=SimpleNamespace(public=broken))
    assert views.paused(store) is None
    fault = {"reason": "auth", "since": NOW}
    store = SimpleNamespace(circuit=SimpleNamespace(public=lambda: fault))
    assert views.paused(store) == fault


def test_the_upstream_status_never_raises() -> None:
    def no_flow() -> Any:
        raise RuntimeError("no app")

    assert views.upstream_status(no_flow, rec(State.RESCHEDULING)) == "no new booking"
    watched = rec(State.WATCHING, new_booking_id=7, status="Pending")
    assert views.upstream_status(no_flow, watched) == (
        "unavailable (RuntimeError); last read by the watch: Pending"
    )
    booking = SimpleNamespace(status="Accepted")
    flow: Any = SimpleNamespace(
        kit=SimpleNamespace(_member_call=lambda r, call: call("token")),
        client=SimpleNamespace(booking_details=lambda token, new_id: booking),
    )
    assert views.upstream_status(lambda: flow, watched) == "Accepted (booking 7)"


def test_notes_say_whether_a_reauth_retry_parks_again() -> None:
    stored = {"dave": NOW - 60, "erin": NOW - 900}

    def load(user_id: str) -> Any:
        if user_id == "frank":
            raise ValueError("another key")
        at = stored.get(user_id)
        return None if at is None else SimpleNamespace(refresh_issued_at=at)

    svc: Any = SimpleNamespace(token_store=SimpleNamespace(load=load))
    parked = {
        rid: rec(State.NEEDS_ATTENTION, rebook_id=rid, user_id=user, reason="reauth")
        for rid, user in (("a", "dave"), ("b", "erin"), ("c", "frank"), ("d", "gina"))
    }
    other = rec(State.NEEDS_ATTENTION, rebook_id="e", reason="rejected")
    preview = Outcome(
        action="retry",
        dry_run=True,
        would_do=["a", "b", "c", "d", "e"],
        records={**parked, "e": other},
    )
    notes = views.notes(svc, "retry", preview)
    assert notes["a"].startswith("new token pair stored ")
    assert notes["b"] == "no new token since it parked: it parks again until the member signs in"
    assert notes["c"] == notes["d"] == "no token pair stored: it will park again"
    assert "e" not in notes
    assert views.notes(svc, "cancel", preview) == {}
