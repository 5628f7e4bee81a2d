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

from worker.core.search import Filters
from worker.core.states import ACTIVE_STATES, State
from worker.core.store import Rebook

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
}
STYLE = """
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
        f'<a href="{esc(base)}/">Flower</a></header>'
        f"<main>{body}</main></body></html>"
    )


def _hidden_xsrf(xsrf: str) -> str:
    return f'<input type="hidden" name="_xsrf" value="{esc(xsrf)}">'


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
) -> str:
    """`/rebooks`: counts per state, filters, the table, paging, bulk actions and charts."""
    now = time.time() if now is None else now
    params = filters.params()
    chips = [f'<a class="{"" if filters.state else "on"}" href="{link(base + "/rebooks")}">all</a>']
    for state in State:
        on = "on" if filters.state == state else ""
        target = {**params, "state": state.value}
        chips.append(
            f'<a class="{on}" id="count-{state.value}" href="{link(base + "/rebooks", target)}">'
            f"{esc(state.value)} {int(counts.get(state.value, 0))}</a>"
        )
    state_options = "".join(
        f'<option value="{s.value}"{" selected" if filters.state == s else ""}>{s.value}</option>'
        for s in State
    )

    def box(name: str, label: str, value: str) -> str:
        return (
            f'<label>{esc(label)}<input name="{name}" id="f-{name}" value="{esc(value)}" '
            f'size="14"></label>'
        )

    form = (
        f'<form class="filters" method="get" action="{esc(base)}/rebooks">'
        f'<label>state<select name="state" id="f-state"><option value="">any</option>'
        f"{state_options}</select></label>"
        + box("reason", "reason (a* = prefix)", filters.reason)
        + box("user_id", "member", filters.user_id)
        + box("performer_id", "performer", str(filters.performer_id or ""))
        + box("booking_id", "booking", str(filters.booking_id or ""))
        + box("q", "event id / rebook id prefix", filters.q)
        + box("since", "since (ISO, 6h, 2d)", params.get("since", ""))
        + '<button type="submit" id="f-apply">Filter</button>'
        f'<a href="{esc(base)}/rebooks">clear</a></form>'
    )
    rows = []
    for r in items:
        path = rebook_path(base, r.rebook_id)
        rows.append(
            "<tr>"
            f'<td><a href="{esc(path)}"><code>{esc(r.rebook_id)}</code></a></td>'
            f"<td><code>{esc(r.event_id)}</code></td>"
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
    table = (
        '<table id="rebooks"><thead><tr><th>rebook</th><th>event</th><th>member</th>'
        "<th>performer</th><th>booking</th><th>state</th><th>reason</th><th>age</th>"
        "<th>new booking</th><th>AcceptBy</th></tr></thead><tbody>"
        + ("".join(rows) or '<tr><td colspan=10 class="muted">no rebook matches</td></tr>')
        + "</tbody></table>"
    )
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
    bulk = ""
    if not filters.empty:
        hidden = "".join(
            f'<input type="hidden" name="f_{esc(k)}" value="{esc(v)}">' for k, v in params.items()
        )
        bulk = (
            f'<form class="card" method="post" action="{esc(base)}/rebooks/actions" id="bulk">'
            f"{_hidden_xsrf(xsrf)}{hidden}<strong>Every rebook matching this filter:</strong> "
            '<label><input type="checkbox" name="dry_run" value="1" checked id="bulk-dry"> '
            "dry run (show what would be done and refused)</label> "
            '<button name="action" value="retry" id="bulk-retry">retry</button> '
            '<button name="action" value="cancel" id="bulk-cancel">cancel</button></form>'
        )
    charts = (
        '<div class="charts">'
        '<div class="card"><strong>Outcomes per hour, last 48 h</strong>'
        f"{outcomes_chart(per_hour)}</div>"
        '<div class="card"><strong>Received → BOOKED, last 48 h</strong>'
        f"{histogram_chart(histogram)}</div>"
        "</div>"
    )
    body = f'<div class="counts">{"".join(chips)}</div>{form}{bulk}{table}{"".join(pager)}{charts}'
    return layout("Rebooks", body, base)


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
    now: float | None = None,
) -> str:
    """`/rebooks/{id}`: the record, its timeline, its outcomes, the new booking's upstream
    status and the actions the CLI would take (else its refusal text)."""
    now = time.time() if now is None else now
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
            f"{esc(age(rec.updated_ts or rec.created_ts, now))}"
            f"{' — ' + esc(_waiting_note(rec)) if _waiting_note(rec) else ''}</li>"
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
        f"<h2><code>{esc(rec.rebook_id)}</code> {badge(rec.state.value)}</h2>{note}"
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


def _waiting_note(rec: Rebook) -> str:
    """Why it is still where it is, in words an operator can act on."""
    if rec.state == State.WAITING:
        if rec.performer_id is None:
            return "the performer is being read from the original booking"
        return (
            f"waiting for performer {rec.performer_id} to come online, at most until "
            f"{when(rec.deadline_ts)} (then GAVE_UP)"
        )
    if rec.state == State.RESCHEDULING and rec.blocked_by:
        return f"held: another rebook ({rec.blocked_by}) of this member and performer is unsettled"
    if rec.state == State.RESCHEDULING and rec.unsettled:
        return "a reschedule request went out; reconciling against the member's bookings"
    if rec.state == State.WATCHING:
        return (
            f"watching booking {rec.new_booking_id} until it is decided or {rec.accept_by} passes"
        )
    if rec.state == State.NEEDS_ATTENTION:
        return f"parked ({rec.reason}): see the runbook's NEEDS_ATTENTION section; retry resumes it"
    return ""


def actions_page(*, base: str, result: Mapping[str, Any], back: str) -> str:
    """What a bulk action (or its dry run) matched, did and refused, with why."""
    dry = bool(result.get("dry_run"))
    head = f"{'Dry run of ' if dry else ''}{esc(result.get('action'))}"

    def ids(values: Sequence[Any], key: str = "") -> str:
        return "".join(
            f'<li><a href="{esc(rebook_path(base, str(v[key] if key else v)))}"><code>'
            f"{esc(v[key] if key else v)}</code></a>"
            + (f" → {esc(v.get('state'))} ({esc(v.get('reason'))})" if key and "state" in v else "")
            + (f": <span class=refusal>{esc(v.get('why'))}</span>" if key and "why" in v else "")
            + "</li>"
            for v in values
        )

    done = result.get("would_do", []) if dry else result.get("done", [])
    body = (
        f'<h2 id="result">{head}</h2>'
        f'<p>matched <strong id="n-matched">{len(result.get("matched", []))}</strong></p>'
        f"<ul>{ids(result.get('matched', []))}</ul>"
        f'<p>{"would be done" if dry else "done"}: <strong id="n-done">{len(done)}</strong></p>'
        f"<ul>{ids(done, '' if dry else 'rebook_id')}</ul>"
        f'<p>refused: <strong id="n-refused">{len(result.get("refused", []))}</strong></p>'
        f"<ul>{ids(result.get('refused', []), 'rebook_id')}</ul>"
        f'<p><a href="{esc(back)}">back to the list</a></p>'
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
