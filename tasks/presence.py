"""`rebook.check_presence`: one upstream presence call per performer, for all who wait on them."""

from __future__ import annotations

from celery import shared_task

from worker.celeryapp.dispatch import flow


@shared_task(name="rebook.check_presence")
def check_presence(performer_id: int | None = None, rebook_id: str | None = None) -> str:
    return flow().check_presence(performer_id, rebook_id)
