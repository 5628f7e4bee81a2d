"""`rebook.fanout` (beat, when enabled): outcomes to REBOOK_OUTCOME_TASK and the webhook."""

from __future__ import annotations

from celery import shared_task

from worker.celeryapp.dispatch import fanout


@shared_task(name="rebook.fanout")
def run_fanout() -> dict[str, int]:
    return fanout().run()
