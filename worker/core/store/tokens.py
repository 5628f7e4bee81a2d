"""Members' token pairs as stored (worker/adapters/auth.py encrypts them and decides when to
refresh): `{prefix}tok:{user_id}` the encrypted pair, `{prefix}tokkeep` the index by the lapse of
its refresh token, `{prefix}toklock:{user_id}` the lock of a refresh."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker.core.keys import Keys

if TYPE_CHECKING:
    from worker.core.store import Store


class TokenRecords:
    def __init__(self, client: Any, prefix: str) -> None:
        self._r = client
        self.keys = Keys(prefix)
        self.index_key = self.keys.token_index

    @classmethod
    def of(cls, store: Store, prefix: str) -> TokenRecords:
        return cls(store.r, prefix)

    def put(self, user_id: str, blob: str, ttl: int, lapses_at: float) -> None:
        """Pair first, index second (no transaction: on a cluster they live on different
        nodes); a pair missing from the index is found by `backfill`. `ttl` 0: no expiry."""
        self._r.set(self.keys.token(user_id), blob, ex=ttl or None)
        self._r.zadd(self.index_key, {user_id: lapses_at})

    def get(self, user_id: str) -> Any:
        """The stored blob, or None."""
        return self._r.get(self.keys.token(user_id))

    def delete(self, user_id: str) -> bool:
        """The pair and its index entry; True if a pair was stored."""
        gone = bool(self._r.delete(self.keys.token(user_id)))
        self.unindex(user_id)
        return gone

    def due(self, before: float, limit: int) -> list[str]:
        """Members whose index time is before `before`, soonest first, at most `limit`."""
        found = self._r.zrangebyscore(self.index_key, "-inf", before, start=0, num=limit)
        return [m.decode() if isinstance(m, bytes) else m for m in found]

    def reschedule(self, user_id: str, at: float) -> None:
        """XX: never re-adds a deleted pair."""
        self._r.zadd(self.index_key, {user_id: at}, xx=True)

    def unindex(self, user_id: str) -> None:
        self._r.zrem(self.index_key, user_id)

    def some_members(self, limit: int) -> list[str]:
        """Up to `limit` members with a stored pair, in no order (a SCAN: for checks, not work)."""
        start = len(self.keys.token(""))
        found: list[str] = []
        for key in self._r.scan_iter(match=self.keys.glob("tok:"), count=200):
            found.append((key.decode() if isinstance(key, bytes) else key)[start:])
            if len(found) >= limit:
                break
        return found

    def backfill(self) -> int:
        """Once per deployment: pairs saved before the index existed join it, due at once.
        A SCAN of `tok:*`, run only while the marker key is absent."""
        marker = f"{self.index_key}:indexed"
        if self._r.exists(marker):
            return 0
        start = len(self.keys.token(""))
        added = 0
        batch: dict[str, float] = {}
        for key in self._r.scan_iter(match=self.keys.glob("tok:"), count=1000):
            name = key.decode() if isinstance(key, bytes) else key
            batch[name[start:]] = 0.0
            if len(batch) >= 1000:
                added += int(self._r.zadd(self.index_key, batch, nx=True))
                batch = {}
        if batch:
            added += int(self._r.zadd(self.index_key, batch, nx=True))
        self._r.set(marker, "1")
        return added

    def lock(self, user_id: str, timeout: float, blocking_timeout: float | None = None) -> Any:
        """The member's refresh lock (one refresh at a time over all workers): a redis-py
        `Lock` (`acquire(blocking=False)`, `release()`)."""
        return self._r.lock(
            self.keys.token_lock(user_id), timeout=timeout, blocking_timeout=blocking_timeout
        )
