"""Outcomes and dead letters: the `outcomes` stream of each shard (written by `transition.lua`),
its counts (`outcome_counts`), and the `deadletter` stream of invalid messages."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from worker.core.models import iso_z
from worker.core.observability import scrub
from worker.core.store.connection import Connection, Part
from worker.core.store.model import Rebook

DEADLETTER_PAYLOAD_LIMIT = 4096
SECRET_NAME = re.compile(
    r"token|secret|passw|authorization|api_?key|private_?key|fernet|credential|^key$", re.I
)


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of an untrusted payload with secret-looking fields blanked, for dead letters."""
    if depth > 6:
        return "…"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in list(value.items())[:50]:
            name = str(k)
            if SECRET_NAME.search(name.replace("-", "_")):
                out[name[:64]] = "[redacted]"
            else:
                out[name[:64]] = redact(v, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(v, depth + 1) for v in list(value)[:50]]
    if isinstance(value, str):
        return scrub(value[:512])
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return scrub(repr(value)[:128])


class Outcomes(Part):
    """Reading the outcome streams; writing and reading dead letters."""

    def __init__(self, conn: Connection, *, deadletter_max_entries: int) -> None:
        super().__init__(conn)
        self.deadletter_max_entries = deadletter_max_entries
        """REBOOK_DEADLETTER_MAX_ENTRIES: a flood of bad messages cannot fill Redis (and then make
        it refuse the events that matter); housekeeping also trims entries older than the
        retention."""

    def park_detail(self, rec: Rebook) -> dict[str, Any] | None:
        """The detail of the record's last NEEDS_ATTENTION outcome (its `why`, ...), looked up
        in its shard's outcome stream around its last update (clocks a minute apart at most)."""
        shard = self.conn.shard_of(rec.rebook_id)
        if shard is None:
            return None
        at = rec.updated_ts or rec.created_ts
        rows = self.r.xrange(
            self.keys.outcomes(shard), min=f"{int((at - 60) * 1000)}-0",
            max=f"{int((at + 60) * 1000)}-0", count=5000,
        )  # fmt: skip
        found: dict[str, Any] | None = None
        for _, fields in rows:
            ours = fields.get("rebook_id") == rec.rebook_id
            if ours and fields.get("state") == "NEEDS_ATTENTION":
                try:
                    found = json.loads(fields.get("detail") or "{}")
                except ValueError:
                    found = {}
        return found

    def outcome_counts(self) -> dict[str, int]:
        """Outcomes written so far, by state (all shards)."""
        pipe = self.r.pipeline(transaction=False)
        for shard in self.conn.shards:
            pipe.hgetall(self.keys.outcome_counts(shard))
        totals: dict[str, int] = {}
        for counts in pipe.execute():
            for name, value in counts.items():
                totals[name] = totals.get(name, 0) + int(value)
        return totals

    def deadletter(
        self, reason: str, payload: Any, *, task_id: str = "", task: str = "", raw: str = ""
    ) -> str:
        """Appends an invalid message with its reason; the payload is redacted and bounded.
        `raw` is the item as the broker held it, already scrubbed by the caller (frames)."""
        body = json.dumps(redact(payload), default=str, ensure_ascii=False)
        if len(body) > DEADLETTER_PAYLOAD_LIMIT:
            body = body[:DEADLETTER_PAYLOAD_LIMIT] + "…(truncated)"
        now = datetime.now(UTC)
        fields = {
            "reason": scrub(reason)[:1000],
            "payload": body,
            "task_id": task_id,
            "task": task,
            "at": iso_z(now),
        }
        if raw:
            fields["raw"] = raw[: DEADLETTER_PAYLOAD_LIMIT + 16]
        return str(
            self.r.xadd(
                self.keys.deadletter,
                fields,
                maxlen=self.deadletter_max_entries,
                approximate=True,
            )
        )

    def deadletters(self, count: int = 100) -> list[dict[str, str]]:
        return [
            {"id": sid, **fields}
            for sid, fields in self.r.xrevrange(self.keys.deadletter, count=count)
        ]

    def deadletter_entry(self, entry_id: str) -> dict[str, str] | None:
        rows = self.r.xrange(self.keys.deadletter, min=entry_id, max=entry_id)
        return {"id": rows[0][0], **rows[0][1]} if rows else None

    def outcome_streams(self) -> list[tuple[int, str]]:
        """`{prefix}outcomes`; on a sharded store one stream per shard."""
        return [(shard, self.keys.outcomes(shard)) for shard in self.conn.shards]

    def outcomes(self, count: int = 100, after: str = "-") -> list[dict[str, str]]:
        """Oldest first (merged across shards by stream id, i.e. by time)."""
        rows: list[dict[str, str]] = []
        for _, stream in self.outcome_streams():
            rows.extend(
                {"id": sid, **fields}
                for sid, fields in self.r.xrange(stream, min=after, count=count)
            )
        rows.sort(key=lambda row: _stream_order(row["id"]))
        return rows[:count]

    def latest_outcomes(self, count: int = 50) -> list[dict[str, str]]:
        """The newest `count`, oldest first."""
        rows: list[dict[str, str]] = []
        for _, stream in self.outcome_streams():
            rows.extend(
                {"id": sid, **fields} for sid, fields in self.r.xrevrange(stream, count=count)
            )
        rows.sort(key=lambda row: _stream_order(row["id"]))
        return rows[-count:] if count > 0 else []

    def follow_outcomes(self, last_id: str = "$", block_ms: int = 1000) -> Iterator[dict[str, str]]:
        streams: dict[str, str] = {}
        for _, stream in self.outcome_streams():
            if last_id == "$":  # pin "now" once, or entries between two reads would be skipped
                newest = self.r.xrevrange(stream, count=1)
                streams[stream] = newest[0][0] if newest else "0-0"
            else:
                streams[stream] = last_id
        while True:
            found: list[dict[str, str]] = []
            for stream, since in list(streams.items()):
                # one stream per call: on a cluster the shards live on different nodes
                wait = block_ms if len(streams) == 1 else None
                for _name, rows in self.r.xread({stream: since}, block=wait, count=100) or []:
                    for sid, fields in rows:
                        streams[stream] = sid
                        found.append({"id": sid, **fields})
            found.sort(key=lambda row: _stream_order(row["id"]))
            yield from found
            if not found and len(streams) > 1:
                time.sleep(block_ms / 1000)


def _stream_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
