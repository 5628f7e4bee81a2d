"""The performers' side of a scenario, played against the sandbox: one bot for the demo and the
chaos tests.

It brings performers online (and offline) on a timeline, and answers each new booking a rebook
watches: accept, reject or ignore (left to expire), as the scenario's `decide` says. A call that
fails (Redis restarting, the sandbox busy) is kept in `errors` and tried again on the next
round: the caller shows or asserts on them; nothing is swallowed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

from rebook_dev.sandbox import SandboxClient
from worker.core.states import State
from worker.core.store import Rebook, Store

Answer = tuple[Literal["accept", "reject", "ignore"], str]
"""What a performer does with a new booking, and the reason given for a rejection."""
Decide = Callable[[Rebook, float], Answer | None]
"""(the watching rebook, seconds since the bot first saw it watching) → an answer, or None for
"not yet"."""
Move = tuple[float, int, bool]
"""(seconds after the start, performer, online)."""

ROUND_SECONDS = 0.1
MAX_ERRORS = 100


class PerformerBot(threading.Thread):
    def __init__(
        self,
        sandbox_url: str,
        store: Store,
        rebook_ids: Callable[[], Sequence[str]],
        decide: Decide,
        moves: Sequence[Move] = (),
        t0: float | None = None,
    ) -> None:
        super().__init__(name="rebook-performer-bot", daemon=True)
        self.client = SandboxClient(sandbox_url)
        self.store = store
        self.rebook_ids = rebook_ids
        self.decide = decide
        self.moves = sorted(moves)
        self.t0 = time.monotonic() if t0 is None else t0
        self.stop_event = threading.Event()
        self.seen: dict[str, float] = {}
        self.decided: set[int] = set()
        self.log: deque[str] = deque(maxlen=6)
        """The last few things the performers did, for a live view."""
        self.errors: list[str] = []

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.t0:5.1f}s  {text}")

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        try:
            while not self.stop_event.wait(ROUND_SECONDS):
                try:
                    self.step()
                except Exception as exc:  # kept; the next round tries again
                    self._error(f"{type(exc).__name__}: {exc}")
                    self.stop_event.wait(0.5)
        finally:
            self.client.close()

    def step(self) -> None:
        now = time.monotonic()
        while self.moves and self.t0 + self.moves[0][0] <= now:
            _, pid, online = self.moves.pop(0)
            self._call(
                f"performer {pid} {'online' if online else 'went offline'}",
                self.client.set_online,
                pid,
                online,
            )
        for rec in self.store.records.get_many(list(self.rebook_ids())):
            new = rec.new_booking_id
            if rec.state != State.WATCHING or new is None or new in self.decided:
                continue
            first = self.seen.setdefault(rec.rebook_id, now)
            answer = self.decide(rec, now - first)
            if answer is None:
                continue
            self.decided.add(new)
            kind, reason = answer
            who = f"performer {rec.performer_id}"
            if kind == "ignore":
                self.note(f"{who} ignores booking {new}")
                continue
            status = "Accepted" if kind == "accept" else "Rejected"
            text = f"{who} {'accepts' if kind == 'accept' else 'rejects'} booking {new}"
            if not self._call(text, self.client.set_status, new, status, reason or None):
                self.decided.discard(new)  # answered again on the next round

    def _call(self, text: str, action: Callable[..., Any], *args: Any) -> bool:
        try:
            action(*args)
        except Exception as exc:  # kept, and shown by the caller
            self._error(f"{text}: {exc}")
            return False
        self.note(text)
        return True

    def _error(self, text: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text)
