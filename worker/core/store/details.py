"""Reads for one rebook's page in the console (worker/operations/console/handlers.py) that the
store's own methods do not answer: its outcome entries, its place in the due index, the presence
schedule's size."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.core.store import Store


def outcome_entries(
    store: Store, shard: int, since_ms: int, count: int
) -> list[tuple[str, dict[str, str]]]:
    """Up to `count` entries of the shard's outcome stream from `since_ms` on, oldest first."""
    return list(store.r.xrange(store.keys.outcomes(shard), min=f"{since_ms}-0", count=count))


def due_at(store: Store, shard: int, rebook_id: str) -> float | None:
    """When the sweep takes the rebook up next (None: not in the due index)."""
    score = store.r.zscore(store.keys.due(shard), rebook_id)
    return None if score is None else float(score)


def tracked_performers(store: Store) -> int:
    """Performers in the presence schedule, over all shards."""
    pipe = store.r.pipeline(transaction=False)
    for shard in store.shards:
        pipe.zcard(store.keys.performers(shard))
    return sum(int(n) for n in pipe.execute())
