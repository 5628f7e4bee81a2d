"""`rebook.reschedule`: the one non-idempotent upstream call, guarded by the record."""

from __future__ import annotations

from worker.app import app, flow


@app.task(name="rebook.reschedule")
def reschedule(rebook_id: str) -> str:
    return flow().reschedule(rebook_id)
