"""The deployment-fault circuit's keys (worker/core/circuit.py decides when it opens, probes and
closes): `{prefix}paused` the fault in force, `paused:probe` this interval's probe, and the sets
of rebooks and performers it holds (`paused:held`, `paused:performers`)."""

from __future__ import annotations

from typing import Any

from worker.core.keys import Keys


class PauseRecord:
    def __init__(self, client: Any, keys: Keys) -> None:
        self._r, self.keys = client, keys

    def read(self) -> dict[Any, Any]:
        """The fault's fields as stored (empty: none in force)."""
        return dict(self._r.hgetall(self.keys.paused()) or {})

    def claim_probe(self, seconds: float) -> bool:
        """True for the one caller over all workers that probes in this interval."""
        return bool(self._r.set(self.keys.paused("probe"), "1", nx=True, px=_ms(seconds)))

    def probe_taken(self) -> bool:
        return bool(self._r.exists(self.keys.paused("probe")))

    def open(self, reason: str, fields: dict[str, str], probe_seconds: float) -> bool:
        """Records the fault unless one is in force (the first wins); True if newly opened. The
        next probe waits `probe_seconds`."""
        key = self.keys.paused()
        if not self._r.hsetnx(key, "reason", reason):
            return False
        self._r.hset(key, mapping=fields)
        self._r.set(self.keys.paused("probe"), "1", px=_ms(probe_seconds))
        return True

    def clear(self) -> bool:
        """No fault in force any more; True if one was."""
        gone = bool(self._r.delete(self.keys.paused()))
        self._r.delete(self.keys.paused("probe"))
        return gone

    def hold(self, rebook_id: str) -> None:
        self._r.sadd(self.keys.paused("held"), rebook_id)

    def hold_performer(self, performer_id: int) -> None:
        self._r.sadd(self.keys.paused("performers"), performer_id)

    def take_held(self, limit: int) -> tuple[list[Any], list[Any]]:
        """Up to `limit` held rebook ids and performer ids, removed from their sets (one round
        trip)."""
        pipe = self._r.pipeline(transaction=False)
        pipe.spop(self.keys.paused("held"), limit)
        pipe.spop(self.keys.paused("performers"), limit)
        ids, pids = pipe.execute()
        return list(ids or []), list(pids or [])


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
