"""Fixtures shared by the component tests (one layer against a real Redis)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.inspect_store import new_store
from worker.core.store import Store


@pytest.fixture
def store(redis_client: redis.Redis, prefix: str) -> Iterator[Store]:
    """A store under the test's own prefix; its keys go with the test."""
    s = new_store(redis_client, prefix=prefix, retention_seconds=1000, lease_seconds=10.0)
    yield s
    keys = list(redis_client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        redis_client.delete(*keys)
