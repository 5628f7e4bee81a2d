"""The benchmark's table: metric | rebook | plain Celery | ratio | goal | met?"""

from __future__ import annotations

from typing import Any

from worker.core.capacity import DISPATCH_LATENCY

KB = 1024


def _num(value: float | None, digits: int = 3) -> str:
    """Three significant figures, no exponent for the sizes that occur here."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    decimals = digits
    while magnitude < 10 ** -(decimals - digits + 1) and decimals < 8:
        decimals += 1
    return f"{value:.{decimals}f}"


def _ratio(ours: float | None, plain: float | None) -> float | None:
    if ours is None or plain is None or plain == 0:
        return None
    return ours / plain


def _size(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def _row(
    metric: str,
    ours: float | None,
    plain: float | None,
    goal: str,
    met: bool | None,
    *,
    ours_text: str | None = None,
    plain_text: str | None = None,
    ratio: float | None = None,
    ratio_text: str | None = None,
) -> dict[str, Any]:
    r = _ratio(ours, plain) if ratio is None else ratio
    return {
        "metric": metric,
        "rebook": ours,
        "plain": plain,
        "ratio": r,
        "goal": goal,
        "met": met,
        "rebook_text": ours_text if ours_text is not None else _num(ours),
        "plain_text": plain_text if plain_text is not None else _num(plain),
        "ratio_text": ratio_text or ("—" if r is None else f"{_num(r)}x"),
    }


def _reaction_text(reaction: dict[str, Any], key: str) -> str:
    value = reaction.get(key)
    if reaction.get("timed_out"):
        lower = reaction["timeout_seconds"]
        done = f"{reaction['posted']}/{reaction['rebooks']}"
        if _reaction_value(reaction, key) is not None:
            return f"{_num(value)} ({done} posted)"
        return f"> {_num(lower)} ({done} posted)"
    return _num(value)


def _reaction_value(reaction: dict[str, Any], key: str) -> float | None:
    """A percentile of all rebooks, or None when the timeout cut it off."""
    if not reaction:
        return None
    if reaction.get("timed_out"):
        share = 0.5 if key == "p50" else 0.99
        if reaction["posted"] < share * reaction["rebooks"]:
            return None
    value: float | None = reaction.get(key)
    return value


def _reaction_ratio(ours: float | None, plain: dict[str, Any], key: str) -> str | None:
    """`< x` when plain Celery's percentile is only known to exceed the timeout."""
    if ours is None or not plain or _reaction_value(plain, key) is not None:
        return None
    return f"< {_num(ours / plain['timeout_seconds'])}x"


def build_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row of the table, in the order the README shows them."""
    return [
        *_presence_rows(res),
        *_reaction_rows(res),
        *_memory_rows(res),
        *_sweep_rows(res["ours"]),
        *_intake_rows(res),
        *_watch_rows(res),
        *budget_rows(res),
    ]


def _presence_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """1. Presence: calls per rebook and per performer, the shortest gap."""
    cfg = res["config"]
    ours, plain = res["ours"], res.get("plain", {})
    p_int = cfg["presence"]
    per_performer = cfg["waiting"] / cfg["performers"]
    rows: list[dict[str, Any]] = []

    # 1. presence
    op, pp = ours["presence"], plain.get("presence", {})
    goal = 3600 / p_int / per_performer
    gap = ours.get("presence_min_gap", {}).get("min_seconds")
    rows.append(
        _row(
            f"Presence calls per rebook per hour ({_size(cfg['waiting'])} waiting on "
            f"{cfg['performers']} performers, P = {p_int:g} s)",
            op["per_rebook_per_hour"],
            pp.get("per_rebook_per_hour"),
            f"≤ {_num(goal)} (1 per performer per P)",
            op["per_rebook_per_hour"] <= goal * 1.05,
        )
    )
    rows.append(
        _row(
            "Presence calls per performer per P (rebook: busiest performer; plain: mean)",
            op["busiest_per_interval"],
            pp.get("per_performer_per_interval"),
            "≤ 1",
            op["busiest_per_interval"] <= 1.05,
        )
    )
    p_gap = plain.get("presence_min_gap", {}).get("min_seconds")
    rows.append(
        _row(
            "Shortest time between two presence calls for one performer, whole run, s",
            gap,
            p_gap,
            f"≥ {_num(p_int)} (P)",
            gap is not None and gap >= p_int * 0.99,
        )
    )
    if pp:
        kept = pp["calls_per_second"] / pp["demanded_per_second_if_one_per_rebook"]
        rows.append(
            _row(
                "Presence calls per second made (plain: share of its 1-per-rebook-per-P schedule "
                "it managed)",
                op["calls_per_second"],
                pp["calls_per_second"],
                "—",
                None,
                plain_text=f"{_num(pp['calls_per_second'])} ({kept:.0%})",
            )
        )
    rows.extend(_points_presence_rows(ours))
    return rows


def _reaction_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """2. Reaction: performer online → POST, in the burst and one at a time; the rate."""
    cfg = res["config"]
    ours, plain = res["ours"], res.get("plain", {})
    p_int = cfg["presence"]
    s_int = cfg["sweep"]
    rate = cfg["rate"]
    rows: list[dict[str, Any]] = []

    # 2. reaction
    orx, prx = ours["reaction"], plain.get("reaction", {})
    bound = p_int + s_int + 1
    rows.append(
        _row(
            f"Reaction p50: performer online → reschedule POST, s (burst: {orx['rebooks']} "
            f"rebooks on {cfg['online']} performers online {_num(max(1.0, 0.75 * p_int))} to "
            f"{_num(max(1.0, 0.75 * p_int) + p_int)} s apart, {_size(cfg['waiting'])} waiting)",
            _reaction_value(orx, "p50"),
            _reaction_value(prx, "p50"),
            "—",
            None,
            ours_text=_reaction_text(orx, "p50"),
            plain_text=_reaction_text(prx, "p50") if prx else "—",
            ratio_text=_reaction_ratio(_reaction_value(orx, "p50"), prx, "p50"),
        )
    )
    rows.append(
        _row(
            "Reaction p99 (burst), s",
            _reaction_value(orx, "p99"),
            _reaction_value(prx, "p99"),
            f"≤ {_num(bound)} (P + sweep + 1 s)",
            orx["p99"] is not None and not orx["timed_out"] and orx["p99"] <= bound,
            ours_text=_reaction_text(orx, "p99"),
            plain_text=_reaction_text(prx, "p99") if prx else "—",
            ratio_text=_reaction_ratio(_reaction_value(orx, "p99"), prx, "p99"),
        )
    )
    first_o = max(orx["first_post_per_performer"], default=None)
    first_p = max(prx.get("first_post_per_performer", []), default=None)
    rows.append(
        _row(
            "First POST after a performer comes online, worst performer (burst), s",
            first_o,
            first_p,
            f"≤ {_num(p_int + s_int)} (P + sweep)",
            first_o is not None and first_o <= p_int + s_int,
        )
    )
    drain_o = max((v["drain"] for v in orx["per_performer"].values()), default=None)
    drain_p = max((v["drain"] for v in prx.get("per_performer", {}).values()), default=None)
    rows.append(
        _row(
            "Spread of one performer's POSTs (first to last of its rebooks), worst, s",
            drain_o,
            None if prx.get("timed_out") else drain_p,
            "—",
            None,
            plain_text="—" if not prx else (f"> {_num(drain_p)}" if prx["timed_out"] else None),
        )
    )
    if "cpu_cores_busy" in orx:
        rows.append(
            _row(
                f"CPU in use during the burst, cores of {res['machine'].get('nproc', '?')} "
                "(worker, beat, sandbox, Redis)",
                orx["cpu_cores_busy"],
                prx.get("cpu_cores_busy"),
                "—",
                None,
            )
        )
    single = ours.get("reaction_single")
    if single:
        per = single["rebooks"] // max(1, cfg["online"])
        rows.append(
            _row(
                f"Reaction p50, one performer at a time ({cfg['online']} performers, {per} "
                f"rebooks each, online at a random moment after the previous one's POSTs), s",
                _reaction_value(single, "p50"),
                None,
                "—",
                None,
                ours_text=_reaction_text(single, "p50"),
                plain_text="— (see burst)",
            )
        )
        rows.append(
            _row(
                "Reaction p99, one performer at a time, s",
                _reaction_value(single, "p99"),
                None,
                f"≤ {_num(bound)} (P + sweep + 1 s)",
                single["p99"] is not None and not single["timed_out"] and single["p99"] <= bound,
                ours_text=_reaction_text(single, "p99"),
                plain_text="— (see burst)",
            )
        )
        first_s = max(single["first_post_per_performer"], default=None)
        rows.append(
            _row(
                "First POST after a performer comes online, worst, one at a time, s",
                first_s,
                None,
                f"≤ {_num(p_int + s_int)} (P + sweep)",
                first_s is not None and first_s <= p_int + s_int,
                plain_text="— (see burst)",
            )
        )
    rows.append(
        _row(
            "Upstream calls in the busiest 1 s window during the reaction (as the sandbox "
            "received them)",
            orx["upstream_peak_1s"],
            prx.get("upstream_peak_1s"),
            f"≤ {_num(rate)} (REBOOK_UPSTREAM_RATE_PER_SECOND)",
            orx["upstream_peak_1s"] <= rate,
        )
    )
    rows.append(
        _row(
            "Upstream calls per second during the reaction: busiest 5 s, mean",
            orx["upstream_peak_5s_per_second"],
            prx.get("upstream_peak_5s_per_second"),
            f"≤ {_num(rate)} (the rate)",
            orx["upstream_peak_5s_per_second"] <= rate,
        )
    )
    return rows


def _intake_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """6. Intake: events per second to a durable record, against a no-op task."""
    cfg = res["config"]
    ours = res["ours"]
    rows: list[dict[str, Any]] = []

    # 6. intake
    intake = max(ours["intake"], key=lambda b: b["n"])
    noop = ours["noop"]
    loaded = ours.get("noop_loaded")
    rows.append(
        _row(
            f"Intake, events per second to a durable record ({_size(intake['n'])} events, "
            f"{_size(cfg['waiting'])} waiting by the end; plain column: no-op task, same worker "
            "and broker, nothing waiting)",
            intake["per_second"],
            noop["per_second"],
            "—" if loaded else "≥ 0.5x no-op",
            None if loaded else intake["per_second"] / noop["per_second"] >= 0.5,
        )
    )
    if loaded:
        rows.append(
            _row(
                f"Intake vs no-op under the same background ({_size(cfg['waiting'])} waiting: "
                f"the worker also polls presence every P; plain column: no-op task)",
                intake["per_second"],
                loaded["per_second"],
                "≥ 0.5x no-op",
                intake["per_second"] / loaded["per_second"] >= 0.5,
            )
        )
    return rows


def _watch_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """5. Watching: reads per member per interval."""
    cfg = res["config"]
    ours, plain = res["ours"], res.get("plain", {})
    w_int = cfg["watch"]
    rows: list[dict[str, Any]] = []

    # 5. watching
    ow, pw = ours["watch"], plain.get("watch", {})
    rows.append(
        _row(
            f"Watching: MadeBookingDetails per watched booking per W (W = {w_int:g} s)",
            ow["details_per_booking_per_interval"],
            pw.get("details_per_booking_per_interval"),
            "—",
            None,
        )
    )
    rows.append(
        _row(
            f"Watching: upstream calls per member per W ({ow['watched']} bookings of "
            f"{ow['members']} members)",
            ow["calls_per_member_per_interval"],
            pw.get("calls_per_member_per_interval"),
            "≤ 1 MadeBookings (issue 5)",
            ow["calls_per_member_per_interval"] <= 1.05,
        )
    )
    return rows


def _points_presence_rows(ours: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for point in ours["points"]:
        if "presence" in point:
            bp = point["presence"]
            rows.append(
                _row(
                    f"Presence calls per performer per P at {_size(point['n'])} waiting "
                    "(busiest performer)",
                    bp["busiest_per_interval"],
                    None,
                    "≤ 1",
                    bp["busiest_per_interval"] <= 1.05,
                )
            )
    return rows


def _memory_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Redis bytes per waiting rebook and worker RSS at each size."""
    cfg = res["config"]
    ours, plain = res["ours"], res.get("plain", {})
    p_int = cfg["presence"]
    rows: list[dict[str, Any]] = []
    # 3. memory
    plain_points = {p["waiting"]: p for p in plain.get("points", [])}
    for point in ours["points"]:
        n = point["n"]
        pl = plain_points.get(n)
        rows.append(
            _row(
                f"Redis bytes per waiting rebook at {_size(n)} (rebook: {point['how']}; "
                "broker messages in flight not counted)",
                point["bytes_per_waiting"],
                pl["bytes_per_waiting"] if pl else None,
                "≤ 1,024",
                point["bytes_per_waiting"] <= KB,
            )
        )
    ob, pb = ours["baseline"]["worker"]["rss_kb"], plain.get("baseline", {}).get("worker", {})
    rows.append(
        _row(
            "Worker RSS, nothing waiting, MB, main + pool processes (plain: before any task ran)",
            ob / KB,
            pb["rss_kb"] / KB if pb else None,
            "—",
            None,
        )
    )
    for point in ours["points"]:
        n = point["n"]
        pl = plain_points.get(n)
        rows.append(
            _row(
                f"Worker RSS at {_size(n)} waiting, MB",
                point["worker"]["rss_kb"] / KB,
                pl["worker"]["rss_kb"] / KB if pl else None,
                "flat",
                None,
            )
        )
    polling = plain.get("rss_polling")
    at_waiting = next((p for p in ours["points"] if p["n"] == cfg["waiting"]), None)
    if polling and at_waiting:
        rows.append(
            _row(
                f"Worker RSS after polling {_size(cfg['waiting'])} waiting at P = {p_int:g} s, MB "
                "(plain: saturated, its backlog queues in Redis)",
                ours["rss_after_reaction"]["worker"]["rss_kb"] / KB,
                polling["worker"]["rss_kb"] / KB,
                "—",
                None,
            )
        )
    after = ours.get("rss_after_reaction")
    larger = [p for p in ours["points"] if after and p["n"] > cfg["waiting"]]
    first = after if larger else ours["points"][0]
    last = larger[-1] if larger else ours["points"][-1]
    growth = (
        (last["worker"]["rss_kb"] - first["worker"]["rss_kb"])
        * KB
        / max(1, last["waiting"] - first["waiting"])
    )
    p_growth, p_span = None, ""
    if plain.get("points"):
        pf, plast = plain["baseline"], plain["points"][-1]
        p_growth = (plast["worker"]["rss_kb"] - pf["worker"]["rss_kb"]) * KB / plast["waiting"]
        p_span = f"; plain: 0 → {_size(plast['waiting'])}"
    rows.append(
        _row(
            f"Worker RSS growth per waiting rebook, bytes ({_size(round(first['waiting'], -2))} → "
            f"{_size(round(last['waiting'], -2))}{p_span})",
            growth,
            p_growth,
            "≈ 0 (≤ 100)",
            growth <= 100,
        )
    )
    return rows


def _sweep_rows(ours: dict[str, Any]) -> list[dict[str, Any]]:
    """Redis CPU time of one sweep at each size, and how it grows with waiting and with due."""
    rows: list[dict[str, Any]] = []
    # 4. sweep
    sweeps = [run for entry in ours["sweep"] for run in entry["runs"]]
    biggest = max(s["waiting"] for s in sweeps)
    smallest = min(s["waiting"] for s in sweeps)
    max_due = max(s["due"] for s in sweeps)
    what = {"watching": "due for a watch read", "gave_up": "past max wait → GAVE_UP"}
    for run in sweeps:
        is_goal = run["waiting"] == biggest and run["due"] == max_due
        rows.append(
            _row(
                f"Sweep, Redis CPU time, ms: {_size(round(run['waiting'], -3))} waiting, "
                f"{run['due']} {what[run['kind']]}",
                run["redis_ms"],
                None,
                "≤ 50" if is_goal else "—",
                run["redis_ms"] <= 50 if is_goal else None,
                plain_text="— (no sweep)",
            )
        )
    if biggest > smallest:
        for kind in ("watching", "gave_up"):
            big = next(
                s
                for s in sweeps
                if s["waiting"] == biggest and s["due"] == max_due and s["kind"] == kind
            )
            small = next(
                s
                for s in sweeps
                if s["waiting"] == smallest and s["due"] == max_due and s["kind"] == kind
            )
            growth_w = big["redis_ms"] / small["redis_ms"] if small["redis_ms"] else None
            rows.append(
                _row(
                    f"Sweep cost with x{biggest / smallest:.0f} waiting, same {max_due} due "
                    f"({kind.replace('_', ' ')})",
                    growth_w,
                    None,
                    "≈ 1 (O(due)), ≤ 1.5",
                    growth_w is not None and growth_w <= 1.5,
                    ours_text=f"{_num(growth_w)}x",
                    plain_text="—",
                )
            )

    lo_due = min(s["due"] for s in sweeps)
    if max_due > lo_due:
        for kind in ("watching", "gave_up"):
            hi = next(
                s
                for s in sweeps
                if s["waiting"] == biggest and s["due"] == max_due and s["kind"] == kind
            )
            lo = next(
                s
                for s in sweeps
                if s["waiting"] == biggest and s["due"] == lo_due and s["kind"] == kind
            )
            growth_d = hi["redis_ms"] / lo["redis_ms"] if lo["redis_ms"] else None
            rows.append(
                _row(
                    f"Sweep cost with x{max_due / lo_due:.0f} due, same "
                    f"{_size(round(biggest, -3))} waiting ({kind.replace('_', ' ')})",
                    growth_d,
                    None,
                    "grows with due",
                    None,
                    ours_text=f"{_num(growth_d)}x",
                    plain_text="—",
                )
            )
    return rows


def markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    systems = "rebook only, memory and sweep phases" if cfg.get("million") else "both systems"
    lines = [
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, "
        f"Redis {m['redis']}, Celery {m['celery']}, {m['os']}.",
        f"Settings ({systems}): prefork -c {cfg['concurrency']}, presence interval "
        f"P = {cfg['presence']:g} s, watch interval W = {cfg['watch']:g} s, sweep every "
        f"{cfg['sweep']:g} s, upstream rate {cfg['rate']:g}/s (rebook only; plain has none), "
        f"lease {cfg['lease']:g} s. Run took {res['elapsed_seconds']:.0f} s"
        + (f", {res['date']}." if res.get("date") else "."),
        "",
        "| metric | rebook | plain Celery | ratio | goal | met? |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in res["rows"]:
        lines.append(
            f"| {row['metric']} | {row['rebook_text']} | {row['plain_text']} | "
            f"{row['ratio_text']} | {row['goal']} | {_met(row['met'])} |"
        )
    if cfg.get("million"):
        lines += ["", breakdown_markdown(res), "", sweep_profile_markdown(res)]
    return "\n".join(lines)


def budget_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The short-budget phase (tests/bench/budget.py): a quarter of the presence demand."""
    b = res.get("budget")
    if not b:
        return []
    ours, plain = b["ours"], b["plain"]
    setting = (
        f"{b['performers']} performers, P = {b['interval']:g} s, budget "
        f"{b['budget']:.1f}/s of {b['needed']:g}/s needed (rebook: rate {b['rate']:g}/s; plain: "
        f"rate_limit {b['budget']:.1f}/s)"
    )
    fair = b["fair_period"]
    rows = [
        _row(
            f"Short budget: presence calls of the least-polled performer / mean ({setting})",
            ours["min_over_mean"],
            plain["min_over_mean"],
            "≥ 0.6",
            ours["min_over_mean"] >= 0.6,
        ),
        _row(
            "Short budget: presence calls of the most-polled performer / mean",
            ours["max_over_mean"],
            plain["max_over_mean"],
            "≤ 1.6",
            ours["max_over_mean"] <= 1.6,
        ),
        _row(
            "Short budget: mean time between two polls of one performer, s "
            f"(fair: P / f = {fair:.2f})",
            ours["period"],
            plain["period"],
            f"within 25 % of the planner's {ours['predicted_period']:.2f}",
            ours["period"] is not None
            and abs(ours["period"] - ours["predicted_period"]) <= 0.25 * ours["predicted_period"],
        ),
        _row(
            "Short budget: `stats` achieved_interval_seconds "
            f"(planner: {ours['predicted_period']:.2f})",
            ours["stats_presence"]["achieved_interval_seconds"],
            None,
            "within 25 % of the measured period",
            ours["stats_presence"]["achieved_interval_seconds"] is not None
            and ours["period"] is not None
            and abs(ours["stats_presence"]["achieved_interval_seconds"] - ours["period"])
            <= 0.25 * ours["period"],
        ),
        _row(
            f"Short budget: reaction p50, s ({ours['online']} performers online one by one; "
            f"planner: {ours['predicted_p50']:.2f})",
            ours["reaction_p50"],
            plain["reaction_p50"],
            "within 25 % of the planner",
            ours["reaction_p50"] is not None
            and abs(ours["reaction_p50"] - ours["predicted_p50"]) <= 0.25 * ours["predicted_p50"],
        ),
        _row(
            f"Short budget: reaction p99, s (planner: {ours['predicted_p99']:.2f}; of 12, the "
            "p99 is the worst)",
            ours["reaction_p99"],
            plain["reaction_p99"],
            "within 25 % of the planner",
            ours["reaction_p99"] is not None
            and abs(ours["reaction_p99"] - ours["predicted_p99"]) <= 0.25 * ours["predicted_p99"],
        ),
        *_reaction_parts(b),
        _row(
            "Short budget: upstream calls in the busiest 1 s window (as the sandbox received them)",
            ours["peak_1s"],
            plain["peak_1s"],
            f"≤ {b['rate']:g} (the rate)",
            ours["peak_1s"] <= b["rate"],
        ),
    ]
    return rows


def million_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """`--million`: the memory and sweep phases alone (tests/bench/run.py `Bench.million`)."""
    ours = res["ours"]
    rows = _memory_rows(res)
    rows.extend(_points_presence_rows(ours))
    rows.extend(_sweep_rows(ours))
    return rows


BREAKDOWN = (
    ("record", "record `r:{id}`"),
    ("active", "booking marker `active:{booking_id}`"),
    ("due_entry", "entry in `due` (next due time)"),
    ("created_entry", "entry in `created` (console's newest-first order)"),
    ("state_set_entry", "entry in `st:WAITING`"),
    ("performer_set_entry", "entry in `perf:{performer_id}`"),
    ("member_set_entry", "entry in `user:{user_id}` (10 rebooks per member)"),
)


def breakdown_markdown(res: dict[str, Any]) -> str:
    """Where a waiting rebook's Redis bytes go, at the largest size measured."""
    b = res["ours"].get("memory_breakdown")
    if not b or "accounted" not in b:
        return ""
    measured = res["ours"]["points"][-1]
    enc = b.get("encodings", {})
    lines = [
        f"Where the bytes go at {b['waiting']:,} waiting (`MEMORY USAGE … SAMPLES 0`: records "
        f"sampled ({b['sampled']}), indexes whole; MEMORY STATS for the keyspace; "
        f"{b['keys_per_waiting']:.2f} keys per waiting rebook):",
        "",
        "| part | type/encoding | bytes per waiting rebook |",
        "|---|---|---:|",
    ]
    for key, label in BREAKDOWN:
        lines.append(f"| {label} | {enc.get(key, '—')} | {b[key]:,.0f} |")
    lines += [
        f"| main keyspace bucket array (MEMORY STATS `overhead.hashtable.main` less what MEMORY "
        f"USAGE counts) | dict | {b['main_dict_buckets_per_waiting']:,.0f} |",
        f"| **sum** | | **{b['accounted']:,.0f}** |",
        f"| measured at {_size(measured['n'])} (used_memory over the baseline, per waiting) | | "
        f"{measured['bytes_per_waiting']:,.0f} |",
    ]
    return "\n".join(lines)


def sweep_profile_markdown(res: dict[str, Any], top: int = 8) -> str:
    """What Redis ran for the largest sweep of each kind (INFO commandstats over the sweep:
    the commands its scripts ran are counted by name too, and inside `evalsha`'s time)."""
    sweeps = [run for entry in res["ours"].get("sweep", []) for run in entry["runs"]]
    if not sweeps:
        return ""
    biggest = max(s["waiting"] for s in sweeps)
    max_due = max(s["due"] for s in sweeps)
    lines = []
    for run in sweeps:
        if run["waiting"] != biggest or run["due"] != max_due:
            continue
        by = run.get("redis_by_command", {})
        ranked = sorted(by.items(), key=lambda kv: -kv[1]["usec"])[:top]
        parts = ", ".join(
            f"{name} {int(v['calls']):,} calls {v['usec'] / 1000:.1f} ms" for name, v in ranked
        )
        lines.append(
            f"- {run['due']} {run['kind'].replace('_', ' ')} at {_size(round(biggest, -3))} "
            f"waiting: {run['redis_ms']:.1f} ms Redis CPU (runs {_reps(run)}), "
            f"{run['redis_commands']:,} commands, {run['wall_ms']:.0f} ms wall; by command "
            f"(commandstats µs): {parts}"
        )
    return "\n".join(
        ["Sweep profile (INFO commandstats; `evalsha` includes its commands' time):", "", *lines]
    )


def _reps(run: dict[str, Any]) -> str:
    return ", ".join(f"{x:.1f}" for x in run.get("reps_redis_ms", [run["redis_ms"]]))


def _reaction_parts(b: dict[str, Any]) -> list[dict[str, Any]]:
    """The reaction in the model's two parts: online -> the poll that saw it (U(0, period)),
    and that poll -> the POST (a fixed `DISPATCH_LATENCY`); and the poll rate meanwhile."""
    ours, plain = b["ours"], b["plain"]
    if ours.get("to_poll_mean") is None:
        return []
    predicted = ours["predicted_to_poll_mean"]
    return [
        _row(
            "Short budget: online → the poll that saw it, mean of the 12, s (planner: mean "
            f"period / 2 = {predicted:.2f})",
            ours["to_poll_mean"],
            plain["to_poll_mean"],
            "within 25 % of the planner",
            abs(ours["to_poll_mean"] - predicted) <= 0.25 * predicted,
        ),
        _row(
            "Short budget: that poll → the POST, mean, s (planner's fixed part: "
            f"{DISPATCH_LATENCY:g}; worst: {_num(ours['poll_to_post_max'])})",
            ours["poll_to_post_mean"],
            plain["poll_to_post_mean"],
            "—",
            None,
        ),
        _row(
            "Short budget: presence calls per second while performers came online (budget "
            f"{b['budget']:.1f}; checks deferred for POSTs, whole phase: "
            f"{ours.get('presence_deferred', '—')})",
            ours["presence_rate_during"],
            plain["presence_rate_during"],
            "—",
            None,
        ),
    ]
