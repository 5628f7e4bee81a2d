"""Tornado handlers of the console, on Flower's own `BaseHandler` (so its basic-auth check).

Every request is authenticated first (401 without Flower's credentials, like every Flower page).
POSTs are refused when cross-site: `Sec-Fetch-Site` other than same-origin, or an `Origin` that
is not this host; the HTML forms also carry Tornado's `_xsrf` token, and the JSON API takes only
`application/json` bodies (which no cross-site form can send).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import tornado.web
from flower.views import BaseHandler
from tornado.web import url

from worker.core.actions import ACTIONS, MAX_BULK, Action, Outcome, refusal, run
from worker.core.capacity import presence_figures, shortfall
from worker.core.search import BadFilter, Filters, Search
from worker.core.states import State
from worker.core.store import Rebook, details
from worker.operations.console import openapi, pages
from worker.operations.console.openapi import PAGE_DEFAULT, PAGE_MAX
from worker.operations.console.why import Situation

OUTCOME_SCAN = 2000
"""Outcome entries read after a rebook's receipt to find its own (the stream is shared)."""


def _services() -> Any:
    from worker.celeryapp.runtime import services

    return services()


def _paused() -> dict[str, Any] | None:
    """The deployment fault in force, for the banner on every page (None if unreadable: the
    page itself says what it can)."""
    try:
        paused: dict[str, Any] | None = _services().store.circuit.public()
    except Exception:
        return None
    return paused


def _flow() -> Any:
    import worker.app  # noqa: F401 (builds this process's app, which sends the next steps)
    from worker.celeryapp.dispatch import flow

    return flow()


class ConsoleHandler(BaseHandler):
    """Flower's auth, a strict CSP, and the cross-site refusal for every POST."""

    form_post = True

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Security-Policy", pages.CSP)
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    def authenticate(self) -> None:
        # get_current_user() raises HTTPError(401) on missing or wrong basic-auth credentials;
        # it returns None when OAuth (`--auth`) is on and there is no session.
        if not self.current_user:
            raise tornado.web.HTTPError(401)

    def prepare(self) -> None:
        self.authenticate()

    def check_xsrf_cookie(self) -> None:
        """Runs before `prepare` for POSTs: auth first, then same-site, then the form token."""
        self.authenticate()
        site = self.request.headers.get("Sec-Fetch-Site")
        if site and site not in ("same-origin", "none"):
            raise tornado.web.HTTPError(403, "cross-site request refused")
        origin = self.request.headers.get("Origin")
        if origin is not None and (
            origin == "null" or urlparse(origin).netloc != self.request.host
        ):
            raise tornado.web.HTTPError(403, "cross-origin request refused")
        if self.form_post:
            tornado.web.RequestHandler.check_xsrf_cookie(self)
        else:
            kind = self.request.headers.get("Content-Type", "").split(";")[0].strip()
            if kind != "application/json":
                raise tornado.web.HTTPError(415, "send application/json")

    @property
    def base(self) -> str:
        prefix = (self.application.options.url_prefix or "").strip("/")
        return f"/{prefix}" if prefix else ""

    def arg(self, name: str, default: str = "") -> str:
        """A raw argument: Flower's `get_argument` HTML-escapes by default, and these values
        are filters (compared with records), escaped only when written into a page."""
        value = self.get_argument(name, default, escape=False)
        return default if value is None else str(value)

    def filters(self, prefix: str = "") -> Filters:
        return Filters.parse({name: self.arg(prefix + name) for name in Filters.NAMES})

    def limit(self) -> int:
        raw = self.arg("limit", str(PAGE_DEFAULT))
        try:
            value = int(raw)
        except ValueError:
            raise BadFilter("limit: expected a number") from None
        if not 1 <= value <= PAGE_MAX:
            raise BadFilter(f"limit: 1 to {PAGE_MAX}")
        return value

    def html(self, body: str, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        body = pages.with_banner(body, _paused())
        if _services().settings.shadow:  # on every page: nothing here is really booked
            body = body.replace("<main>", "<main>" + pages.SHADOW_BANNER, 1)
        self.finish(body)

    def json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value, default=str))

    def record(self, rebook_id: str) -> Rebook:
        rec = _services().store.records.find(rebook_id)
        if rec is None:
            raise tornado.web.HTTPError(404, f"no rebook {rebook_id!r}")
        return rec


class RebooksPage(ConsoleHandler):
    def get(self) -> None:
        store = _services().store
        search = Search(store)
        try:
            f, limit = self.filters(), self.limit()
            cursor = self.arg("cursor", "")
            page = search.query(f, limit=limit, cursor=cursor or None)
        except BadFilter as exc:
            raw = {name: self.arg(name) for name in Filters.NAMES}
            self.html(pages.bad_filter_page(base=self.base, raw=raw, error=str(exc)), 400)
            return
        now = time.time()
        # a filtered view's counts per state ("what happened to member M today"); a state
        # alone is already counted by the chips above the table
        only_state = f.state is not None and list(f.params()) == ["state"]
        summary = None if f.empty or only_state else search.summary(f)
        stats = store.sweep.stats(now)
        self.html(
            pages.list_page(
                base=self.base,
                filters=f,
                counts=stats["states"],
                shadow=stats["shadow"],
                items=page.items,
                next_cursor=page.next,
                cursor=cursor,
                limit=limit,
                per_hour=search.outcomes_per_hour(now),
                histogram=search.booked_histogram(now),
                xsrf=self.xsrf_token.decode(),
                now=now,
                summary=summary,
            )
        )


def _outcomes_of(rec: Rebook) -> list[dict[str, str]]:
    store = _services().store
    shard = store.shard_of(rec.rebook_id) or 0
    rows = details.outcome_entries(store, shard, int(rec.created_ts * 1000), OUTCOME_SCAN)
    return [{"id": sid, **f} for sid, f in rows if f.get("rebook_id") == rec.rebook_id]


def _upstream_status(rec: Rebook) -> str:
    """The new booking as the upstream shows it now (a member call), else why not."""
    if rec.new_booking_id is None:
        return "no new booking"
    new_id = rec.new_booking_id
    try:
        flow = _flow()
        booking = flow.kit._member_call(
            rec, lambda token: flow.client.booking_details(token, new_id)
        )
    except Exception as exc:  # shown to the operator, never raised: the page must render
        last = f"; last read by the watch: {rec.status}" if rec.status else ""
        return f"unavailable ({type(exc).__name__}){last}"
    return f"{booking.status or '?'} (booking {new_id})"


def _entered_at(history: list[dict[str, Any]]) -> float | None:
    """When the rebook entered its current state: its last history entry."""
    if not history:
        return None
    try:
        return datetime.fromisoformat(str(history[-1]["at"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


def _token_stored_at(user_id: str) -> float | None:
    """When the member's pair was handed over or last refreshed; never a token itself."""
    try:
        tokens = _services().token_store.load(user_id)
    except Exception:  # an unreadable pair (another key) says nothing about the time
        return None
    return tokens.refresh_issued_at or None if tokens is not None else None


def situation(rec: Rebook, history: list[dict[str, Any]]) -> Situation:
    """The facts behind "why is it where it is" (worker/operations/console/why.py), read now."""
    svc = _services()
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
        entered_at=_entered_at(history),
        due_at=float(due) if due is not None else None,
        presence=seen,
        presence_next=presence_next,
        presence_interval=settings.presence_interval_seconds,
        waiting_on_performer=waiting,
        budget_short=budget,
        gate_max_wait=settings.gate_max_wait_seconds,
        holder=store.records.get(rec.blocked_by) if rec.blocked_by else None,
        token_stored_at=_token_stored_at(rec.user_id) if reauth else None,
        reconcile_proof_reads=settings.reconcile_proof_reads,
    )


class RebookPage(ConsoleHandler):
    def get(self, rebook_id: str) -> None:
        self.show(self.record(rebook_id))

    def show(self, rec: Rebook, message: str = "", status: int = 200) -> None:
        store = _services().store
        history = store.records.history(rec.rebook_id)
        self.html(
            pages.detail_page(
                base=self.base,
                rec=rec,
                history=history,
                outcomes=_outcomes_of(rec),
                upstream=_upstream_status(rec),
                refusals={a: refusal(a, rec) for a in ACTIONS},
                xsrf=self.xsrf_token.decode(),
                message=message,
                situation=situation(rec, history),
            ),
            status,
        )


class RebookAction(RebookPage):
    """The buttons of `/rebooks/{id}`: `Flow.retry`/`Flow.cancel`, as `rebook retry ID`."""

    def post(self, rebook_id: str, action: str) -> None:
        rec = self.record(rebook_id)
        act: Action = "retry" if action == "retry" else "cancel"
        result = run(_flow(), _services().store, act, ids=[rec.rebook_id])
        after = self.record(rec.rebook_id)
        if result.refused:
            self.show(after, f"{action} refused: {result.refused[0]['why']}", 409)
        else:
            self.show(after, f"{action}: now {after.state.value} ({after.reason})")


class BulkForm(ConsoleHandler):
    """The list page's bulk form. Step 1 (the filter as `f_*` fields) is always a dry run: a
    preview of what would be done and refused. Step 2, its confirm (`confirm=1`, the previewed
    `ids` and the filter again), acts on exactly those ids, each still matching the filter,
    each through the flow (`worker.core.actions.run`, as `rebook retry/cancel`)."""

    def post(self) -> None:
        action = self.arg("action", "")
        if action not in ACTIONS:
            raise tornado.web.HTTPError(400, "action: retry or cancel")
        try:
            f = self.filters("f_")
        except BadFilter as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None
        if f.empty:
            raise tornado.web.HTTPError(400, "a bulk action needs a filter")
        act: Action = "retry" if action == "retry" else "cancel"
        store = _services().store
        if self.arg("confirm", "") != "1":
            preview = run(_flow(), store, act, filters=f, dry_run=True)
            self.html(
                pages.preview_page(
                    base=self.base,
                    outcome=preview,
                    filters=f,
                    xsrf=self.xsrf_token.decode(),
                    notes=_notes(act, preview),
                )
            )
            return
        ids = [str(i) for i in self.get_arguments("ids", strip=True)]
        if not ids:
            raise tornado.web.HTTPError(400, "confirm: no rebook to act on")
        if len(ids) > MAX_BULK:
            raise tornado.web.HTTPError(400, f"ids: at most {MAX_BULK}")
        result = run(_flow(), store, act, ids=ids, filters=f)
        self.html(pages.result_page(base=self.base, outcome=result, filters=f))


def _notes(action: Action, preview: Outcome) -> dict[str, str]:
    """What the operator should know before confirming a retry of reauth rebooks: whether a
    new token pair was stored since each parked (else it parks again)."""
    notes: dict[str, str] = {}
    if action != "retry":
        return notes
    stored: dict[str, float | None] = {}
    for rid in preview.would_do:
        rec = preview.records.get(rid)
        if rec is None or rec.state != State.NEEDS_ATTENTION or rec.reason != "reauth":
            continue
        if rec.user_id not in stored:
            stored[rec.user_id] = _token_stored_at(rec.user_id)
        at = stored[rec.user_id]
        if at is None:
            notes[rid] = "no token pair stored: it will park again"
        elif at > (rec.updated_ts or rec.created_ts):
            notes[rid] = f"new token pair stored {pages.when(at)}, after it parked"
        else:
            notes[rid] = "no new token since it parked: it parks again until the member signs in"
    return notes


class ApiRebooks(ConsoleHandler):
    form_post = False

    def get(self) -> None:
        try:
            f, limit = self.filters(), self.limit()
            page = Search(_services().store).query(
                f, limit=limit, cursor=self.arg("cursor", "") or None
            )
        except BadFilter as exc:
            self.json({"error": str(exc)}, 400)
            return
        self.json({"items": [r.public() for r in page.items], "next": page.next})


class ApiRebook(ConsoleHandler):
    form_post = False

    def get(self, rebook_id: str) -> None:
        rec = _services().store.records.find(rebook_id)
        if rec is None:
            self.json({"error": f"no rebook {rebook_id!r}"}, 404)
            return
        self.json({**rec.public(), "history": _services().store.records.history(rec.rebook_id)})


class ApiActions(ConsoleHandler):
    form_post = False

    def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            self.json({"error": "body: not JSON"}, 400)
            return
        if not isinstance(body, dict) or body.get("action") not in ACTIONS:
            self.json({"error": 'action: "retry" or "cancel"'}, 400)
            return
        act: Action = "retry" if body["action"] == "retry" else "cancel"
        ids, raw_filter = body.get("ids"), body.get("filter")
        if (ids is None) == (raw_filter is None):
            self.json({"error": 'give "ids" or "filter", one of them'}, 400)
            return
        dry = body.get("dry_run", False)
        if not isinstance(dry, bool):
            self.json({"error": "dry_run: true or false"}, 400)
            return
        store = _services().store
        if ids is not None:
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                self.json({"error": "ids: a list of rebook ids"}, 400)
                return
            if len(ids) > MAX_BULK:
                self.json({"error": f"ids: at most {MAX_BULK}"}, 400)
                return
            result = run(_flow(), store, act, ids=ids, dry_run=dry)
        else:
            if not isinstance(raw_filter, dict):
                self.json({"error": "filter: an object of filters"}, 400)
                return
            try:
                f = Filters.parse(raw_filter)
            except BadFilter as exc:
                self.json({"error": str(exc)}, 400)
                return
            if f.empty:
                self.json({"error": "filter: at least one filter (never every rebook)"}, 400)
                return
            result = run(_flow(), store, act, filters=f, dry_run=dry)
        self.json(result.as_json())


AUDIT_PAGE = 200
"""Findings the audit page and `GET /api/audit` show (newest first)."""


def _audit(limit: int) -> dict[str, Any]:
    from worker.core.audit import counts, last_run, recorded

    store = _services().store
    return {
        "findings": [f.as_json() for _, f in recorded(store, limit)],
        "counts": counts(store),
        "last_run": last_run(store),
    }


class AuditPage(ConsoleHandler):
    def get(self) -> None:
        data = _audit(AUDIT_PAGE)
        self.html(
            pages.audit_page(
                base=self.base,
                findings=data["findings"],
                counts=data["counts"],
                last=data["last_run"],
            )
        )


class ApiAudit(ConsoleHandler):
    form_post = False

    def get(self) -> None:
        try:
            limit = self.limit()
        except BadFilter as exc:
            self.json({"error": str(exc)}, 400)
            return
        self.json(_audit(limit))


class ApiOpenapi(ConsoleHandler):
    """The OpenAPI 3.1 document of this API (worker/operations/console/openapi.py)."""

    def get(self) -> None:
        self.json(openapi.document(_version()))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rebook")
    except PackageNotFoundError:
        return "0.0.0"


def routes() -> list[Any]:
    rid = r"([A-Za-z0-9._:%-]{1,200})"
    return [
        url(r"/rebooks", RebooksPage, name="rebooks"),
        url(r"/rebooks/actions", BulkForm, name="rebooks-actions"),
        url(r"/rebooks/audit", AuditPage, name="rebooks-audit"),
        url(rf"/rebooks/{rid}/(retry|cancel)", RebookAction, name="rebook-action"),
        url(rf"/rebooks/{rid}", RebookPage, name="rebook"),
        url(r"/api/openapi.json", ApiOpenapi, name="api-openapi"),
        url(r"/api/audit", ApiAudit, name="api-audit"),
        url(r"/api/rebooks", ApiRebooks, name="api-rebooks"),
        url(r"/api/rebooks/actions", ApiActions, name="api-rebooks-actions"),
        url(rf"/api/rebooks/{rid}", ApiRebook, name="api-rebook"),
    ]
