"""The reads of the console's search (worker/core/search.py plans the query and pages) and the
backfill of its indexes (`ix:user:M`, `ix:perf:P`, `ix:book:B`), and the chart counters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from worker.core.states import State

if TYPE_CHECKING:
    from worker.core.search import Progress
    from worker.core.store import Store

Pair = tuple[float, str]
"""(creation score, rebook id)."""


class SearchIndex:
    def __init__(self, store: Store) -> None:
        self._r, self.keys, self.store = store.r, store.keys, store

    def newest(self, key: str, top: Any, low: Any, offset: int, count: int) -> list[Pair]:
        """A page of a zset, highest score first, scores from `top` down to `low`."""
        rows = self._r.zrevrangebyscore(key, top, low, start=offset, num=count, withscores=True)
        return [(float(score), str(rid)) for rid, score in rows]

    def whole(self, key: str) -> list[Pair]:
        """Every entry of a (small) zset."""
        return [(float(s), str(rid)) for rid, s in self._r.zrange(key, 0, -1, withscores=True)]

    def created_scores(self, shard: int, ids: Sequence[str]) -> list[Any]:
        """Each id's creation score (None: not in `created`)."""
        return list(self._r.zmscore(self.keys.created(shard), list(ids)))

    def sizes(self, keys: Sequence[tuple[str, str]]) -> list[int]:
        """The size of each `("zset" | "set", key)`, in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for kind, key in keys:
            if kind == "zset":
                pipe.zcard(key)
            else:
                pipe.scard(key)
        return [int(n) for n in pipe.execute()]

    def size(self, key: str) -> int:
        return int(self._r.scard(key))

    def has_record(self, shard: int, rebook_id: str) -> bool:
        return bool(self._r.exists(self.keys.record(shard, rebook_id)))

    def active_of_booking(self, shard: int, booking_id: object) -> str | None:
        found: str | None = self._r.get(self.keys.active(shard, booking_id))
        return found or None

    def members(self, *keys: str) -> list[str]:
        """The union of sets."""
        if len(keys) == 1:
            return list(self._r.smembers(keys[0]))
        return list(self._r.sunion(*keys))

    def member_flags(self, key: str, ids: Sequence[str]) -> list[bool]:
        """One `SMISMEMBER`: which of `ids` are in the set."""
        return [bool(x) for x in self._r.smismember(key, list(ids))]

    def chart_rows(self, kind: str, hours: Iterable[int]) -> list[dict[str, str]]:
        """The `chart:{kind}:{hour}` hashes of every shard, hour by hour (shards inner)."""
        pipe = self._r.pipeline(transaction=False)
        for hour in hours:
            for shard in self.store.shards:
                pipe.hgetall(self.keys.chart(shard, kind, hour))
        return list(pipe.execute())

    def reindex(self, chunk: int = 1000, progress: Progress | None = None) -> int:
        """Adds records written before the console's indexes existed to them (idempotent: NX),
        as `transition.lua` would have. Walks `created` once; `progress` hears of each chunk."""
        keys = self.keys
        done = 0
        if progress is not None:
            progress.start(sum(self._r.zcard(keys.created(shard)) for shard in self.store.shards))
        for shard in self.store.shards:
            start = 0
            while True:
                rows = self._r.zrange(
                    keys.created(shard), start, start + chunk - 1, withscores=True
                )
                if not rows:
                    break
                read = self._r.pipeline(transaction=False)
                for rid, _ in rows:
                    read.hmget(
                        keys.record(shard, rid), ["user_id", "performer_id", "booking_id", "state"]
                    )
                write = self._r.pipeline(transaction=False)
                before = done
                for (rid, score), (uid, pid, bid, state) in zip(rows, read.execute(), strict=True):
                    if not uid:
                        continue
                    write.zadd(keys.search_index(shard, "user", uid), {rid: score}, nx=True)
                    if pid:
                        write.zadd(keys.search_index(shard, "perf", pid), {rid: score}, nx=True)
                    if bid and state and State(state).terminal:
                        write.zadd(keys.search_index(shard, "book", bid), {rid: score}, nx=True)
                    done += 1
                write.execute()
                if progress is not None:
                    progress.step("indexed", done - before)
                    if len(rows) > done - before:
                        progress.step("skipped", len(rows) - (done - before))
                start += chunk
        return done
