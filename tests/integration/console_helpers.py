"""The Flower launcher as a subprocess, shared by the console's HTTP and browser tests."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import requests

from rebook_dev.embedded import free_port
from tests.conftest import wait_for
from tests.integration.conftest import Proc, System

AUTH = ("ops", "s3cret")


def _env(system: System) -> dict[str, str]:
    env = {k: v for k, v in system.env.items() if not k.startswith(("REBOOK_FLOWER_", "FLOWER_"))}
    env["REBOOK_FLOWER_BASIC_AUTH"] = "ops:s3cret"
    return env


@contextlib.contextmanager
def flower_for(system: System) -> Iterator[str]:
    """`python -m worker.operations.flower` against the system; yields its base URL."""
    port = free_port()
    proc = Proc(
        "flower-console",
        [sys.executable, "-m", "worker.operations.flower", "--port", str(port)],
        _env(system),
        system.logdir / "flower-console.log",
    ).start()
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.popen is not None
        if proc.popen.poll() is not None:
            raise AssertionError(f"flower exited:\n{proc.text()[-3000:]}")
        try:
            return requests.get(f"{base}/healthcheck", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(up, 60, "flower answering")
        yield base
    finally:
        proc.stop()
