"""`rebook.keep_tokens` (beat): refresh the stored pairs whose refresh token would lapse soon."""

from __future__ import annotations

from worker.app import app, flow, time_limits
from worker.keepalive import keep_tokens as run_keep_tokens
from worker.runtime import services


@app.task(name="rebook.keep_tokens")
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
