"""Transitions: every state change is one Lua script (`transition.lua`), so a record, its indexes
(`st:{STATE}`, `due`, `perf:{pid}`, `user:{uid}`, `active:{bid}`, the console's `ix:*`), its
history and its outcome never disagree; and the gates between a member's unsettled POSTs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from worker.core.models import iso_z
from worker.core.observability import scrub
from worker.core.states import State
from worker.core.store.connection import Connection, Part, script
from worker.core.store.model import KEEP, REMOVE, SERVER_NOW, Rebook, field_text, scrubbed


class Transitions(Part):
    """Compare-and-set state changes, the POST's mark, and the gates it is checked against."""

    def __init__(self, conn: Connection, *, retention_seconds: int, lease_seconds: float) -> None:
        super().__init__(conn)
        self.retention = retention_seconds
        self.lease = lease_seconds
        self._transition = conn.r.register_script(script("transition"))

    def transition(
        self,
        rebook_id: str,
        to: State,
        *,
        from_: Iterable[State] | None = None,
        reason: str = "",
        due: float | str = KEEP,
        fields: dict[str, Any] | None = None,
        require: dict[str, Any] | None = None,
        outcome: str = "",
        detail: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> bool:
        """Compare-and-set: applies only if the state is in `from_` and `require` fields match.

        A field set to None is deleted; `require` compares string forms ("" = absent).
        """
        ok, *_ = self._run_transition(
            rebook_id,
            to,
            from_=from_,
            reason=reason,
            due=due,
            fields=fields,
            require=require,
            outcome=outcome,
            detail=detail,
            now=now,
        )
        return ok

    def transition_many(
        self,
        rebook_ids: Sequence[str],
        to: State,
        *,
        from_: Iterable[State],
        reason: str,
        outcome: str = "",
        due: float | str = REMOVE,
        fields: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> list[str]:
        """The same transition for many rebooks, one script call per shard (the sweep's
        GAVE_UPs, the rebooks of a performer who came online); returns those it applied to."""
        ts = self.conn.clock() if now is None else now
        by_shard: dict[int, list[str]] = {}
        for rid, shard in zip(rebook_ids, self.conn.shards_of(rebook_ids), strict=True):
            if shard is not None:
                by_shard.setdefault(shard, []).append(rid)
        applied: list[str] = []
        for shard, ids in by_shard.items():
            keys, prefix = self.conn.script_args(shard)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                result = self._transition(
                    keys=keys,
                    args=self._transition_argv(
                        prefix, ",".join(chunk), from_, to, ts, reason, due, outcome, fields
                    ),
                )
                # one id answers {ok, state}; several answer one flag each
                flags = [result[0]] if len(chunk) == 1 else result
                applied.extend(rid for rid, ok in zip(chunk, flags, strict=True) if int(ok))
        return applied

    def start_post(
        self,
        rebook_id: str,
        *,
        now: float,
        attempts: int,
        claim: str,
        known_ids: Sequence[int],
        due: float,
        member_wide: bool = False,
        replicas: int = 0,
        replica_timeout_ms: int = 0,
    ) -> tuple[bool, str, int, float | None]:
        """Records "POST sent" — only if this step still holds the rebook (`claim`), no POST of
        it is unsettled, and no other rebook of the same member and performer has one (their
        bookings could not be told apart in reconciliation) — `member_wide`: of the same member,
        whatever the performer (the performer field is unconfirmed, so no booking can be told
        apart by performer). Returns (True, "", n) when the POST may go out, else (False, the
        holder's id when gated, else "", n); see `gate_holder`.

        With `replicas`, the mark and `WAIT replicas replica_timeout_ms` go in one pipeline on
        one connection (`WAIT` counts the replicas that have that connection's writes: on any
        other pooled connection it may answer at once, for a connection that wrote nothing);
        n is its answer, else 0. Last, the mark: Redis's own time, written by the script (the
        proof's window is timed on the server's clock, not on any worker's), or None."""
        ok, current, got, stamp = self._run_transition(
            rebook_id,
            State.RESCHEDULING,
            from_=[State.RESCHEDULING],
            reason="POST sent",
            due=due,
            fields={
                "post_sent_ts": SERVER_NOW,
                "attempts": attempts,
                "reconcile_tries": None,  # failed reads before it; its own proof counts afresh
                "known_ids": json.dumps(list(known_ids), separators=(",", ":")),
                "answer_ts": None,
                "empty_reads": None,
                "gated_since": None,
                "blocked_by": None,
            },
            require={"post_sent_ts": "", "claim": claim},
            now=now,
            gate="gate_member" if member_wide else "gate",
            wait=(replicas, replica_timeout_ms) if replicas else None,
        )
        if ok:
            return True, "", got, float(stamp)
        holder = current.removeprefix("gate:") if current.startswith("gate:") else ""
        return False, holder, got, None

    def gate_holder(self, rec: Rebook, member_wide: bool = False) -> str | None:
        """The other rebook of the same member and performer (`member_wide`: of the member)
        whose POST is unsettled, if any. A read-only look before spending an upstream read on a
        POST that could not go out; `start_post` decides (transition.lua)."""
        shard = self.conn.shard_of(rec.rebook_id)
        if shard is None:
            return None
        holders = [
            self.r.get(self.keys.gate(shard, rec.user_id, rec.performer_id)),
            self.r.get(self.keys.gate(shard, rec.user_id, None)),
        ]
        if member_wide:
            holders += sorted(self.r.smembers(self.keys.posted(shard, rec.user_id, None)))
        for holder in dict.fromkeys(h for h in holders if h and h != rec.rebook_id):
            sent, made = self.r.hmget(
                self.keys.record(shard, holder), ["post_sent_ts", "new_booking_id"]
            )
            if sent and not made:
                return str(holder)
        return None

    def posted_without_booking(self, rec: Rebook, member_wide: bool = False) -> list[str]:
        """Rebooks of the member and performer (`member_wide`: of the member, any performer)
        that sent a POST and own no booking (yet)."""
        shard = self.conn.shard_for_user(rec.user_id)
        pid = None if member_wide else rec.performer_id
        ids = self.r.smembers(self.keys.posted(shard, rec.user_id, pid))
        return sorted(str(i) for i in ids)

    def _run_transition(
        self,
        rebook_id: str,
        to: State,
        *,
        from_: Iterable[State] | None,
        reason: str,
        due: float | str,
        fields: dict[str, Any] | None,
        require: dict[str, Any] | None,
        outcome: str = "",
        detail: dict[str, Any] | None = None,
        now: float | None = None,
        gate: str = "",
        wait: tuple[int, int] | None = None,
    ) -> tuple[bool, str, int, str]:
        """The transition; with `wait` (replicas, timeout ms), then `WAIT` on the connection that
        ran it, and its answer (else 0); last, the "=TIME" stamp the script wrote (else "")."""
        shard = self.conn.shard_of(rebook_id)
        if shard is None:
            return False, "", 0, ""
        keys, prefix = self.conn.script_args(shard)
        ts = self.conn.clock() if now is None else now
        argv = self._transition_argv(
            prefix, rebook_id, from_, to, ts, reason, due, outcome, fields, require, detail, gate
        )
        if wait is None:
            result, got = self._transition(keys=keys, args=argv), 0
        else:
            pipe = self.conn.one_connection(keys[0])
            self._transition(keys=keys, args=argv, client=pipe)
            pipe.wait(*wait)
            result, got = pipe.execute()
        stamp = str(result[2]) if len(result) > 2 else ""
        return bool(result[0]), str(result[1] or ""), int(got), stamp

    def _transition_argv(
        self,
        prefix: str,
        ids: str,
        from_: Iterable[State] | None,
        to: State,
        ts: float,
        reason: str,
        due: float | str,
        outcome: str,
        fields: dict[str, Any] | None,
        require: dict[str, Any] | None = None,
        detail: dict[str, Any] | None = None,
        gate: str = "",
    ) -> list[Any]:
        """ARGV of transition.lua (its header lists them), built in one place."""
        return [
            prefix,
            ids,
            "*" if from_ is None else ",".join(s.value for s in from_),
            to.value,
            repr(ts),
            iso_z(datetime.fromtimestamp(ts, UTC)),
            scrub(reason)[:500],
            due if isinstance(due, str) else repr(due),
            outcome,
            self.retention,
            json.dumps({k: field_text(v) for k, v in (fields or {}).items()}),
            json.dumps({k: field_text(v) for k, v in (require or {}).items()}),
            json.dumps(scrubbed(detail or {}), default=str),
            self.lease,
            gate,
            "" if self.conn.server_clock is None else repr(self.conn.server_time()),
        ]
