"""Tornado handlers of the console, on Flower's own `BaseHandler` (so its basic-auth check).

Every request is authenticated first (401 without Flower's credentials, like every Flower page).
POSTs are refused when cross-site: `Sec-Fetch-Site` other than same-origin, or an `Origin` that
is not this host; the HTML forms also carry Tornado's `_xsrf` token, and the JSON API takes only
`application/json` bodies (which no cross-site form can send). Each method parses its request,
calls one function of views.py (what the page shows) and renders it with pages.py.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import tornado.web
from flower.views import BaseHandler
from tornado.web import url

from worker.core.actions import ACTIONS, MAX_BULK, Action
from worker.core.search import BadFilter, Filters
from worker.core.store import Rebook
from worker.operations.console import openapi, pages, views
from worker.operations.console.openapi import PAGE_DEFAULT, PAGE_MAX

if TYPE_CHECKING:
    from worker.celeryapp.runtime import Services
    from worker.core.flow import Flow


def _services() -> Services:
    from worker.celeryapp.runtime import services

    return services()


def _flow() -> Flow:
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
        body = pages.with_banner(body, views.paused(_services().store))
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
        try:
            f, limit = self.filters(), self.limit()
            view = views.list_view(_services().store, f, limit, self.arg("cursor", ""))
        except BadFilter as exc:
            raw = {name: self.arg(name) for name in Filters.NAMES}
            self.html(pages.bad_filter_page(base=self.base, raw=raw, error=str(exc)), 400)
            return
        self.html(pages.list_page(base=self.base, xsrf=self.xsrf_token.decode(), **view.kwargs()))


class RebookPage(ConsoleHandler):
    def get(self, rebook_id: str) -> None:
        self.show(views.detail_view(_services(), _flow, self.record(rebook_id)))

    def show(self, view: views.DetailView, status: int = 200) -> None:
        page = pages.detail_page(base=self.base, xsrf=self.xsrf_token.decode(), **view.kwargs())
        self.html(page, status)


class RebookAction(RebookPage):
    """The buttons of `/rebooks/{id}`: `Flow.retry`/`Flow.cancel`, as `rebook retry ID`."""

    def post(self, rebook_id: str, action: str) -> None:
        rec = self.record(rebook_id)
        act: Action = "retry" if action == "retry" else "cancel"
        acted = views.act_on(_services(), _flow, act, rec)
        if acted is None:
            raise tornado.web.HTTPError(404, f"no rebook {rec.rebook_id!r}")
        self.show(*acted)


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
        if self.arg("confirm", "") != "1":
            view = views.bulk_preview(_services(), _flow(), act, f)
            xsrf = self.xsrf_token.decode()
            self.html(pages.preview_page(base=self.base, xsrf=xsrf, **view.kwargs()))
            return
        ids = [str(i) for i in self.get_arguments("ids", strip=True)]
        if not ids:
            raise tornado.web.HTTPError(400, "confirm: no rebook to act on")
        if len(ids) > MAX_BULK:
            raise tornado.web.HTTPError(400, f"ids: at most {MAX_BULK}")
        result = views.bulk_confirm(_services(), _flow(), act, ids, f)
        self.html(pages.result_page(base=self.base, outcome=result, filters=f))


class ApiRebooks(ConsoleHandler):
    form_post = False

    def get(self) -> None:
        try:
            f, limit = self.filters(), self.limit()
            answer = views.api_list(_services().store, f, limit, self.arg("cursor", ""))
        except BadFilter as exc:
            self.json({"error": str(exc)}, 400)
            return
        self.json(answer)


class ApiRebook(ConsoleHandler):
    form_post = False

    def get(self, rebook_id: str) -> None:
        answer = views.api_detail(_services().store, rebook_id)
        if answer is None:
            self.json({"error": f"no rebook {rebook_id!r}"}, 404)
            return
        self.json(answer)


class ApiActions(ConsoleHandler):
    form_post = False

    def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            self.json({"error": "body: not JSON"}, 400)
            return
        try:
            req = views.action_request(body)
        except views.Invalid as exc:
            self.json({"error": str(exc)}, 400)
            return
        self.json(views.api_act(_services().store, _flow(), req))


class AuditPage(ConsoleHandler):
    def get(self) -> None:
        data = views.audit_view(_services().store, views.AUDIT_PAGE)
        page = pages.audit_page(
            base=self.base, findings=data["findings"], counts=data["counts"], last=data["last_run"]
        )
        self.html(page)


class ApiAudit(ConsoleHandler):
    form_post = False

    def get(self) -> None:
        try:
            limit = self.limit()
        except BadFilter as exc:
            self.json({"error": str(exc)}, 400)
            return
        self.json(views.audit_view(_services().store, limit))


class ApiOpenapi(ConsoleHandler):
    """The OpenAPI 3.1 document of this API (worker/operations/console/openapi.py)."""

    def get(self) -> None:
        self.json(openapi.document(views.version()))


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
