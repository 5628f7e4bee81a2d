"""The outcome fan-out's keys (worker/celeryapp/fanout.py decides what goes where and when):
the consumer group on each shard's outcome stream, and per receiver `fanout:{receiver}:q:{id}`
(a rebook's undelivered outcomes, in order), `fanout:{receiver}:retry` (rebooks due again),
`fanout:{receiver}:attempts`; `fanout:done` (which receivers have an entry), `fanout:cursor` (the
reclaim's place in the pending list) and the pass's lock."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:
    from worker.core.store import Store

log = logging.getLogger("rebook.fanout")
GROUP = "fanout"
CONSUMER = "rebook"
Entry = tuple[str, dict[str, str]]


class PassLock:
    """Single flight of fan-out passes across workers (`fanout:lock`, 120 s)."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def acquire(self) -> bool:
        return bool(self._lock.acquire())

    def release(self) -> None:
        try:
            self._lock.release()
        except redis.exceptions.LockError:
            log.warning("fan-out outlived its lock")


class FanoutRecord:
    def __init__(self, store: Store) -> None:
        self._r, self.keys, self.cluster = store.r, store.keys, store.cluster

    def lock(self) -> PassLock:
        return PassLock(self._r.lock(self.keys.fanout_lock, timeout=120, blocking=False))

    def ensure_group(self, shard: int) -> None:
        """The consumer group, at the stream's end (kept if it exists)."""
        try:
            self._r.xgroup_create(self.keys.outcomes(shard), GROUP, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- the stream --------------------------------------------------------------------------

    def read_new(self, shard: int, count: int) -> list[Entry]:
        """Entries the group has not been given yet (now pending for it)."""
        stream = self.keys.outcomes(shard)
        fresh = self._r.xreadgroup(GROUP, CONSUMER, {stream: ">"}, count=count)
        return [row for _stream, rows in fresh or [] for row in rows]

    def reclaim(self, shard: int, start: str, count: int) -> tuple[str, list[Entry], list[str]]:
        """One `XAUTOCLAIM` of pending entries from `start`: the next start, the entries, and
        the ids of entries the stream no longer holds (trimmed by retention)."""
        reply = self._r.xautoclaim(
            self.keys.outcomes(shard), GROUP, CONSUMER, min_idle_time=0, start_id=start, count=count
        )
        return reply[0], list(reply[1]), list(reply[2]) if len(reply) > 2 else []

    def cursor(self, shard: int) -> str:
        found: str = self._r.get(self.keys.fanout(shard, "cursor")) or "0-0"
        return found

    def set_cursor(self, shard: int, start: str) -> None:
        self._r.set(self.keys.fanout(shard, "cursor"), start)

    def entry(self, shard: int, entry_id: str) -> dict[str, str] | None:
        """The fields of one stream entry, or None when it is gone."""
        rows = self._r.xrange(self.keys.outcomes(shard), min=entry_id, max=entry_id)
        return rows[0][1] if rows else None

    def done_by(self, shard: int, entry_ids: list[str]) -> dict[str, set[str]]:
        """Which receivers have each entry already."""
        values = self._r.hmget(self.keys.fanout(shard, "done"), entry_ids)
        return {
            eid: set((v or "").split(",")) - {""} for eid, v in zip(entry_ids, values, strict=True)
        }

    def mark(self, shard: int, name: str, entry_id: str, receivers: set[str]) -> None:
        """`name` has the entry; once every one of `receivers` has it, it is acknowledged."""
        done_key = self.keys.fanout(shard, "done")
        have = set((self._r.hget(done_key, entry_id) or "").split(",")) - {""}
        have.add(name)
        pipe = self._r.pipeline(transaction=not self.cluster)
        pipe.hdel(self.keys.fanout(shard, name, "attempts"), entry_id)
        if have >= receivers:
            pipe.xack(self.keys.outcomes(shard), GROUP, entry_id)
            pipe.hdel(done_key, entry_id)
        else:
            pipe.hset(done_key, entry_id, ",".join(sorted(have)))
        pipe.execute()

    def ack(self, shard: int, entry_id: str) -> None:
        """Done for every receiver (or gone from the stream)."""
        pipe = self._r.pipeline(transaction=not self.cluster)
        pipe.xack(self.keys.outcomes(shard), GROUP, entry_id)
        pipe.hdel(self.keys.fanout(shard, "done"), entry_id)
        pipe.execute()

    # -- a receiver's queues and retries -------------------------------------------------------

    def queued(self, shard: int, name: str, rebook_id: str) -> int:
        return int(self._r.llen(self.keys.fanout(shard, name, "q", rebook_id)))

    def holds(self, shard: int, name: str, rebook_id: str, entry_id: str) -> bool:
        queue = self.keys.fanout(shard, name, "q", rebook_id)
        return self._r.lpos(queue, entry_id) is not None

    def enqueue(self, shard: int, name: str, rebook_id: str, entry_id: str) -> None:
        self._r.rpush(self.keys.fanout(shard, name, "q", rebook_id), entry_id)

    def head(self, shard: int, name: str, rebook_id: str) -> str | None:
        found: str | None = self._r.lindex(self.keys.fanout(shard, name, "q", rebook_id), 0)
        return found

    def pop(self, shard: int, name: str, rebook_id: str) -> None:
        self._r.lpop(self.keys.fanout(shard, name, "q", rebook_id))

    def due(self, shard: int, name: str, now: float, count: int) -> list[str]:
        """Rebooks whose retry for `name` is due, at most `count`."""
        key = self.keys.fanout(shard, name, "retry")
        return list(self._r.zrangebyscore(key, "-inf", now, start=0, num=count))

    def schedule(self, shard: int, name: str, rebook_id: str, at: float, keep: bool) -> None:
        """The rebook is due again for `name` at `at` (`keep`: a retry already set stays)."""
        self._r.zadd(self.keys.fanout(shard, name, "retry"), {rebook_id: at}, nx=keep)

    def unschedule(self, shard: int, name: str, rebook_id: str) -> None:
        self._r.zrem(self.keys.fanout(shard, name, "retry"), rebook_id)

    def count_attempt(self, shard: int, name: str, entry_id: str) -> int:
        """One more failed attempt of `name` at the entry; how many so far."""
        return int(self._r.hincrby(self.keys.fanout(shard, name, "attempts"), entry_id, 1))
