"""Counter hashes shared by every worker (upstream calls, audit findings), read by the exporter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.core.store import Store


class Tally:
    """One hash of counters (`field -> count`) in Redis."""

    def __init__(self, client: Any, key: str) -> None:
        self._r, self.key = client, key

    @classmethod
    def upstream_calls(cls, store: Store) -> Tally:
        """Upstream calls by `endpoint:outcome` (worker/celeryapp/runtime.py counts them)."""
        return cls(store.r, store.keys.upstream_calls)

    @classmethod
    def audit_findings(cls, store: Store) -> Tally:
        """Audit findings by kind (worker/core/audit.py)."""
        return cls(store.r, store.keys.audit_counts)

    def add(self, counts: Mapping[str, int]) -> None:
        """All of `counts` in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for field, n in counts.items():
            pipe.hincrby(self.key, field, n)
        pipe.execute()

    def read(self) -> dict[str, str]:
        return dict(self._r.hgetall(self.key))
