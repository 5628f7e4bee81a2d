"""The shared upstream rate's sliding log (worker/adapters/ratelimit.py decides what to wait)."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.core.store import Store


class RateLog:
    """A sorted set of recent call times at `key`, taken from by one Lua script (ratelimit.lua)."""

    def __init__(self, client: Any, key: str) -> None:
        self.key = key
        lua = resources.files("worker.core.store").joinpath("lua")
        self._script = client.register_script(lua.joinpath("ratelimit.lua").read_text())
        self._restamp = client.register_script(lua.joinpath("ratelimit_restamp.lua").read_text())

    @classmethod
    def of(cls, store: Store) -> RateLog:
        # a sorted set; the GCRA of earlier versions kept a string at "ratelimit": a new name
        # lets old and new workers run side by side during a roll (each side counts its own)
        return cls(store.r, store.keys.rate_limit)

    def take(self, window_us: int, allowed: int, entry: str) -> int:
        """Logs `entry` if fewer than `allowed` calls are in the last `window_us`: 0; else the
        milliseconds until one leaves the window (nothing logged)."""
        return int(self._script(keys=[self.key], args=[window_us, allowed, entry]))

    def restamp(self, entry: str, window_us: int) -> None:
        """Logs `entry` at now instead of when it was taken (ratelimit_restamp.lua)."""
        self._restamp(keys=[self.key], args=[entry, window_us // 1000 + 1000])
