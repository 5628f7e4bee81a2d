"""`rebook.keep_tokens` (beat): refresh the stored pairs whose refresh token would lapse soon."""

from __future__ import annotations

from celery import shared_task

from worker.adapters.keepalive import keep_tokens as run_keep_tokens
from worker.celeryapp.app import time_limits
from worker.celeryapp.dispatch import flow
from worker.celeryapp.runtime import services


@shared_task(name="rebook.keep_tokens")
def keep_tokens() -> dict[str, int]:
    svc = services()
    s = svc.settings
    return run_keep_tokens(
        svc.tokens,
        flow().park_member,
        before_seconds=s.token_keepalive_before_seconds,
        batch=s.token_keepalive_batch,
        # within the soft time limit, with room for the call in flight
        budget_seconds=time_limits(s).soft / 2,
    )
