"""The sweep and the figures: the `due` index claimed by `sweep.lua`, expiry of finished records
(`created`/`finished` zsets, the streams), and `stats`."""

from __future__ import annotations

import math
from typing import Any

from worker.core import zonecheck
from worker.core.capacity import presence_figures
from worker.core.circuit import Circuit
from worker.core.states import ACTIVE_STATES, State
from worker.core.store.connection import Connection, Part, script
from worker.core.store.performer_field import PerformerField
from worker.core.store.presence import Presence

SHADOW_SAMPLE = 10_000
"""SHADOWED records read per shard for the online→POST percentiles (`Sweep.shadow_figures`)."""


def _percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (None for no values), rounded to milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return round(ordered[rank - 1], 3)


class Sweep(Part):
    """What is due, what has expired, and how it all stands."""

    def __init__(
        self,
        conn: Connection,
        *,
        retention_seconds: int,
        lease_seconds: float,
        presence_interval: float,
        upstream_rate: float,
        shadow: bool,
        presence: Presence,
        performer_field: PerformerField,
        circuit: Circuit,
    ) -> None:
        super().__init__(conn)
        self.retention = retention_seconds
        self.lease = lease_seconds
        self.presence_interval = presence_interval
        self.upstream_rate = upstream_rate
        """REBOOK_PRESENCE_INTERVAL_SECONDS and REBOOK_UPSTREAM_RATE_PER_SECOND, for `stats()`'
        presence figures."""
        self.shadow = shadow
        """REBOOK_SHADOW, for `stats()`' shadow figures."""
        self.presence = presence
        self.performer_field = performer_field
        self.circuit = circuit
        self._sweep = conn.r.register_script(script("sweep"))

    def claim_due(
        self, now: float, batch: int, ahead: float = 0.0, performers: int | None = None
    ) -> tuple[list[str], dict[int, float]]:
        """Claims what is overdue in every shard (the sweep walks all shards): rebook ids, and
        performers whose presence check is due by `now + ahead`, with its due time — at most
        `performers` of them (split over the shards), the longest due first."""
        all_ids: list[str] = []
        all_pids: dict[int, float] = {}
        limit = batch if performers is None else min(batch, performers)
        per_shard = max(1, -(-limit // len(self.conn.shards)))
        for shard in self.conn.shards:
            keys, prefix = self.conn.script_args(shard)
            ids, pids, ats = self._sweep(
                keys=keys,
                args=[prefix, repr(now), repr(self.lease), batch, repr(ahead), per_shard],
            )
            for rid in ids:
                self.conn.remember(rid, shard)
            all_ids.extend(ids)
            for pid, at in zip(pids, ats, strict=True):
                all_pids[int(pid)] = min(float(at), all_pids.get(int(pid), float("inf")))
        return all_ids, all_pids

    def last_sweep(self) -> float | None:
        value = self.r.get(self.keys.sweep_last())
        return float(value) if value else None

    def expire_finished(self, now: float, batch: int = 1000) -> int:
        """Deletes finished records older than the retention; trims the streams the same way."""
        cutoff = now - self.retention
        removed = 0
        for shard in self.conn.shards:
            ids = self.r.zrangebyscore(
                self.keys.finished(shard), "-inf", cutoff, start=0, num=batch
            )
            if ids:
                rows = self.r.pipeline(transaction=False)
                for rid in ids:
                    rows.hmget(
                        self.keys.record(shard, rid),
                        ["state", "user_id", "performer_id", "booking_id"],
                    )
                found = rows.execute()
                # one command per key, not per id (1,000 ids: a few hundred commands, not 7,000)
                gone: list[str] = []
                by_set: dict[str, list[str]] = {}
                by_zset: dict[str, list[str]] = {
                    self.keys.created(shard): list(ids),
                    self.keys.finished(shard): list(ids),
                }
                for rid, (state, uid, pid, bid) in zip(ids, found, strict=True):
                    gone += [self.keys.record(shard, rid), self.keys.history(shard, rid)]
                    if state:
                        by_set.setdefault(self.keys.in_state(shard, state), []).append(rid)
                    # the console's indexes (worker/core/search.py) lose the id with its record
                    for name, value in (("user", uid), ("perf", pid), ("book", bid)):
                        if value:
                            key = self.keys.search_index(shard, name, value)
                            by_zset.setdefault(key, []).append(rid)
                pipe = self.r.pipeline(transaction=not self.conn.cluster)
                pipe.delete(*gone)
                for key, members in by_set.items():
                    pipe.srem(key, *members)
                for key, members in by_zset.items():
                    pipe.zrem(key, *members)
                pipe.execute()
                if self.conn.sharded:
                    self.r.delete(*[self.keys.location(rid) for rid in ids])
                removed += len(ids)
            self.r.xtrim(
                self.keys.outcomes(shard), minid=f"{int(cutoff * 1000)}-0", approximate=True
            )
        self.r.xtrim(self.keys.deadletter, minid=f"{int(cutoff * 1000)}-0", approximate=True)
        return removed

    def stats(self, now: float | None = None) -> dict[str, Any]:
        ts = self.conn.clock() if now is None else now
        pipe = self.r.pipeline(transaction=False)
        for shard in self.conn.shards:
            for state in State:
                pipe.scard(self.keys.in_state(shard, state.value))
            pipe.zrange(self.keys.due(shard), 0, 0, withscores=True)
            pipe.xlen(self.keys.outcomes(shard))
            pipe.zcard(self.keys.performers(shard))
        pipe.xlen(self.keys.deadletter)
        *rows, dead = pipe.execute()
        width = len(State) + 3
        states = dict.fromkeys((s.value for s in State), 0)
        oldest: float | None = None
        outcomes = performers = 0
        for shard in self.conn.shards:
            chunk = rows[shard * width : (shard + 1) * width]
            for state, count in zip(State, chunk[: len(State)], strict=True):
                states[state.value] += int(count)
            due_row, n_outcomes, n_performers = chunk[len(State) :]
            if due_row:
                score = float(due_row[0][1])
                oldest = score if oldest is None else min(oldest, score)
            outcomes += int(n_outcomes)
            performers += int(n_performers)
        lag = max(0.0, ts - oldest) if oldest is not None else 0.0
        last = self.last_sweep()
        gated = self._gated_count()
        return {
            "states": states,
            "active": sum(n for name, n in states.items() if State(name) in ACTIVE_STATES),
            "due_lag_seconds": round(lag, 3),
            "deadletter": int(dead),
            "gated": gated,
            "outcomes": outcomes,
            "performers_tracked": performers,
            "last_sweep_seconds_ago": None if last is None else round(ts - last, 3),
            "presence": {
                **presence_figures(
                    performers,
                    self.presence_interval,
                    self.upstream_rate,
                    self.presence.achieved_presence_interval(ts),
                ),
                "unreadable": self.presence.presence_unreadable_count(),
            },
            "zone": self.zone_observation(),
            "performer_field": self.performer_field.performer_field_stats(),
            "paused": self.circuit.public(),
            "shadow": self.shadow_figures(states),
        }

    def shadow_figures(self, states: dict[str, int]) -> dict[str, Any]:
        """What shadow mode would have done (README "Shadow mode"): rebooks that would have been
        booked (SHADOWED), seconds from their performer seen online to the POST they would have
        sent (p50, p99; None before the first), and GAVE_UP. Reads the SHADOWED records still
        kept (`REBOOK_RETENTION_DAYS`), a random `SHADOW_SAMPLE` of them when there are more."""
        lags: list[float] = []
        shadowed = states.get(State.SHADOWED.value, 0)
        for shard in self.conn.shards if shadowed else ():
            key = self.keys.in_state(shard, State.SHADOWED.value)
            # SRANDMEMBER with a count: distinct members, all of them when the set is smaller
            ids = self.r.srandmember(key, SHADOW_SAMPLE)
            pipe = self.r.pipeline(transaction=False)
            for rid in ids:
                pipe.hmget(self.keys.record(shard, rid), "online_ts", "would_post_ts")
            for online, posted in pipe.execute():
                if online and posted:
                    lags.append(max(0.0, float(posted) - float(online)))
        return {
            "enabled": self.shadow,
            "would_book": shadowed,
            "online_to_post_seconds": {
                "p50": _percentile(lags, 0.50),
                "p99": _percentile(lags, 0.99),
                "count": len(lags),
            },
            "gave_up": states.get(State.GAVE_UP.value, 0),
        }

    def zone_observation(self) -> dict[str, Any] | None:
        """`{"configured", "observed_offset_minutes", "agrees", "at", ...}` of the last booking
        the upstream made (worker.core.zonecheck), or None before the first one."""
        return zonecheck.read(self.r, self.keys.zone)

    def _gated_count(self) -> int:
        """RESCHEDULING rebooks held by another's gate (O(rescheduling): they are few)."""
        total = 0
        for shard in self.conn.shards:
            ids = list(self.r.smembers(self.keys.in_state(shard, State.RESCHEDULING.value)))
            if not ids:
                continue
            pipe = self.r.pipeline(transaction=False)
            for rid in ids:
                pipe.hget(self.keys.record(shard, rid), "gated_since")
            total += sum(1 for v in pipe.execute() if v)
        return total
