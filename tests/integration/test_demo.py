"""`rebook demo` end to end: it finishes, reports what happened, and leaves no process behind.

The demo runs in its own Python process (as `rebook demo` would), so its worker and beat are not
children of pytest and "nothing left behind" is checked from outside, the way a person would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis

from rebook_dev.demo import scenario
from tests.conftest import wait_for
from worker.core.states import State

REBOOKS, PERFORMERS, SEED = 8, 3, 1
ROOT = Path(__file__).resolve().parents[2]


def _processes_mentioning(needle: str) -> list[str]:
    """Command lines of live (non-zombie) processes that contain `needle`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:  # exited while we looked
            continue
        if needle in cmdline and "\nState:\tZ" not in status:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("hostile", [False, True], ids=["sandbox", "hostile"])
def test_demo_runs_to_the_end_and_cleans_up(redis_url: str, hostile: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBOOK_")}
    env.update({"REBOOK_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"})
    code = (
        "from rebook_dev.demo import run; "
        f"raise SystemExit(run(rebooks={REBOOKS}, performers={PERFORMERS}, seed={SEED}, "
        f"timeout=90, hostile={hostile}))"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    took = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert took < 120, f"the demo took {took:.0f}s"

    # The summary: one line of totals that matches the scenario's plan, and the safety checks.
    want = scenario(REBOOKS, PERFORMERS, SEED).expected_counts()
    line = re.search(r"^totals: (.*)$", out, re.MULTILINE)
    assert line, out[-4000:]
    totals = {State(name): int(n) for name, n in re.findall(r"([A-Z_]+) (\d+)", line.group(1))}
    assert totals == dict(want), out[-4000:]
    for state in want:
        assert state.value in out
    assert sum(want.values()) == REBOOKS + 1  # every rebook, plus the duplicate event
    assert "no booking made twice ✓" in out
    assert re.search(r"dead letters\s+1\b", out)
    assert "demo OK" in out

    # Nothing left behind: no worker (prefork children included) and no beat of this run.
    run_id = re.search(r"run id ([0-9a-f]{8})", out)
    assert run_id, out[:2000]
    needle = f"demo-{run_id.group(1)}"
    wait_for(lambda: _processes_mentioning(needle) == [], 5, f"no process of {needle} left")
    # ...no logs (REBOOK_DEMO_KEEP_LOGS unset) and no keys in the Redis it was given.
    assert not list(Path(tempfile.gettempdir()).glob(f"rebook-demo-{run_id.group(1)}-*"))
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"rebook-demo-{run_id.group(1)}:*")) == []
    finally:
        client.close()


@pytest.mark.integration
@pytest.mark.full
@pytest.mark.timeout(180)
def test_demo_in_shadow_mode_books_nothing(redis_url: str) -> None:
    """`rebook demo --shadow`: the summary says shadow mode, 0 POSTs, and every rebook whose
    performer came online is SHADOWED (the ghost's still give up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBOOK_")}
    env.update({"REBOOK_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"})
    code = (
        "from rebook_dev.demo import run; "
        f"raise SystemExit(run(rebooks={REBOOKS}, performers={PERFORMERS}, seed={SEED}, "
        "timeout=90, shadow=True))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Shadow mode: nothing is booked" in out
    assert "0 POSTs ✓" in out and "demo OK (shadow mode)" in out
    assert re.search(r"RescheduleMadeBooking calls\s+0\b", out), out[-4000:]
    line = re.search(r"^totals: (.*)$", out, re.MULTILINE)
    assert line, out[-4000:]
    totals = {State(name): int(n) for name, n in re.findall(r"([A-Z_]+) (\d+)", line.group(1))}
    plan = scenario(REBOOKS, PERFORMERS, SEED)
    ghosts = sum(1 for item in plan.items if item.ghost)
    assert totals.get(State.GAVE_UP, 0) == ghosts
    assert totals.get(State.SHADOWED, 0) + totals.get(State.DUPLICATE, 0) == REBOOKS + 1 - ghosts
    assert not {s for s in totals if s not in (State.SHADOWED, State.GAVE_UP, State.DUPLICATE)}
