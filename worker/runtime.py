"""Builds the services of one process (store, upstream client, tokens) from the settings.

Built lazily and once per process id: a prefork child must not share its parent's sockets.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

from worker.auth import TokenManager, TokenStore
from worker.ratelimit import RedisRateLimiter
from worker.settings import Settings, get_settings
from worker.store import Store
from worker.upstream import UpstreamClient


@dataclass
class Services:
    settings: Settings
    store: Store
    client: UpstreamClient
    token_store: TokenStore
    tokens: TokenManager


def build_services(settings: Settings) -> Services:
    store = Store.from_settings(settings)
    metrics_key = store.key("metrics", "upstream")

    def count_call(endpoint: str, outcome: str) -> None:
        """A counter in Redis, shared by all workers, read by the Prometheus exporter."""
        with contextlib.suppress(Exception):  # metrics must never break a step
            store.r.hincrby(metrics_key, f"{endpoint}:{outcome}", 1)

    limiter = RedisRateLimiter(
        store.r,
        store.key("ratelimit"),
        settings.upstream_rate_per_second,
        max_wait=max(5.0, settings.step_lease_seconds / 4),
    )
    client = UpstreamClient(
        settings.api_base_url,
        settings.api_key.get_secret_value(),
        api_key_header=settings.api_key_header,
        timeout=settings.http_timeout_seconds,
        zone=settings.zone,
        limiter=limiter,
        on_call=count_call,
    )
    token_store = TokenStore(
        store.r,
        settings.key_prefix,
        settings.token_key.get_secret_value() if settings.token_key else None,
    )
    tokens = TokenManager(
        token_store,
        client,
        token_url=settings.token_url,
        client_id=settings.oauth_client_id,
        client_secret=settings.oauth_client_secret.get_secret_value(),
        margin_seconds=settings.token_refresh_margin_seconds,
        lock_timeout=settings.http_timeout_seconds * 3 + 5,
    )
    return Services(settings, store, client, token_store, tokens)


_lock = threading.Lock()
_services: dict[int, Services] = {}


def services() -> Services:
    """This process's services, built on first use."""
    pid = os.getpid()
    found = _services.get(pid)
    if found is None:
        with _lock:
            found = _services.get(pid)
            if found is None:
                _services.clear()
                found = _services[pid] = build_services(get_settings())
    return found


def reset() -> None:
    """Forget the services (tests, and after settings change)."""
    with _lock:
        _services.clear()
    get_settings.cache_clear()
