"""Sweep cost against the size of what waits, interleaved: `python -m tests.bench.locality`.

The `--million` run measures each size's sweeps minutes apart, and on a shared machine the load
of those minutes differs. Here private redis-servers hold 10k, 100k and 1M waiting rebooks at
once (written server-side by `create.lua` itself, looped in one script call per 10,000), and the
same sweep of 1,000 rebooks past their max wait (created with `Records.create`, then claimed by
the sweep's script, read and moved to GAVE_UP with `transition_many`, as `Flow.sweep` does)
runs on each in turn, `--reps` times: Redis main-thread CPU per sweep (INFO cpu), median per size.
Whatever the machine does meanwhile, the sizes see it at nearly the same moments.

Before the sweeps, each server finishes growing its keyspace table (`settle_keyspace`: 1M
waiting is just past 2^21 keys, and the move to a table twice the size, ~90 s at Redis's default
`hz`, taxes every command meanwhile). `--no-settle` measures during that move instead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import redis

from rebook_dev.embedded import EmbeddedRedis
from tests.bench.harness import RedisCpuProbe, log, settle_keyspace
from tests.inspect_store import new_store
from worker.core.models import iso_z
from worker.core.states import State
from worker.core.store import Store, rebook_id_for

PREFIX = "bench:"
FILL = """
local function create_one(ARGV)
%s
end
local start, n, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local deadline = tostring(now + 43200)
for j = start, start + n - 1 do
  create_one({'%s', 'rb-' .. string.sub(redis.sha1hex('bench-' .. j), 1, 16), 'bench-' .. j,
    tostring(50000000 + j), 'om-' .. math.floor(j / 10), tostring(10000 + j %% 100), deadline,
    ARGV[3], ARGV[4], 1209600, 60, deadline})
end
return n
"""


def fill(r: redis.Redis, n: int) -> float:
    """`n` waiting rebooks (100 performers, 10 per member), as intake's script writes them."""
    body = resources.files("worker.core.store").joinpath("lua/create.lua").read_text()
    script = r.register_script(FILL % (body, PREFIX))
    now = time.time()
    t0 = time.monotonic()
    for start in range(0, n, 10_000):
        script(
            args=[start, min(10_000, n - start), repr(now), iso_z(datetime.fromtimestamp(now, UTC))]
        )
    r.delete(f"{PREFIX}performers")  # presence is not what is measured here
    return time.monotonic() - t0


def sweep_gave_up(r: redis.Redis, store: Store, tag: str, due: int) -> dict[str, Any]:
    """`due` rebooks past their max wait; one sweep's claim, read and GAVE_UP of them."""
    now = time.time()
    for i in range(due):
        eid = f"due-{tag}-{i}"
        store.records.create(
            rebook_id=rebook_id_for(eid),
            event_id=eid,
            booking_id=70_000_000 + i,
            user_id=f"due-{i % 100}",
            performer_id=99_999,
            deadline=now - 1,
            now=now - 2,
        )
    with RedisCpuProbe(r) as probe:
        ids, _ = store.sweep.claim_due(time.time(), 1000)
        expired = [
            rec.rebook_id for rec in store.records.get_many(ids) if rec.state == State.WAITING
        ]
        moved = store.transitions.transition_many(
            expired,
            State.GAVE_UP,
            from_=[State.WAITING],
            reason="performer not online within max wait",
            outcome=State.GAVE_UP.value,
        )
        cpu = probe.read()
    assert len(moved) == due, (len(moved), due)
    while store.sweep.expire_finished(time.time() + store.retention + 60):
        pass
    return {"redis_ms": cpu["usec"] / 1000, "commands": cpu["commands"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.locality")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="measure while Redis may still be doubling its keyspace table (settle_keyspace)",
    )
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    servers = [EmbeddedRedis() for _ in sizes]
    try:
        stores: list[tuple[int, redis.Redis, Store]] = []
        for size, server in zip(sizes, servers, strict=True):
            server.start()
            r = redis.Redis.from_url(server.url, decode_responses=True)
            took = fill(r, size)
            used = r.info("memory")["used_memory_human"]
            log(f"{size} waiting written in {took:.0f}s; used_memory {used}")
            if not args.no_settle:
                settle_keyspace(r, f"{size} waiting")
            stores.append((size, r, new_store(r, prefix=PREFIX)))
        runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
        for rep in range(args.reps):
            for size, r, store in stores if rep % 2 == 0 else reversed(stores):
                runs[size].append(sweep_gave_up(r, store, f"{rep}", args.due))
        print(
            f"| waiting | sweep of {args.due} past max wait → GAVE_UP, Redis CPU ms, median "
            f"(each of {args.reps}) | commands |"
        )
        print("|---:|---|---:|")
        for size in sizes:
            ms = [x["redis_ms"] for x in runs[size]]
            each = ", ".join(f"{x:.1f}" for x in ms)
            commands = runs[size][0]["commands"]
            print(f"| {size:,} | {statistics.median(ms):.1f} ({each}) | {commands:,} |")
    finally:
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
