"""The console's pages: data gathered here, HTML in templates/ (testable without a server).

Why templates with autoescape and no script: rebook ids, event ids, reasons and member ids are
untrusted text from producers and the upstream. Every `{{ value }}` in templates/ is escaped
(quotes included, so attributes are safe too), and no template has a `{% raw %}`: even the SVG
charts, built from numbers, are drawn by templates/_chart_*.svg from geometry computed here. A
page without JavaScript and with a strict Content-Security-Policy (`default-src 'none'`) cannot
run what might slip through, and loads nothing from another host.

Why Tornado's template engine and not Jinja2: Flower, which serves the console, is built on
Tornado, so the engine is already installed and already escapes by default; Jinja2 would be a new
dependency for the same escaping. Its one lack, macros with arguments, is met by partials
(`_*.html`) that read the variables of the page including them.

Layout: a template's lines are joined as they are read (a line break and the indentation after it
are dropped), so the files are laid out for reading while the pages stay compact. A space that
must survive a line break is written `{{ " " }}` at the start of the next line; a tag or a
comment stays on one line.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

import tornado.template

from worker.core.actions import Outcome
from worker.core.search import STATE_ALIASES, Filters, Summary
from worker.core.states import ACTIVE_STATES, State
from worker.core.store import Rebook
from worker.operations.console.why import Situation, explain, span

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
STATE_COLOURS: dict[str, str] = {
    "WAITING": "#6c8ebf",
    "RESCHEDULING": "#b38f00",
    "WATCHING": "#2f8f9d",
    "NEEDS_ATTENTION": "#d9534f",
    "BOOKED": "#5b7fdb",
    "ACCEPTED": "#3c9a5f",
    "CONFIRMED": "#1f6f43",
    "REJECTED": "#a0522d",
    "CANCELLED": "#8a6d3b",
    "EXPIRED": "#999999",
    "GAVE_UP": "#7a7a7a",
    "FAILED": "#b22222",
    "ABORTED": "#555555",
    "DUPLICATE": "#c0c0c0",
    "SHADOWED": "#8e6fb5",
}
SINCE_CHOICES = (("today", "today"), ("24h", "last 24 h"), ("7d", "last 7 days"))
AUDIT_KIND_HELP = {
    "double": "more new bookings than rebooks for this original: the member may pay twice",
    "orphan": "a booking that looks made by a reschedule, after a rebook, that no record owns",
    "missing": "a record's new booking that the upstream no longer lists or returns",
}
KIND_COLOURS = {"double": "#b22222", "orphan": "#d9534f", "missing": "#8a6d3b"}
_FILTER_NAMES = {
    "state": "state",
    "reason": "reason",
    "user_id": "member",
    "performer_id": "performer",
    "booking_id": "booking",
    "q": "id",
    "since": "since",
}


# -- helpers the templates call ----------------------------------------------------------------


def link(path: str, params: Mapping[str, str] | None = None) -> str:
    """A URL with the non-empty params as its query (escaped where the template writes it)."""
    query = urlencode({k: v for k, v in (params or {}).items() if v != ""})
    return path + ("?" + query if query else "")


def rebook_path(base: str, rid: str) -> str:
    return f"{base}/rebooks/{quote(rid, safe='')}"


def when(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(ts: float, now: float) -> str:
    secs = max(0, int(now - ts))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def colour(state: str) -> str:
    return STATE_COLOURS.get(state, "#666")


def or_blank(value: Any) -> str:
    """A missing value shows as nothing (a template alone would write "None")."""
    return "" if value is None else str(value)


def describe(filters: Filters) -> str:
    """The filter in words, for headings ("member dave · since today")."""
    words = " · ".join(f"{_FILTER_NAMES[k]} {v}" for k, v in filters.params().items())
    return words or "every rebook"


def alias(state: State) -> str:
    return next((k for k, v in STATE_ALIASES.items() if v == state.value), state.value)


_SPECIAL = re.compile(rb"[&<>\"']")


def escape_html(value: bytes) -> bytes:
    """The autoescape of every `{{ value }}`: `html.escape`, quotes included (so attribute values
    are safe too). Tornado hands it UTF-8; most values (ids, numbers) need nothing and go back as
    they came, where Tornado's own `xhtml_escape` decodes and encodes each of them."""
    if _SPECIAL.search(value) is None:
        return value
    return html.escape(value.decode(), quote=True).encode()


class _Loader(tornado.template.Loader):
    """templates/, each .html and .svg file's lines joined as read (see the module docstring)."""

    def _create_template(self, name: str) -> tornado.template.Template:
        text = Path(self.root, name).read_text()
        if not name.endswith(".css"):  # the break kept in a comment, for error line numbers
            text = _LINE_BREAK.sub("{#\n#}", text)
        return tornado.template.Template(text, name=name, loader=self)


_LINE_BREAK = re.compile(r"\n[ \t]*")
_LOADER = _Loader(
    str(Path(__file__).with_name("templates")),
    autoescape="escape_html",
    whitespace="all",
    namespace={
        "escape_html": escape_html,
        "link": link,
        "rebook_path": rebook_path,
        "when": when,
        "age": age,
        "span": span,
        "colour": colour,
        "or_blank": or_blank,
        "describe": describe,
        "alias": alias,
        "quote": quote,
        "State": State,
        "Filters": Filters,
        "SINCE_CHOICES": SINCE_CHOICES,
        "AUDIT_KIND_HELP": AUDIT_KIND_HELP,
        "KIND_COLOURS": KIND_COLOURS,
    },
)


def render(name: str, **data: Any) -> str:
    """templates/`name` filled with `data`, every `{{ value }}` escaped."""
    return _LOADER.load(name).generate(**data).decode()


SHADOW_BANNER = render("_shadow_banner.html")


def with_banner(page: str, paused: Mapping[str, Any] | None) -> str:
    """A deployment fault (worker/core/circuit.py) in force: a banner on top of the page."""
    if not paused:
        return page
    return page.replace("<main>", "<main>" + render("_paused.html", paused=paused), 1)


# -- pages -------------------------------------------------------------------------------------


def list_page(
    *,
    base: str,
    filters: Filters,
    counts: Mapping[str, int],
    items: Sequence[Rebook],
    next_cursor: str | None,
    cursor: str,
    limit: int,
    per_hour: Sequence[tuple[int, Mapping[str, int]]],
    histogram: Sequence[tuple[str, int]],
    xsrf: str,
    now: float | None = None,
    summary: Summary | None = None,
    shadow: Mapping[str, Any] | None = None,
) -> str:
    """`/rebooks`: counts per state, filters, a filtered view's counts, the table, paging,
    bulk actions and charts; what shadow mode would have done (`stats()["shadow"]`)."""
    return render(
        "list.html",
        title="Rebooks",
        base=base,
        filters=filters,
        params=filters.params(),
        counts=counts,
        items=items,
        next_cursor=next_cursor,
        cursor=cursor,
        limit=limit,
        chart_outcomes=outcomes_chart(per_hour),
        chart_booked=booked_chart(histogram),
        xsrf=xsrf,
        now=time.time() if now is None else now,
        summary=summary,
        shadow=shadow,
    )


def _shadow_figures(base: str, shadow: Mapping[str, Any] | None) -> str:
    """Shadow mode's figures alone (the list page includes them)."""
    return render("_shadow.html", base=base, shadow=shadow)


def bad_filter_page(*, base: str, raw: Mapping[str, str], error: str) -> str:
    """A filter typed wrong: what is wrong, and the form again with what was typed."""
    return render("bad_filter.html", title="Bad filter", base=base, values=raw, error=error)


class Step(NamedTuple):
    """One line of a rebook's timeline."""

    at: str
    gap: str
    source: str
    target: str
    reason: str


def _timeline(history: Sequence[Mapping[str, Any]]) -> list[Step]:
    steps = []
    previous: float | None = None
    for item in history:
        at = str(item.get("at", ""))
        try:
            ts = datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            ts = None
        gap = age(previous, ts) if ts and previous else ""
        previous = ts or previous
        source = str(item["from"]) if item.get("from") else ""
        steps.append(
            Step(at, gap, source, str(item.get("to", "")), or_blank(item.get("reason", "")))
        )
    return steps


def detail_page(
    *,
    base: str,
    rec: Rebook,
    history: Sequence[Mapping[str, Any]],
    outcomes: Sequence[Mapping[str, str]],
    upstream: str,
    refusals: Mapping[str, str | None],
    xsrf: str,
    message: str = "",
    situation: Situation,
) -> str:
    """`/rebooks/{id}`: why it is where it is (first, in words), what may be done, its
    timeline, the record, its outcomes and the new booking's upstream status."""
    sit = situation
    since = sit.entered_at or rec.updated_ts or rec.created_ts
    return render(
        "detail.html",
        title=rec.rebook_id,
        base=base,
        rec=rec,
        ex=explain(rec, sit),
        steps=_timeline(history),
        now_for=age(since, sit.now) if rec.state in ACTIVE_STATES else "",
        outcomes=outcomes,
        upstream=upstream,
        refusals=refusals,
        xsrf=xsrf,
        message=message,
        now=sit.now,
    )


def preview_page(
    *,
    base: str,
    outcome: Outcome,
    filters: Filters,
    xsrf: str,
    notes: Mapping[str, str],
    now: float | None = None,
) -> str:
    """A bulk action's dry run: what matched, what would be done, what would be refused and
    why — and the confirm button, which acts on exactly the rebooks shown as "would be done"."""
    refused = {r["rebook_id"]: r["why"] for r in outcome.refused}
    return render(
        "preview.html",
        title="Bulk action preview",
        base=base,
        outcome=outcome,
        action=outcome.action,
        filters=filters,
        xsrf=xsrf,
        records=outcome.records,
        tables=[
            ("Would be done", outcome.would_do, notes, "would-do", "note"),
            ("Would be refused, and why", list(refused), refused, "would-refuse", "why"),
        ],
        now=time.time() if now is None else now,
    )


def result_page(*, base: str, outcome: Outcome, filters: Filters, now: float | None = None) -> str:
    """What a confirmed bulk action did (each rebook's state now) and what it refused, why."""
    done = {d["rebook_id"]: f"now {d['state']} ({d['reason']})" for d in outcome.done}
    refused = {r["rebook_id"]: r["why"] for r in outcome.refused}
    return render(
        "result.html",
        title="Bulk action",
        base=base,
        outcome=outcome,
        action=outcome.action,
        filters=filters,
        done=done,
        refused=refused,
        broader={k: v for k, v in filters.params().items() if k not in ("state", "reason")},
        records=outcome.records,
        tables=[
            ("Done", list(done), done, "done", "after"),
            ("Refused, and why", list(refused), refused, "refused", "why"),
        ],
        now=time.time() if now is None else now,
    )


def audit_page(
    *,
    base: str,
    findings: Sequence[Mapping[str, Any]],
    counts: Mapping[str, int],
    last: Mapping[str, Any] | None = None,
) -> str:
    """`/rebooks/audit`: the ledger audit's findings, newest first, each linking to its
    rebooks and to the member's filtered list (README "Ledger audit")."""
    return render(
        "audit.html", title="Audit", base=base, findings=findings, counts=counts, last=last
    )


# -- charts: the geometry here, the drawing in templates/_chart_*.svg ------------------------


class Bar(NamedTuple):
    x: str
    y: str
    width: str
    height: str
    fill: str
    title: str


class Hour(NamedTuple):
    bars: list[Bar]
    x: str
    label: str


class Key(NamedTuple):
    x: str
    y: int
    text_x: str
    text_y: int
    fill: str
    state: str


class OutcomesChart(NamedTuple):
    width: int
    height: int
    legend_h: int
    pad: int
    top: int
    hours: list[Hour]
    legend: list[Key]


def outcomes_chart(
    per_hour: Sequence[tuple[int, Mapping[str, int]]], width: int = 560
) -> OutcomesChart:
    """Stacked bars, one per hour, one colour per outcome state, with a legend."""
    height, pad, legend_h = 160, 28, 18
    top = max([sum(c.values()) for _, c in per_hour] + [1])
    bar = (width - pad) / max(1, len(per_hour))
    states = [s for s in STATE_COLOURS if any(c.get(s) for _, c in per_hour)]
    hours = []
    for i, (hour, counts) in enumerate(per_hour):
        y = float(height)
        bars = []
        for state in states:
            n = counts.get(state, 0)
            if not n:
                continue
            h = (height - 14) * n / top
            y -= h
            bars.append(
                Bar(
                    f"{pad + i * bar:.1f}",
                    f"{y:.1f}",
                    f"{max(1.0, bar - 1):.1f}",
                    f"{h:.1f}",
                    STATE_COLOURS[state],
                    f"{when(hour)[:13]}h {state}: {n}",
                )
            )
        label = f"{when(hour)[5:13]}h" if i % 12 == 0 else ""
        hours.append(Hour(bars, f"{pad + i * bar:.1f}", label))
    legend = []
    for j, state in enumerate(states):
        x = (j % 5) * (width / 5)
        y_key = height + 16 + (j // 5) * 12
        legend.append(
            Key(f"{x:.0f}", y_key, f"{x + 12:.0f}", y_key + 8, STATE_COLOURS[state], state)
        )
    return OutcomesChart(width, height, legend_h, pad, top, hours, legend)


class Bucket(NamedTuple):
    label: str
    n: int
    x: str
    y: str
    width: str
    height: str
    mid: str
    top: str


class BookedChart(NamedTuple):
    width: int
    height: int
    bars: list[Bucket]


def booked_chart(histogram: Sequence[tuple[str, int]], width: int = 420) -> BookedChart:
    """One bar per fixed bucket of received → BOOKED seconds."""
    height = 150
    top = max([n for _, n in histogram] + [1])
    bar = width / max(1, len(histogram))
    buckets = []
    for i, (label, n) in enumerate(histogram):
        h = (height - 16) * n / top
        buckets.append(
            Bucket(
                label,
                n,
                f"{i * bar + 1:.1f}",
                f"{height - h:.1f}",
                f"{bar - 2:.1f}",
                f"{h:.1f}",
                f"{i * bar + bar / 2:.1f}",
                f"{height - h - 3:.1f}",
            )
        )
    return BookedChart(width, height, buckets)
