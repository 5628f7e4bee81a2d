"""`rebook.reschedule`: the one non-idempotent upstream call, guarded by the record."""

from __future__ import annotations

from celery import shared_task

from worker.celeryapp.dispatch import flow


@shared_task(name="rebook.reschedule")
def reschedule(rebook_id: str) -> str:
    return flow().reschedule(rebook_id)
