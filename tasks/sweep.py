"""Beat tasks: `rebook.sweep` re-dispatches what is overdue, `rebook.housekeeping` expires."""

from __future__ import annotations

from celery import shared_task

from worker.celeryapp.dispatch import flow


@shared_task(name="rebook.sweep")
def sweep() -> dict[str, int]:
    step = flow()
    counts = step.sweep()
    step.heartbeat()
    return counts


@shared_task(name="rebook.housekeeping")
def housekeeping() -> int:
    return flow().housekeeping()
