"""Questions only tests ask of the store, answered from its keys (production never needs them)."""

from __future__ import annotations

from worker.core.states import State
from worker.core.store import Store


def ids_in_state(store: Store, state: State) -> list[str]:
    """Every rebook id in `state`, from the per-state sets of every shard."""
    pipe = store.r.pipeline(transaction=False)
    for shard in store.shards:
        pipe.smembers(store.skey(shard, "st", state.value))
    return sorted(set().union(*pipe.execute()))


def performer_due(store: Store, performer_id: int) -> float | None:
    """When the performer's next presence check is due (its score in `performers`), if any."""
    pipe = store.r.pipeline(transaction=False)
    for shard in store.shards:
        pipe.zscore(store.skey(shard, "performers"), performer_id)
    scores = [float(s) for s in pipe.execute() if s is not None]
    return min(scores) if scores else None
