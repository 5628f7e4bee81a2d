"""A request rate shared by every worker process on every machine, kept in Redis."""

from __future__ import annotations

import itertools
import math
import os
import time
from functools import partial

from worker.core.budget import JITTER_MARGIN, Slot
from worker.core.errors import Throttled
from worker.core.store.ratelimit import RateLog

YIELD_WAIT = 0.25
"""Longest wait in a worker for a call below share 1 (see RedisRateLimiter)."""


class RedisRateLimiter:
    """Blocks until the shared budget allows one more upstream call.

    Never more than `rate` calls in any one-second window, counted over all workers (a sliding
    log of call times in Redis): what an upstream that allows "N calls per second" sees, however
    its window is aligned. Calls may go back to back while the window has room, so the POSTs of a
    performer who comes online go out at once rather than paced. Rates under 1/s use a window of
    1/rate seconds holding one call; every window is counted `JITTER_MARGIN` longer, so that the
    upstream's own count, with jitter, stays within the rate; a call sent later than that after
    it was let by is logged again when it goes out (`Slot`). A wait longer than `max_wait`
    raises :class:`Throttled` instead, so a step gives its slot back to the sweep rather than
    holding a worker.

    `share` ranks callers when the budget is short: a call with share s goes only while the
    window is less than s full. Under a burst of share-1 calls (the reschedule POSTs of a
    performer who just came online) lower shares wait, so the budget goes where a member is
    waiting now; the total is the same for all. Such a call also waits at most `YIELD_WAIT` in
    its worker before it gives up (its step comes back through the sweep): a worker process
    sleeping on a poll would be one process fewer for the POSTs.
    """

    def __init__(self, log: RateLog, rate: float, *, max_wait: float = 30.0) -> None:
        self.log = log
        self.rate = rate
        self.max_wait = max_wait
        self.window = 1.0 if rate >= 1 else (1.0 / rate if rate > 0 else 0.0)
        self.limit = max(1, math.floor(rate * self.window + 1e-9)) if rate > 0 else 0
        self._token = os.urandom(6).hex()  # with a counter: each call's entry is unique
        self._seq = itertools.count()

    def acquire(self, share: float = 1.0) -> Slot | None:
        """Waits for room in the window (or raises `Throttled`); the call's entry in the log."""
        if self.rate <= 0:
            return None
        share = min(1.0, max(0.0, share))
        deadline = time.monotonic() + (
            self.max_wait if share >= 1 else min(self.max_wait, YIELD_WAIT)
        )
        allowed = max(1, math.ceil(self.limit * share - 1e-9))
        window_us = int((self.window + JITTER_MARGIN) * 1_000_000)
        while True:
            entry = f"{self._token}{next(self._seq)}"
            wait_ms = self.log.take(window_us, allowed, entry)
            if wait_ms <= 0:
                return Slot(time.monotonic(), partial(self.log.restamp, entry, window_us))
            if time.monotonic() + wait_ms / 1000 > deadline:
                raise Throttled("shared upstream rate limit", retry_after=wait_ms / 1000)
            time.sleep(wait_ms / 1000)
