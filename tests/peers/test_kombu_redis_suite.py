"""kombu's own Redis transport tests, at the installed kombu version, against rebook's transport.

rebook replaces kombu's Redis channel (`worker/celeryapp/broker.py`: the pop script, the idle
wait, frames refused, no_ack, a broker account without INFO). kombu's 319 tests of its transport
(`t/unit/transport/test_redis.py` from its sdist, fetched like every peer's by `tests.peers.sdist`)
run with rebook's classes in place of kombu's (`kombu_redis_plugin.py`); the tests expected to
differ are strict xfails, each with its reason (`kombu_redis_expected.py`). The installed kombu is
the one under test, not the sdist's copy. A few seconds, so it runs in `make test`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers.kombu_redis_expected import XFAIL
from tests.peers.sdist import PeerUnavailable, peer_source

ROOT = Path(__file__).resolve().parents[2]
TEST_FILE = "t/unit/transport/test_redis.py"
#: kombu 5.7.0 has 319 here; far fewer would mean collection broke and the pass proves little.
MIN_PASSED = 280


def test_kombus_redis_transport_tests_pass_on_rebooks_transport(tmp_path: Path) -> None:
    try:
        root = peer_source("kombu")
    except PeerUnavailable as exc:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            raise
        pytest.skip(f"kombu's sdist is not available offline: {exc}")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(root / TEST_FILE), "-q", "-rfEX", "--tb=short",
         "-p", "no:cacheprovider", "-p", "tests.peers.kombu_redis_plugin",
         "--rootdir", str(root), "-c", str(root / "setup.cfg")],
        cwd=tmp_path,  # not the sdist: its `kombu/` must not shadow the installed one
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    summary = out.strip().splitlines()[-1]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|xfailed|failed|error)", summary)}
    assert counts.get("xfailed") == len(XFAIL), summary
    assert counts.get("passed", 0) >= MIN_PASSED, summary
