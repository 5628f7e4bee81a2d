"""The redis-py client seen from outside the store: its errors, a probe, the server's INFO.

Modules outside `worker.core.store` never import redis (tests/unit/test_redis_owner.py): the
errors they catch and the store faults they wait out are named here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.core.errors import StoreUnavailable

if TYPE_CHECKING:
    from worker.core.settings import Settings
    from worker.core.store import Store

RedisError = redis.RedisError
"""Any error of the store's client (a lost connection, a refused command, a script's error)."""

STORE_ERRORS = (
    redis.ConnectionError,  # also LOADING (BusyLoadingError), auth, max clients
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # OOM: noeviction at maxmemory
    redis.exceptions.ReadOnlyError,  # READONLY: a replica, e.g. after a failover
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    StoreUnavailable,
)
_STORE_FAULT_CODES = re.compile(
    r"(?<![A-Z])-?(OOM|READONLY|MISCONF|LOADING|BUSY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|NOREPLICAS)\b"
)
"""Error codes of a Redis that cannot take the write right now, wherever they stand in the reply
(a script's error wraps them: `ERR Error running script ...: -READONLY You can't write ...`)."""


def is_store_fault(exc: BaseException) -> bool:
    """The store refused or could not answer for reasons of its own, not the event's: OOM,
    READONLY, MISCONF, LOADING, BUSY, a lost connection, a timeout. Such an event is handed
    back, never failed (a failed intake is acknowledged: gone)."""
    if isinstance(exc, STORE_ERRORS):
        return True
    if isinstance(exc, redis.ResponseError):
        code = str(getattr(exc, "status_code", "") or "")
        return bool(_STORE_FAULT_CODES.search(f"{code} {exc}"))
    return False


def no_retry() -> Any:
    """redis-py's `retry` option for no client-side retries (it retries with backoff by
    default): a probe or a scrape must answer within its own bound."""
    return Retry(NoBackoff(), 0)


class Server:
    """The Redis server behind a client, as the doctor and the exporter look at it."""

    def __init__(self, client: Any) -> None:
        self._r = client

    @classmethod
    def of(cls, store: Store) -> Server:
        return cls(store.r)

    @classmethod
    def probe(cls, settings: Settings, timeout: float) -> Server:
        """A client of its own with short timeouts (a sentinel URL: the master it names now)."""
        if settings.redis_url.startswith("sentinel://"):
            from worker.core.store import Store

            store = Store.from_settings(
                settings, socket_connect_timeout=timeout, socket_timeout=timeout
            )
            return cls.of(store)
        return cls(
            redis.Redis.from_url(
                settings.redis_url,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                **settings.redis_ssl_options(settings.redis_url),
            )
        )

    def ping(self) -> None:
        self._r.ping()

    def info(self, section: str) -> dict[str, Any]:
        return dict(self._r.info(section))
