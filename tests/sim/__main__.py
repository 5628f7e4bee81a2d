"""`python -m tests.sim --seeds 10000` runs many worlds; `--seed N` replays one, with its log."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tests.sim.runner import report, run_seeds
from tests.sim.world import run
from worker.dev.embedded import EmbeddedRedis


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim")
    parser.add_argument("--seed", type=int, help="replay one seed, printing the flow's log")
    parser.add_argument("--seeds", type=int, default=300, help="how many seeds (from --first)")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=0, help="processes (default: 2)")
    args = parser.parse_args()
    with EmbeddedRedis() as server:
        if args.seed is not None:
            logging.basicConfig(level=logging.INFO, format="%(threadName)s %(message)s")
            result = run(args.seed, server.url)
            print(json.dumps({"ok": result.ok, **result.summary}, indent=2))
            for violation in result.violations:
                print("VIOLATION:", violation)
            return 0 if result.ok else 1
        results = run_seeds(range(args.first, args.first + args.seeds), server.url, args.jobs)
        print(report(results))
        return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
