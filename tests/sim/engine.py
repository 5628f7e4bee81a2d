"""A deterministic scheduler for real, blocking code: one thread per simulated process, and only
one of them runs at a time.

A process runs until it reaches an I/O point (a Redis command, an upstream call, a sleep), where
it hands the baton back; the engine then picks, with its seeded RNG, which runnable process goes
next. Time is virtual: a process that sleeps or waits on a slow call is runnable again once the
clock reaches its wake time, and the clock jumps to the next wake time when nobody can run. The
same seed therefore gives the same interleaving, the same crashes and the same answers, so any
failure replays from its seed.
"""

from __future__ import annotations

import math
import random
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field


class Crash(BaseException):
    """The process dies here (kill -9): nothing after this point of its step happens.

    A BaseException, so the code under test cannot catch it by accident with `except Exception`.
    """


class _Stop(BaseException):
    """The run is over: unwinds a process still waiting for its turn."""


@dataclass(eq=False)
class Proc:
    name: str
    fn: Callable[[], None]
    crashable: bool
    wake: float = 0.0
    done: bool = False
    stop: bool = False
    sem: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    thread: threading.Thread | None = None


class Engine:
    latest: Engine | None = None
    """The engine of the run in this process (a replay's log shows its virtual time)."""

    def __init__(self, seed: int, start: float, crash_rate: float = 0.0) -> None:
        Engine.latest = self
        self.rng = random.Random(seed)
        self.now = self.start = start
        self.crash_rate = crash_rate
        self.procs: list[Proc] = []
        self.failure: str | None = None
        self.crashes = 0
        self.steps = 0
        self._back = threading.Semaphore(0)
        self._local = threading.local()
        self._stopping = False
        self._outside = False
        self._until = math.inf
        self._done: Callable[[], bool] = lambda: False

    # -- inside a process ----------------------------------------------------------------------

    def current(self) -> Proc | None:
        if self._outside:
            return None
        return getattr(self._local, "proc", None)

    def point(self, delay: float = 0.0, crash: bool = True) -> None:
        """An I/O point: maybe die here, then let others run (for `delay` virtual seconds)."""
        proc = self.current()
        if proc is None:  # set-up and checks run outside the simulation
            return
        if crash and proc.crashable and self.rng.random() < self.crash_rate:
            self.crashes += 1
            raise Crash(f"{proc.name} crashed at {self.now:.3f}")
        proc.wake = self.now + max(0.0, delay)
        self._yield(proc)

    def sleep(self, seconds: float) -> None:
        self.point(seconds, crash=False)

    def park(self) -> None:
        """Wait until `wake_up` (or the end of the run)."""
        proc = self.current()
        assert proc is not None
        proc.wake = math.inf
        self._yield(proc)

    def wake_up(self, proc: Proc, at: float | None = None) -> None:
        proc.wake = min(proc.wake, self.now if at is None else at)

    def _yield(self, proc: Proc) -> None:
        """Hands the baton to the next process directly (no round trip through the driver,
        and no thread switch at all when the RNG picks this process again)."""
        nxt = self._next()
        if nxt is not proc:
            self._pass(nxt)
            proc.sem.acquire()
        if proc.stop:
            raise _Stop

    def _next(self) -> Proc | None:
        """The process that runs next (drawn by the seeded RNG), or None: the run is over."""
        while True:
            self._outside = True  # `done()` may read Redis: not an I/O point of anyone's
            try:
                over = self.failure is not None or self._done()
            finally:
                self._outside = False
            if over:
                return None
            live = [p for p in self.procs if not p.done]
            ready = [p for p in live if p.wake <= self.now]
            if not ready:
                upcoming = [p.wake for p in live if p.wake < math.inf]
                if not upcoming or min(upcoming) > self._until:
                    return None
                self.now = min(upcoming)
                continue
            proc = ready[self.rng.randrange(len(ready))]
            self.steps += 1
            return proc

    def _pass(self, nxt: Proc | None) -> None:
        if nxt is None:
            self._back.release()  # to the driver: the run is over
        else:
            nxt.sem.release()

    # -- from the driver -----------------------------------------------------------------------

    def spawn(
        self, name: str, fn: Callable[[], None], *, at: float | None = None, crashable: bool = True
    ) -> Proc:
        proc = Proc(name, fn, crashable, wake=self.now if at is None else at)

        def run() -> None:
            self._local.proc = proc
            proc.sem.acquire()
            try:
                if not proc.stop:
                    fn()
            except (Crash, _Stop):
                pass
            except BaseException:
                self.failure = f"{proc.name} raised:\n{traceback.format_exc()}"
            finally:
                proc.done = True
                if self._stopping:
                    self._back.release()
                else:
                    self._pass(self._next())

        proc.thread = threading.Thread(target=run, name=f"sim-{name}", daemon=True)
        proc.thread.start()
        self.procs.append(proc)
        return proc

    def run(self, until: float, done: Callable[[], bool] = lambda: False) -> None:
        """Runs until virtual time `until`, nothing is left to run, or `done()`."""
        self._until, self._done = until, done
        try:
            first = self._next()
            if first is not None:
                first.sem.release()
                self._back.acquire()  # released by whichever process finds the run over
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self._stopping = True
        for proc in self.procs:
            if not proc.done:
                proc.stop = True
                proc.sem.release()
                self._back.acquire()
        for proc in self.procs:
            if proc.thread is not None:
                proc.thread.join(5)
        self.procs = [p for p in self.procs if not p.done]
