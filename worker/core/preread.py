"""The read of a member's bookings before a POST, shared by the POSTs of that member.

Only the memory of one worker process holds it (its threads share it): a read is evidence of what
the upstream showed at a time this process knows, and nothing in Redis could say more — a lost
"POST sent" mark loses every later write with it. Whether a read may serve a given POST is the
flow's decision (`Reschedule._shared_read`, worker/core/flow/reschedule.py); this module only
keeps reads and lets one thread read for the others of the same member (single flight).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Generic, TypeVar

L = TypeVar("L")

_PRUNE_AT = 4096
"""Members remembered before the expired ones are dropped (the dict stays small)."""


@dataclass(frozen=True)
class SharedRead(Generic[L]):
    listing: L
    since: float
    """The read asked for bookings from this time on: it serves a POST that needs no earlier."""
    started: float
    """When the read went out (the flow's clock): what it shows is at least that recent."""
    server: str
    """The store's server (`run_id`) when the read went out: a restart or a failover may lose
    the marks written since, and with them what the read would have to be compared with."""


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)


class SharedReads(Generic[L]):
    """A member's latest read before a POST, per process, and the read in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[str, SharedRead[L]] = {}
        self._flights: dict[str, _Flight] = {}
        self._marks: dict[str, float] = {}

    def marked(self, rebook_id: str, at: float, oldest: float) -> None:
        """This process wrote "POST sent" for `rebook_id` at `at`: a read that went out before
        that POST could have been answered cannot serve the rebook again (were the mark lost, its
        booking would be missing from the read). Marks before `oldest` are forgotten."""
        with self._lock:
            self._marks[rebook_id] = at
            if len(self._marks) > _PRUNE_AT:
                for rid in [r for r, t in self._marks.items() if t < oldest]:
                    del self._marks[rid]

    def last_mark(self, rebook_id: str) -> float | None:
        with self._lock:
            return self._marks.get(rebook_id)

    def latest(self, user_id: str, since: float, oldest: float) -> SharedRead[L] | None:
        """The member's latest read, if it started at `oldest` or later and covers `since`."""
        with self._lock:
            got = self._reads.get(user_id)
        if got is None or got.started < oldest or got.since > since:
            return None
        return got

    def put(self, user_id: str, read: SharedRead[L], oldest: float) -> None:
        with self._lock:
            have = self._reads.get(user_id)
            if have is None or have.started <= read.started:
                self._reads[user_id] = read
            if len(self._reads) > _PRUNE_AT:
                for user in [u for u, r in self._reads.items() if r.started < oldest]:
                    del self._reads[user]

    def drop(self, user_id: str, read: SharedRead[L]) -> None:
        """Forgets `read` (it can serve no later POST either), unless a newer one replaced it."""
        with self._lock:
            if self._reads.get(user_id) is read:
                del self._reads[user_id]

    def lead(self, user_id: str) -> tuple[bool, threading.Event]:
        """(True, event) for the thread that reads for the member now — it must call `landed`
        — or (False, event) for one that may wait for that read instead of making its own."""
        with self._lock:
            flight = self._flights.get(user_id)
            if flight is not None:
                return False, flight.done
            flight = self._flights[user_id] = _Flight()
            return True, flight.done

    def landed(self, user_id: str) -> None:
        """The leader's read is over (answered or failed): the waiting threads look again."""
        with self._lock:
            flight = self._flights.pop(user_id, None)
        if flight is not None:
            flight.done.set()
