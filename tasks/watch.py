"""`rebook.watch`: follows the new booking until it is decided or its AcceptBy passes."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from worker.celeryapp.dispatch import flow


@shared_task(name="rebook.watch")
def watch(rebook_id: str, booking: dict[str, Any] | None = None) -> str:
    """`booking` (the new booking with its AcceptBy) is in the message for whoever watches the
    queue or Flower, and stays in the signature so every sender's message runs; the step reads
    the record's copy, which is the one the reschedule stored."""
    return flow().watch(rebook_id)
