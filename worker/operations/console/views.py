"""What each console page and API answer shows, gathered from the services.

The handlers (handlers.py) only parse a request, call one function here and render the result
(pages.py) or serialise it; these functions know nothing of Tornado, so they are tested without
a server. Store reads go through the store's own methods (Redis stays in worker/core/store).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from worker.core.actions import ACTIONS, MAX_BULK, Action, Outcome, refusal, run
from worker.core.capacity import presence_figures, shortfall
from worker.core.search import BadFilter, Filters, Search, Summary
from worker.core.states import State
from worker.core.store import Rebook, details
from worker.operations.console import pages
from worker.operations.console.why import Situation

if TYPE_CHECKING:
    from worker.celeryapp.runtime import Services
    from worker.core.flow import Flow
    from worker.core.store import Store

OUTCOME_SCAN = 2000
"""Outcome entries read after a rebook's receipt to find its own (the stream is shared)."""

AUDIT_PAGE = 200
"""Findings the audit page and `GET /api/audit` show (newest first)."""


class Invalid(ValueError):
    """A request the API refuses (400), its message shown as `{"error": ...}`."""


class View:
    """A page's data, handed to its `pages.*_page` function as keyword arguments."""

    def kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class ListView(View):
    filters: Filters
    counts: Mapping[str, int]
    shadow: Mapping[str, Any] | None
    items: list[Rebook]
    next_cursor: str | None
    cursor: str
    limit: int
    per_hour: Sequence[tuple[int, Mapping[str, int]]]
    histogram: Sequence[tuple[str, int]]
    now: float
    summary: Summary | None


@dataclass(frozen=True)
class DetailView(View):
    rec: Rebook
    history: list[dict[str, Any]]
    outcomes: list[dict[str, str]]
    upstream: str
    refusals: dict[str, str | None]
    message: str
    situation: Situation


@dataclass(frozen=True)
class PreviewView(View):
    outcome: Outcome
    filters: Filters
    notes: dict[str, str]


@dataclass(frozen=True)
class ActionRequest:
    """A valid `POST /api/rebooks/actions` body: ids or a non-empty filter, never both."""

    action: Action
    ids: list[str] | None
    filters: Filters | None
    dry_run: bool


def paused(store: Store) -> dict[str, Any] | None:
    """The deployment fault in force, for the banner on every page (None if unreadable: the
    page itself says what it can)."""
    try:
        found: dict[str, Any] | None = store.circuit.public()
    except Exception:
        return None
    return found


def list_view(store: Store, f: Filters, limit: int, cursor: str) -> ListView:
    """The list page; raises BadFilter for a cursor the search refuses."""
    search = Search(store)
    page = search.query(f, limit=limit, cursor=cursor or None)
    now = time.time()
    # a filtered view's counts per state ("what happened to member M today"); a state
    # alone is already counted by the chips above the table
    only_state = f.state is not None and list(f.params()) == ["state"]
    summary = None if f.empty or only_state else search.summary(f)
    stats = store.sweep.stats(now)
    return ListView(
        filters=f,
        counts=stats["states"],
        shadow=stats["shadow"],
        items=page.items,
        next_cursor=page.next,
        cursor=cursor,
        limit=limit,
        per_hour=search.outcomes_per_hour(now),
        histogram=search.booked_histogram(now),
        now=now,
        summary=summary,
    )


def api_list(store: Store, f: Filters, limit: int, cursor: str) -> dict[str, Any]:
    """`GET /api/rebooks`; raises BadFilter like the list page."""
    page = Search(store).query(f, limit=limit, cursor=cursor or None)
    return {"items": [r.public() for r in page.items], "next": page.next}


def api_detail(store: Store, rebook_id: str) -> dict[str, Any] | None:
    """`GET /api/rebooks/{id}`, None when there is no such rebook."""
    rec = store.records.find(rebook_id)
    if rec is None:
        return None
    return {**rec.public(), "history": store.records.history(rec.rebook_id)}


def detail_view(
    svc: Services, flow: Callable[[], Flow], rec: Rebook, message: str = ""
) -> DetailView:
    """The rebook page. `flow` is called only to read a new booking upstream."""
    history = svc.store.records.history(rec.rebook_id)
    return DetailView(
        rec=rec,
        history=history,
        outcomes=outcomes_of(svc.store, rec),
        upstream=upstream_status(flow, rec),
        refusals={a: refusal(a, rec) for a in ACTIONS},
        message=message,
        situation=situation(svc, rec, history),
    )


def act_on(
    svc: Services, flow: Callable[[], Flow], action: Action, rec: Rebook
) -> tuple[DetailView, int] | None:
    """A rebook page's button, as `rebook retry ID`: the page of the record after, with what
    was done or refused, and its status (None if the record is gone)."""
    result = run(flow(), svc.store, action, ids=[rec.rebook_id])
    after = svc.store.records.find(rec.rebook_id)
    if after is None:
        return None
    if result.refused:
        return detail_view(svc, flow, after, f"{action} refused: {result.refused[0]['why']}"), 409
    return detail_view(svc, flow, after, f"{action}: now {after.state.value} ({after.reason})"), 200


def bulk_preview(svc: Services, flow: Flow, action: Action, f: Filters) -> PreviewView:
    """Step 1 of the list page's bulk form: always a dry run."""
    preview = run(flow, svc.store, action, filters=f, dry_run=True)
    return PreviewView(outcome=preview, filters=f, notes=notes(svc, action, preview))


def bulk_confirm(svc: Services, flow: Flow, action: Action, ids: list[str], f: Filters) -> Outcome:
    """Step 2: exactly the previewed ids, each still matching the filter."""
    return run(flow, svc.store, action, ids=ids, filters=f)


def action_request(body: Any) -> ActionRequest:
    """The JSON API's action body, checked; raises Invalid with the message the API returns."""
    if not isinstance(body, dict) or body.get("action") not in ACTIONS:
        raise Invalid('action: "retry" or "cancel"')
    act: Action = "retry" if body["action"] == "retry" else "cancel"
    ids, raw_filter = body.get("ids"), body.get("filter")
    if (ids is None) == (raw_filter is None):
        raise Invalid('give "ids" or "filter", one of them')
    dry = body.get("dry_run", False)
    if not isinstance(dry, bool):
        raise Invalid("dry_run: true or false")
    if ids is not None:
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise Invalid("ids: a list of rebook ids")
        if len(ids) > MAX_BULK:
            raise Invalid(f"ids: at most {MAX_BULK}")
        return ActionRequest(act, ids, None, dry)
    if not isinstance(raw_filter, dict):
        raise Invalid("filter: an object of filters")
    try:
        f = Filters.parse(raw_filter)
    except BadFilter as exc:
        raise Invalid(str(exc)) from None
    if f.empty:
        raise Invalid("filter: at least one filter (never every rebook)")
    return ActionRequest(act, None, f, dry)


def api_act(store: Store, flow: Flow, req: ActionRequest) -> dict[str, Any]:
    """`POST /api/rebooks/actions`, through the flow as `rebook retry/cancel`."""
    if req.ids is not None:
        return run(flow, store, req.action, ids=req.ids, dry_run=req.dry_run).as_json()
    return run(flow, store, req.action, filters=req.filters, dry_run=req.dry_run).as_json()


def audit_view(store: Store, limit: int) -> dict[str, Any]:
    """The audit page and `GET /api/audit`: the newest findings, counts and the last run."""
    from worker.core.audit import counts, last_run, recorded

    return {
        "findings": [f.as_json() for _, f in recorded(store, limit)],
        "counts": counts(store),
        "last_run": last_run(store),
    }


def version() -> str:
    """The installed rebook's version, for the OpenAPI document."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("rebook")
    except PackageNotFoundError:
        return "0.0.0"


def outcomes_of(store: Store, rec: Rebook) -> list[dict[str, str]]:
    shard = store.shard_of(rec.rebook_id) or 0
    rows = details.outcome_entries(store, shard, int(rec.created_ts * 1000), OUTCOME_SCAN)
    return [{"id": sid, **f} for sid, f in rows if f.get("rebook_id") == rec.rebook_id]


def upstream_status(flow: Callable[[], Flow], rec: Rebook) -> str:
    """The new booking as the upstream shows it now (a member call), else why not."""
    if rec.new_booking_id is None:
        return "no new booking"
    new_id = rec.new_booking_id
    try:
        op = flow()
        booking = op.kit._member_call(rec, lambda token: op.client.booking_details(token, new_id))
    except Exception as exc:  # shown to the operator, never raised: the page must render
        last = f"; last read by the watch: {rec.status}" if rec.status else ""
        return f"unavailable ({type(exc).__name__}){last}"
    return f"{booking.status or '?'} (booking {new_id})"


def entered_at(history: list[dict[str, Any]]) -> float | None:
    """When the rebook entered its current state: its last history entry."""
    if not history:
        return None
    try:
        return datetime.fromisoformat(str(history[-1]["at"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


def token_stored_at(svc: Services, user_id: str) -> float | None:
    """When the member's pair was handed over or last refreshed; never a token itself."""
    try:
        tokens = svc.token_store.load(user_id)
    except Exception:  # an unreadable pair (another key) says nothing about the time
        return None
    return tokens.refresh_issued_at or None if tokens is not None else None


def situation(svc: Services, rec: Rebook, history: list[dict[str, Any]]) -> Situation:
    """The facts behind "why is it where it is" (worker/operations/console/why.py), read now."""
    store, settings = svc.store, svc.settings
    now = time.time()
    shard = store.shard_of(rec.rebook_id) or 0
    due = details.due_at(store, shard, rec.rebook_id)
    seen = presence_next = None
    waiting = 0
    budget: str | None = None
    if rec.state == State.WAITING and rec.performer_id is not None:
        seen = store.presence.presence_seen(rec.performer_id)
        presence_next = store.presence.performer_due(rec.performer_id)
        waiting = store.presence.waiting_count(rec.performer_id)
    if rec.state in (State.WAITING, State.RESCHEDULING):
        performers = details.tracked_performers(store)
        figures = presence_figures(
            performers,
            settings.presence_interval_seconds,
            settings.upstream_rate_per_second,
            store.presence.achieved_presence_interval(now),
        )
        budget = shortfall(figures)
    reauth = rec.state == State.NEEDS_ATTENTION and rec.reason == "reauth"
    return Situation(
        now=now,
        entered_at=entered_at(history),
        due_at=float(due) if due is not None else None,
        presence=seen,
        presence_next=presence_next,
        presence_interval=settings.presence_interval_seconds,
        waiting_on_performer=waiting,
        budget_short=budget,
        gate_max_wait=settings.gate_max_wait_seconds,
        holder=store.records.get(rec.blocked_by) if rec.blocked_by else None,
        token_stored_at=token_stored_at(svc, rec.user_id) if reauth else None,
        reconcile_proof_reads=settings.reconcile_proof_reads,
    )


def notes(svc: Services, action: Action, preview: Outcome) -> dict[str, str]:
    """What the operator should know before confirming a retry of reauth rebooks: whether a
    new token pair was stored since each parked (else it parks again)."""
    found: dict[str, str] = {}
    if action != "retry":
        return found
    stored: dict[str, float | None] = {}
    for rid in preview.would_do:
        rec = preview.records.get(rid)
        if rec is None or rec.state != State.NEEDS_ATTENTION or rec.reason != "reauth":
            continue
        if rec.user_id not in stored:
            stored[rec.user_id] = token_stored_at(svc, rec.user_id)
        at = stored[rec.user_id]
        if at is None:
            found[rid] = "no token pair stored: it will park again"
        elif at > (rec.updated_ts or rec.created_ts):
            found[rid] = f"new token pair stored {pages.when(at)}, after it parked"
        else:
            found[rid] = "no new token since it parked: it parks again until the member signs in"
    return found
