"""The shared rate limiter against a real Redis: presence gets the budget the model says."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from worker.adapters.ratelimit import RedisRateLimiter
from worker.core.budget import RATE_SHARE
from worker.core.capacity import presence_budget
from worker.core.store.ratelimit import RateLog


@pytest.fixture
def limiter_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def test_the_limiter_lets_presence_have_what_the_model_says(
    limiter_client: redis.Redis, prefix: str
) -> None:
    """Paced calls of the presence share at the model's budget all go (none throttled)."""
    rate = 20.0
    limiter = RedisRateLimiter(RateLog(limiter_client, prefix + "rl"), rate, max_wait=0.25)
    budget = presence_budget(rate)
    start = time.monotonic()
    for i in range(40):
        wait = start + i / budget - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # pacing the calls is what is under test, not waiting for work
        limiter.acquire(RATE_SHARE["getUserSummary"])
    took = time.monotonic() - start
    assert took == pytest.approx(39 / budget, abs=0.2)
