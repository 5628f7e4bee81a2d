"""A rolling upgrade: a worker of an earlier tree beside one of this tree, on one Redis, one
broker and one sandbox. They share task names, queues, Redis keys and settings (the wire
format), so rebooks started by one are finished by the other, and none is booked twice.

The earlier tree is `REBOOK_UPGRADE_FROM` (default: the last commit before worker/ was split
into one package a layer), read from this checkout's history with `git archive`. Without that
history (a shallow clone, a tarball) the test is skipped, saying why.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

from rebook_dev.supervisor import Child
from tests.integration.conftest import ROOT, System, running_system, wait_for
from worker.core.states import State

PREVIOUS = os.environ.get("REBOOK_UPGRADE_FROM", "4fe515e")
DONE = {State.WATCHING, State.ACCEPTED, State.CONFIRMED, State.REJECTED, State.EXPIRED}


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS, "worker", "tasks"],
        capture_output=True,
    )
    if archive.returncode != 0:
        pytest.skip(f"no commit {PREVIOUS} in this checkout's history: {archive.stderr[:200]!r}")
    path = tmp_path_factory.mktemp("previous")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(path, filter="data")
    return path


class OldWorker(Child):
    """A worker run from the earlier tree: its directory first on the path, so `celery -A
    worker` imports that tree's package and not this one's."""

    def __init__(self, tree: Path, system: System) -> None:
        env = {**system.env, "PYTHONPATH": str(tree)}
        args = [
            sys.executable, "-m", "celery", "-A", "worker", "worker",
            "-Q", "rebook.events,rebook.work", "-c", "2", "-P", "prefork", "-E",
            "--without-mingle", "--without-gossip", "-n", f"old-{system.node}@%h", "-l", "INFO",
        ]  # fmt: skip
        super().__init__("old-worker", args, env, system.logdir / "old-worker.log", cwd=tree)

    def start(self) -> Self:
        where = subprocess.run(
            [sys.executable, "-c", "import worker; print(worker.__file__)"],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert where.startswith(str(self.cwd)), f"the worker would import {where}"
        super().start()
        wait_for(lambda: " ready." in self.text(), 30, "the earlier tree's worker ready")
        return self


@pytest.fixture
def mixed(redis_url: str, tmp_path: Path, old_tree: Path) -> Iterator[tuple[System, OldWorker]]:
    with running_system(redis_url, tmp_path) as system:
        old = OldWorker(old_tree, system).start()
        try:
            yield system, old
        finally:
            old.stop()


def test_old_and_new_workers_finish_each_others_rebooks(mixed: tuple[System, OldWorker]) -> None:
    system, old = mixed
    user = system.member()
    performers = [system.performer(online=True) for _ in range(3)]
    first = [system.rebook(user, performers[i % 3]) for i in range(6)]
    # the new worker stops: the earlier one alone takes what is queued and what comes next
    system.worker.stop()
    second = [system.rebook(user, performers[i % 3]) for i in range(6)]
    for rid, _ in first + second:
        system.wait_state(rid, DONE, timeout=60)
    # and back: the new worker finishes what the earlier one started (the watches)
    system.start_worker()
    old.stop()
    third = [system.rebook(user, performers[i % 3]) for i in range(3)]
    for rid, _ in third:
        system.wait_state(rid, DONE, timeout=60)
    made = system.sandbox.stats()["new_bookings"]
    for _, booking in first + second + third:
        assert made.get(str(booking)) == 1, (booking, made)
    ran = old.text()
    assert "rebook.request" in ran and "succeeded" in ran, "the earlier worker ran no step"
    assert "Traceback" not in ran, ran[-2000:]
