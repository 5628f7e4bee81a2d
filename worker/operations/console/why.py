"""Why a rebook is where it is, in sentences an operator can act on (the top of `/rebooks/{id}`).

Why a module of its own: "why is rebook X still waiting" is the question operators open a
rebook for, and the answer is spread over the record, its history, the due index, the
performer's last presence answer, the rate budget and a sibling's gate. `Situation` gathers
those facts (the handler reads them); `explain()` turns them into text, as a pure function so
every case is tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from worker.core.states import State
from worker.core.store import PresenceSeen, Rebook

REASON_HELP: dict[str, str] = {
    "reauth": "the upstream refused the member's refresh token: the member must sign in again",
    "ambiguous_reschedule": "a reschedule request may have worked and no proof either way came",
    "blocked": "a sibling (same member and performer) held its unsettled request too long",
    "unclaimed_booking": "a booking nobody owns was found that this rebook or a sibling may "
    "have made",
    "too_many_attempts": "every reschedule attempt failed before the upstream acted",
    "list_unreadable": "the member's bookings could not be read before a reschedule request "
    "(nothing was sent)",
    "watch_failed": "the new booking cannot be read",
    "watch_unreadable": "the new booking cannot be read",
    "performer_unknown": "the original booking has no id under the confirmed performer field",
    "unverified_shape": "a booking that may be this rebook's cannot be told apart from one that "
    "is not: no field of a booking's Performer is confirmed as the performer's user id yet",
    "booking_claimed_elsewhere": "the upstream returned a booking another rebook owns",
    "no_credits": "the upstream refused the reschedule for lack of credits: the member tops up, "
    "then retry",
    "member_cap": "the member reached REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY today (UTC); parked "
    "before any request",
}
"""The README's NEEDS_ATTENTION table, one line each."""


@dataclass(frozen=True)
class Situation:
    """What the detail page knows besides the record (all read at one moment, `now`)."""

    now: float
    presence_interval: float
    """REBOOK_PRESENCE_INTERVAL_SECONDS."""
    gate_max_wait: float
    """REBOOK_GATE_MAX_WAIT_SECONDS."""
    reconcile_proof_reads: int
    """REBOOK_RECONCILE_PROOF_READS."""
    entered_at: float | None = None
    """When the rebook entered its current state (its last history entry)."""
    due_at: float | None = None
    """Its next step, from the due index (WAITING: the max-wait deadline)."""
    presence: PresenceSeen | None = None
    presence_next: float | None = None
    """When the performer's next presence check is due (None: none scheduled)."""
    waiting_on_performer: int = 0
    budget_short: str | None = None
    """`worker.core.capacity.shortfall()`: presence needs more calls than its budget gives."""
    holder: Rebook | None = None
    """The sibling whose unsettled request holds this one's gate."""
    token_stored_at: float | None = None
    """When the member's token pair was last handed over or refreshed (never the tokens)."""


@dataclass(frozen=True)
class Explanation:
    """A headline, the facts behind it (id, text) and what the operator can do."""

    headline: str
    facts: list[tuple[str, str]]
    todo: str


def stamp(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def span(seconds: float) -> str:
    """`0.3s`, `4s`, `8m 10s`, `11h 52m`, `2d 3h`: precise enough to act on, short enough to
    read (tenths only below 10 s, where sub-second intervals live)."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}".removesuffix(".0") + "s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def ago(ts: float, now: float) -> str:
    return f"{stamp(ts)} ({span(now - ts)} ago)"


def until(ts: float, now: float) -> str:
    if ts >= now:
        return f"{stamp(ts)} (in {span(ts - now)})"
    return f"{stamp(ts)} (overdue by {span(now - ts)}: the next sweep takes it)"


def explain(rec: Rebook, s: Situation) -> Explanation:
    """The answer to "why is it in this state, and what happens next"."""
    if rec.state == State.WAITING:
        return _waiting(rec, s)
    if rec.state == State.RESCHEDULING:
        return _rescheduling(rec, s)
    if rec.state == State.WATCHING:
        return _watching(rec, s)
    if rec.state == State.NEEDS_ATTENTION:
        return _parked(rec, s)
    return _finished(rec, s)


def _waiting(rec: Rebook, s: Situation) -> Explanation:
    now = s.now
    pid = rec.performer_id
    facts: list[tuple[str, str]] = []
    if pid is None:
        facts.append(("why-presence", "The performer is being read from the original booking."))
        return Explanation("Finding out who the performer is", facts, "Nothing: it goes on.")
    since = s.entered_at or rec.created_ts
    seen = s.presence
    if seen is None or seen.at < since:
        facts.append(
            (
                "why-presence",
                f"Performer {pid} has not been checked since this rebook started waiting "
                f"({ago(since, now)}); the first check is on its way.",
            )
        )
        headline = f"Waiting for performer {pid}: first presence check pending"
    elif seen.answer == "unknown":
        facts.append(
            (
                "why-presence",
                f"The last presence check of performer {pid}, {ago(seen.at, now)}, failed: "
                f"{seen.error or 'no answer'}. Until a check says online, the rebook waits.",
            )
        )
        headline = f"Waiting for performer {pid}: presence unknown (the check failed)"
    elif seen.answer == "offline":
        offline = max(seen.offline_since or since, since)
        facts.append(
            (
                "why-presence",
                f"Performer {pid} is offline: the last presence check, {ago(seen.at, now)}, "
                f"said offline, as has every check since {ago(offline, now)}.",
            )
        )
        headline = f"Waiting for performer {pid} to come online"
    else:
        facts.append(
            (
                "why-presence",
                f"The last presence check, {ago(seen.at, now)}, said performer {pid} is online: "
                "the rebook moves on at once.",
            )
        )
        headline = f"Performer {pid} just came online"
    others = max(0, s.waiting_on_performer - 1)
    share = f" (one call serves all {others + 1} rebooks waiting on them)" if others else ""
    if s.presence_next is not None:
        facts.append(
            (
                "why-next",
                f"Next presence check: {until(s.presence_next, now)}; each performer is checked "
                f"once every {span(s.presence_interval)}{share}.",
            )
        )
    else:
        facts.append(("why-next", "No presence check is scheduled yet: the next sweep adds one."))
    if s.budget_short:
        facts.append(("why-budget", f"The upstream rate budget is short: {s.budget_short}."))
    facts.append(
        (
            "why-deadline",
            f"Max wait: if performer {pid} is not online by {until(rec.deadline_ts, now)}, it "
            "gives up (GAVE_UP); retry then starts it waiting again.",
        )
    )
    return Explanation(
        headline,
        facts,
        "Nothing is needed: it goes on by itself when the performer comes online. Cancel stops it.",
    )


def _rescheduling(rec: Rebook, s: Situation) -> Explanation:
    now = s.now
    facts: list[tuple[str, str]] = []
    entered = s.entered_at or rec.updated_ts or rec.created_ts
    nxt = f" Next try: {until(s.due_at, now)}." if s.due_at else ""
    if rec.blocked_by:
        held = rec.gated_since or entered
        holder = s.holder
        what = f" (it is {holder.state.value})" if holder else ""
        facts.append(
            (
                "why-gate",
                f"Held by a sibling: rebook {rec.blocked_by}{what}, of the same member and "
                "performer, sent a reschedule request whose result is not settled yet; two "
                "open requests could not be told apart, so this one waits. Held since "
                f"{ago(held, now)}.",
            )
        )
        facts.append(
            (
                "why-deadline",
                f"If still held at {until(held + s.gate_max_wait, now)}, it parks as "
                f"NEEDS_ATTENTION (blocked).{nxt}",
            )
        )
        return Explanation(
            f"Waiting for sibling {rec.blocked_by} to settle",
            facts,
            "Nothing, usually: it goes on by itself once the sibling settles; open the sibling "
            "to see why it has not.",
        )
    if rec.unsettled and rec.post_sent_ts:
        facts.append(
            (
                "why-unsettled",
                f"A reschedule request went out {ago(rec.post_sent_ts, now)} and its answer "
                "did not say what it made (a timeout or an error). It is being reconciled "
                f"against the member's bookings: {rec.empty_reads} of "
                f"{s.reconcile_proof_reads} reads that prove nothing was made so far. Never a "
                f"second request without that proof.{nxt}",
            )
        )
        return Explanation(
            "Finding out what its reschedule request made",
            facts,
            "Nothing: it settles by itself, or parks (ambiguous_reschedule) if no proof comes.",
        )
    facts.append(("why-online", f"The performer was seen online {ago(entered, now)}."))
    if rec.errors:
        facts.append(
            (
                "why-errors",
                f"The request has not gone out yet: {rec.errors} attempt(s) failed before it "
                "could (the worker log has each error: search it for "
                f"rebook_id={rec.rebook_id}).{nxt}",
            )
        )
        headline = "Trying to send the reschedule request (earlier attempts failed)"
    else:
        facts.append(("why-sending", f"The reschedule request is being sent.{nxt}"))
        headline = "Sending the reschedule request"
    if s.budget_short:
        facts.append(("why-budget", f"The upstream rate budget is short: {s.budget_short}."))
    return Explanation(headline, facts, "Nothing: it goes on by itself. Cancel stops it.")


def _watching(rec: Rebook, s: Situation) -> Explanation:
    now = s.now
    facts = [
        (
            "why-watch",
            f"New booking {rec.new_booking_id} was made"
            + (f" {ago(s.entered_at, now)}" if s.entered_at else "")
            + f"; its last status read: {rec.status or 'not read yet'}.",
        )
    ]
    if rec.accept_by_ts:
        facts.append(
            (
                "why-deadline",
                f"The performer must accept by {until(rec.accept_by_ts, now)}; after that it "
                "is EXPIRED (read once more first).",
            )
        )
    if s.due_at:
        facts.append(("why-next", f"Next read of the booking: {until(s.due_at, now)}."))
    return Explanation(
        f"Waiting for the performer to decide on booking {rec.new_booking_id}",
        facts,
        "Nothing: the booking is made; the performer decides.",
    )


def _parked(rec: Rebook, s: Situation) -> Explanation:
    now = s.now
    reason = rec.reason or "?"
    meaning = REASON_HELP.get(reason, "")
    facts = [
        (
            "why-parked",
            f"Parked {ago(s.entered_at, now) if s.entered_at else ''} with reason {reason}"
            + (f": {meaning}." if meaning else "."),
        )
    ]
    if rec.action:
        facts.append(("why-action", f"Noted when it parked: {rec.action}."))
    todo = "Retry resumes it in the step it was parked in, once the cause is fixed."
    if reason == "reauth":
        parked = s.entered_at or rec.updated_ts
        if s.token_stored_at is None:
            facts.append(("why-token", f"No token pair is stored for member {rec.user_id}."))
        elif parked and s.token_stored_at > parked:
            facts.append(
                (
                    "why-token",
                    f"A new token pair for {rec.user_id} was stored {ago(s.token_stored_at, now)},"
                    " after this rebook parked: retry should now go through.",
                )
            )
        else:
            facts.append(
                (
                    "why-token",
                    f"The token pair of {rec.user_id} was last stored "
                    f"{ago(s.token_stored_at, now)}, before this rebook parked: a retry parks "
                    "again until the member has signed in again.",
                )
            )
        todo = (
            f"Once {rec.user_id} has signed in again, `rebook tokens set {rec.user_id}` resumes "
            "all of their reauth rebooks by itself; or retry them here (this one, or all of "
            "them from the link below)."
        )
    return Explanation(f"Parked: {reason}", facts, todo)


def _finished(rec: Rebook, s: Situation) -> Explanation:
    facts = [
        (
            "why-finished",
            f"Finished as {rec.state.value}"
            + (f" {ago(s.entered_at, s.now)}" if s.entered_at else "")
            + (f": {rec.reason}." if rec.reason else "."),
        )
    ]
    if rec.state == State.DUPLICATE and rec.duplicate_of:
        facts.append(("why-duplicate", f"The rebook of this booking is {rec.duplicate_of}."))
    if rec.state == State.SHADOWED:
        facts.append(
            (
                "why-shadowed",
                "Shadow mode (REBOOK_SHADOW): the reschedule request would have gone out "
                f"at {stamp(rec.would_post_ts)}; nothing was sent and nothing was booked.",
            )
        )
    return Explanation(f"Finished: {rec.state.value}", facts, "")
