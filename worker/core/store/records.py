"""Records: one hash per rebook (`r:{id}`), its history (`h:{id}`; none for a rebook that went
from WAITING straight to a final state: its one entry is the record's `history_at`), the claims
on the bookings it made (`claimed:{id}`) and the lock of its step. Their indexes move with every
transition (`transitions.py`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from worker.core.models import iso_z
from worker.core.states import State
from worker.core.store.connection import Connection, Part, script
from worker.core.store.model import Created, Rebook, StepLock, rebook_id_for


class Records(Part):
    """Creating, reading and claiming records."""

    def __init__(self, conn: Connection, *, retention_seconds: int, lease_seconds: float) -> None:
        super().__init__(conn)
        self.retention = retention_seconds
        self.lease = lease_seconds
        self._create = conn.r.register_script(script("create"))
        self._claim = conn.r.register_script(script("claim"))

    def create(
        self,
        *,
        rebook_id: str,
        event_id: str,
        booking_id: int,
        user_id: str,
        performer_id: int | None,
        deadline: float,
        now: float,
        replicas: int = 0,
        replica_timeout_ms: int = 0,
    ) -> Created:
        """With `replicas`, the script and `WAIT` go in one pipeline on one connection (as the
        mark's, `start_post`): the event is acknowledged only once replicas have its record."""
        shard = self.conn.shard_for_user(user_id)
        if self.conn.sharded:
            self.r.set(self.keys.location(rebook_id), shard, nx=True)
            self.conn.remember(rebook_id, shard)
        keys, prefix = self.conn.script_args(shard)
        due = deadline if performer_id is not None else now
        args = [
            prefix,
            rebook_id,
            event_id,
            booking_id,
            user_id,
            "" if performer_id is None else performer_id,
            repr(deadline),
            repr(now),
            iso_z(datetime.fromtimestamp(now, UTC)),
            self.retention,
            self.lease,
            repr(due),
        ]
        got = 0
        if replicas:
            pipe = self.conn.one_connection(keys[0])
            self._create(keys=keys, args=args, client=pipe)
            pipe.wait(replicas, replica_timeout_ms)
            (kind, value), got = pipe.execute()
        else:
            kind, value = self._create(keys=keys, args=args)
        if kind == "created":
            return Created("created", rebook_id, dispatch_presence=value == "1", replicas=got)
        if kind == "duplicate":
            return Created("duplicate", rebook_id, other=value, replicas=got)
        return Created("exists", value, replicas=got)

    def get(self, rebook_id: str) -> Rebook | None:
        shard = self.conn.shard_of(rebook_id)
        if shard is None:
            return None
        raw = self.r.hgetall(self.keys.record(shard, rebook_id))
        return Rebook.from_hash(rebook_id, raw) if raw else None

    def find(self, ident: str) -> Rebook | None:
        """By rebook id or by event id (the rebook id is derived from it)."""
        return self.get(ident) or self.get(rebook_id_for(ident))

    def get_many(self, ids: Sequence[str]) -> list[Rebook]:
        located = [
            (rid, s) for rid, s in zip(ids, self.conn.shards_of(ids), strict=True) if s is not None
        ]
        pipe = self.r.pipeline(transaction=False)
        for rid, shard in located:
            pipe.hgetall(self.keys.record(shard, rid))
        return [
            Rebook.from_hash(rid, raw)
            for (rid, _), raw in zip(located, pipe.execute(), strict=True)
            if raw
        ]

    def history(self, rebook_id: str) -> list[dict[str, Any]]:
        """Transitions, oldest first. The first ("received") is implied by the record."""
        shard = self.conn.shard_of(rebook_id)
        if shard is None:
            return []
        raw = self.r.lrange(self.keys.history(shard, rebook_id), 0, -1)
        entries = [json.loads(item) for item in raw]
        created, at, state, reason = self.r.hmget(
            self.keys.record(shard, rebook_id), ["created_ts", "history_at", "state", "reason"]
        )
        if at:  # WAITING straight to a final state: its entry is the record's (transition.lua)
            entries.append({"at": at, "from": State.WAITING.value, "to": state, "reason": reason})
        if entries and entries[0].get("from") == "":
            return entries  # created straight into a final state (DUPLICATE)
        if created is None:
            return entries
        first = {
            "at": iso_z(datetime.fromtimestamp(float(created), UTC)),
            "from": "",
            "to": State.WAITING.value,
            "reason": "received",
        }
        return [first, *entries]

    def active_owner(self, booking_id: int, user_id: str) -> str | None:
        """The rebook that holds a booking (the member's shard)."""
        value = self.r.get(self.keys.active(self.conn.shard_for_user(user_id), booking_id))
        return str(value) if value is not None else None

    def rebooks_of_booking(self, booking_id: int, user_id: str) -> list[Rebook]:
        """Every rebook of an original that has had an outcome (the `book` index), and its
        active one: what a retry must not book past."""
        shard = self.conn.shard_for_user(user_id)
        ids = {
            str(i) for i in self.r.zrange(self.keys.search_index(shard, "book", booking_id), 0, -1)
        }
        active = self.active_owner(booking_id, user_id)
        if active is not None:
            ids.add(active)
        return self.get_many(sorted(ids))

    def active_of_user(self, user_id: str) -> list[str]:
        shard = self.conn.shard_for_user(user_id)
        return sorted(self.r.smembers(self.keys.of_member(shard, user_id)))

    def list_rebooks(self, state: State | None = None, limit: int = 50) -> list[Rebook]:
        """Newest first; `limit` 0 means all."""
        end = -1 if limit <= 0 else limit - 1
        ranked: list[tuple[float, str]] = []
        for shard in self.conn.shards:
            if state is None:
                rows = self.r.zrevrange(self.keys.created(shard), 0, end, withscores=True)
                ranked.extend((float(score), rid) for rid, score in rows)
            else:
                members = sorted(self.r.smembers(self.keys.in_state(shard, state.value)))
                pipe = self.r.pipeline(transaction=False)
                for rid in members:
                    pipe.zscore(self.keys.created(shard), rid)
                ranked.extend(
                    (float(score or 0), rid)
                    for rid, score in zip(members, pipe.execute(), strict=True)
                )
        ranked.sort(key=lambda row: -row[0])
        ids = [rid for _, rid in ranked][: limit if limit > 0 else None]
        return self.get_many(ids)

    def claim_step(self, rebook_id: str, token: str) -> Rebook | None:
        """Writes this step's fencing token into the record and reads it, in one call. Every
        write of the step then requires the token: a step whose lease ran out while it was in
        an upstream call finds its writes refused, and the step that took over decides."""
        shard = self.conn.shard_of(rebook_id)
        if shard is None:
            return None
        raw = self._claim(keys=[self.keys.record(shard, rebook_id)], args=[token])
        if not raw:
            return None
        return Rebook.from_hash(rebook_id, dict(zip(raw[::2], raw[1::2], strict=True)))

    def claim_booking(self, new_booking_id: int, rebook_id: str) -> bool:
        """Marks an upstream booking as ours; False if another rebook already owns it."""
        key = self.keys.claimed(new_booking_id)
        if self.r.set(key, rebook_id, nx=True, ex=self.retention + 86400):
            return True
        return self.r.get(key) == rebook_id

    def owner_of(self, new_booking_id: int) -> str | None:
        return self.r.get(self.keys.claimed(new_booking_id))

    def owners_of(self, booking_ids: Sequence[int]) -> list[str | None]:
        if not booking_ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for bid in booking_ids:
            pipe.get(self.keys.claimed(bid))
        return list(pipe.execute())

    def lock(self, rebook_id: str, timeout: float | None = None) -> StepLock:
        """Per-rebook lock so two workers never run a step of the same rebook at once."""
        return self.r.lock(self.keys.lock(rebook_id), timeout=timeout or self.lease, blocking=False)
