"""`rebook`: the operator's command line. Exit codes: 0 ok, 1 not found / failed, 2 bad usage.

Every command that cannot reach Redis or the broker says so in one line naming the URL (password
masked), never with a traceback.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worker.core.errors import ConfigError, StoreUnavailable
from worker.core.models import RebookEvent, TokenSet
from worker.core.settings import mask_url
from worker.core.states import ACTIVE_STATES, State

cli = typer.Typer(
    name="rebook",
    help="Rebooks missed webcam sessions on the AdultWork.com developer API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tokens_cli = typer.Typer(help="Member OAuth tokens (stored encrypted with REBOOK_TOKEN_KEY).")
deadletter_cli = typer.Typer(
    help="Invalid events, with their reasons.", invoke_without_command=True
)
cli.add_typer(tokens_cli, name="tokens")
cli.add_typer(deadletter_cli, name="deadletter")

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
"""Progress where stdout carries JSON."""


def say_error(message: str) -> None:
    """One plain line on stderr (never wrapped: scripts grep it)."""
    print(f"rebook: {message}", file=sys.stderr, flush=True)


def fail(message: str, code: int = 1) -> NoReturn:
    say_error(message)
    raise typer.Exit(code)


def _services() -> Any:
    from worker.celeryapp.runtime import services

    svc = services()
    svc.store.ping()
    return svc


def _flow() -> Any:
    import worker.app  # noqa: F401 (builds this process's app, which sends the next steps)
    from worker.celeryapp.dispatch import flow

    _services()
    return flow()


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _age(iso: str) -> str:
    if not iso:
        return ""
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    secs = int((datetime.now(UTC) - then).total_seconds())
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h"


# -- pipeline ------------------------------------------------------------------------------------


@cli.command()
def submit(
    booking_id: Annotated[int, typer.Argument(help="The made booking to rebook.")],
    user: Annotated[str, typer.Option("--user", help="Member whose stored token is used.")],
    performer: Annotated[
        int | None, typer.Option(help="Performer id (else read upstream).")
    ] = None,
    event_id: Annotated[str | None, typer.Option("--event-id", help="Idempotency key.")] = None,
    max_wait: Annotated[int | None, typer.Option("--max-wait", help="Seconds to wait.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send a rebook event (`rebook.request`) to the queue, as a producer would."""
    from worker.core.store import rebook_id_for

    kwargs: dict[str, Any] = {
        "event_id": event_id or f"cli-{uuid.uuid4().hex}",
        "booking_id": booking_id,
        "user_id": user,
    }
    if performer is not None:
        kwargs["performer_id"] = performer
    if max_wait is not None:
        kwargs["max_wait_seconds"] = max_wait
    try:
        RebookEvent.parse((), kwargs)
    except Exception as exc:
        fail(f"invalid event: {exc}", 2)
    from kombu.exceptions import OperationalError

    from worker.app import app
    from worker.celeryapp.app import EVENTS_QUEUE

    try:
        result = app.send_task(
            "rebook.request",
            kwargs=kwargs,
            queue=EVENTS_QUEUE,
            retry_policy={"max_retries": 2, "interval_start": 0.2},
        )
    except OperationalError as exc:
        fail(f"cannot reach the broker at {mask_url(app.conf.broker_url)}: {exc}")
    answer = {
        "event_id": kwargs["event_id"],
        "rebook_id": rebook_id_for(kwargs["event_id"]),
        "task_id": result.id,
    }
    if as_json:
        _print_json(answer)
    else:
        out.print(f"sent event {answer['event_id']} → rebook {answer['rebook_id']}")


@cli.command()
def status(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Rebook id or event id.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One rebook with its history."""
    svc = _services()
    rec = svc.store.records.find(ident)
    if rec is None:
        fail(f"no rebook {ident!r}")
    history = svc.store.records.history(rec.rebook_id)
    if as_json:
        _print_json({**rec.public(), "history": history})
        return
    table = Table(show_header=False, box=None)
    for key, value in rec.public().items():
        table.add_row(f"[bold]{key}[/]", "" if value is None else str(value))
    out.print(table)
    hist = Table("at", "from", "to", "reason", title="history")
    for item in history:
        hist.add_row(item["at"], item["from"] or "—", item["to"], item["reason"])
    out.print(hist)


StateOpt = Annotated[str | None, typer.Option("--state", help="Only this state.")]
ReasonOpt = Annotated[
    str | None,
    typer.Option("--reason", help="Exact reason (`reauth`); a trailing * matches a prefix."),
]
UserOpt = Annotated[str | None, typer.Option("--user", help="Only this member.")]
PerformerOpt = Annotated[int | None, typer.Option("--performer", help="Only this performer.")]
BookingOpt = Annotated[int | None, typer.Option("--booking", help="Only this original booking.")]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="Received since: ISO time, unix seconds or 6h/2d.")
]


def _filters(
    state: str | None,
    reason: str | None,
    user: str | None,
    performer: int | None,
    booking: int | None,
    since: str | None,
) -> Any:
    """The options as `worker.core.search.Filters` (bad values: one line, exit 2)."""
    from worker.core.search import BadFilter, Filters

    try:
        return Filters.parse(
            {
                "state": state,
                "reason": reason,
                "user_id": user,
                "performer_id": performer,
                "booking_id": booking,
                "since": since,
            }
        )
    except BadFilter as exc:
        fail(str(exc), 2)


@cli.command("list")
def list_(
    state: StateOpt = None,
    reason: ReasonOpt = None,
    user: UserOpt = None,
    performer: PerformerOpt = None,
    booking: BookingOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option(help="How many (0 = all).")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Rebooks, newest first, found through indexes (filters combine)."""
    from worker.core.search import Search

    wanted = _filters(state, reason, user, performer, booking, since)
    if limit < 0:
        fail("--limit must be >= 0", 2)
    rows = Search(_services().store).query(wanted, limit=limit, budget=10**9).items
    if as_json:
        _print_json([r.public() for r in rows])
        return
    table = Table(
        "rebook", "event", "booking", "user", "performer", "state", "new booking", "reason", "age"
    )
    for r in rows:
        table.add_row(
            r.rebook_id,
            r.event_id[:24],
            str(r.booking_id),
            r.user_id,
            str(r.performer_id or ""),
            r.state.value,
            str(r.new_booking_id or ""),
            r.reason[:40],
            _age(r.created_at),
        )
    out.print(table)


@cli.command()
def stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Counts per state, the oldest overdue lag and the dead-letter count."""
    data = _services().store.sweep.stats()
    if as_json:
        _print_json(data)
        return
    paused = data.get("paused")
    if paused:  # a wrong setting: above everything else (README "Wrong setting")
        out.print(
            f"[bold red]PAUSED since {paused['since']}: {escape(paused['setting'])} refused "
            f"({paused['reason']}); fix it and restart the workers and beat[/bold red]"
        )
    table = Table("state", "count")
    for name, count in data["states"].items():
        style = "bold" if State(name) in ACTIVE_STATES else ""
        table.add_row(name, str(count), style=style)
    out.print(table)
    out.print(
        f"due lag: {data['due_lag_seconds']}s   dead letters: {data['deadletter']}   "
        f"last sweep: {data['last_sweep_seconds_ago']}s ago"
    )
    zone = data.get("zone")
    if zone and not zone["agrees"]:
        out.print(
            f"[bold red]zone: REBOOK_API_TIMEZONE={zone['configured']} but the upstream appears "
            f"to use {zone['appears']} (UTC{zone['observed_offset_minutes']:+d} min, {zone['at']})"
            "[/bold red]"
        )
    elif zone:
        out.print(f"zone: {zone['configured']} agrees with the upstream ({zone['at']})")
    from worker.operations.doctor import performer_field_line

    out.print(f"performer field: {performer_field_line(data['performer_field'])}")
    shadow = data["shadow"]
    if shadow["enabled"] or shadow["would_book"]:
        lag = shadow["online_to_post_seconds"]
        timing = (
            f"online→POST p50 {lag['p50']}s, p99 {lag['p99']}s"
            if lag["p50"] is not None
            else "online→POST: no sample yet"
        )
        head = (
            "[bold magenta]shadow mode: nothing is booked[/bold magenta]"
            if shadow["enabled"]
            else "shadow mode is off; from its earlier run"
        )
        out.print(
            f"{head} — would have booked {shadow['would_book']} ({timing}), "
            f"gave up {shadow['gave_up']}"
        )


@cli.command()
def audit(
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Members with a rebook received since: 6h, 2d, an ISO time or unix seconds "
            "(default REBOOK_AUDIT_WINDOW_SECONDS).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check the upstream's MadeBookings against the records now (double, orphan, missing).

    Exit 1 when there are findings or a member could not be checked. It records nothing: the
    beat task `rebook.audit` appends new findings to the stream."""
    from worker.core.audit import Auditor
    from worker.core.search import BadFilter, parse_since

    start: float | None = None
    if since is not None:
        try:
            start = parse_since(since)
        except BadFilter as exc:
            fail(str(exc), 2)
    svc = _services()
    report = Auditor(svc.settings, svc.store, svc.client, svc.tokens).run(start)
    if as_json:
        _print_json(report.as_json())
    else:
        out.print(f"checked members: {report.checked_members}   upstream calls: {report.calls}")
        if report.findings:
            table = Table("kind", "member", "booking", "new bookings", "rebooks", "found at")
            for f in report.findings:
                table.add_row(
                    f.kind,
                    f.user_id,
                    str(f.booking_id),
                    ", ".join(map(str, f.new_booking_ids)),
                    ", ".join(f.rebook_ids),
                    f.found_at,
                )
            out.print(table)
        else:
            out.print("no findings")
        for u in report.unchecked:
            out.print(f"[bold red]not checked[/bold red]: {u.user_id}: {u.why}", highlight=False)
    if report.findings or report.unchecked:
        raise typer.Exit(1)


def _env_float(name: str, default: float) -> float:
    """A planner input from the environment when set (the deployment's own), else the default."""
    import os

    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}: not a number: {raw!r}") from None


@cli.command()
def capacity(
    performers: Annotated[int, typer.Option("--performers", min=0, help="with waiting rebooks")],
    members: Annotated[int, typer.Option("--members", min=0, help="with watched bookings")] = 0,
    interval: Annotated[
        float | None, typer.Option("--interval", min=0.001, help="presence interval, s")
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", min=0, help="upstream calls/s (0: no limit)")
    ] = None,
    watch: Annotated[
        float | None, typer.Option("--watch", min=0.001, help="watch interval, s")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """What the upstream budget allows: presence interval achieved, reaction p50/p99, watch reads.

    Defaults: REBOOK_PRESENCE_INTERVAL_SECONDS, REBOOK_UPSTREAM_RATE_PER_SECOND and
    REBOOK_WATCH_INTERVAL_SECONDS from the environment, else 30, 20 and 30. Needs no Redis."""
    from worker.core.capacity import plan

    p = plan(
        performers,
        interval=interval
        if interval is not None
        else _env_float("REBOOK_PRESENCE_INTERVAL_SECONDS", 30.0),
        rate=rate if rate is not None else _env_float("REBOOK_UPSTREAM_RATE_PER_SECOND", 20.0),
        members=members,
        watch_interval=watch
        if watch is not None
        else _env_float("REBOOK_WATCH_INTERVAL_SECONDS", 30.0),
    )
    if as_json:
        _print_json(p.as_dict())
        return
    budget = (
        "unlimited"
        if p.as_dict()["budget_calls_per_second"] is None
        else f"{p.budget_calls_per_second:.2f}/s"
    )
    lines = [
        f"presence: {p.performers} performers every {p.interval_seconds:g}s need "
        f"{p.needed_calls_per_second:.2f} calls/s; budget {budget} "
        f"(the presence share of {p.rate_per_second:g}/s)",
        f"achieved presence interval: {p.achieved_interval_seconds:.1f}s"
        + ("" if p.covered >= 1 else f" (the budget covers {p.covered:.0%} of the demand)"),
        f"reaction (performer online -> POST): p50 {p.reaction_p50_seconds:.1f}s, "
        f"p99 {p.reaction_p99_seconds:.1f}s",
    ]
    if p.members:
        every = p.watch_interval_achieved_seconds
        lines.append(
            f"watch reads: {p.watch_reads_per_second:.2f}/s for {p.members} members "
            + (
                f"(each every {every:.1f}s)"
                if every is not None
                else "(none: presence takes the budget)"
            )
        )
    if p.covered < 1:
        lines.append(
            f"to poll every {p.interval_seconds:g}s: REBOOK_UPSTREAM_RATE_PER_SECOND="
            f"{p.rate_needed_per_second:g}"
        )
    for line in lines:
        out.print(line, highlight=False)


def _operator(
    command: Literal["retry", "cancel"],
    ident: str | None,
    filters: tuple[str | None, str | None, str | None, int | None, int | None, str | None],
    dry_run: bool,
    as_json: bool,
    **one: Any,
) -> None:
    """`cancel`/`retry`: one ID → one line with the new state, or one line saying why not
    (exit 1); filters → what matched, what was done, what was refused with why (exit 1 when
    anything was refused, except in a dry run). `one`: options of the one-ID call only."""
    from worker.core.actions import run
    from worker.core.flow import Refused

    bulk = any(value is not None for value in filters)
    if ident is not None and bulk:
        fail(f"{command} takes one ID or filters, not both", 2)
    if ident is None and not bulk:
        fail(f"{command} needs an ID or at least one filter (--state, --reason, --user, ...)", 2)
    if ident is not None and not dry_run and not as_json:
        try:
            rec = getattr(_flow(), command)(ident, **{k: v for k, v in one.items() if v})
        except LookupError as exc:
            fail(str(exc).strip("'\""))
        except Refused as exc:
            fail(str(exc))
        out.print(f"{rec.rebook_id}: {rec.state.value} ({rec.reason})")
        return
    wanted = _filters(*filters) if bulk else None
    flow = _flow()
    what = f"{command} (dry run)" if dry_run else command
    with _Progress(what, console=err if as_json else out) as progress:
        result = run(
            flow,
            flow.store,
            command,
            ids=[ident] if ident else [],
            filters=wanted,
            dry_run=dry_run,
            progress=progress,
        )
    if as_json:
        _print_json(result.as_json())
    else:
        label = " (dry run: nothing done)" if dry_run else ""
        out.print(f"matched {len(result.matched)}{label}", highlight=False)
        for rid in result.matched:
            out.print(f"  {rid}", markup=False, highlight=False)
        if dry_run:
            out.print(f"would {command} {len(result.would_do)}", highlight=False)
            for rid in result.would_do:
                out.print(f"  {rid}", markup=False, highlight=False)
        else:
            out.print(f"done {len(result.done)}", highlight=False)
            for row in result.done:
                out.print(
                    f"  {row['rebook_id']}: {row['state']} ({row['reason']})",
                    markup=False,
                    highlight=False,
                )
        out.print(f"refused {len(result.refused)}", highlight=False)
        for row in result.refused:
            out.print(f"  {row['rebook_id']}: {row['why']}", markup=False, highlight=False)
        if result.truncated:
            out.print("more matched than one bulk action takes; narrow the filter", highlight=False)
        out.print(  # the counts again, last: the lists above may be thousands of lines
            f"would {command} {len(result.would_do)}, refused {len(result.refused)} (dry run)"
            if dry_run
            else f"done {len(result.done)}, refused {len(result.refused)}, failed 0",
            highlight=False,
        )
    if result.refused and not dry_run:
        raise typer.Exit(1)


IdArg = Annotated[
    str | None, typer.Argument(metavar="[ID]", help="Rebook id or event id (or use filters).")
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be done and refused; do nothing.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help='{"matched", "done", "refused"}.')]


@cli.command()
def cancel(
    ident: IdArg = None,
    state: StateOpt = None,
    reason: ReasonOpt = None,
    user: UserOpt = None,
    performer: PerformerOpt = None,
    booking: BookingOpt = None,
    since: SinceOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop a rebook that is not finished (state ABORTED); with filters, every match."""
    _operator("cancel", ident, (state, reason, user, performer, booking, since), dry_run, as_json)


@cli.command()
def retry(
    ident: IdArg = None,
    state: StateOpt = None,
    reason: ReasonOpt = None,
    user: UserOpt = None,
    performer: PerformerOpt = None,
    booking: BookingOpt = None,
    since: SinceOpt = None,
    dry_run: DryRunOpt = False,
    as_json: JsonOpt = False,
    not_ours: Annotated[
        list[int] | None,
        typer.Option(
            "--not-ours",
            help="A booking you checked upstream that this rebook's POST did not make "
            "(repeatable; one ID only). Reconciliation then ignores it; the proof still runs.",
        ),
    ] = None,
) -> None:
    """Resume NEEDS_ATTENTION; restart GAVE_UP/FAILED/ABORTED when no booking was made. With
    filters (`--user M --reason reauth`), every match, each refused exactly as one ID would be."""
    filters = (state, reason, user, performer, booking, since)
    if not_ours and (ident is None or dry_run or as_json or any(f is not None for f in filters)):
        fail("--not-ours goes with one rebook ID (no filters, --dry-run or --json)", 2)
    _operator("retry", ident, filters, dry_run, as_json, not_ours=not_ours or [])


@cli.command()
def reindex() -> None:
    """Adds rebooks recorded before the console's indexes existed to them; run once after the
    upgrade that brought `rebook list --user/--performer/--booking` (idempotent)."""
    from worker.core.search import Search

    search = Search(_services().store)
    with _Progress("indexing") as progress:
        done = search.reindex(progress=progress)
    skipped = progress.count("skipped")
    out.print(
        f"indexed {done} rebook(s)" + (f"; skipped {skipped} without a record" if skipped else ""),
        highlight=False,
    )


@cli.command()
def outcomes(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new ones.")] = False,
    count: Annotated[int, typer.Option(help="How many past outcomes.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The outcome stream (`{prefix}outcomes`)."""
    store = _services().store
    past = store.outcomes.latest_outcomes(count)

    def show(item: dict[str, str]) -> None:
        if as_json:
            sys.stdout.write(json.dumps(item) + "\n")
            sys.stdout.flush()
        else:
            extra = (
                f" new={item['new_booking_id']} accept_by={item['accept_by']}"
                if item.get("new_booking_id")
                else ""
            )
            out.print(
                f"{item['at']} {item['rebook_id']} {item['state']:<15} "
                f"booking={item['booking_id']}{extra} {item.get('reason', '')}",
                markup=False,
                highlight=False,
            )

    for item in past:
        show(item)
    if follow:
        last = past[-1]["id"] if past else "$"
        try:
            for item in store.outcomes.follow_outcomes(last):
                show(item)
        except KeyboardInterrupt:
            return


# -- dead letters --------------------------------------------------------------------------------


@deadletter_cli.callback()
def deadletter(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    count: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
) -> None:
    """List dead letters (newest first); `rebook deadletter replay ID` re-submits one."""
    if ctx.invoked_subcommand is not None:
        return
    rows = _services().store.outcomes.deadletters(count)
    if as_json:
        _print_json(rows)
        return
    table = Table("id", "at", "reason", "payload")
    for row in rows:
        table.add_row(
            row["id"], row.get("at", ""), row.get("reason", ""), row.get("payload", "")[:80]
        )
    out.print(table)


@deadletter_cli.command("replay")
def deadletter_replay(
    entry_ids: Annotated[
        list[str],
        typer.Argument(metavar="ID...", help="One or more dead letters (`rebook deadletter`)."),
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="field=value to fix before sending (value read as JSON when it parses)."
        ),
    ] = None,
) -> None:
    """Re-submit dead-lettered events, each fixed with --set field=value.

    Several IDs: a bar (or counts now and then), then replayed / refused / failed counts; why
    each was refused on stderr; exit 1 if any was. The event id is the idempotency key: an
    event replayed twice is one rebook."""
    fixes: dict[str, Any] = {}
    for item in set_ or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(f"--set wants field=value, got {item!r}", 2)
        try:
            fixes[key] = json.loads(raw)
        except ValueError:
            fixes[key] = raw
    store = _services().store
    from kombu.exceptions import OperationalError

    from worker.app import app
    from worker.celeryapp.app import EVENTS_QUEUE

    progress = _Progress("replaying")

    def send(kwargs: dict[str, Any]) -> None:
        try:
            app.send_task("rebook.request", kwargs=kwargs, queue=EVENTS_QUEUE)
        except OperationalError as exc:
            if progress.total:
                progress.close()
                progress.stopped(exc)
            fail(f"cannot reach the broker at {mask_url(app.conf.broker_url)}: {exc}")

    if len(entry_ids) == 1:
        kwargs, why, code = _replayable(store, entry_ids[0], fixes)
        if kwargs is None:
            fail(why, code)
        send(kwargs)
        out.print(f"re-submitted event {kwargs['event_id']}")
        return
    refused: list[str] = []
    unique = list(dict.fromkeys(entry_ids))
    progress.start(len(unique))
    try:
        with progress:
            for entry_id in unique:
                kwargs, why, _ = _replayable(store, entry_id, fixes)
                if kwargs is None:
                    refused.append(f"{entry_id}: {why}")
                    progress.step("refused")
                    continue
                send(kwargs)
                progress.step("replayed")
    finally:  # stopped part-way too: what was refused so far, and why
        for line in refused:
            say_error(f"refused {line}")
    out.print(
        f"replayed {progress.count('replayed')}, refused {len(refused)}, failed 0",
        highlight=False,
    )
    if refused:
        raise typer.Exit(1)


def _replayable(
    store: Any, entry_id: str, fixes: dict[str, Any]
) -> tuple[dict[str, Any] | None, str, int]:
    """The event of a dead letter with `fixes` applied, or why not and the exit code."""
    entry = store.outcomes.deadletter_entry(entry_id)
    if entry is None:
        return None, f"no dead letter {entry_id!r}", 1
    try:
        payload = json.loads(entry["payload"])
    except ValueError:
        return (
            None,
            f"dead letter {entry_id} was truncated; submit the event again with `rebook submit`",
            1,
        )
    kwargs = payload.get("kwargs") if isinstance(payload, dict) else None
    kwargs = {**(kwargs if isinstance(kwargs, dict) else {}), **fixes}
    try:
        RebookEvent.parse((), kwargs)
    except Exception as exc:
        return None, f"still invalid: {exc}; fix it with --set field=value", 2
    return kwargs, "", 0


# -- tokens --------------------------------------------------------------------------------------


NoVerifyOpt = Annotated[
    bool,
    typer.Option(
        "--no-verify",
        help="Store without asking the upstream whose pair it is and what it may do (offline).",
    ),
]


def _checker(svc: Any) -> Any:
    """The pair checker of this process (its upstream client and the shared rate budget)."""
    from worker.adapters.tokencheck import PairChecker

    settings = svc.settings
    return PairChecker(
        svc.client,
        token_url=settings.token_url,
        client_id=settings.oauth_client_id,
        client_secret=settings.oauth_client_secret.get_secret_value(),
    )


@tokens_cli.command("set")
def tokens_set(
    user: Annotated[str, typer.Argument(metavar="USER")], no_verify: NoVerifyOpt = False
) -> None:
    """Store a member's tokens: the token endpoint's JSON answer on stdin.

    First the pair is checked: verifyCredentials must name USER, GetPermissions must grant
    account_webcam_bookings (an expired access token is refreshed first: the new pair is
    stored). A refusal names the member and what did not match; nothing is stored (exit 1)."""
    from worker.core.observability import register_token

    raw = sys.stdin.read()
    try:
        payload = json.loads(raw)
        tokens = TokenSet.from_token_response(payload, time.time())
    except ValueError as exc:
        msg = str(exc) if "JSON" in str(exc) or "expires" in str(exc) else "not valid JSON"
        fail(f"token JSON on stdin: {msg}", 2)
    register_token(tokens.access_token, tokens.refresh_token)
    svc = _services()
    refreshed = False
    if not no_verify:
        verdict = _checker(svc).check(user, tokens)
        if not verdict.ok:
            fail(f"refused tokens of {user}: {verdict.why}")
        tokens, refreshed = verdict.tokens, verdict.refreshed
    svc.token_store.save(user, tokens)
    resumed = _flow().resume_member(user)
    expires = datetime.fromtimestamp(tokens.expires_at, UTC).isoformat(timespec="seconds")
    how = "unverified" if no_verify else "verified" + (", refreshed" if refreshed else "")
    out.print(
        f"stored tokens of {user} ({how}; access token expires {expires})"
        + (f"; resumed {resumed} rebook(s)" if resumed else ""),
        highlight=False,
    )


def _import_lines(lines: list[str]) -> tuple[list[tuple[str, TokenSet]], list[str]]:
    """The pairs to store (one per member: the last line naming it) and the lines refused,
    each named by number and member (never by content: it holds tokens)."""
    from worker.core.observability import register_token

    parsed: dict[str, tuple[int, TokenSet]] = {}
    refused: list[str] = []
    now = time.time()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            payload = json.loads(line)
        except ValueError:
            refused.append(f"line {number}: not JSON")
            continue
        user = payload.get("user_id") if isinstance(payload, dict) else None
        if not isinstance(user, str | int) or isinstance(user, bool) or not str(user).strip():
            refused.append(f"line {number}: user_id missing")
            continue
        user = str(user)
        try:
            tokens = TokenSet.from_token_response(payload, now)
        except ValueError as exc:
            refused.append(f"line {number} ({user}): {exc}")
            continue
        register_token(tokens.access_token, tokens.refresh_token)
        if user in parsed:
            refused.append(f"line {parsed[user][0]} ({user}): line {number} has this member too")
        parsed[user] = (number, tokens)
    return [(user, tokens) for user, (_, tokens) in parsed.items()], refused


class _Progress:
    """Progress of a long command (`tokens import`, bulk `retry`/`cancel`, `deadletter replay`,
    `reindex`): a rich bar on a terminal, else a count line now and then (a log or a pipe gets a
    few lines, not a redraw per item). Counts per outcome (`stored`, `refused`, ...) in the order
    first seen. `console`: stderr where stdout carries JSON."""

    PLAIN_EVERY = 10.0

    def __init__(self, what: str, total: int | None = None, console: Console | None = None) -> None:
        self.what, self.total = what, 0
        self.counts: dict[str, int] = {}
        self.console = console or out
        self._bar: Any = None
        self._last = time.monotonic()
        if total is not None:
            self.start(total)

    def start(self, total: int) -> None:
        """When the total is known (after a search, for bulk actions)."""
        self.total = total
        if self.console.is_terminal and total and self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._task = self._bar.add_task(self.what, total=total)
            self._bar.start()

    def step(self, outcome: str = "done", n: int = 1) -> None:
        if n <= 0:
            return
        self.counts[outcome] = self.counts.get(outcome, 0) + n
        if self._bar is not None:
            self._bar.update(self._task, advance=n, description=self.tally())
        elif time.monotonic() - self._last >= self.PLAIN_EVERY:
            self._last = time.monotonic()
            self.console.print(f"{self.seen}/{self.total}: {self.tally()}", highlight=False)

    @property
    def seen(self) -> int:
        return sum(self.counts.values())

    def count(self, outcome: str) -> int:
        return self.counts.get(outcome, 0)

    def tally(self) -> str:
        return ", ".join(f"{name} {n}" for name, n in self.counts.items()) or self.what

    def stopped(self, exc: BaseException) -> None:
        """Ctrl-C, or Redis or the broker gone mid-way: how far it got, on stderr (the caller
        re-raises: `main` names what failed). What was done stays done; a second run refuses it
        or does it again harmlessly."""
        if not isinstance(exc, KeyboardInterrupt):
            self.step("failed")
        left = self.total - self.seen
        say_error(
            f"{self.what} stopped after {self.seen} of {self.total}: {self.tally()}"
            + (f"; {left} not attempted: run it again" if left > 0 else "")
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        """Closes the bar; a walk stopped part-way says how far it got (Ctrl-C: exit 1)."""
        self.close()
        if not self.total or isinstance(exc, typer.Exit):
            return
        if isinstance(exc, Exception | KeyboardInterrupt):
            self.stopped(exc)
        if isinstance(exc, KeyboardInterrupt):
            raise typer.Exit(1) from None


@tokens_cli.command("import")
def tokens_import(
    no_verify: NoVerifyOpt = False,
    threads: Annotated[
        int, typer.Option("--threads", min=1, max=64, help="Pairs checked at once.")
    ] = 8,
) -> None:
    """Store many members' tokens: JSON lines on stdin, each `{"user_id", "access_token",
    "refresh_token", "expires_in" | "expires_at"}` — how a site hands its members over.

    Each pair is checked as `tokens set` checks one (unless --no-verify), within half the shared
    upstream rate budget. Ends with the stored and refused counts, and on stderr why each line
    was refused (by number and member, never by content: it holds tokens). Exit 1 when any line
    was refused; the others are stored."""
    from worker.adapters.tokencheck import Verdict, check_many

    pairs, refused = _import_lines(sys.stdin.read().splitlines())
    svc = _services()
    flow = _flow() if pairs else None
    resumed = 0
    progress = _Progress("checking pairs", len(pairs))

    checked: set[str] = set()

    def store(verdict: Verdict) -> None:
        nonlocal resumed
        checked.add(verdict.user_id)
        if verdict.tokens is None:
            refused.append(f"{verdict.user_id}: {verdict.why}")
            progress.step("refused")
            return
        svc.token_store.save(verdict.user_id, verdict.tokens)
        if flow is not None:
            resumed += flow.resume_member(verdict.user_id)
        progress.step("stored")

    interrupted = False
    try:
        if no_verify:
            for user, tokens in pairs:
                store(Verdict(user, tokens))
        else:
            check_many(_checker(svc), pairs, threads=threads, on_done=store)
    except KeyboardInterrupt:  # what was stored stays stored; say what was not
        interrupted = True
    finally:
        progress.close()
    for why in refused:
        say_error(f"refused {why}")
    left, stored = len(pairs) - progress.seen, progress.count("stored")
    for user, _ in pairs if left else []:
        if user not in checked:
            say_error(f"not checked {user}")
    out.print(
        f"stored {stored} member(s) ({'unverified' if no_verify else 'verified'}); "
        f"refused {len(refused)}"
        + (f"; resumed {resumed} rebook(s)" if resumed else "")
        + (f"; interrupted: {left} member(s) not checked, import them again" if left else ""),
        highlight=False,
    )
    if refused or interrupted or left:
        raise typer.Exit(1)


@tokens_cli.command("show")
def tokens_show(user: Annotated[str, typer.Argument(metavar="USER")]) -> None:
    """When a member's access token expires (never the tokens themselves)."""
    tokens = _services().token_store.load(user)
    if tokens is None:
        fail(f"no tokens stored for {user!r}")
    left = tokens.expires_at - time.time()
    when = datetime.fromtimestamp(tokens.expires_at, UTC).isoformat(timespec="seconds")
    state = f"expires in {int(left)}s" if left > 0 else f"expired {int(-left)}s ago"
    out.print(f"{user}: access token {state} ({when}); refresh token stored")


@tokens_cli.command("delete")
def tokens_delete(user: Annotated[str, typer.Argument(metavar="USER")]) -> None:
    """Forget a member's tokens."""
    if not _services().token_store.delete(user):
        fail(f"no tokens stored for {user!r}")
    out.print(f"deleted tokens of {user}")


@tokens_cli.command("keygen")
def tokens_keygen() -> None:
    """Print a new Fernet key for REBOOK_TOKEN_KEY."""
    from cryptography.fernet import Fernet

    sys.stdout.write(Fernet.generate_key().decode() + "\n")


# -- schemas -------------------------------------------------------------------------------------


class SchemaKind(StrEnum):
    event = "event"
    outcome = "outcome"
    outcome_message = "outcome-message"
    openapi = "openapi"


@cli.command()
def schema(
    kind: Annotated[
        SchemaKind,
        typer.Argument(
            help="event (rebook.request kwargs), outcome (an outcome stream entry), "
            "outcome-message (what the fan-out delivers), openapi (the console's JSON API)."
        ),
    ],
) -> None:
    """Print a JSON Schema (or the console's OpenAPI document); docs/schemas/ holds the same."""
    from worker.core.schemas import json_schema, render

    if kind is SchemaKind.openapi:
        from worker.operations.console.openapi import document

        sys.stdout.write(render(document()))
    else:
        sys.stdout.write(render(json_schema(kind.value)))


# -- local tools ---------------------------------------------------------------------------------


@cli.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8765,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    oauth_port: Annotated[
        int | None, typer.Option(help="OAuth on its own port, as the upstream has it.")
    ] = None,
    documented: Annotated[
        bool, typer.Option(help="Strict StartDate, year-1 unset dates (the docs' forms).")
    ] = False,
    latency_ms: Annotated[
        float, typer.Option(min=0, help="Milliseconds before every answer (a remote upstream).")
    ] = 0.0,
) -> None:
    """Run the sandbox upstream (an in-memory fake of the API) until Ctrl-C; prints the
    variables that point rebook at it."""
    server = _dev_tool("sandbox")(
        host, port, oauth_port=oauth_port, documented=documented, quiet=False, latency_ms=latency_ms
    )
    out.print(f"sandbox upstream on {server.url} (Ctrl-C to stop); to use it:", highlight=False)
    for name, value in server.env().items():
        sys.stdout.write(f"export {name}={value}\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()


def _dev_tool(name: str) -> Any:
    """The dev tool `name` from the `rebook.dev` entry points, which only the dev tools'
    distribution (devtools/, installed by `make install`) declares: production never imports
    them (the import-linter contract), and a production install says in one line how to get it."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="rebook.dev", name=name):
        return entry.load()
    fail(
        f"{name} is a development tool, not in this install: clone the repo and run `make {name}`",
        2,
    )


@cli.command()
def demo(
    rebooks: Annotated[int, typer.Option(min=1, max=200)] = 24,
    performers: Annotated[int, typer.Option(min=2, max=50)] = 6,
    seed: Annotated[int | None, typer.Option()] = None,
    hostile: Annotated[
        bool,
        typer.Option(help="An upstream that commits late and answers HTML pages."),
    ] = False,
    shadow: Annotated[
        bool,
        typer.Option(help="Shadow mode (REBOOK_SHADOW): nothing is booked; 0 POSTs."),
    ] = False,
) -> None:
    """The whole pipeline on this machine: Redis, sandbox, worker and beat, live progress."""
    raise typer.Exit(
        _dev_tool("demo")(
            rebooks=rebooks, performers=performers, seed=seed, hostile=hostile, shadow=shadow
        )
    )


@cli.command()
def doctor() -> None:
    """Check settings, Redis, broker, upstream, token key, beat and workers; exit 1 on a FAIL.

    Settings that are missing or bad stop it first with one line (exit 2), like the worker."""
    from worker.core.settings import load_settings
    from worker.operations.doctor import run_checks

    load_settings()  # ConfigError: main() prints the one line and exits 2

    ok = True
    for check in run_checks():
        mark = (
            "[red]FAIL[/]"
            if not check.ok
            else "[yellow]WARN[/]"
            if check.warn
            else "[green]ok[/]  "
        )
        out.print(f"{mark} {check.name}: {check.detail}", highlight=False)
        if not check.ok or check.warn:
            ok = ok and check.ok
            if check.hint:
                out.print(f"      hint: {check.hint}", highlight=False)
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    """Console entry point: one line for the errors a person can fix, never a traceback."""
    from worker.core.store.client import RedisError

    try:
        cli()
    except ConfigError as exc:
        say_error(f"bad setting: {exc}")
        sys.exit(2)
    except StoreUnavailable as exc:
        say_error(str(exc))
        sys.exit(1)
    except RedisError as exc:
        from worker.core.settings import get_settings

        say_error(f"Redis at {mask_url(get_settings().redis_url)}: {type(exc).__name__}: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
