"""The simulation as tests: many seeds must all pass, and a weakened protocol must not."""

from __future__ import annotations

import logging

import pytest

from tests.sim.runner import report, run_seeds
from tests.sim.world import run

DEFAULT_SEEDS = 150
"""In `make test` (about 100 s on 2 cores); `make chaos` runs FULL_SEEDS."""
FULL_SEEDS = 10_000
KNOWN = [5, 16, 18, 24, 27, 28, 30, 37, 38, 46, 49, 59, 76, 79, 84, 126]
"""Seeds that found a hole once (kept in the default run whatever the range)."""


@pytest.mark.timeout(900)  # a busy machine must not fail it
def test_every_seed_keeps_every_invariant(redis_url: str) -> None:
    results = run_seeds([*range(1000, 1000 + DEFAULT_SEEDS), *KNOWN], redis_url)
    assert all(r.ok for r in results), report(results)


@pytest.mark.full
@pytest.mark.timeout(7200)
def test_ten_thousand_seeds(redis_url: str) -> None:
    results = run_seeds(range(FULL_SEEDS), redis_url)
    assert all(r.ok for r in results), report(results)


def test_a_seed_replays_exactly(redis_url: str) -> None:
    logging.disable(logging.CRITICAL)
    try:
        first, again = run(7, redis_url), run(7, redis_url)
    finally:
        logging.disable(logging.NOTSET)
    assert first.summary == again.summary and first.violations == again.violations


@pytest.mark.timeout(600)
def test_the_simulation_finds_a_second_post_made_on_hope(redis_url: str) -> None:
    """One empty read right after the answer, as the old rule had it: late commits double."""
    logging.disable(logging.CRITICAL)
    try:
        results = [
            run(seed, redis_url, reconcile_proof_reads=1, reconcile_window_seconds=3.0)
            for seed in range(20)
        ]
    finally:
        logging.disable(logging.NOTSET)
    doubled = [r for r in results if any(v.startswith("DOUBLED") for v in r.violations)]
    assert doubled, "a protocol that re-POSTs on one early read must be caught"
