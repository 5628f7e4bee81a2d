"""Tornado handlers of the console, on Flower's own `BaseHandler` (so its basic-auth check).

Every request is authenticated first (401 without Flower's credentials, like every Flower page).
POSTs are refused when cross-site: `Sec-Fetch-Site` other than same-origin, or an `Origin` that
is not this host; the HTML forms also carry Tornado's `_xsrf` token, and the JSON API takes only
`application/json` bodies (which no cross-site form can send).
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlparse

import tornado.web
from flower.views import BaseHandler
from tornado.web import url

from worker.core.actions import ACTIONS, MAX_BULK, Action, refusal, run
from worker.core.search import BadFilter, Filters, Search
from worker.core.store import Rebook
from worker.operations.console import pages

PAGE_DEFAULT = 50
PAGE_MAX = 500
OUTCOME_SCAN = 2000
"""Outcome entries read after a rebook's receipt to find its own (the stream is shared)."""


def _services() -> Any:
    from worker.celeryapp.runtime import services

    return services()


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
        self.finish(body)

    def json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value, default=str))

    def record(self, rebook_id: str) -> Rebook:
        rec = _services().store.find(rebook_id)
        if rec is None:
            raise tornado.web.HTTPError(404, f"no rebook {rebook_id!r}")
        return rec


class RebooksPage(ConsoleHandler):
    def get(self) -> None:
        store = _services().store
        try:
            f, limit = self.filters(), self.limit()
            cursor = self.arg("cursor", "")
            page = Search(store).query(f, limit=limit, cursor=cursor or None)
        except BadFilter as exc:
            self.html(pages.layout("Bad filter", f"<p>{pages.esc(exc)}</p>", self.base), 400)
            return
        now = time.time()
        search = Search(store)
        self.html(
            pages.list_page(
                base=self.base,
                filters=f,
                counts=store.stats(now)["states"],
                items=page.items,
                next_cursor=page.next,
                cursor=cursor,
                limit=limit,
                per_hour=search.outcomes_per_hour(now),
                histogram=search.booked_histogram(now),
                xsrf=self.xsrf_token.decode(),
                now=now,
            )
        )


def _outcomes_of(rec: Rebook) -> list[dict[str, str]]:
    store = _services().store
    shard = store.shard_of(rec.rebook_id) or 0
    rows = store.r.xrange(
        store.keys.outcomes(shard), min=f"{int(rec.created_ts * 1000)}-0", count=OUTCOME_SCAN
    )
    return [{"id": sid, **f} for sid, f in rows if f.get("rebook_id") == rec.rebook_id]


def _upstream_status(rec: Rebook) -> str:
    """The new booking as the upstream shows it now (a member call), else why not."""
    if rec.new_booking_id is None:
        return "no new booking"
    new_id = rec.new_booking_id
    try:
        flow = _flow()
        booking = flow._member_call(rec, lambda token: flow.client.booking_details(token, new_id))
    except Exception as exc:  # shown to the operator, never raised: the page must render
        last = f"; last read by the watch: {rec.status}" if rec.status else ""
        return f"unavailable ({type(exc).__name__}){last}"
    return f"{booking.status or '?'} (booking {new_id})"


class RebookPage(ConsoleHandler):
    def get(self, rebook_id: str) -> None:
        self.show(self.record(rebook_id))

    def show(self, rec: Rebook, message: str = "", status: int = 200) -> None:
        store = _services().store
        self.html(
            pages.detail_page(
                base=self.base,
                rec=rec,
                history=store.history(rec.rebook_id),
                outcomes=_outcomes_of(rec),
                upstream=_upstream_status(rec),
                refusals={a: refusal(a, rec) for a in ACTIONS},
                xsrf=self.xsrf_token.decode(),
                message=message,
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
    """The list page's bulk form: the filter comes back as `f_*` fields."""

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
        dry = self.arg("dry_run", "") == "1"
        act: Action = "retry" if action == "retry" else "cancel"
        result = run(_flow(), _services().store, act, filters=f, dry_run=dry)
        back = pages.link(self.base + "/rebooks", f.params())
        self.html(pages.actions_page(base=self.base, result=result.as_json(), back=back))


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
        rec = _services().store.find(rebook_id)
        if rec is None:
            self.json({"error": f"no rebook {rebook_id!r}"}, 404)
            return
        self.json({**rec.public(), "history": _services().store.history(rec.rebook_id)})


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


def routes() -> list[Any]:
    rid = r"([A-Za-z0-9._:%-]{1,200})"
    return [
        url(r"/rebooks", RebooksPage, name="rebooks"),
        url(r"/rebooks/actions", BulkForm, name="rebooks-actions"),
        url(rf"/rebooks/{rid}/(retry|cancel)", RebookAction, name="rebook-action"),
        url(rf"/rebooks/{rid}", RebookPage, name="rebook"),
        url(r"/api/rebooks", ApiRebooks, name="api-rebooks"),
        url(r"/api/rebooks/actions", ApiActions, name="api-rebooks-actions"),
        url(rf"/api/rebooks/{rid}", ApiRebook, name="api-rebook"),
    ]
