"""Child processes for the demo, the tests and the bench: one supervisor, one set of rules.

Each child runs in its own session, so its process group holds whatever it forks (a prefork
pool) and a signal reaches all of them; its output goes to a log file a person can read.
Stopping is SIGTERM (a warm shutdown for Celery), then SIGKILL for what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

KILL = signal.SIGKILL


class Child:
    """One child process and its process group."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name, self.args, self.env, self.log, self.cwd = name, args, env, log, cwd
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log.open("ab") as handle:
            self.popen = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} not started"
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The leader's exit code, None while it runs (or before it started)."""
        return None if self.popen is None else self.popen.poll()

    def alive(self) -> bool:
        """The leader runs (a zombie is reaped first, so it does not count)."""
        return self.popen is not None and self.popen.poll() is None

    def group_alive(self) -> bool:
        """Anything of its process group is left (pool children outlive a killed leader)."""
        if self.popen is None:
            return False
        self.popen.poll()
        try:
            os.killpg(self.popen.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        """`sig` to the whole group."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def kill(self, sig: int = KILL) -> None:
        """`sig` to the group while the leader runs (SIGKILL: the chaos tests' kill -9)."""
        if self.alive():
            self.signal(sig)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group (SIGCONT first, in case it is paused), SIGKILL what is left after
        `timeout`; the prefork children too."""
        if self.popen is None:
            return
        self.resume()
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        self.signal(signal.SIGKILL)  # prefork children, if any survived the leader
        self.popen = None


def stop_all(children: Sequence[Child], grace: float = 20.0) -> list[str]:
    """SIGTERM every child at once, SIGKILL the groups still alive after `grace`: the names of
    those that had to be killed."""
    for child in children:
        child.resume()
        child.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(c.group_alive() for c in children):
        time.sleep(0.1)  # polling the children's exit, bounded by `grace`
    killed = [c.name for c in children if c.group_alive()]
    for child in children:
        child.signal(signal.SIGKILL)
        if child.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=5.0)
    return killed
