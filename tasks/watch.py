"""`rebook.watch`: follows the new booking until it is decided or its AcceptBy passes."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from worker.celeryapp.dispatch import flow


@shared_task(name="rebook.watch")
def watch(rebook_id: str, booking: dict[str, Any] | None = None) -> str:
    return flow().watch(rebook_id, booking)
