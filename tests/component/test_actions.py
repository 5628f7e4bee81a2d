"""`worker.core.actions.refusal` predicts exactly what `Flow.retry`/`Flow.cancel` do, for every
state (it draws the console's buttons and the dry runs; the flow stays the only one that acts)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.component.test_flow import Env, env, make_env  # noqa: F401  (fixtures)
from worker.core.actions import run
from worker.core.flow import Refused
from worker.core.search import Filters
from worker.core.states import State
from worker.core.store import REMOVE, rebook_id_for

CASES = [(s, booked) for s in State for booked in (False, True)]


def _put(env: Env, n: int, state: State, booked: bool) -> str:  # noqa: F811
    event = f"act-{n}"
    env.store.records.create(
        rebook_id=rebook_id_for(event),
        event_id=event,
        booking_id=5000 + n,
        user_id="alice",
        performer_id=7,
        deadline=env.clock() + 3600,
        now=env.clock(),
    )
    rid = rebook_id_for(event)
    fields: dict[str, Any] = {"new_booking_id": 9000 + n} if booked else {}
    if state == State.DUPLICATE:
        fields["duplicate_of"] = "rb-other"
    if state != State.WAITING:
        assert env.store.transitions.transition(
            rid,
            state,
            reason="set up",
            fields=fields,
            due=REMOVE if state.terminal else KEEP_DUE,
            outcome=state.value if state.terminal or state == State.NEEDS_ATTENTION else "",
        )
    return rid


KEEP_DUE = ""


@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_prediction_matches_the_flow(env: Env, action: str) -> None:  # noqa: F811
    from worker.core.actions import refusal

    for n, (state, booked) in enumerate(CASES):
        rid = _put(env, n, state, booked)
        rec = env.get(rid)
        predicted = refusal(action, rec)  # type: ignore[arg-type]
        try:
            getattr(env.flow, action)(rid)
        except Refused as exc:
            assert predicted == str(exc), (state, booked)
        else:
            assert predicted is None, (state, booked, predicted)


def test_bulk_goes_through_the_flow_and_reports_refusals(env: Env) -> None:  # noqa: F811
    parked = _put(env, 1, State.NEEDS_ATTENTION, False)
    accepted = _put(env, 2, State.ACCEPTED, True)
    filters = Filters(user_id="alice")
    dry = run(env.flow, env.store, "retry", filters=filters, dry_run=True)
    assert sorted(dry.matched) == sorted([accepted, parked])
    assert dry.would_do == [parked] and dry.done == []
    assert [r["rebook_id"] for r in dry.refused] == [accepted]
    assert env.get(parked).state == State.NEEDS_ATTENTION  # nothing done
    done = run(env.flow, env.store, "retry", filters=filters)
    assert [d["rebook_id"] for d in done.done] == [parked]
    assert done.refused == dry.refused
    by_id = run(env.flow, env.store, "cancel", ids=[parked, "rb-missing"])
    assert [d["state"] for d in by_id.done] == ["ABORTED"]
    assert by_id.refused == [{"rebook_id": "rb-missing", "why": "no rebook 'rb-missing'"}]


def test_a_confirm_acts_only_on_previewed_ids_that_still_match(env: Env) -> None:  # noqa: F811
    """The console's confirm sends the previewed ids and the filter: one that changed since
    the preview is refused with its state now, never acted on."""
    first = _put(env, 1, State.NEEDS_ATTENTION, False)
    second = _put(env, 2, State.NEEDS_ATTENTION, False)
    filters = Filters(state=State.NEEDS_ATTENTION, user_id="alice")
    preview = run(env.flow, env.store, "retry", filters=filters, dry_run=True)
    assert sorted(preview.would_do) == sorted([first, second])
    assert set(preview.records) == {first, second}
    env.flow.retry(second)  # someone else retried it in between
    done = run(env.flow, env.store, "retry", ids=preview.would_do, filters=filters)
    assert [d["rebook_id"] for d in done.done] == [first]
    assert len(done.refused) == 1 and done.refused[0]["rebook_id"] == second
    assert done.refused[0]["why"].startswith("no longer matches the filter: now ")
    assert "NEEDS_ATTENTION" not in done.refused[0]["why"]


class _Tally:
    """A `worker.core.search.Progress` that remembers what it heard."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.steps: list[tuple[str, int]] = []

    def start(self, total: int) -> None:
        self.total = total

    def step(self, outcome: str = "done", n: int = 1) -> None:
        self.steps.append((outcome, n))


def test_bulk_reports_each_rebook_to_its_progress(env: Env) -> None:  # noqa: F811
    """Up to 10,000 rebooks: the CLI's bar hears of each as it is done, not at the end."""
    parked = _put(env, 1, State.NEEDS_ATTENTION, False)
    _put(env, 2, State.ACCEPTED, True)
    dry = _Tally()
    run(env.flow, env.store, "retry", filters=Filters(user_id="alice"), dry_run=True, progress=dry)
    assert dry.total == 2 and sorted(dry.steps) == [("refused", 1), ("would do", 1)]
    real = _Tally()
    run(env.flow, env.store, "cancel", ids=[parked, "rb-missing"], progress=real)
    assert real.total == 2 and real.steps == [("refused", 1), ("done", 1)]
