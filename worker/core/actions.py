"""Operator actions on many rebooks at once (`rebook retry/cancel` with filters, the console's
buttons and `POST /api/rebooks/actions`).

Why here and not in the CLI or the console: both must act the same way, and every single action
goes through `Flow.retry` / `Flow.cancel`, whose refusals (anything that could make a second
booking) are the only word on what may be done. `refusal()` only *predicts* those refusals, to
show a dry run and to draw a button or the reason there is none; a test holds it to the flow's
answer for every state, and an action never relies on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from worker.core.search import Filters, Progress, Search
from worker.core.states import State
from worker.core.store import Rebook, Store

Action = Literal["retry", "cancel"]
ACTIONS: tuple[Action, ...] = ("retry", "cancel")
MAX_BULK = 10_000
"""One bulk action touches at most this many rebooks (narrow the filter for more)."""


class Operator(Protocol):
    """What bulk actions need of `worker.core.flow.Flow`."""

    def retry(self, ident: str) -> Rebook: ...
    def cancel(self, ident: str) -> Rebook: ...


@dataclass
class Outcome:
    """`{"matched", "done", "refused"}` of the console's API (README "Console (in Flower)"), as
    the CLI prints it too."""

    action: Action
    dry_run: bool
    matched: list[str] = field(default_factory=list)
    done: list[dict[str, str]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    would_do: list[str] = field(default_factory=list)
    truncated: bool = False
    records: dict[str, Rebook] = field(default_factory=dict, repr=False)
    """The matched records as they were before acting (for the console's tables; not JSON)."""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": self.action,
            "dry_run": self.dry_run,
            "matched": self.matched,
            "done": self.done,
            "refused": self.refused,
        }
        if self.dry_run:
            out["would_do"] = self.would_do
        if self.truncated:
            out["truncated"] = True
        return out


SHADOWED_REFUSAL = (
    "{rid} ended SHADOWED in shadow mode (nothing was booked); it stays so: send a new event "
    "to rebook it"
)


def refusal(action: Action, rec: Rebook) -> str | None:
    """The text `Flow.retry`/`Flow.cancel` would refuse `rec` with, or None when they would
    act (they may still refuse at that moment: the record may change, another rebook may own
    the booking)."""
    rid = rec.rebook_id
    if action == "cancel":
        return (
            f"{rid} is already {rec.state.value}; nothing to cancel" if rec.state.terminal else None
        )
    if rec.state == State.NEEDS_ATTENTION:
        return None
    if rec.state in (State.GAVE_UP, State.FAILED, State.ABORTED):
        if rec.new_booking_id is not None:
            return (
                f"{rid} is {rec.state.value} after booking {rec.new_booking_id} was made; "
                "send a new event to rebook again"
            )
        return None
    if rec.state == State.DUPLICATE:
        return f"{rid} is a duplicate of {rec.duplicate_of}; retry that one"
    if rec.state == State.SHADOWED:
        return SHADOWED_REFUSAL.format(rid=rid)
    if rec.state.terminal:
        return (
            f"{rid} is {rec.state.value}: booking {rec.new_booking_id} was made and decided; "
            "send a new event to rebook again"
        )
    return f"{rid} is {rec.state.value} and in progress; nothing to retry"


def select(
    store: Store, *, ids: Sequence[str] = (), filters: Filters | None = None
) -> tuple[list[Rebook], bool]:
    """The rebooks an action is about: given ids (by rebook or event id), else a filter's
    matches, newest first; True when more matched than `MAX_BULK`."""
    if filters is not None and not ids:
        page = Search(store).query(filters, limit=MAX_BULK, budget=10**9)
        return page.items, page.next is not None
    found: list[Rebook] = []
    for ident in dict.fromkeys(ids):
        rec = store.records.find(ident)
        if rec is not None:
            found.append(rec)
    return found, False


def run(
    operator: Operator,
    store: Store,
    action: Action,
    *,
    ids: Sequence[str] = (),
    filters: Filters | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Outcome:
    """Each matched rebook through the flow's own action; what it refuses is reported, never
    forced. Ids that match nothing are refused as not found. Ids *and* a filter (the console's
    confirm of a preview): exactly those ids, each refused if it no longer matches the filter,
    so a confirm never acts on what the preview did not show, nor on what changed since.
    `progress` hears of each rebook (`done`, `refused`, `would do`): up to `MAX_BULK` take a
    while."""
    records, truncated = select(store, ids=ids, filters=filters)
    result = Outcome(action, dry_run, matched=[r.rebook_id for r in records], truncated=truncated)
    result.records = {r.rebook_id: r for r in records}
    known = {r.rebook_id for r in records} | {r.event_id for r in records}
    for ident in dict.fromkeys(ids):
        if ident not in known:
            result.refused.append({"rebook_id": ident, "why": f"no rebook {ident!r}"})
    if progress is not None:
        progress.start(len(records) + len(result.refused))
        if result.refused:
            progress.step("refused", len(result.refused))
    for rec in records:
        outcome = _act(operator, action, rec, result, filters if ids else None)
        if progress is not None:
            progress.step(outcome)
    return result


def _act(
    operator: Operator,
    action: Action,
    rec: Rebook,
    result: Outcome,
    confirm: Filters | None,
) -> str:
    """One rebook of `run`, added to `result`; says which list it went to."""
    from worker.core.flow import Refused

    if confirm is not None and not confirm.matches(rec):
        result.refused.append(
            {
                "rebook_id": rec.rebook_id,
                "why": f"no longer matches the filter: now {rec.state.value}"
                + (f" ({rec.reason})" if rec.reason else ""),
            }
        )
        return "refused"
    if result.dry_run:
        why = refusal(action, rec)
        if why is None:
            result.would_do.append(rec.rebook_id)
            return "would do"
        result.refused.append({"rebook_id": rec.rebook_id, "why": why})
        return "refused"
    try:
        after = getattr(operator, action)(rec.rebook_id)
    except Refused as exc:
        result.refused.append({"rebook_id": rec.rebook_id, "why": str(exc)})
    except LookupError as exc:
        result.refused.append({"rebook_id": rec.rebook_id, "why": str(exc).strip("'\"")})
    else:
        result.done.append(
            {"rebook_id": after.rebook_id, "state": after.state.value, "reason": after.reason}
        )
        return "done"
    return "refused"
