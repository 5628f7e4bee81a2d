"""The reschedule protocol checked by SPIN (tests/model/reschedule.pml): every interleaving of
three workers, lease take-overs, late commits and crashes keeps one booking; without the window
or without fencing, SPIN finds the second booking."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

MODEL = Path(__file__).with_name("reschedule.pml")


def _check(tmp_path: Path, *defines: str) -> str:
    if shutil.which("spin") is None or shutil.which("gcc") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("spin and gcc must be installed in CI (.ci/run installs them)")
        pytest.skip("spin is not installed (apt-get install spin)")
    model = tmp_path / MODEL.name
    shutil.copy(MODEL, model)
    subprocess.run(
        ["spin", *defines, "-a", model.name], cwd=tmp_path, check=True, capture_output=True
    )
    subprocess.run(
        ["gcc", "-O2", "-o", "pan", "pan.c"], cwd=tmp_path, check=True, capture_output=True
    )
    run = subprocess.run(
        ["./pan", "-a", "-N", "one_booking", "-m500000"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return run.stdout


def test_every_interleaving_keeps_one_booking(tmp_path: Path) -> None:
    out = _check(tmp_path)
    assert "errors: 0" in out, out
    assert "states, stored" in out


@pytest.mark.parametrize("weakened", ["-DHOPE", "-DNOFENCE"])
def test_a_weakened_protocol_books_twice(tmp_path: Path, weakened: str) -> None:
    out = _check(tmp_path, weakened)
    assert "errors: 1" in out and "assertion violated" in out, out
