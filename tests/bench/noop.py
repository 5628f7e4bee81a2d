"""`bench.noop`: an empty task on rebook's own Celery app, for the intake baseline.

The bench starts rebook's worker with `-I tests.bench.noop`, so the no-op runs in the same
worker, under the same task policy (acks late, prefetch 1), from the same queue (`rebook.events`)
on the same broker as `rebook.request`: the ratio of the two rates is the cost of recording an
event durably. `intake=True` lets it run from `rebook.events`, where the worker runs nothing but
`rebook.request` otherwise.
"""

from __future__ import annotations

from celery import shared_task


@shared_task(name="bench.noop", intake=True)
def noop(i: int = 0) -> None:
    return None
