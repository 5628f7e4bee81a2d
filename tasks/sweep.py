"""Beat tasks: `rebook.sweep` re-dispatches what is overdue, `rebook.housekeeping` expires."""

from __future__ import annotations

from celery import shared_task

from worker.celeryapp.dispatch import flow
from worker.celeryapp.runtime import services
from worker.core.observability import HEARTBEAT_SECONDS, sweep_heartbeat


@shared_task(name="rebook.sweep")
def sweep() -> dict[str, int]:
    counts = flow().sweep()
    store = services().store
    sweep_heartbeat(lambda: store.claim_window("sweep:heartbeat", HEARTBEAT_SECONDS) == 0)
    return counts


@shared_task(name="rebook.housekeeping")
def housekeeping() -> int:
    return flow().housekeeping()
