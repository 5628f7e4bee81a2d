"""Beat tasks: `rebook.sweep` re-dispatches what is overdue, `rebook.housekeeping` expires."""

from __future__ import annotations

from worker.app import app, flow


@app.task(name="rebook.sweep")
def sweep() -> dict[str, int]:
    return flow().sweep()


@app.task(name="rebook.housekeeping")
def housekeeping() -> int:
    return flow().housekeeping()
