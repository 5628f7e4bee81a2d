"""Console at size: `python -m tests.bench.console [--records 100000]` (`make bench-console`).

Fills a private Redis with N records through `Store.create` (100 performers, 10 rebooks per
member, every 10th finished with an outcome), starts the real Flower launcher and times
`/api/rebooks?state=WAITING&limit=50`, `/api/rebooks?performer_id=P` and the `/rebooks` page
(median and worst of 10 requests each, over HTTP with basic auth). Prints markdown rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests
from cryptography.fernet import Fernet

from rebook_dev.embedded import EmbeddedRedis, free_port
from tests.inspect_store import new_store
from worker.core.states import State
from worker.core.store import Store, rebook_id_for

ROOT = Path(__file__).resolve().parents[2]
AUTH = ("bench", "bench-pass")


def fill(store: Store, n: int) -> None:
    now = time.time() - n * 0.01
    finished: list[str] = []
    for k in range(n):
        rid = rebook_id_for(f"cb-{k}")
        store.records.create(
            rebook_id=rid,
            event_id=f"cb-{k}",
            booking_id=10_000_000 + k,
            user_id=f"cm-{k // 10}",
            performer_id=1000 + k % 100,
            deadline=now + 86400,
            now=now + k * 0.01,
        )
        if k % 10 == 9:
            finished.append(rid)
    for start in range(0, len(finished), 500):
        store.transitions.transition_many(
            finished[start : start + 500],
            State.GAVE_UP,
            from_=[State.WAITING],
            reason="max wait",
            outcome=State.GAVE_UP.value,
        )


def timed(url: str, runs: int = 10) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        answer = requests.get(url, auth=AUTH, timeout=60)
        times.append((time.perf_counter() - t0) * 1000)
        assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])
    return statistics.median(times), max(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.console")
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args(argv)
    with EmbeddedRedis() as server:
        prefix = "rebook-bench-console:"
        store = new_store(redis.Redis.from_url(server.url, decode_responses=True), prefix=prefix)
        t0 = time.perf_counter()
        fill(store, args.records)
        print(f"filled {args.records} records in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        port = free_port()
        env = {
            **os.environ,
            "REBOOK_REDIS_URL": server.url,
            "REBOOK_KEY_PREFIX": prefix,
            "REBOOK_API_KEY": "bench-key",
            "REBOOK_API_BASE_URL": "http://127.0.0.1:9",
            "REBOOK_OAUTH_TOKEN_URL": "http://127.0.0.1:9/OAuth/token",
            "REBOOK_TOKEN_KEY": Fernet.generate_key().decode(),
            "REBOOK_OAUTH_CLIENT_ID": "bench-client",
            "REBOOK_OAUTH_CLIENT_SECRET": "bench-secret",
            "REBOOK_FLOWER_BASIC_AUTH": ":".join(AUTH),
        }
        log = open(Path(os.environ.get("TMPDIR", "/tmp")) / "rebook-bench-console-flower.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.operations.flower", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while True:
                try:
                    if requests.get(f"{base}/healthcheck", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit(
                        "flower did not start; see $TMPDIR/rebook-bench-console-flower.log"
                    )
                time.sleep(0.2)
            rows = [
                (
                    "`/api/rebooks?state=WAITING&limit=50`",
                    f"{base}/api/rebooks?state=WAITING&limit=50",
                    200,
                ),
                (
                    "`/api/rebooks?performer_id=P` (1,000 rebooks of P, limit 50)",
                    f"{base}/api/rebooks?performer_id=1042",
                    200,
                ),
                ("`/rebooks` page (counts, 50 rows, charts)", f"{base}/rebooks", 1000),
                ("`/rebooks?user_id=M` page", f"{base}/rebooks?user_id=cm-4242", 1000),
            ]
            print("| metric | median ms | worst of 10, ms | goal | met? |")
            print("|---|---:|---:|---|---|")
            for label, url, goal in rows:
                median, worst = timed(url)
                met = "yes" if median < goal else "no"
                print(
                    f"| {label}, {args.records:,} records | {median:.1f} | {worst:.1f} | "
                    f"< {goal} ms | {met} |"
                )
        finally:
            proc.terminate()
            proc.wait(15)
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
