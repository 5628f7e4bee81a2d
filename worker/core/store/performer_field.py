"""The performer field: which key of a booking's `Performer` names the performer, learned from
answers of known meaning (`performer_field` hash, `performer_learn.lua`)."""

from __future__ import annotations

import json
from typing import Any

from worker.core.store.connection import Connection, Part, script


class PerformerField(Part):
    """Evidence for each candidate key, and the key once confirmed."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._performer_learn = conn.r.register_script(script("performer_learn"))

    def performer_field(self) -> str | None:
        """The confirmed key of a booking's `Performer` that names the performer's user id, or
        None while no key is confirmed (then no booking is told apart by its performer)."""
        value = self.r.hget(self.keys.performer_field, "confirmed")
        return str(value) if value else None

    def learn_performer_field(
        self,
        performer: dict[str, Any],
        performer_id: int,
        booking_id: int,
        *,
        answers: int,
        performers: int,
        now: float | None = None,
    ) -> tuple[str | None, str]:
        """One answer of known meaning: `performer` is the `Performer` object of booking
        `booking_id`, which is certainly of `performer_id`. Returns (the confirmed key or None,
        "confirmed" | "dropped" | "" — what this answer changed)."""
        matched = sorted(str(k) for k, v in performer.items() if _id_text(v) == str(performer_id))
        values = {str(k): _id_text(v) or str(v)[:40] for k, v in list(performer.items())[:50]}
        confirmed, change = self._performer_learn(
            keys=[self.keys.performer_field],
            args=[
                performer_id,
                booking_id,
                repr(self.conn.clock() if now is None else now),
                answers,
                performers,
                json.dumps(matched),
                json.dumps(values),
            ],
        )
        return (str(confirmed) or None), str(change or "")

    def learning_slot(self, limit: int, window: float, now: float | None = None) -> bool:
        """One of at most `limit` reads of an original per `window` seconds spent on learning
        the performer field (a burst of events before the first answers costs `limit`, not one
        read each)."""
        bucket = int((self.conn.clock() if now is None else now) // window)
        key = self.keys.key("shape", "reads", bucket)
        pipe = self.r.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, int(window) + 1)
        taken, _ = pipe.execute()
        return int(taken) <= limit

    def performer_field_stats(self) -> dict[str, Any]:
        """`stats --json`'s `performer_field`: the confirmed key (or null) and its evidence —
        agreeing answers, distinct performers — or, while none is confirmed, the leading key's;
        contradictions seen in all, and the last one."""
        raw: dict[str, str] = self.r.hgetall(self.keys.performer_field) or {}
        confirmed = raw.get("confirmed") or None
        counts = {k[2:]: int(v) for k, v in raw.items() if k.startswith("n:")}
        lead = confirmed or max(sorted(counts), key=lambda k: counts[k], default=None)
        performers = len([p for p in raw.get(f"p:{lead}", "").split(",") if p]) if lead else 0
        last = json.loads(raw["last"]) if raw.get("last") else None
        return {
            "field": confirmed,
            "candidate": lead,
            "answers": counts.get(lead, 0) if lead else 0,
            "performers": performers,
            "contradictions": int(raw.get("c", 0)),
            "last_contradiction": last,
        }


def _id_text(value: Any) -> str | None:
    """An id as the upstream may write it (a number, or digits in a string) as text; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip().isdigit():
        return str(int(value.strip()))
    return None
