"""Runs many seeds of the simulation, on a private Redis, in a few processes."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor

from tests.sim.parts import SHAPES
from tests.sim.world import Result, run


def _one(args: tuple[int, str, tuple[str, ...], float | None]) -> Result:
    logging.disable(logging.CRITICAL)
    seed, url, shapes, skew_limit = args
    return run(seed, url, shapes=shapes, skew_limit=skew_limit)


def run_seeds(
    seeds: Iterable[int],
    redis_url: str,
    jobs: int | None = None,
    shapes: tuple[str, ...] = SHAPES,
    skew_limit: float | None = None,
) -> list[Result]:
    """Every seed's result; failures first when printed by the caller."""
    jobs = jobs or min(2, os.cpu_count() or 1)
    work = [(seed, redis_url, shapes, skew_limit) for seed in seeds]
    if jobs <= 1:
        return [_one(w) for w in work]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_one, work, chunksize=25))


def report(results: list[Result]) -> str:
    bad = [r for r in results if not r.ok]
    lines = [f"{len(results)} seeds, {len(bad)} failed"]
    for r in bad[:20]:
        lines.append(f"seed {r.seed} (replay: python -m tests.sim --seed {r.seed}):")
        lines.extend(f"    {v}" for v in r.violations[:5])
    return "\n".join(lines)
