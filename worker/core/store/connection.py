"""What every part of the store shares: the client, the keys, the shard map and the clocks."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from worker.core.keys import Keys
from worker.core.states import lua_prelude


def script(name: str) -> str:
    """A Lua script of the store (`lua/`) with the state sets of `worker.core.states` on top
    (`ACTIVE`, `STEP`)."""
    body = resources.files("worker.core.store").joinpath(f"lua/{name}.lua").read_text()
    return lua_prelude() + body


class Connection:
    """One per store, handed to each part: a rebook's shard is looked up once for all of them,
    and a simulation's clocks, set here, are the clocks of every part."""

    def __init__(self, client: Any, keys: Keys, *, cluster: bool) -> None:
        # decode_responses=True: replies are str; redis-py's stubs cannot know that.
        self.r: Any = client
        self.keys = keys
        self.cluster = cluster
        self._shard_cache: dict[str, int] = {}
        self.clock: Callable[[], float] = time.time
        """The time of records written without an explicit `now` (a simulation sets its own)."""
        self.server_clock: Callable[[], float] | None = None
        """The Redis server's clock, for a simulation only (its time is virtual); None: Redis's
        own `TIME`, in the scripts and in `server_time` (README "Exactly one booking")."""

    @property
    def sharded(self) -> bool:
        return self.keys.sharded

    @property
    def shards(self) -> range:
        return range(len(self.keys.shard_prefixes))

    def shard_for_user(self, user_id: str) -> int:
        if not self.sharded:
            return 0
        return zlib.crc32(user_id.encode()) % len(self.keys.shard_prefixes)

    def shard_of(self, rebook_id: str) -> int | None:
        """The shard of a rebook: 0 unsharded, else its locator key (cached: it never moves)."""
        if not self.sharded:
            return 0
        found = self._shard_cache.get(rebook_id)
        if found is None:
            value = self.r.get(self.keys.location(rebook_id))
            if value is None:
                return None
            found = int(value)
            self.remember(rebook_id, found)
        return found

    def remember(self, rebook_id: str, shard: int) -> None:
        if len(self._shard_cache) > 100_000:
            self._shard_cache.clear()
        self._shard_cache[rebook_id] = shard

    def shards_of(self, ids: Sequence[str]) -> list[int | None]:
        if not self.sharded:
            return [0] * len(ids)
        missing = [rid for rid in ids if rid not in self._shard_cache]
        if missing:
            pipe = self.r.pipeline(transaction=False)
            for rid in missing:
                pipe.get(self.keys.location(rid))
            for rid, value in zip(missing, pipe.execute(), strict=True):
                if value is not None:
                    self._shard_cache[rid] = int(value)
        return [self._shard_cache.get(rid) for rid in ids]

    def script_args(self, shard: int) -> tuple[list[str], str]:
        """KEYS routes a script to its shard's node in a cluster; the prefix names its keys."""
        return [self.keys.due(shard)], self.keys.shard_prefixes[shard]

    def one_connection(self, key: str) -> Any:
        """A transaction-less pipeline whose commands all go on one connection: of the client,
        or in a cluster of the node that holds `key`."""
        if self.cluster:
            return self.r.get_node_from_key(key).redis_connection.pipeline(transaction=False)
        return self.r.pipeline(transaction=False)

    def server_time(self, rebook_id: str | None = None) -> float:
        """Redis's own clock (`TIME`), to the millisecond: the one clock the exactly-once proof
        is timed on, whatever the worker clocks say (the marks the scripts write use it too).
        In a cluster, the clock of the node that runs `rebook_id`'s scripts (its shard's)."""
        if self.server_clock is not None:
            return round(self.server_clock(), 3)
        client = self.r
        if self.cluster:
            shard = self.shard_of(rebook_id) if rebook_id is not None else None
            key = self.script_args(shard if shard is not None else 0)[0][0]
            client = self.r.get_node_from_key(key).redis_connection
        secs, micros = client.time()
        return float(f"{int(secs)}.{int(micros) // 1000:03d}")

    def claim_window(self, name: str, seconds: float) -> float:
        """Lets one caller (of all workers) act per window of `seconds`.

        Returns 0 when this caller may act now, else the seconds until the window ends.
        """
        key = self.keys.window(name)
        if self.r.set(key, "1", nx=True, px=max(1, int(seconds * 1000))):
            return 0.0
        return max(0.001, int(self.r.pttl(key)) / 1000)


class Part:
    """A part of the store: what it stores, over the shared connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.r: Any = conn.r
        self.keys = conn.keys
