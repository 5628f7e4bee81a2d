"""Questions only tests ask of the store, answered from its keys (production never needs them)."""

from __future__ import annotations

from worker.core.states import State
from worker.core.store import Store


def ids_in_state(store: Store, state: State) -> list[str]:
    """Every rebook id in `state`, from the per-state sets of every shard."""
    pipe = store.r.pipeline(transaction=False)
    for shard in store.shards:
        pipe.smembers(store.keys.in_state(shard, state.value))
    return sorted(set().union(*pipe.execute()))
