"""The audit's keys (worker/core/audit.py decides what is a finding): its stream of findings, the
seen set that appends each once, the counts by kind, when each member was last checked and the
last run's summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.core.store import Store

_APPEND = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 4))
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
return 1
"""
STREAM_MAX_ENTRIES = 100_000


class AuditRecord:
    def __init__(self, store: Store) -> None:
        self._r, self.keys, self.store = store.r, store.keys, store

    def created_since(self, since: float) -> list[str]:
        """The ids of every rebook received since `since`, over all shards."""
        ids: list[str] = []
        for shard in self.store.shards:
            ids.extend(self._r.zrangebyscore(self.keys.created(shard), since, "+inf"))
        return ids

    def checked_at(self, users: list[str]) -> list[float]:
        """When each member was last audited (0: never)."""
        return [float(s or 0) for s in self._r.hmget(self.keys.audit_checked, users)]

    def mark_checked(self, user_id: str, at: float) -> None:
        self._r.hset(self.keys.audit_checked, user_id, repr(at))

    def append(self, fingerprint: str, kind: str, fields: dict[str, str]) -> bool:
        """Appends a finding not appended before (by `fingerprint`); True when it was new.

        One script (seen set, stream, counter together) on a single Redis; on a cluster the
        three keys live in different slots, so it is three commands, the seen mark first: a
        crash between them loses that entry rather than writing it twice."""
        keys = self.keys
        if not self.store.cluster:
            flat: list[str] = []
            for k, v in fields.items():
                flat += [k, v]
            script = self._r.register_script(_APPEND)
            return bool(
                script(
                    keys=[keys.audit, keys.audit_seen, keys.audit_counts],
                    args=[fingerprint, STREAM_MAX_ENTRIES, kind, *flat],
                )
            )
        new = self._r.sadd(keys.audit_seen, fingerprint)
        if new:
            self._r.xadd(keys.audit, fields, maxlen=STREAM_MAX_ENTRIES, approximate=True)
            self._r.hincrby(keys.audit_counts, kind, 1)
        return bool(new)

    def entries(self, count: int) -> list[tuple[str, dict[str, str]]]:
        """The stream's entries, newest first."""
        return list(self._r.xrevrange(self.keys.audit, count=count))

    def write_last_run(self, summary: str) -> None:
        self._r.set(self.keys.audit_last, summary)

    def last_run(self) -> Any:
        return self._r.get(self.keys.audit_last)

    def release_window(self, name: str) -> None:
        """Gives back a window claimed with `Store.claim_window` (the run is over)."""
        self._r.delete(self.keys.window(name))
