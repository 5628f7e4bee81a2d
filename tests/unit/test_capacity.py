"""The capacity model against the rate limiter it describes, and `rebook capacity`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from worker.core.capacity import plan, presence_budget, rate_needed, share_budget, shortfall


def test_budget_is_the_presence_share_of_the_window() -> None:
    assert presence_budget(20) == pytest.approx(14 / 1.05)
    assert presence_budget(0) == float("inf")
    assert share_budget(0.5, 0.7) == pytest.approx(1 / 2.05)  # one call per 2 s window
    for calls in (0.3, 5, 17.2, 80):
        rate = rate_needed(calls)
        assert presence_budget(rate) >= calls > presence_budget(rate - 1) or rate == 1


def test_plan_under_a_quarter_budget_polls_each_every_p_over_f() -> None:
    p = plan(40, interval=0.5, rate=30)
    assert p.needed_calls_per_second == 80
    assert p.covered == pytest.approx(0.25)
    assert p.achieved_interval_seconds == pytest.approx(2.0)
    assert p.reaction_p50_seconds == pytest.approx(1.05)
    assert p.reaction_p99_seconds == pytest.approx(2.03)
    assert presence_budget(p.rate_needed_per_second) >= 80
    assert plan(10, interval=30, rate=20).achieved_interval_seconds == 30  # enough: as configured


def test_watch_reads_get_what_presence_leaves_below_their_share() -> None:
    p = plan(100, interval=30, rate=20, members=300, watch_interval=30)
    # presence 3.33/s; reads may fill the window to 16 of 20 in 1.05 s
    assert p.watch_reads_per_second == pytest.approx(min(10, 16 / 1.05 - 100 / 30))
    assert p.watch_interval_achieved_seconds == pytest.approx(30)
    short = plan(1000, interval=30, rate=20, members=300)
    # presence takes 14 of 20 in 1.05 s; reads the 2 left below their 16
    assert short.watch_reads_per_second == pytest.approx(2 / 1.05)
    assert plan(1000, interval=30, rate=20, members=0).watch_interval_achieved_seconds is None


def test_shortfall_names_the_figures_and_the_rate_needed() -> None:
    figures = {
        "performers": 600,
        "interval_seconds": 30.0,
        "needed_calls_per_second": 20.0,
        "budget_calls_per_second": 17.143,
        "achieved_interval_seconds": 35.2,
    }
    line = shortfall(figures)
    assert line is not None
    assert "600 performers" in line and "20.00" in line and "17.14" in line and "35.2s" in line
    assert "REBOOK_UPSTREAM_RATE_PER_SECOND=29" in line
    assert shortfall({**figures, "needed_calls_per_second": 10.0}) is None


def test_capacity_command_prints_the_plan() -> None:
    args = [sys.executable, "-m", "worker.operations.cli", "capacity", "--performers", "40"]
    text = subprocess.run(
        [*args, "--interval", "0.5", "--rate", "30", "--members", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0, text.stderr
    assert "achieved presence interval: 2.0s" in text.stdout
    assert "p50 1.1s" in text.stdout and "p99 2.0s" in text.stdout
    assert "REBOOK_UPSTREAM_RATE_PER_SECOND=" in text.stdout
    as_json = subprocess.run(
        [*args, "--interval", "0.5", "--rate", "30", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    data = json.loads(as_json.stdout)
    assert data["achieved_interval_seconds"] == pytest.approx(2.0)
    assert data["budget_calls_per_second"] == pytest.approx(20.0)
    bad = subprocess.run([*args[:-2]], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2  # --performers is required
