"""The durable truth: one record per rebook in Redis, its history, and the indexes around it.

Celery messages are only nudges; everything needed to continue after a lost message, a killed
worker or a restarted broker is here. Every state change is one Lua script (`lua/transition.lua`),
so a record, its indexes, its history and its outcome never disagree. No Celery, no HTTP in this
package.

`Store` is the connection and its parts, one module each, by what they store (each owns its keys
and its scripts in `lua/`): `records` (the record, its history, claims, locks), `transitions`
(state changes, the POST's mark, gates), `presence` (the presence schedule and answers), `watch`
(the watch cache, POSTs per member and day), `sweep` (due index, expiry, stats), `outcomes`
(outcome streams, dead letters), `performer_field` (which key names the performer).

Keys (prefix `REBOOK_KEY_PREFIX`): `r:{id}` record hash, `h:{id}` history list, `due` zset of
records needing the sweep, `performers` zset of presence checks, `perf:{pid}` waiting rebooks of a
performer, `user:{uid}` active rebooks of a member, `st:{STATE}` ids per state,
`active:{booking_id}`, `claimed:{new_booking_id}`, `created`/`finished` zsets, streams `outcomes`
and `deadletter`; `presence:calls:{t}` / `presence:performers:{t}` the record of presence calls
made and performers tracked per `PRESENCE_BUCKET_SECONDS` (expiring);
the console's indexes and chart counters (`ix:user:{uid}`, `ix:perf:{pid}`,
`ix:book:{bid}`, `chart:out:{hour}`, `chart:booked:{hour}`) are read by `worker/core/search.py`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import redis

from worker.core.circuit import Circuit, fingerprint
from worker.core.errors import StoreUnavailable
from worker.core.keys import Keys
from worker.core.settings import Settings, mask_url, sentinel_hosts
from worker.core.store.connection import Connection
from worker.core.store.model import (
    KEEP,
    REMOVE,
    SERVER_NOW,
    Created,
    Rebook,
    StepLock,
    rebook_id_for,
    scrubbed,
)
from worker.core.store.outcomes import DEADLETTER_PAYLOAD_LIMIT, Outcomes, redact
from worker.core.store.performer_field import PerformerField
from worker.core.store.presence import (
    PRESENCE_BUCKET_SECONDS,
    PRESENCE_RECORD_SECONDS,
    PRESENCE_SEEN_SECONDS,
    Presence,
    PresenceSeen,
)
from worker.core.store.records import Records
from worker.core.store.sweep import SHADOW_SAMPLE, Sweep
from worker.core.store.transitions import Transitions
from worker.core.store.watch import LISTED, Watch

__all__ = [
    "DEADLETTER_PAYLOAD_LIMIT",
    "KEEP",
    "LISTED",
    "PRESENCE_BUCKET_SECONDS",
    "PRESENCE_RECORD_SECONDS",
    "PRESENCE_SEEN_SECONDS",
    "REMOVE",
    "SERVER_NOW",
    "SHADOW_SAMPLE",
    "Created",
    "PresenceSeen",
    "Rebook",
    "StepLock",
    "Store",
    "circuit_fingerprints",
    "rebook_id_for",
    "redact",
    "scrubbed",
    "store_settings",
]


def circuit_fingerprints(settings: Settings) -> dict[str, str]:
    """What a process's settings look like to the circuit (changed value: fault cleared)."""
    return {
        "oauth_client": fingerprint(
            f"{settings.oauth_client_id}\0{settings.oauth_client_secret.get_secret_value()}"
        ),
        "api_key": fingerprint(settings.api_key.get_secret_value()),
    }


def store_settings(settings: Settings) -> dict[str, Any]:
    """`Store`'s keyword arguments from the settings: all of them but the client's."""
    return {
        "prefix": settings.key_prefix,
        "retention_seconds": settings.retention_seconds,
        "lease_seconds": settings.step_lease_seconds,
        "presence_interval": settings.presence_interval_seconds,
        "upstream_rate": settings.upstream_rate_per_second,
        "shadow": settings.shadow,
        "deadletter_max_entries": settings.deadletter_max_entries,
        "pause_probe_seconds": settings.pause_probe_seconds,
        "fingerprints": circuit_fingerprints(settings),
        "shards": settings.shards,
    }


class Store:
    """The Redis state, one part per kind of thing stored. Thread-safe; one per process is enough.

    Sharding (Redis Cluster): every rebook lives in the shard of its member
    (`crc32(user_id) % shards`), and every key of a shard carries the hash tag `{rbK}`, so each
    Lua script touches one slot — the member's records, their booking and member indexes, the
    member+performer gate, the shard's due index and outcome stream. Keys that are read by one
    command only (locks, claims, tokens, rate limit, dead letters) stay global. With one shard and
    no cluster (the default) the keys are exactly `{prefix}r:{id}`, `{prefix}outcomes`, ...

    Every setting comes in here (`from_settings` reads them): no part has a default of its own.
    """

    connection_type: type[Connection] = Connection
    records_type: type[Records] = Records
    presence_type: type[Presence] = Presence
    watch_type: type[Watch] = Watch
    """The parts' classes (a simulation brings its own, on virtual time)."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        retention_seconds: int,
        lease_seconds: float,
        presence_interval: float,
        upstream_rate: float,
        shadow: bool,
        deadletter_max_entries: int,
        pause_probe_seconds: float,
        shards: int,
        fingerprints: dict[str, str] | None = None,
        url: str = "",
        cluster: bool = False,
    ) -> None:
        """`fingerprints`: the circuit's view of this process's settings
        (`circuit_fingerprints`); `url` and `cluster` say what `client` is connected to."""
        self.r: Any = client
        self.retention = retention_seconds
        self.lease = lease_seconds
        self.url = url
        self.cluster = cluster
        self.keys = Keys(prefix, shards, sharded=cluster)
        self.key = self.keys.key
        self.skey = self.keys.skey
        self.ssl_options: dict[str, Any] = {}
        """TLS options of a `rediss://` client (certificate checks), for probes of the URL."""
        self.conn = self.connection_type(client, self.keys, cluster=cluster)
        self.circuit = Circuit(
            client,
            self.keys,
            fingerprints=fingerprints,
            probe_seconds=pause_probe_seconds,
            clock=lambda: self.clock(),  # the store's, whatever a test or the simulation sets
        )
        """Deployment faults (worker/core/circuit.py)."""
        self.records = self.records_type(
            self.conn, retention_seconds=retention_seconds, lease_seconds=lease_seconds
        )
        self.transitions = Transitions(
            self.conn, retention_seconds=retention_seconds, lease_seconds=lease_seconds
        )
        self.presence = self.presence_type(self.conn, lease_seconds=lease_seconds)
        self.watch = self.watch_type(self.conn)
        self.performer_field = PerformerField(self.conn)
        self.outcomes = Outcomes(self.conn, deadletter_max_entries=deadletter_max_entries)
        self.sweep = Sweep(
            self.conn,
            retention_seconds=retention_seconds,
            lease_seconds=lease_seconds,
            presence_interval=presence_interval,
            upstream_rate=upstream_rate,
            shadow=shadow,
            presence=self.presence,
            performer_field=self.performer_field,
            circuit=self.circuit,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        client_options: dict[str, Any] | None = None,
        sentinel_master: str | None = None,
        **kw: Any,
    ) -> Store:
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            **(client_options or {}),
        }
        if cluster:
            from redis.cluster import RedisCluster

            options.pop("health_check_interval", None)
            client: Any = RedisCluster.from_url(url, **options)
        elif url.startswith("sentinel://"):
            # the master the sentinels name now; after a failover the pool asks them again
            from redis.sentinel import Sentinel

            hosts, master_options = sentinel_hosts(url)
            sentinel_options = {k: v for k, v in options.items() if k.startswith(("socket", "ssl"))}
            sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_options, **options)
            client = sentinel.master_for(sentinel_master or "mymaster", **master_options)
        else:
            options.setdefault("health_check_interval", 30)
            client = redis.Redis.from_url(url, **options)
        store = cls(client, url=url, cluster=cluster, **kw)
        store.ssl_options = {k: v for k, v in options.items() if k.startswith("ssl_")}
        return store

    @classmethod
    def from_settings(cls, settings: Settings, **client_options: Any) -> Store:
        """The store the settings describe (single Redis or cluster, prefix, shards, ...)."""
        return cls.from_url(
            settings.redis_url,
            cluster=settings.redis_cluster,
            client_options={**settings.redis_ssl_options(settings.redis_url), **client_options},
            sentinel_master=settings.redis_sentinel_master,
            **store_settings(settings),
        )

    def ping(self) -> None:
        """Raises :class:`StoreUnavailable` with the masked URL when Redis cannot be reached."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        probe = (
            redis.Redis.from_url(
                self.url,
                socket_connect_timeout=2,
                socket_timeout=2,
                retry=Retry(NoBackoff(), 0),
                **self.ssl_options,
            )
            if self.url and not self.cluster and not self.url.startswith("sentinel://")
            else self.r
        )
        try:
            probe.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(
                f"cannot reach Redis at {mask_url(self.url)}: {type(exc).__name__}"
            ) from None

    @property
    def clock(self) -> Callable[[], float]:
        """The time of records written without an explicit `now` (a simulation sets its own)."""
        return self.conn.clock

    @clock.setter
    def clock(self, value: Callable[[], float]) -> None:
        self.conn.clock = value

    @property
    def server_clock(self) -> Callable[[], float] | None:
        """The Redis server's clock, for a simulation only (`Connection.server_clock`)."""
        return self.conn.server_clock

    @server_clock.setter
    def server_clock(self, value: Callable[[], float] | None) -> None:
        self.conn.server_clock = value

    @property
    def sharded(self) -> bool:
        return self.keys.sharded

    @property
    def shard_prefixes(self) -> list[str]:
        return self.keys.shard_prefixes

    @property
    def shards(self) -> range:
        return self.conn.shards

    def shard_for_user(self, user_id: str) -> int:
        return self.conn.shard_for_user(user_id)

    def shard_of(self, rebook_id: str) -> int | None:
        return self.conn.shard_of(rebook_id)

    def server_time(self, rebook_id: str | None = None) -> float:
        return self.conn.server_time(rebook_id)

    def claim_window(self, name: str, seconds: float) -> float:
        return self.conn.claim_window(name, seconds)

    def server_id(self, user_id: str) -> str:
        """The `run_id` of the Redis server that holds the member's records: new after every
        restart and on a failover — when writes may have been lost. Where it cannot be read (a
        proxy that refuses `INFO`), a value of its own each time: nothing counts as the same."""
        key = self.keys.of_member(self.conn.shard_for_user(user_id), user_id)
        client = self.r.get_node_from_key(key).redis_connection if self.cluster else self.r
        try:
            run_id = str(client.info("server").get("run_id") or "")
        except redis.ResponseError:
            run_id = ""
        return run_id or f"unknown-{secrets.token_hex(8)}"
