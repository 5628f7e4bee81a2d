"""A request rate shared by every worker process on every machine, kept in Redis (GCRA)."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from worker.errors import Throttled

YIELD_WAIT = 0.25
"""Longest wait in a worker for a call below share 1 (see RedisRateLimiter)."""


class RedisRateLimiter:
    """Blocks until the shared budget allows one more upstream call.

    `burst` calls may go back to back; after that they are spaced 1/rate apart. A wait longer than
    `max_wait` raises :class:`Throttled` instead, so a step gives its slot back to the sweep
    rather than holding a worker.

    `share` ranks callers when the budget is short: a call with share s goes only while at
    least (1 - s) of the burst is unused. Under a sustained burst of share-1 calls (the
    reschedule POSTs of a performer who just came online) lower shares wait, so the budget
    goes where a member is waiting now; the total rate is the same for all. Such a call also
    waits at most `YIELD_WAIT` in its worker before it gives up (its step comes back through
    the sweep): a worker process sleeping on a poll would be one process fewer for the POSTs.
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

    def acquire(self, share: float = 1.0) -> None:
        if self.rate <= 0:
            return
        share = min(1.0, max(0.0, share))
        deadline = time.monotonic() + (
            self.max_wait if share >= 1 else min(self.max_wait, YIELD_WAIT)
        )
        tolerance = self._burst_ms * share
        while True:
            wait_ms = int(self._script(keys=[self.key], args=[self._interval_ms, tolerance]))
            if wait_ms <= 0:
                return
            if time.monotonic() + wait_ms / 1000 > deadline:
                raise Throttled("shared upstream rate limit", retry_after=wait_ms / 1000)
            time.sleep(wait_ms / 1000)
