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
    def __init__(self, seed: int, start: float, crash_rate: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.now = start
        self.crash_rate = crash_rate
        self.procs: list[Proc] = []
        self.failure: str | None = None
        self.crashes = 0
        self.steps = 0
        self._back = threading.Semaphore(0)
        self._local = threading.local()
        self._stopping = False

    # -- inside a process ----------------------------------------------------------------------

    def current(self) -> Proc | None:
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
        self._back.release()
        proc.sem.acquire()
        if proc.stop:
            raise _Stop

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
                self._back.release()

        proc.thread = threading.Thread(target=run, name=f"sim-{name}", daemon=True)
        proc.thread.start()
        self.procs.append(proc)
        return proc

    def run(self, until: float, done: Callable[[], bool] = lambda: False) -> None:
        """Runs until virtual time `until`, nothing is left to run, or `done()`."""
        try:
            while self.failure is None and not done():
                live = [p for p in self.procs if not p.done]
                ready = [p for p in live if p.wake <= self.now]
                if not ready:
                    upcoming = [p.wake for p in live if p.wake < math.inf]
                    if not upcoming or min(upcoming) > until:
                        return
                    self.now = min(upcoming)
                    continue
                proc = ready[self.rng.randrange(len(ready))]
                self.steps += 1
                proc.sem.release()
                self._back.acquire()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        for proc in self.procs:
            if not proc.done:
                proc.stop = True
                proc.sem.release()
                self._back.acquire()
        for proc in self.procs:
            if proc.thread is not None:
                proc.thread.join(5)
        self.procs = [p for p in self.procs if not p.done]
