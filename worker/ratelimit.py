"""A request rate shared by every worker process on every machine, kept in Redis (GCRA)."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from worker.errors import RateLimited


class RedisRateLimiter:
    """Blocks until the shared budget allows one more upstream call.

    `burst` calls may go back to back; after that they are spaced 1/rate apart. A wait longer than
    `max_wait` raises :class:`RateLimited` instead, so a step gives its slot back to the sweep
    rather than holding a worker.
    """

    def __init__(
        self, client: Any, key: str, rate: float, *, burst: int = 1, max_wait: float = 30.0
    ) -> None:
        self.key = key
        self.rate = rate
        self.max_wait = max_wait
        self._interval_ms = 1000.0 / rate if rate > 0 else 0.0
        self._burst_ms = self._interval_ms * max(0, burst - 1)
        script = resources.files("worker").joinpath("lua/ratelimit.lua").read_text()
        self._script = client.register_script(script)

    def acquire(self) -> None:
        if self.rate <= 0:
            return
        deadline = time.monotonic() + self.max_wait
        while True:
            wait_ms = int(self._script(keys=[self.key], args=[self._interval_ms, self._burst_ms]))
            if wait_ms <= 0:
                return
            if time.monotonic() + wait_ms / 1000 > deadline:
                raise RateLimited("shared upstream rate limit", retry_after=wait_ms / 1000)
            time.sleep(wait_ms / 1000)
