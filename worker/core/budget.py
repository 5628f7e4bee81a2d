"""The shared upstream budget's policy, in one leaf module: the rate limiter applies it, the
upstream client names each call's share, and the capacity model (stats, doctor, the planner)
computes with the same numbers. No dependencies, so every layer may read it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: How full the shared rate window may be for each call to go (see RedisRateLimiter): when the
#: budget is short, the POST a member is waiting for goes first, presence polls next, reads that
#: have minutes of slack (watching, reconciling, confirming) last. Below 80 % nobody waits.
RATE_SHARE: dict[str, float] = {
    "RescheduleMadeBooking": 1.0,
    "token": 1.0,
    "getUserSummary": 0.9,
    "MadeBookingDetails": 0.8,
    "MadeBookings": 0.8,
    "ConfirmMadeBooking": 0.8,
    "CancelMadeBooking": 0.8,
}

JITTER_MARGIN = 0.05
"""Calls sent one window apart may reach the upstream closer together (network and scheduling
jitter): the window counted here is this much longer than the one the rate is stated for."""

AUDIT_SHARE = 0.5
"""The ledger audit's share (worker.core.audit): its reads go only while the shared window is
less than half full, so presence polls (0.9), POSTs (1.0) and a step's reads (0.8) never wait on
it; when the budget is busy the audit waits, then reports the member as not checked."""


RESTAMP_AFTER = JITTER_MARGIN / 5
"""A call sent this long after the limiter let it by is logged again at its sending time
(`Slot.move`): what happened in between (a POST's mark, with WAIT; a thread waiting for the
interpreter) must not eat the `JITTER_MARGIN`."""


@dataclass
class Slot:
    """A call's entry in the shared rate log, as the limiter wrote it: `taken` (monotonic) when,
    and `move`, which logs it again at the log's own now — called by the client right before
    the request when the call did not go out at once (`RESTAMP_AFTER`), so the log holds when
    calls were sent, which is what the upstream counts."""

    taken: float
    move: Callable[[], None]


@dataclass
class Permit:
    """One call let through the circuit gate and the rate limiter (`UpstreamClient.reserve`),
    spent by the next call of its endpoint, once. What its holder does between the two (a step
    holds its lease, writes its "POST sent" mark) lies after any rate-limit wait and right
    before the request."""

    endpoint: str
    spent: bool = False
    slot: Slot | None = None
    """Its entry in the shared rate log (None without a limiter, or one that keeps no log)."""

    def spend(self, endpoint: str) -> None:
        if self.spent or endpoint != self.endpoint:
            raise ValueError(f"a permit for {self.endpoint} spent on {endpoint} (or twice)")
        self.spent = True
