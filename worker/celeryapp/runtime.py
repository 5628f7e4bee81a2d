"""Builds the services of one process (store, upstream client, tokens) from the settings.

Built lazily and once per process id: a prefork child must not share its parent's sockets.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from dataclasses import dataclass

from worker.adapters.auth import TokenManager, TokenStore, refresh_lock_seconds
from worker.adapters.ratelimit import RedisRateLimiter
from worker.adapters.upstream import UpstreamClient
from worker.core.settings import Settings, get_settings
from worker.core.store import Store
from worker.core.store.counters import Tally
from worker.core.store.ratelimit import RateLog
from worker.core.store.tokens import TokenRecords
from worker.core.store.zone import ZoneRecord
from worker.core.zonecheck import ZoneWatch


@dataclass
class Services:
    settings: Settings
    store: Store
    client: UpstreamClient
    token_store: TokenStore
    tokens: TokenManager


class CallCounter:
    """Upstream calls by endpoint and outcome, in a Redis hash shared by all workers and read by
    the Prometheus exporter. Counted here and added to Redis at most once a second, in one
    pipeline: a round trip per upstream call was a tenth of a reschedule step's time. A process
    that exits may take its last second of counts with it."""

    FLUSH_SECONDS = 1.0

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def __call__(self, endpoint: str, outcome: str) -> None:
        with self._lock:
            self._counts[f"{endpoint}:{outcome}"] += 1
            if self._timer is None:
                self._timer = threading.Timer(self.FLUSH_SECONDS, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        with self._lock:
            counts, self._counts, self._timer = self._counts, Counter(), None
        if not counts:
            return
        with contextlib.suppress(Exception):  # metrics must never break a step
            self.tally.add(counts)


def build_services(settings: Settings) -> Services:
    store = Store.from_settings(settings)
    count_call = CallCounter(Tally.upstream_calls(store))
    limiter = RedisRateLimiter(
        RateLog.of(store),
        settings.upstream_rate_per_second,
        max_wait=settings.limiter_max_wait,
    )
    client = UpstreamClient(
        settings.api_base_url,
        settings.api_key.get_secret_value(),
        api_key_header=settings.api_key_header,
        api_key_in=settings.api_key_in,
        timeout=settings.http_timeout_seconds,
        deadline=settings.call_bound_seconds,
        zone=settings.zone,
        limiter=limiter,
        on_call=count_call,
        list_names=settings.list_names,
        on_made=ZoneWatch(ZoneRecord.of(store), settings.zone, settings.zone_tolerance_seconds),
        shadow=settings.shadow,
    )
    client.circuit = store.circuit  # deployment faults pause calls for every worker
    token_store = TokenStore(
        TokenRecords.of(store, settings.key_prefix),
        settings.token_key_list,
        ttl_seconds=settings.token_ttl_days * 86400,
        refresh_lifetime=settings.refresh_token_lifetime_seconds,
    )
    tokens = TokenManager(
        token_store,
        client,
        token_url=settings.token_url,
        client_id=settings.oauth_client_id,
        client_secret=settings.oauth_client_secret.get_secret_value(),
        margin_seconds=settings.token_refresh_margin_seconds,
        lock_timeout=refresh_lock_seconds(settings.limiter_max_wait, settings.call_bound_seconds),
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
