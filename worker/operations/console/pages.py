"""HTML and SVG of the console, as pure functions (testable without a server).

Why hand-written HTML with `esc()` on every value and no script: rebook ids, event ids, reasons
and member ids are untrusted text from producers and the upstream; a page without JavaScript and
with a strict Content-Security-Policy (`default-src 'none'`) cannot run what slips through, and
loads nothing from another host. Charts are server-side SVG for the same reason.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

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
SHADOW_BANNER = (
    '<p class="shadow" id="shadow-banner"><strong>shadow mode: nothing is booked</strong> '
    "(REBOOK_SHADOW): rebooks that would have been rescheduled end SHADOWED</p>"
)
STYLE = """
.shadow{background:#efe7f8;border:1px solid #8e6fb5;color:#3d2a57;padding:.45rem .7rem;
border-radius:.4rem;margin:0 0 .8rem}
.paused{background:#fde2e1;border:1px solid #c0392b;color:#7b1d14;padding:.5rem .8rem;
margin-bottom:1rem}
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1e2a38;color:#fff;padding:.6rem 1rem;display:flex;gap:1.5rem;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header strong{font-size:1.1rem}
main{padding:1rem}table{border-collapse:collapse;width:100%;background:#fff;font-size:.88rem}
th,td{border-bottom:1px solid #e3e3e3;padding:.3rem .45rem;text-align:left;vertical-align:top}
th{background:#f0f2f5}code{font-size:.85rem}.muted{color:#777}
.counts a{display:inline-block;margin:0 .4rem .4rem 0;padding:.2rem .55rem;border-radius:1rem;
background:#e8edf5;color:#123;text-decoration:none;font-size:.85rem}
.counts a.on{background:#1e2a38;color:#fff}
.state{padding:.05rem .4rem;border-radius:.3rem;color:#fff;font-size:.8rem;white-space:nowrap}
form.filters{display:flex;flex-wrap:wrap;gap:.5rem;margin:.6rem 0;align-items:end}
form.filters label{display:flex;flex-direction:column;font-size:.75rem;color:#555}
input,select,button{font:inherit;padding:.25rem .4rem}button{cursor:pointer}
.charts{display:flex;flex-wrap:wrap;gap:1rem;margin:1rem 0}
.card{background:#fff;border:1px solid #e3e3e3;padding:.6rem;border-radius:.4rem}
.timeline{list-style:none;padding:0;border-left:3px solid #ccd;margin-left:.5rem}
.timeline li{margin:0 0 .7rem 0;padding-left:.8rem;position:relative}
.timeline li::before{content:"";position:absolute;left:-.5rem;top:.35rem;width:.7rem;height:.7rem;
border-radius:50%;background:#1e2a38}.refusal{color:#8a2a2a}.ok{color:#1f6f43}
.actions form{display:inline-block;margin-right:.6rem}.pager a{margin-right:1rem}
.charts .card>strong,.why>strong{display:block;margin-bottom:.4rem}.charts svg{display:block}
.actions .refusal{color:#666;margin:.3rem 0}
.why{border-left:4px solid #1e2a38;margin:.6rem 0}.why strong{font-size:1.05rem}
.why ul{margin:.3rem 0 .5rem 1.1rem;padding:0}.why li{margin:.2rem 0}
.identity{color:#444;margin:.2rem 0 .6rem}.related a{margin-right:.8rem}
.quick{margin:.1rem 0 .6rem;font-size:.85rem}.quick a{margin-right:.6rem}
.quick a.on{font-weight:bold;text-decoration:none;color:#123}
.summary a{text-decoration:none;margin-right:.5rem;color:#222}.summary{margin:.5rem 0}
td code,td a{white-space:nowrap}td.ev{max-width:16rem;overflow:hidden;text-overflow:ellipsis;
white-space:nowrap}h2 small{display:block;font-size:.95rem;font-weight:normal;color:#444}
"""


def esc(value: Any) -> str:
    """Every value that reaches a page goes through here (quotes included, for attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def link(path: str, params: Mapping[str, str] | None = None) -> str:
    query = urlencode({k: v for k, v in (params or {}).items() if v != ""})
    return esc(path + ("?" + query if query else ""))


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


def badge(state: str) -> str:
    colour = STATE_COLOURS.get(state, "#666")
    return f'<span class="state" style="background:{colour}">{esc(state)}</span>'


def layout(title: str, body: str, base: str = "") -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)} · rebook</title>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<style>{STYLE}</style></head><body>"
        f'<header><strong>rebook console</strong><a href="{esc(base)}/rebooks">Rebooks</a>'
        f'<a href="{esc(base)}/rebooks/audit" id="nav-audit">Audit</a>'
        f'<a href="{esc(base)}/">Flower</a></header>'
        f"<main>{body}</main></body></html>"
    )


def with_banner(page: str, paused: Mapping[str, Any] | None) -> str:
    """A deployment fault (worker/core/circuit.py) in force: a banner on top of the page."""
    if not paused:
        return page
    banner = (
        '<div class="paused" role="alert"><strong>Paused:</strong> '
        f"{esc(paused.get('setting', ''))} refused ({esc(paused.get('reason', ''))}) since "
        f"{esc(paused.get('since') or '?')}. No member is parked; calls it affects wait. Fix the "
        "setting and restart the workers and beat (`rebook doctor` names it).</div>"
    )
    return page.replace("<main>", "<main>" + banner, 1)


def _hidden_xsrf(xsrf: str) -> str:
    return f'<input type="hidden" name="_xsrf" value="{esc(xsrf)}">'


SINCE_CHOICES = (("today", "today"), ("24h", "last 24 h"), ("7d", "last 7 days"))


def _filter_form(base: str, values: Mapping[str, str]) -> str:
    """The filter form, filled with `values` (a filter's params, or what was typed)."""
    params = {k: v for k, v in values.items() if v}
    chosen = values.get("state", "").upper()
    state_options = "".join(
        f'<option value="{s.value}"{" selected" if chosen in (s.value, _alias(s)) else ""}>'
        f"{s.value}{' (parked)' if s == State.NEEDS_ATTENTION else ''}</option>"
        for s in State
    )

    def box(name: str, label: str, hint: str) -> str:
        return (
            f'<label>{esc(label)}<input name="{name}" id="f-{name}" '
            f'value="{esc(values.get(name, ""))}" size="14" placeholder="{esc(hint)}"></label>'
        )

    quick = " ".join(
        f'<a id="since-{value}" class="{"on" if params.get("since") == value else ""}" '
        f'href="{link(base + "/rebooks", {**params, "since": value})}">{esc(label)}</a>'
        for value, label in SINCE_CHOICES
    )
    anytime = {k: v for k, v in params.items() if k != "since"}
    return (
        f'<form class="filters" method="get" action="{esc(base)}/rebooks" id="filters">'
        f'<label>state<select name="state" id="f-state"><option value="">any</option>'
        f"{state_options}</select></label>"
        + box("reason", "reason (a* = prefix)", "reauth")
        + box("user_id", "member", "member id")
        + box("performer_id", "performer", "performer id")
        + box("booking_id", "booking", "booking id")
        + box("q", "rebook id or event id", "rb-… or event id")
        + box("since", "since", "today, 6h, 2d, ISO")
        + '<button type="submit" id="f-apply">Filter</button>'
        f'<a href="{esc(base)}/rebooks">clear</a></form>'
        f'<p class="quick">received: {quick} '
        f'<a class="{"" if "since" in params else "on"}" id="since-any" '
        f'href="{link(base + "/rebooks", anytime)}">any time</a></p>'
    )


def _alias(state: State) -> str:
    return next((k for k, v in STATE_ALIASES.items() if v == state.value), state.value)


def _describe(filters: Filters) -> str:
    """The filter in words, for headings ("member dave · since today")."""
    names = {
        "state": "state",
        "reason": "reason",
        "user_id": "member",
        "performer_id": "performer",
        "booking_id": "booking",
        "q": "id",
        "since": "since",
    }
    return " · ".join(f"{names[k]} {v}" for k, v in filters.params().items()) or "every rebook"


def _summary(base: str, filters: Filters, summary: Summary) -> str:
    """A filtered view's counts per state: a member's day at a glance, each a narrower link."""
    params = filters.params()
    parts = []
    for state, n in summary.counts.items():
        narrower = link(base + "/rebooks", {**params, "state": state})
        parts.append(f'<a id="sum-{esc(state)}" href="{narrower}">{badge(state)} {n}</a>')
    total = f"{summary.total}{'' if summary.complete else '+'}"
    more = "" if summary.complete else f" (counted the newest {summary.total})"
    return (
        f'<div class="card summary" id="summary"><b id="sum-total">{total} rebook'
        f"{'' if summary.total == 1 else 's'}</b> {'matches' if summary.total == 1 else 'match'} "
        f"{esc(_describe(filters))}{more}: "
        + (" ".join(parts) or '<span class="muted">none</span>')
        + "</div>"
    )


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
    now = time.time() if now is None else now
    params = filters.params()
    body = (
        f'<div class="counts">{_state_chips(base, filters, counts)}</div>'
        f"{_shadow_figures(base, shadow)}"
        f"{_filter_form(base, params)}"
        f"{_summary(base, filters, summary) if summary is not None else ''}"
        f"{_bulk_form(base, filters, xsrf)}{_table(base, items, now)}"
        f"{_pager(base, params, cursor, next_cursor, limit)}{_charts(per_hour, histogram)}"
    )
    return layout("Rebooks", body, base)


def _shadow_figures(base: str, shadow: Mapping[str, Any] | None) -> str:
    """Shadow mode's figures, while it is on or while SHADOWED records are kept."""
    if not shadow or not (shadow["enabled"] or shadow["would_book"]):
        return ""
    lag = shadow["online_to_post_seconds"]
    timing = (
        f'<span id="shadow-p50">{esc(lag["p50"])}</span> s median, '
        f'<span id="shadow-p99">{esc(lag["p99"])}</span> s p99'
        if lag["p50"] is not None
        else '<span class="muted">no sample yet</span>'
    )
    mode = "Shadow mode" if shadow["enabled"] else "Shadow mode (off now; its earlier run)"
    return (
        f'<div class="card" id="shadow-figures"><strong>{mode}:</strong> would have booked '
        f'<a id="shadow-would-book" href="{link(base + "/rebooks", {"state": "SHADOWED"})}">'
        f"{int(shadow['would_book'])}</a> · performer online → POST {timing} · gave up "
        f'<a id="shadow-gave-up" href="{link(base + "/rebooks", {"state": "GAVE_UP"})}">'
        f"{int(shadow['gave_up'])}</a></div>"
    )


def _state_chips(base: str, filters: Filters, counts: Mapping[str, int]) -> str:
    params = filters.params()
    chips = [f'<a class="{"" if filters.state else "on"}" href="{link(base + "/rebooks")}">all</a>']
    for state in State:
        on = "on" if filters.state == state else ""
        target = {**params, "state": state.value}
        chips.append(
            f'<a class="{on}" id="count-{state.value}" href="{link(base + "/rebooks", target)}">'
            f"{esc(state.value)} {int(counts.get(state.value, 0))}</a>"
        )
    return "".join(chips)


def _table(base: str, items: Sequence[Rebook], now: float) -> str:
    rows = []
    for r in items:
        path = rebook_path(base, r.rebook_id)
        rows.append(
            "<tr>"
            f'<td><a href="{esc(path)}"><code>{esc(r.rebook_id)}</code></a></td>'
            f'<td class="ev" title="{esc(r.event_id)}"><code>{esc(r.event_id)}</code></td>'
            f'<td><a href="{link(base + "/rebooks", {"user_id": r.user_id})}">'
            f"{esc(r.user_id)}</a></td>"
            f'<td><a href="{link(base + "/rebooks", {"performer_id": str(r.performer_id or "")})}">'
            f"{esc(r.performer_id or '')}</a></td>"
            f'<td><a href="{link(base + "/rebooks", {"booking_id": str(r.booking_id)})}">'
            f"{esc(r.booking_id)}</a></td>"
            f"<td>{badge(r.state.value)}</td><td>{esc(r.reason)}</td>"
            f'<td title="{esc(when(r.created_ts))}">{esc(age(r.created_ts, now))}</td>'
            f"<td>{esc(r.new_booking_id or '')}</td><td>{esc(r.accept_by)}</td></tr>"
        )
    return (
        '<table id="rebooks"><thead><tr><th>rebook</th><th>event</th><th>member</th>'
        "<th>performer</th><th>booking</th><th>state</th><th>reason</th><th>age</th>"
        "<th>new booking</th><th>AcceptBy</th></tr></thead><tbody>"
        + ("".join(rows) or '<tr><td colspan=10 class="muted">no rebook matches</td></tr>')
        + "</tbody></table>"
    )


def _pager(
    base: str, params: Mapping[str, str], cursor: str, next_cursor: str | None, limit: int
) -> str:
    pager = ['<p class="pager">']
    if cursor:
        pager.append(
            f'<a href="{link(base + "/rebooks", {**params, "limit": str(limit)})}">« newest</a>'
        )
    if next_cursor:
        older = {**params, "limit": str(limit), "cursor": next_cursor}
        pager.append(f'<a id="next" href="{link(base + "/rebooks", older)}">older »</a>')
    pager.append(
        f'<a href="{link(base + "/api/rebooks", {**params, "limit": str(limit)})}">as JSON</a></p>'
    )
    return "".join(pager)


def _bulk_form(base: str, filters: Filters, xsrf: str) -> str:
    """Bulk actions on a filtered view only: first a preview, then a confirm."""
    if filters.empty:
        return ""
    return (
        f'<form class="card" method="post" action="{esc(base)}/rebooks/actions" id="bulk">'
        f"{_hidden_xsrf(xsrf)}{_hidden_filter(filters)}"
        f"<strong>Every rebook matching {esc(_describe(filters))}:</strong> "
        '<button name="action" value="retry" id="bulk-retry">retry…</button> '
        '<button name="action" value="cancel" id="bulk-cancel">cancel…</button> '
        '<span class="muted">first a preview of what would be done and refused, '
        "then you confirm</span></form>"
    )


def _charts(
    per_hour: Sequence[tuple[int, Mapping[str, int]]], histogram: Sequence[tuple[str, int]]
) -> str:
    return (
        '<div class="charts">'
        '<div class="card"><strong>Outcomes per hour, last 48 h</strong>'
        f"{outcomes_chart(per_hour)}</div>"
        '<div class="card"><strong>Received → BOOKED, last 48 h</strong>'
        f"{histogram_chart(histogram)}</div>"
        "</div>"
    )


def bad_filter_page(*, base: str, raw: Mapping[str, str], error: str) -> str:
    """A filter typed wrong: what is wrong, and the form again with what was typed."""
    return layout(
        "Bad filter",
        f'<p class="refusal" id="filter-error">{esc(error)}</p>{_filter_form(base, raw)}',
        base,
    )


def _hidden_filter(filters: Filters) -> str:
    return "".join(
        f'<input type="hidden" name="f_{esc(k)}" value="{esc(v)}">'
        for k, v in filters.params().items()
    )


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
    now = sit.now
    fields = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc('' if v is None else v)}</td></tr>"
        for k, v in rec.public().items()
    )
    steps = []
    previous: float | None = None
    for item in history:
        at = str(item.get("at", ""))
        try:
            ts = datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            ts = None
        gap = f' <span class="muted">+{age(previous, ts)}</span>' if ts and previous else ""
        previous = ts or previous
        src = f"{badge(str(item['from']))} → " if item.get("from") else ""
        steps.append(
            f"<li><code>{esc(at)}</code>{gap}<br>{src}{badge(str(item.get('to', '')))} "
            f"{esc(item.get('reason', ''))}</li>"
        )
    if rec.state in ACTIVE_STATES:
        steps.append(
            f'<li class="muted">now: {esc(rec.state.value)} for '
            f"{esc(age(sit.entered_at or rec.updated_ts or rec.created_ts, now))}</li>"
        )
    out_rows = "".join(
        f"<tr><td><code>{esc(o.get('at'))}</code></td><td>{badge(o.get('state', ''))}</td>"
        f"<td>{esc(o.get('new_booking_id'))}</td><td>{esc(o.get('accept_by'))}</td>"
        f"<td>{esc(o.get('status'))}</td><td>{esc(o.get('reason'))}</td>"
        f"<td><code>{esc(o.get('detail'))}</code></td></tr>"
        for o in outcomes
    )
    actions = []
    for action, why in refusals.items():
        if why is None:
            actions.append(
                f'<form method="post" action="{esc(rebook_path(base, rec.rebook_id))}/{action}">'
                f'{_hidden_xsrf(xsrf)}<button id="do-{action}">{action}</button></form>'
            )
        else:
            actions.append(f'<p class="refusal" id="no-{action}">{action}: {esc(why)}</p>')
    note = f'<p class="ok" id="message">{esc(message)}</p>' if message else ""
    body = (
        f"<h2><code>{esc(rec.rebook_id)}</code> {badge(rec.state.value)}</h2>"
        f"{_identity(base, rec, now)}{note}{_why_box(base, rec, sit)}"
        f'<div class="actions card">{"".join(actions)}</div>'
        f'<div class="charts"><div class="card"><strong>Timeline</strong>'
        f'<ol class="timeline" id="timeline">{"".join(steps)}</ol></div>'
        f'<div class="card"><strong>Record</strong><table id="record">{fields}</table>'
        f'<p>new booking upstream: <span id="upstream">{esc(upstream)}</span></p></div></div>'
        '<div class="card"><strong>Outcome entries</strong><table id="outcomes"><thead><tr>'
        "<th>at</th><th>state</th><th>new booking</th><th>AcceptBy</th><th>status</th>"
        "<th>reason</th><th>detail</th></tr></thead><tbody>"
        + (out_rows or '<tr><td colspan=7 class="muted">none yet</td></tr>')
        + "</tbody></table></div>"
        + f'<p><a href="{esc(base + "/api/rebooks/" + quote(rec.rebook_id, safe=""))}">'
        + "as JSON</a></p>"
    )
    return layout(rec.rebook_id, body, base)


def _identity(base: str, rec: Rebook, now: float) -> str:
    """Who and what it is about, each a link to everything else of theirs."""
    member = link(base + "/rebooks", {"user_id": rec.user_id})
    today = link(base + "/rebooks", {"user_id": rec.user_id, "since": "today"})
    perf = (
        f' · performer <a id="to-performer" href="'
        f'{link(base + "/rebooks", {"performer_id": str(rec.performer_id)})}">'
        f"{esc(rec.performer_id)}</a>"
        if rec.performer_id is not None
        else ""
    )
    return (
        f'<p class="identity">event <code>{esc(rec.event_id)}</code> · member '
        f'<a id="to-member" href="{member}">{esc(rec.user_id)}</a> '
        f'(<a id="to-member-today" href="{today}">today</a>){perf} · booking '
        f"{esc(rec.booking_id)} · received {esc(when(rec.created_ts))} "
        f"({esc(span(now - rec.created_ts))} ago)</p>"
    )


def _why_box(base: str, rec: Rebook, sit: Situation) -> str:
    """The answer to "why is it where it is", first thing on the page."""
    ex = explain(rec, sit)
    facts = "".join(f'<li id="{esc(i)}">{esc(text)}</li>' for i, text in ex.facts)
    links = []
    for rid, label in ((rec.blocked_by, "the sibling"), (rec.duplicate_of, "the original")):
        if rid:
            links.append(
                f'<a id="to-related" href="{esc(rebook_path(base, rid))}">open {label} '
                f"<code>{esc(rid)}</code></a>"
            )
    if rec.state == State.NEEDS_ATTENTION and rec.reason:
        same = {"state": State.NEEDS_ATTENTION.value, "reason": rec.reason, "user_id": rec.user_id}
        links.append(
            f'<a id="to-same-reason" href="{link(base + "/rebooks", same)}">every '
            f"{esc(rec.reason)} rebook of {esc(rec.user_id)}</a>"
        )
    todo = f'<p id="why-todo"><strong>What to do:</strong> {esc(ex.todo)}</p>' if ex.todo else ""
    more = f'<p class="related">{" · ".join(links)}</p>' if links else ""
    return (
        f'<div class="card why" id="why"><strong id="why-headline">{esc(ex.headline)}</strong>'
        f"<ul>{facts}</ul>{todo}{more}</div>"
    )


def _matched_table(
    base: str,
    ids: Sequence[str],
    records: Mapping[str, Rebook],
    extra: Mapping[str, str],
    table_id: str,
    extra_head: str,
    now: float,
) -> str:
    rows = []
    for rid in ids:
        rec = records.get(rid)
        cells = (
            f"<td>{esc(rec.user_id)}</td><td>{esc(rec.performer_id or '')}</td>"
            f"<td>{esc(rec.booking_id)}</td><td>{badge(rec.state.value)}</td>"
            f"<td>{esc(rec.reason)}</td><td>{esc(age(rec.created_ts, now))}</td>"
            if rec is not None
            else '<td colspan=6 class="muted">not found</td>'
        )
        rows.append(
            f'<tr><td><a href="{esc(rebook_path(base, rid))}"><code>{esc(rid)}</code></a></td>'
            f"{cells}<td>{esc(extra.get(rid, ''))}</td></tr>"
        )
    return (
        f'<table id="{table_id}"><thead><tr><th>rebook</th><th>member</th><th>performer</th>'
        "<th>booking</th><th>state</th><th>reason</th><th>age</th>"
        f"<th>{esc(extra_head)}</th></tr></thead><tbody>"
        + ("".join(rows) or '<tr><td colspan=8 class="muted">none</td></tr>')
        + "</tbody></table>"
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
    now = time.time() if now is None else now
    action = outcome.action
    back = link(base + "/rebooks", filters.params())
    refused = {r["rebook_id"]: r["why"] for r in outcome.refused}
    ids = "".join(
        f'<input type="hidden" name="ids" value="{esc(rid)}">' for rid in outcome.would_do
    )
    confirm = (
        f'<form method="post" action="{esc(base)}/rebooks/actions" id="bulk-confirm-form">'
        f'{_hidden_xsrf(xsrf)}{_hidden_filter(filters)}{ids}<input type="hidden" name="confirm" '
        f'value="1"><input type="hidden" name="action" value="{esc(action)}">'
        f'<button id="bulk-confirm">{esc(action.capitalize())} '
        + (
            "this rebook"
            if len(outcome.would_do) == 1
            else f"these {len(outcome.would_do)} rebooks"
        )
        + "</button> "
        f'<a href="{back}" id="bulk-back">no, back to the list</a>'
        '<p class="muted">The confirm acts on exactly the rebooks under "Would be done", each '
        "only if it still matches the filter then (else it is refused, with its state).</p></form>"
        if outcome.would_do
        else f'<p>Nothing to {esc(action)}. <a href="{back}" id="bulk-back">back</a></p>'
    )
    truncated = (
        f'<p class="refusal">More than {len(outcome.matched)} matched: narrow the filter.</p>'
        if outcome.truncated
        else ""
    )
    body = (
        f'<h2 id="result">Dry run: {esc(action)} every rebook matching the filter'
        f"<small>{esc(_describe(filters))}</small></h2>"
        '<p class="muted">Nothing has been done yet. Each rebook below would go through the same '
        f"action as <code>rebook {esc(action)} ID</code>; the flow may still refuse one whose "
        "record changed in between.</p>"
        f'<p>matched <strong id="n-matched">{len(outcome.matched)}</strong> · would be done '
        f'<strong id="n-done">{len(outcome.would_do)}</strong> · would be refused '
        f'<strong id="n-refused">{len(outcome.refused)}</strong></p>{truncated}'
        f"<h3>Would be done</h3>"
        + _matched_table(base, outcome.would_do, outcome.records, notes, "would-do", "note", now)
        + "<h3>Would be refused, and why</h3>"
        + _matched_table(base, list(refused), outcome.records, refused, "would-refuse", "why", now)
        + f'<div class="card">{confirm}</div>'
    )
    return layout("Bulk action preview", body, base)


def result_page(*, base: str, outcome: Outcome, filters: Filters, now: float | None = None) -> str:
    """What a confirmed bulk action did (each rebook's state now) and what it refused, why."""
    now = time.time() if now is None else now
    action = outcome.action
    done = {d["rebook_id"]: f"now {d['state']} ({d['reason']})" for d in outcome.done}
    refused = {r["rebook_id"]: r["why"] for r in outcome.refused}
    back = link(base + "/rebooks", filters.params())
    broader = {k: v for k, v in filters.params().items() if k not in ("state", "reason")}
    body = (
        f'<h2 id="result">{esc(action.capitalize())}: {len(done)} done, {len(refused)} '
        "refused</h2>"
        f'<p>matched <strong id="n-matched">{len(outcome.matched)}</strong> · done '
        f'<strong id="n-done">{len(done)}</strong> · refused '
        f'<strong id="n-refused">{len(refused)}</strong></p>'
        "<h3>Done</h3>"
        + _matched_table(base, list(done), outcome.records, done, "done", "after", now)
        + "<h3>Refused, and why</h3>"
        + _matched_table(base, list(refused), outcome.records, refused, "refused", "why", now)
        + f'<p class="related"><a href="{back}" id="bulk-back">the same filter again</a>'
        + (
            f'<a href="{link(base + "/rebooks", broader)}" id="bulk-now">where they are now: '
            f"{esc(_describe(Filters.parse(broader)))}</a>"
            if broader and broader != filters.params()
            else ""
        )
        + "</p>"
    )
    return layout("Bulk action", body, base)


# -- charts ------------------------------------------------------------------------------------


def outcomes_chart(per_hour: Sequence[tuple[int, Mapping[str, int]]], width: int = 560) -> str:
    """Stacked bars, one per hour, one colour per outcome state, with a legend."""
    height, pad, legend_h = 160, 28, 18
    top = max([sum(c.values()) for _, c in per_hour] + [1])
    bar = (width - pad) / max(1, len(per_hour))
    states = [s for s in STATE_COLOURS if any(c.get(s) for _, c in per_hour)]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="chart-outcomes" width="{width}" '
        f'height="{height + legend_h * 2}" role="img" aria-label="outcomes per hour">'
    ]
    parts.append(f'<text x="0" y="12" font-size="10">{top}</text>')
    parts.append(f'<text x="0" y="{height}" font-size="10">0</text>')
    for i, (hour, counts) in enumerate(per_hour):
        y = float(height)
        for state in states:
            n = counts.get(state, 0)
            if not n:
                continue
            h = (height - 14) * n / top
            y -= h
            parts.append(
                f'<rect x="{pad + i * bar:.1f}" y="{y:.1f}" width="{max(1.0, bar - 1):.1f}" '
                f'height="{h:.1f}" fill="{STATE_COLOURS[state]}"><title>'
                f"{esc(when(hour)[:13])}h {esc(state)}: {n}</title></rect>"
            )
        if i % 12 == 0:
            parts.append(
                f'<text x="{pad + i * bar:.1f}" y="{height + 12}" font-size="9">'
                f"{esc(when(hour)[5:13])}h</text>"
            )
    for j, state in enumerate(states):
        x = (j % 5) * (width / 5)
        y = height + 16 + (j // 5) * 12
        parts.append(
            f'<rect x="{x:.0f}" y="{y}" width="9" height="9" fill="{STATE_COLOURS[state]}"/>'
            f'<text x="{x + 12:.0f}" y="{y + 8}" font-size="9">{esc(state)}</text>'
        )
    if not states:
        parts.append(f'<text x="{pad}" y="{height / 2}" font-size="11">no outcome yet</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram_chart(histogram: Sequence[tuple[str, int]], width: int = 420) -> str:
    """One bar per fixed bucket of received → BOOKED seconds."""
    height = 150
    top = max([n for _, n in histogram] + [1])
    bar = width / max(1, len(histogram))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="chart-booked" width="{width}" '
        f'height="{height + 30}" role="img" aria-label="received to booked time">'
    ]
    for i, (label, n) in enumerate(histogram):
        h = (height - 16) * n / top
        parts.append(
            f'<rect x="{i * bar + 1:.1f}" y="{height - h:.1f}" width="{bar - 2:.1f}" '
            f'height="{h:.1f}" fill="#5b7fdb"><title>{esc(label)}: {n}</title></rect>'
            f'<text x="{i * bar + bar / 2:.1f}" y="{height - h - 3:.1f}" font-size="9" '
            f'text-anchor="middle">{n or ""}</text>'
            f'<text x="{i * bar + bar / 2:.1f}" y="{height + 12}" font-size="8" '
            f'text-anchor="middle">{esc(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


AUDIT_KIND_HELP = {
    "double": "more new bookings than rebooks for this original: the member may pay twice",
    "orphan": "a booking that looks made by a reschedule, after a rebook, that no record owns",
    "missing": "a record's new booking that the upstream no longer lists or returns",
}


def audit_page(
    *,
    base: str,
    findings: Sequence[Mapping[str, Any]],
    counts: Mapping[str, int],
    last: Mapping[str, Any] | None = None,
) -> str:
    """`/rebooks/audit`: the ledger audit's findings, newest first, each linking to its
    rebooks and to the member's filtered list (README "Ledger audit")."""
    chips = "".join(
        f'<a id="audit-count-{esc(kind)}" title="{esc(AUDIT_KIND_HELP.get(kind, ""))}">'
        f"{esc(kind)} {int(n)}</a>"
        for kind, n in counts.items()
    )
    rows = []
    for f in findings:
        rebooks = " ".join(
            f'<a href="{esc(rebook_path(base, rid))}"><code>{esc(rid)}</code></a>'
            for rid in f.get("rebook_ids", [])
        )
        user, kind = str(f.get("user_id", "")), str(f.get("kind", ""))
        colour = _KIND_COLOURS.get(kind, "#666")
        rows.append(
            f'<tr class="finding {esc(kind)}">'
            f'<td><span class="state" style="background:{colour}"'
            f' title="{esc(AUDIT_KIND_HELP.get(kind, ""))}">{esc(kind)}</span></td>'
            f"<td>{esc(f.get('found_at'))}</td>"
            f'<td><a href="{link(base + "/rebooks", {"user_id": user})}">{esc(user)}</a></td>'
            f'<td><a href="{link(base + "/rebooks", {"booking_id": str(f.get("booking_id"))})}">'
            f"{esc(f.get('booking_id'))}</a></td>"
            f"<td>{esc(', '.join(str(b) for b in f.get('new_booking_ids', [])))}</td>"
            f"<td>{rebooks}</td></tr>"
        )
    summary = ""
    if last:
        summary = (
            f'<p class="muted" id="audit-last">last run {esc(last.get("at"))}: '
            f"{int(last.get('checked_members', 0))} member(s) checked, "
            f"{int(last.get('unchecked_members', 0))} not checked</p>"
        )
    body = (
        "<h2>Ledger audit<small>the upstream's MadeBookings of each member with recent rebooks, "
        "compared with the records; each finding once, newest first</small></h2>"
        f'<div class="counts">{chips}</div>{summary}'
        '<table id="findings"><thead><tr><th>kind</th><th>found</th><th>member</th>'
        "<th>original</th><th>new bookings</th><th>rebooks</th></tr></thead><tbody>"
        + ("".join(rows) or '<tr><td colspan=6 class="muted">no findings</td></tr>')
        + "</tbody></table>"
        f'<p class="pager"><a href="{esc(base)}/api/audit">as JSON</a></p>'
    )
    return layout("Audit", body, base)


_KIND_COLOURS = {"double": "#b22222", "orphan": "#d9534f", "missing": "#8a6d3b"}
