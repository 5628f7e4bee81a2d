"""The presence schedule: `performers` zset of checks due, `perf:{pid}` the rebooks waiting on
a performer (kept by `transition.lua`), one call per performer per interval (`presence:{pid}`),
the last answer per performer (`presence:seen:{pid}`), and the bounded record of calls made and
performers tracked per `PRESENCE_BUCKET_SECONDS` (`presence:calls:{t}` /
`presence:performers:{t}`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.core.models import iso_z
from worker.core.observability import scrub
from worker.core.store.connection import Connection, Part, script

PRESENCE_BUCKET_SECONDS = 10
"""Width of one bucket of the presence record (calls made, performers tracked)."""
PRESENCE_RECORD_SECONDS = 300
"""How far back `stats` measures the achieved presence interval; buckets expire after twice it."""
PRESENCE_SEEN_SECONDS = 8 * 86400
"""A performer's last presence answer outlives the longest max wait (7 days) by a day."""


@dataclass(frozen=True)
class PresenceSeen:
    """A performer's last presence answer: `online`, `offline` or `unknown` (the call failed:
    `error`), and since when every answer has said offline."""

    at: float
    answer: str
    offline_since: float | None = None
    error: str = ""


class Presence(Part):
    """When each performer is checked next, and what the checks found."""

    def __init__(self, conn: Connection, *, lease_seconds: float) -> None:
        super().__init__(conn)
        self.lease = lease_seconds
        self._performer_next = conn.r.register_script(script("performer_next"))
        self._presence_keep = conn.r.register_script(script("presence_keep"))

    def claim_presence_call(self, performer_id: int, interval: float) -> float:
        """At most one presence call per performer per interval, across all workers."""
        return self.conn.claim_window(self.keys.presence_window(performer_id), interval)

    def release_presence_call(self, performer_id: int) -> None:
        """The claimed call was not made (rate budget): the next check may go at once."""
        self.r.delete(self.keys.window(self.keys.presence_window(performer_id)))

    def waiting_count(self, performer_id: int) -> int:
        """O(1) per shard: enough to decide whether a presence call is needed at all."""
        pipe = self.r.pipeline(transaction=False)
        for shard in self.conn.shards:
            pipe.scard(self.keys.waiting_on(shard, performer_id))
        return sum(int(n) for n in pipe.execute())

    def waiting_for(self, performer_id: int) -> list[str]:
        pipe = self.r.pipeline(transaction=False)
        for shard in self.conn.shards:
            pipe.smembers(self.keys.waiting_on(shard, performer_id))
        return sorted(set().union(*pipe.execute()))

    def schedule_performer(self, performer_id: int, at: float) -> bool:
        """Next presence check at `at` while rebooks wait on the performer; False if none wait."""
        waiting = False
        for shard in self.conn.shards:
            keys, prefix = self.conn.script_args(shard)
            waiting |= bool(self._performer_next(keys=keys, args=[prefix, performer_id, repr(at)]))
        return waiting

    def keep_presence_turn(self, performer_id: int, now: float) -> None:
        """The check made no call: the performer goes back to its place in the line (the one it
        was claimed from), not behind everyone polled since."""
        for shard in self.conn.shards:
            keys, prefix = self.conn.script_args(shard)
            self._presence_keep(keys=keys, args=[prefix, performer_id, repr(now), repr(self.lease)])

    def note_presence_call(
        self,
        now: float,
        performer_id: int | None = None,
        online: bool | None = None,
        error: str = "",
    ) -> None:
        """Counts one presence call made, in the bounded record `stats` reads; with a
        performer, also keeps its last answer (`presence_seen`) in the same round trip."""
        key = self.keys.presence_calls(int(now // PRESENCE_BUCKET_SECONDS))
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(key, "calls", 1)
        pipe.hsetnx(key, "first", repr(now))
        pipe.expire(key, 2 * PRESENCE_RECORD_SECONDS)
        if performer_id is not None:
            seen = self.keys.presence_seen(performer_id)
            answer = "unknown" if online is None else "online" if online else "offline"
            pipe.hset(
                seen, mapping={"at": repr(now), "answer": answer, "error": scrub(error)[:300]}
            )
            if online is False:
                pipe.hsetnx(seen, "offline_since", repr(now))  # the first of an offline run
            elif online:
                pipe.hdel(seen, "offline_since")
            pipe.expire(seen, PRESENCE_SEEN_SECONDS)
        pipe.execute()

    def presence_seen(self, performer_id: int) -> PresenceSeen | None:
        """The last presence answer for a performer, for the console's "why is it waiting"
        (None before the first check, or once nobody waited on them for a week)."""
        raw = self.r.hgetall(self.keys.presence_seen(performer_id))
        if not raw.get("at"):
            return None
        since = raw.get("offline_since")
        return PresenceSeen(
            at=float(raw["at"]),
            answer=raw.get("answer", "unknown"),
            offline_since=float(since) if since else None,
            error=raw.get("error", ""),
        )

    def note_presence_performers(self, now: float) -> int:
        """The sweep's sample of performers tracked (those with waiting rebooks), per bucket."""
        pipe = self.r.pipeline(transaction=False)
        for shard in self.conn.shards:
            pipe.zcard(self.keys.performers(shard))
        count = sum(int(n) for n in pipe.execute())
        self.r.set(
            self.keys.presence_performers(int(now // PRESENCE_BUCKET_SECONDS)),
            count,
            ex=2 * PRESENCE_RECORD_SECONDS,
        )
        return count

    def achieved_presence_interval(
        self, now: float, seconds: float = PRESENCE_RECORD_SECONDS
    ) -> float | None:
        """Mean time between two presence calls of one performer over the last `seconds`, as
        made: mean performers tracked / calls per second. None until a call was recorded."""
        last = int(now // PRESENCE_BUCKET_SECONDS)
        buckets = list(range(last - int(seconds // PRESENCE_BUCKET_SECONDS) + 1, last + 1))
        pipe = self.r.pipeline(transaction=False)
        for b in buckets:
            pipe.hmget(self.keys.presence_calls(b), ["calls", "first"])
            pipe.get(self.keys.presence_performers(b))
        rows = pipe.execute()
        calls = [int(c or 0) for c, _ in rows[0::2]]
        firsts = [float(f) for _, f in rows[0::2] if f is not None]
        perfs = [int(n) for n in rows[1::2] if n is not None]
        if not sum(calls) or not perfs:
            return None
        # from the first call recorded (a young deployment) or the window's start, to now
        start = max(firsts[0], now - seconds)
        span = max(1.0, now - start)
        return (sum(perfs) / len(perfs)) / (sum(calls) / span)

    def performer_due(self, performer_id: int) -> float | None:
        """When the performer's next presence check is due (the console's "next check")."""
        pipe = self.r.pipeline(transaction=False)
        for shard in self.conn.shards:
            pipe.zscore(self.keys.performers(shard), performer_id)
        scores = [float(s) for s in pipe.execute() if s is not None]
        return min(scores) if scores else None

    def note_presence_unreadable(self, now: float, performer_id: int, why: str, answer: str) -> int:
        """Counts an unreadable presence answer and keeps the last one (scrubbed, cut) for
        `doctor`; returns the count."""
        last = {"at": iso_z(datetime.fromtimestamp(now, UTC)), "performer_id": performer_id}
        last.update(why=scrub(why)[:300], answer=scrub(answer)[:500])
        pipe = self.r.pipeline(transaction=False)
        pipe.incr(self.keys.presence_unreadable("count"))
        pipe.set(self.keys.presence_unreadable("last"), json.dumps(last), ex=86400)
        return int(pipe.execute()[0])

    def presence_unreadable_count(self) -> int:
        return int(self.r.get(self.keys.presence_unreadable("count")) or 0)

    def last_presence_unreadable(self) -> dict[str, Any] | None:
        raw = self.r.get(self.keys.presence_unreadable("last"))
        return json.loads(raw) if raw else None
