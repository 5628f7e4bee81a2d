"""Beat tasks: `rebook.sweep` re-dispatches what is overdue, `rebook.housekeeping` expires."""

from __future__ import annotations

from tasks._glue import flow
from worker.app import app


@app.task(name="rebook.sweep")
def sweep() -> dict[str, int]:
    return flow().sweep()


@app.task(name="rebook.housekeeping")
def housekeeping() -> int:
    return flow().housekeeping()
