"""The zone check's record (worker/core/zonecheck.py): the last observation and its log claim."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.core.store import Store


class ZoneRecord:
    """`key` holds the last observation (JSON); `{key}:logged` claims the hour's one log line."""

    def __init__(self, client: Any, key: str) -> None:
        self._r, self.key = client, key

    @classmethod
    def of(cls, store: Store) -> ZoneRecord:
        return cls(store.r, store.keys.zone)

    def read(self) -> Any:
        """The last observation as stored (JSON), or None."""
        return self._r.get(self.key)

    def write(self, observation: str) -> None:
        self._r.set(self.key, observation)

    def claim_log(self, seconds: float) -> bool:
        """True for the first caller over all workers in `seconds`."""
        return bool(self._r.set(f"{self.key}:logged", "1", nx=True, ex=int(seconds)))
