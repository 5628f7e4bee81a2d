"""Beat tasks: `rebook.sweep` re-dispatches what is overdue, `rebook.housekeeping` expires."""

from __future__ import annotations

from worker.app import app, flow
from worker.observability import HEARTBEAT_SECONDS, sweep_heartbeat
from worker.runtime import services


@app.task(name="rebook.sweep")
def sweep() -> dict[str, int]:
    counts = flow().sweep()
    store = services().store
    sweep_heartbeat(lambda: store.claim_window("sweep:heartbeat", HEARTBEAT_SECONDS) == 0)
    return counts


@app.task(name="rebook.housekeeping")
def housekeeping() -> int:
    return flow().housekeeping()
