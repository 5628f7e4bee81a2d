"""`python -m tests.sim --seeds 10000` runs many worlds; `--seed N` replays one, with its log.

Defaults as `tests/sim/test_sim.py` once the identity fix is merged: every `Performer` shape,
worker clocks within `SKEW_ASSUMED` (None: up to 120 s); `--skew-limit N` caps them, `--vary`
forces what a seed drew (`'{"max_skew": 120}'`, see `world.run`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from rebook_dev.embedded import EmbeddedRedis
from tests.sim.engine import Engine
from tests.sim.known_seeds import SKEW_ASSUMED
from tests.sim.parts import SHAPES
from tests.sim.runner import report, run_seeds
from tests.sim.world import run


def _sim_time(record: logging.LogRecord) -> bool:
    """Each line of a replay's log starts with the virtual time (seconds since the start)."""
    engine = Engine.latest
    record.simtime = f"{engine.now - engine.start:9.3f}" if engine else "-"
    return True


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim")
    parser.add_argument("--seed", type=int, help="replay one seed, printing the flow's log")
    parser.add_argument("--seeds", type=int, default=300, help="how many seeds (from --first)")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=0, help="processes (default: 2)")
    parser.add_argument(
        "--shapes",
        default=",".join(SHAPES),
        help="the Performer shapes seeds may draw (others drawn become `user`)",
    )
    parser.add_argument(
        "--skew-limit",
        default="none" if SKEW_ASSUMED is None else str(SKEW_ASSUMED),
        help="how far apart (s) worker clocks may be, or `none` (default: %(default)s)",
    )
    parser.add_argument("--vary", default="", help="JSON: what the seed drew, forced")
    args = parser.parse_args()
    shapes = tuple(args.shapes.split(","))
    limit = None if args.skew_limit == "none" else float(args.skew_limit)
    vary = json.loads(args.vary) if args.vary else None
    with EmbeddedRedis() as server:
        if args.seed is not None:
            logging.basicConfig(level=logging.INFO, format="%(simtime)s %(threadName)s %(message)s")
            logging.getLogger().handlers[0].addFilter(_sim_time)
            result = run(args.seed, server.url, shapes=shapes, vary=vary, skew_limit=limit)
            print(json.dumps({"ok": result.ok, **result.summary}, indent=2))
            for violation in result.violations:
                print("VIOLATION:", violation)
            return 0 if result.ok else 1
        seeds = range(args.first, args.first + args.seeds)
        started = time.monotonic()
        results = run_seeds(seeds, server.url, args.jobs, shapes=shapes, skew_limit=limit)
        print(report(results), f"({time.monotonic() - started:.0f} s)")
        return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
