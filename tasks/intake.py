"""`rebook.request`: the public intake task (queue `rebook.events`)."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from worker.celeryapp.app import requeue_when_store_is_down
from worker.celeryapp.dispatch import flow


@shared_task(name="rebook.request", bind=True)
def request(self: Task, *args: Any, **kwargs: Any) -> str:
    """Accepts any arguments on purpose: a malformed event is dead-lettered, never raised."""
    task_id = self.request.id or ""
    return requeue_when_store_is_down(lambda: flow().intake(args, kwargs, task_id=task_id))
