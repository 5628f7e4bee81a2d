"""What only tests need of the store: stores built with the settings' defaults, and questions
answered from its keys (production never needs them)."""

from __future__ import annotations

from typing import Any

from worker.core.settings import Settings
from worker.core.states import State
from worker.core.store import Store


def store_options(**overrides: Any) -> dict[str, Any]:
    """`Store`'s settings as `Store.from_settings` passes them, at their defaults (read from
    `Settings`, never copied), with `overrides` on top."""
    s = Settings.model_construct()
    options: dict[str, Any] = {
        "prefix": s.key_prefix,
        "retention_seconds": s.retention_seconds,
        "lease_seconds": s.step_lease_seconds,
        "presence_interval": s.presence_interval_seconds,
        "upstream_rate": s.upstream_rate_per_second,
        "shadow": s.shadow,
        "deadletter_max_entries": s.deadletter_max_entries,
        "pause_probe_seconds": s.pause_probe_seconds,
        "shards": s.shards,
    }
    return {**options, **overrides}


def new_store(client: Any, **overrides: Any) -> Store:
    """A store on `client` with the settings' defaults, but for `overrides`."""
    return Store(client, **store_options(**overrides))


def ids_in_state(store: Store, state: State) -> list[str]:
    """Every rebook id in `state`, from the per-state sets of every shard."""
    pipe = store.r.pipeline(transaction=False)
    for shard in store.shards:
        pipe.smembers(store.keys.in_state(shard, state.value))
    return sorted(set().union(*pipe.execute()))
