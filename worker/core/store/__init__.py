"""The durable truth: one record per rebook in Redis, its history, and the indexes around it.

Celery messages are only nudges; everything needed to continue after a lost message, a killed
worker or a restarted broker is here. Every state change is one Lua script (`transition.lua`), so a
record, its indexes, its history and its outcome never disagree. No Celery, no HTTP in this module.

Keys (prefix `REBOOK_KEY_PREFIX`): `r:{id}` record hash, `h:{id}` history list (none for a rebook
that went from WAITING straight to a final state: its one entry is the record's), `due` zset of
records needing the sweep, `performers` zset of presence checks, `perf:{pid}` waiting rebooks of a
performer, `user:{uid}` active rebooks of a member, `st:{STATE}` ids per state,
`active:{booking_id}`, `claimed:{new_booking_id}`, `created`/`finished` zsets, streams `outcomes`
and `deadletter`; `presence:calls:{t}` / `presence:performers:{t}` the record of presence calls
made and performers tracked per `PRESENCE_BUCKET_SECONDS` (expiring);
the console's indexes and chart counters (`ix:user:{uid}`, `ix:perf:{pid}`,
`ix:book:{bid}`, `chart:out:{hour}`, `chart:booked:{hour}`) are read by `worker/core/search.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal, Protocol

import redis
from pydantic import BaseModel, ConfigDict

from worker.core import zonecheck
from worker.core.capacity import presence_figures
from worker.core.circuit import Circuit, fingerprint
from worker.core.errors import StoreUnavailable
from worker.core.keys import Keys
from worker.core.models import iso_z
from worker.core.observability import scrub
from worker.core.settings import Settings, mask_url, sentinel_hosts
from worker.core.states import ACTIVE_STATES, State, lua_prelude

KEEP = ""
"""`due=KEEP` leaves the due index as it is; `due=REMOVE` takes the record out of it."""
REMOVE = "-"
DEADLETTER_PAYLOAD_LIMIT = 4096
PRESENCE_BUCKET_SECONDS = 10
"""Width of one bucket of the presence record (calls made, performers tracked)."""
PRESENCE_RECORD_SECONDS = 300
"""How far back `stats` measures the achieved presence interval; buckets expire after twice it."""
PRESENCE_SEEN_SECONDS = 8 * 86400
"""A performer's last presence answer outlives the longest max wait (7 days) by a day."""
LISTED = "_listed"
"""Field of a member's watch cache that says its MadeBookings read is done (booking ids are
digits, so it cannot collide)."""
SECRET_NAME = re.compile(
    r"token|secret|passw|authorization|api_?key|private_?key|fernet|credential|^key$", re.I
)


def rebook_id_for(event_id: str) -> str:
    """Deterministic id, so a redelivered event maps to the same record and ids are predictable."""
    return "rb-" + hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()


def now_ts() -> float:
    return time.time()


def _script(name: str) -> str:
    """A Lua script with the state sets of `worker.core.states` on top (`ACTIVE`, `STEP`)."""
    return lua_prelude() + resources.files("worker.core").joinpath(f"lua/{name}.lua").read_text()


class Rebook(BaseModel):
    """A record as read from Redis (the public fields of `status --json`, plus bookkeeping)."""

    model_config = ConfigDict(frozen=True)

    rebook_id: str
    event_id: str
    booking_id: int
    user_id: str
    performer_id: int | None = None
    state: State
    reason: str = ""
    new_booking_id: int | None = None
    accept_by: str = ""
    accept_by_ts: float | None = None
    status: str = ""
    duplicate_of: str = ""
    resume_state: State | None = None
    created_ts: float
    updated_ts: float = 0.0
    deadline_ts: float
    post_sent_ts: float | None = None
    answer_ts: float | None = None
    online_ts: float | None = None
    """When the performer was last seen online while this rebook waited (presence)."""
    would_post_ts: float | None = None
    """SHADOWED: when the POST would have gone out."""
    performer_resolved: bool = False
    """`performer_id` was read from the original's details, not given by the event: no answer
    compared with it says anything about which key names the performer."""
    adopted: str = ""
    """Why the new booking was taken as this rebook's (empty: the POST's own answer named it)."""
    known_ids: list[int] | None = None
    """The member's bookings the list showed before the last POST (JSON): not its booking."""
    empty_reads: int = 0
    gated_since: float | None = None
    blocked_by: str = ""
    claim: str = ""
    confirm_sent_ts: float | None = None
    confirm_answer_ts: float | None = None
    confirm_reads: int = 0
    action: str = ""
    attempts: int = 0
    errors: int = 0
    reconcile_tries: int = 0

    @classmethod
    def from_hash(cls, rebook_id: str, raw: dict[str, str]) -> Rebook:
        data: dict[str, Any] = {k: v for k, v in raw.items() if v != ""}
        if "known_ids" in data:
            data["known_ids"] = json.loads(data["known_ids"])
        return cls.model_validate({**data, "rebook_id": rebook_id})

    @property
    def unsettled(self) -> bool:
        """A POST went out (or may have) and nothing has shown what it made."""
        return self.post_sent_ts is not None and self.new_booking_id is None

    @property
    def created_at(self) -> str:
        return iso_z(datetime.fromtimestamp(self.created_ts, UTC))

    @property
    def updated_at(self) -> str:
        return iso_z(datetime.fromtimestamp(self.updated_ts or self.created_ts, UTC))

    def public(self) -> dict[str, Any]:
        """The JSON shape of `rebook status --json` / `list --json`."""
        return {
            "rebook_id": self.rebook_id,
            "event_id": self.event_id,
            "booking_id": self.booking_id,
            "user_id": self.user_id,
            "performer_id": self.performer_id,
            "state": self.state.value,
            "reason": self.reason,
            "new_booking_id": self.new_booking_id,
            "accept_by": self.accept_by or None,
            "status": self.status or None,
            "duplicate_of": self.duplicate_of or None,
            "action": self.action or None,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "deadline": iso_z(datetime.fromtimestamp(self.deadline_ts, UTC)),
        }


@dataclass(frozen=True)
class PresenceSeen:
    """A performer's last presence answer: `online`, `offline` or `unknown` (the call failed:
    `error`), and since when every answer has said offline."""

    at: float
    answer: str
    offline_since: float | None = None
    error: str = ""


@dataclass(frozen=True)
class Created:
    kind: Literal["created", "exists", "duplicate"]
    rebook_id: str
    other: str = ""
    dispatch_presence: bool = False
    replicas: int = 0
    """`WAIT`'s answer when `create` was asked to wait (else 0)."""


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of an untrusted payload with secret-looking fields blanked, for dead letters."""
    if depth > 6:
        return "…"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in list(value.items())[:50]:
            name = str(k)
            if SECRET_NAME.search(name.replace("-", "_")):
                out[name[:64]] = "[redacted]"
            else:
                out[name[:64]] = redact(v, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(v, depth + 1) for v in list(value)[:50]]
    if isinstance(value, str):
        return scrub(value[:512])
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return scrub(repr(value)[:128])


def scrubbed(value: Any) -> Any:
    """Free text on its way into Redis (reasons, outcome details): upstream error text is
    untrusted and may echo a token, a key or a URL password; scrubbed here, once, for every
    record, history entry, outcome (and so webhook body) and dead letter."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrubbed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrubbed(v) for v in value]
    return value


class StepLock(Protocol):
    """What a step needs of its lock (redis-py's `Lock`; a simulation brings its own)."""

    def acquire(self) -> bool: ...
    def release(self) -> None: ...
    def extend(self, additional_time: float, replace_ttl: bool = False) -> bool: ...


def circuit_fingerprints(settings: Settings) -> dict[str, str]:
    """What a process's settings look like to the circuit (changed value: fault cleared)."""
    return {
        "oauth_client": fingerprint(
            f"{settings.oauth_client_id}\0{settings.oauth_client_secret.get_secret_value()}"
        ),
        "api_key": fingerprint(settings.api_key.get_secret_value()),
    }


class Store:
    """Typed operations on the Redis state. Thread-safe; one per process is enough.

    Sharding (Redis Cluster): every rebook lives in the shard of its member
    (`crc32(user_id) % shards`), and every key of a shard carries the hash tag `{rbK}`, so each
    Lua script touches one slot — the member's records, their booking and member indexes, the
    member+performer gate, the shard's due index and outcome stream. Keys that are read by one
    command only (locks, claims, tokens, rate limit, dead letters) stay global. With one shard and
    no cluster (the default) the keys are exactly `{prefix}r:{id}`, `{prefix}outcomes`, ...
    """

    deadletter_max_entries = 100_000
    """REBOOK_DEADLETTER_MAX_ENTRIES: a flood of bad messages cannot fill Redis (and then make it
    refuse the events that matter); housekeeping also trims entries older than the retention."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "rebook:",
        retention_seconds: int = 14 * 86400,
        lease_seconds: float = 60.0,
        url: str = "",
        shards: int = 1,
        cluster: bool = False,
    ) -> None:
        # decode_responses=True: replies are str; redis-py's stubs cannot know that.
        self.r: Any = client
        self.retention = retention_seconds
        self.lease = lease_seconds
        self.url = url
        self.cluster = cluster
        self.keys = Keys(prefix, shards, sharded=cluster)
        self.key = self.keys.key
        self.skey = self.keys.skey
        self._shard_cache: dict[str, int] = {}
        self.ssl_options: dict[str, Any] = {}
        """TLS options of a `rediss://` client (certificate checks), for probes of the URL."""
        self._transition = client.register_script(_script("transition"))
        self._create = client.register_script(_script("create"))
        self._sweep = client.register_script(_script("sweep"))
        self._performer_next = client.register_script(_script("performer_next"))
        self._presence_keep = client.register_script(_script("presence_keep"))
        self.presence_interval = 30.0
        self.upstream_rate = 20.0
        """For `stats()`' presence figures (set from the settings by `from_settings`)."""
        self.shadow = False
        """REBOOK_SHADOW, for `stats()`' shadow figures (set by `from_settings`)."""
        self._claim = client.register_script(_script("claim"))
        self._performer_learn = client.register_script(_script("performer_learn"))
        self.clock: Callable[[], float] = time.time
        """The time of records written without an explicit `now` (a simulation sets its own)."""
        self.server_clock: Callable[[], float] | None = None
        """The Redis server's clock, for a simulation only (its time is virtual); None: Redis's
        own `TIME`, in the scripts and in `server_time` (README "Exactly one booking")."""
        self.circuit = Circuit(client, self.keys)
        """Deployment faults (worker/core/circuit.py); `from_settings` gives it the settings'
        fingerprints and probe interval."""

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
        """The store the settings describe (single Redis or cluster, prefix, shards)."""
        store = cls.from_url(
            settings.redis_url,
            cluster=settings.redis_cluster,
            client_options={**settings.redis_ssl_options(settings.redis_url), **client_options},
            sentinel_master=settings.redis_sentinel_master,
            prefix=settings.key_prefix,
            retention_seconds=settings.retention_seconds,
            lease_seconds=settings.step_lease_seconds,
            shards=settings.shards,
        )
        store.deadletter_max_entries = settings.deadletter_max_entries
        store.presence_interval = settings.presence_interval_seconds
        store.upstream_rate = settings.upstream_rate_per_second
        store.shadow = settings.shadow
        store.circuit = Circuit(
            store.r,
            store.keys,
            fingerprints=circuit_fingerprints(settings),
            probe_seconds=settings.pause_probe_seconds,
        )
        return store

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
    def sharded(self) -> bool:
        return self.keys.sharded

    @property
    def shard_prefixes(self) -> list[str]:
        return self.keys.shard_prefixes

    @property
    def shards(self) -> range:
        return range(len(self.shard_prefixes))

    def shard_for_user(self, user_id: str) -> int:
        if not self.sharded:
            return 0
        return zlib.crc32(user_id.encode()) % len(self.shard_prefixes)

    def shard_of(self, rebook_id: str) -> int | None:
        """The shard of a rebook: 0 unsharded, else its locator key (cached: it never moves)."""
        if not self.sharded:
            return 0
        found = self._shard_cache.get(rebook_id)
        if found is None:
            value = self.r.get(self.keys.location(rebook_id))
            if value is None:
                return None
            found = int(value)
            if len(self._shard_cache) > 100_000:
                self._shard_cache.clear()
            self._shard_cache[rebook_id] = found
        return found

    def _shards_of(self, ids: Sequence[str]) -> list[int | None]:
        if not self.sharded:
            return [0] * len(ids)
        missing = [rid for rid in ids if rid not in self._shard_cache]
        if missing:
            pipe = self.r.pipeline(transaction=False)
            for rid in missing:
                pipe.get(self.keys.location(rid))
            for rid, value in zip(missing, pipe.execute(), strict=True):
                if value is not None:
                    self._shard_cache[rid] = int(value)
        return [self._shard_cache.get(rid) for rid in ids]

    def _script_args(self, shard: int) -> tuple[list[str], str]:
        """KEYS routes a script to its shard's node in a cluster; the prefix names its keys."""
        return [self.keys.due(shard)], self.shard_prefixes[shard]

    # -- records -------------------------------------------------------------------------------

    def create(
        self,
        *,
        rebook_id: str,
        event_id: str,
        booking_id: int,
        user_id: str,
        performer_id: int | None,
        deadline: float,
        now: float,
        replicas: int = 0,
        replica_timeout_ms: int = 0,
    ) -> Created:
        """With `replicas`, the script and `WAIT` go in one pipeline on one connection (as the
        mark's, `start_post`): the event is acknowledged only once replicas have its record."""
        shard = self.shard_for_user(user_id)
        if self.sharded:
            self.r.set(self.keys.location(rebook_id), shard, nx=True)
            self._shard_cache[rebook_id] = shard
        keys, prefix = self._script_args(shard)
        due = deadline if performer_id is not None else now
        args = [
            prefix,
            rebook_id,
            event_id,
            booking_id,
            user_id,
            "" if performer_id is None else performer_id,
            repr(deadline),
            repr(now),
            iso_z(datetime.fromtimestamp(now, UTC)),
            self.retention,
            self.lease,
            repr(due),
        ]
        got = 0
        if replicas:
            pipe = self._one_connection(keys[0])
            self._create(keys=keys, args=args, client=pipe)
            pipe.wait(replicas, replica_timeout_ms)
            (kind, value), got = pipe.execute()
        else:
            kind, value = self._create(keys=keys, args=args)
        if kind == "created":
            return Created("created", rebook_id, dispatch_presence=value == "1", replicas=got)
        if kind == "duplicate":
            return Created("duplicate", rebook_id, other=value, replicas=got)
        return Created("exists", value, replicas=got)

    def get(self, rebook_id: str) -> Rebook | None:
        shard = self.shard_of(rebook_id)
        if shard is None:
            return None
        raw = self.r.hgetall(self.keys.record(shard, rebook_id))
        return Rebook.from_hash(rebook_id, raw) if raw else None

    def find(self, ident: str) -> Rebook | None:
        """By rebook id or by event id (the rebook id is derived from it)."""
        return self.get(ident) or self.get(rebook_id_for(ident))

    def get_many(self, ids: Sequence[str]) -> list[Rebook]:
        located = [
            (rid, s) for rid, s in zip(ids, self._shards_of(ids), strict=True) if s is not None
        ]
        pipe = self.r.pipeline(transaction=False)
        for rid, shard in located:
            pipe.hgetall(self.keys.record(shard, rid))
        return [
            Rebook.from_hash(rid, raw)
            for (rid, _), raw in zip(located, pipe.execute(), strict=True)
            if raw
        ]

    def history(self, rebook_id: str) -> list[dict[str, Any]]:
        """Transitions, oldest first. The first ("received") is implied by the record."""
        shard = self.shard_of(rebook_id)
        if shard is None:
            return []
        raw = self.r.lrange(self.keys.history(shard, rebook_id), 0, -1)
        entries = [json.loads(item) for item in raw]
        created, at, state, reason = self.r.hmget(
            self.keys.record(shard, rebook_id), ["created_ts", "history_at", "state", "reason"]
        )
        if at:  # WAITING straight to a final state: its entry is the record's (transition.lua)
            entries.append({"at": at, "from": State.WAITING.value, "to": state, "reason": reason})
        if entries and entries[0].get("from") == "":
            return entries  # created straight into a final state (DUPLICATE)
        if created is None:
            return entries
        first = {
            "at": iso_z(datetime.fromtimestamp(float(created), UTC)),
            "from": "",
            "to": State.WAITING.value,
            "reason": "received",
        }
        return [first, *entries]

    def active_owner(self, booking_id: int, user_id: str) -> str | None:
        """The rebook that holds a booking (the member's shard)."""
        value = self.r.get(self.keys.active(self.shard_for_user(user_id), booking_id))
        return str(value) if value is not None else None

    def rebooks_of_booking(self, booking_id: int, user_id: str) -> list[Rebook]:
        """Every rebook of an original that has had an outcome (the `book` index), and its
        active one: what a retry must not book past."""
        shard = self.shard_for_user(user_id)
        ids = {
            str(i) for i in self.r.zrange(self.keys.search_index(shard, "book", booking_id), 0, -1)
        }
        active = self.active_owner(booking_id, user_id)
        if active is not None:
            ids.add(active)
        return self.get_many(sorted(ids))

    def transition(
        self,
        rebook_id: str,
        to: State,
        *,
        from_: Iterable[State] | None = None,
        reason: str = "",
        due: float | str = KEEP,
        fields: dict[str, Any] | None = None,
        require: dict[str, Any] | None = None,
        outcome: str = "",
        detail: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> bool:
        """Compare-and-set: applies only if the state is in `from_` and `require` fields match.

        A field set to None is deleted; `require` compares string forms ("" = absent).
        """
        ok, *_ = self._run_transition(
            rebook_id,
            to,
            from_=from_,
            reason=reason,
            due=due,
            fields=fields,
            require=require,
            outcome=outcome,
            detail=detail,
            now=now,
        )
        return ok

    def transition_many(
        self,
        rebook_ids: Sequence[str],
        to: State,
        *,
        from_: Iterable[State],
        reason: str,
        outcome: str = "",
        due: float | str = REMOVE,
        fields: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> list[str]:
        """The same transition for many rebooks, one script call per shard (the sweep's
        GAVE_UPs, the rebooks of a performer who came online); returns those it applied to."""
        ts = self.clock() if now is None else now
        by_shard: dict[int, list[str]] = {}
        for rid, shard in zip(rebook_ids, self._shards_of(rebook_ids), strict=True):
            if shard is not None:
                by_shard.setdefault(shard, []).append(rid)
        applied: list[str] = []
        for shard, ids in by_shard.items():
            keys, prefix = self._script_args(shard)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                result = self._transition(
                    keys=keys,
                    args=self._transition_argv(
                        prefix, ",".join(chunk), from_, to, ts, reason, due, outcome, fields
                    ),
                )
                # one id answers {ok, state}; several answer one flag each
                flags = [result[0]] if len(chunk) == 1 else result
                applied.extend(rid for rid, ok in zip(chunk, flags, strict=True) if int(ok))
        return applied

    def start_post(
        self,
        rebook_id: str,
        *,
        now: float,
        attempts: int,
        claim: str,
        known_ids: Sequence[int],
        due: float,
        member_wide: bool = False,
        replicas: int = 0,
        replica_timeout_ms: int = 0,
    ) -> tuple[bool, str, int, float | None]:
        """Records "POST sent" — only if this step still holds the rebook (`claim`), no POST of
        it is unsettled, and no other rebook of the same member and performer has one (their
        bookings could not be told apart in reconciliation) — `member_wide`: of the same member,
        whatever the performer (the performer field is unconfirmed, so no booking can be told
        apart by performer). Returns (True, "", n) when the POST may go out, else (False, the
        holder's id when gated, else "", n); see `gate_holder`.

        With `replicas`, the mark and `WAIT replicas replica_timeout_ms` go in one pipeline on
        one connection (`WAIT` counts the replicas that have that connection's writes: on any
        other pooled connection it may answer at once, for a connection that wrote nothing);
        n is its answer, else 0. Last, the mark: Redis's own time, written by the script (the
        proof's window is timed on the server's clock, not on any worker's), or None."""
        ok, current, got, stamp = self._run_transition(
            rebook_id,
            State.RESCHEDULING,
            from_=[State.RESCHEDULING],
            reason="POST sent",
            due=due,
            fields={
                "post_sent_ts": SERVER_NOW,
                "attempts": attempts,
                "reconcile_tries": None,  # failed reads before it; its own proof counts afresh
                "known_ids": json.dumps(list(known_ids), separators=(",", ":")),
                "answer_ts": None,
                "empty_reads": None,
                "gated_since": None,
                "blocked_by": None,
            },
            require={"post_sent_ts": "", "claim": claim},
            now=now,
            gate="gate_member" if member_wide else "gate",
            wait=(replicas, replica_timeout_ms) if replicas else None,
        )
        if ok:
            return True, "", got, float(stamp)
        holder = current.removeprefix("gate:") if current.startswith("gate:") else ""
        return False, holder, got, None

    def gate_holder(self, rec: Rebook, member_wide: bool = False) -> str | None:
        """The other rebook of the same member and performer (`member_wide`: of the member)
        whose POST is unsettled, if any. A read-only look before spending an upstream read on a
        POST that could not go out; `start_post` decides (transition.lua)."""
        shard = self.shard_of(rec.rebook_id)
        if shard is None:
            return None
        holders = [
            self.r.get(self.keys.gate(shard, rec.user_id, rec.performer_id)),
            self.r.get(self.keys.gate(shard, rec.user_id, None)),
        ]
        if member_wide:
            holders += sorted(self.r.smembers(self.keys.posted(shard, rec.user_id, None)))
        for holder in dict.fromkeys(h for h in holders if h and h != rec.rebook_id):
            sent, made = self.r.hmget(
                self.keys.record(shard, holder), ["post_sent_ts", "new_booking_id"]
            )
            if sent and not made:
                return str(holder)
        return None

    def server_id(self, user_id: str) -> str:
        """The `run_id` of the Redis server that holds the member's records: new after every
        restart and on a failover — when writes may have been lost. Where it cannot be read (a
        proxy that refuses `INFO`), a value of its own each time: nothing counts as the same."""
        key = self.keys.of_member(self.shard_for_user(user_id), user_id)
        client = self.r.get_node_from_key(key).redis_connection if self.cluster else self.r
        try:
            run_id = str(client.info("server").get("run_id") or "")
        except redis.ResponseError:
            run_id = ""
        return run_id or f"unknown-{secrets.token_hex(8)}"

    def posted_without_booking(self, rec: Rebook, member_wide: bool = False) -> list[str]:
        """Rebooks of the member and performer (`member_wide`: of the member, any performer)
        that sent a POST and own no booking (yet)."""
        shard = self.shard_for_user(rec.user_id)
        pid = None if member_wide else rec.performer_id
        ids = self.r.smembers(self.keys.posted(shard, rec.user_id, pid))
        return sorted(str(i) for i in ids)

    # -- the performer field -------------------------------------------------------------------

    def performer_field(self) -> str | None:
        """The confirmed key of a booking's `Performer` that names the performer's user id, or
        None while no key is confirmed (then no booking is told apart by its performer)."""
        value = self.r.hget(self.keys.performer_field, "confirmed")
        return str(value) if value else None

    def learn_performer_field(
        self,
        performer: dict[str, Any],
        performer_id: int,
        booking_id: int,
        *,
        answers: int,
        performers: int,
        now: float | None = None,
    ) -> tuple[str | None, str]:
        """One answer of known meaning: `performer` is the `Performer` object of booking
        `booking_id`, which is certainly of `performer_id`. Returns (the confirmed key or None,
        "confirmed" | "dropped" | "" — what this answer changed)."""
        matched = sorted(str(k) for k, v in performer.items() if _id_text(v) == str(performer_id))
        values = {str(k): _id_text(v) or str(v)[:40] for k, v in list(performer.items())[:50]}
        confirmed, change = self._performer_learn(
            keys=[self.keys.performer_field],
            args=[
                performer_id,
                booking_id,
                repr(self.clock() if now is None else now),
                answers,
                performers,
                json.dumps(matched),
                json.dumps(values),
            ],
        )
        return (str(confirmed) or None), str(change or "")

    def learning_slot(self, limit: int, window: float, now: float | None = None) -> bool:
        """One of at most `limit` reads of an original per `window` seconds spent on learning
        the performer field (a burst of events before the first answers costs `limit`, not one
        read each)."""
        bucket = int((self.clock() if now is None else now) // window)
        key = self.keys.key("shape", "reads", bucket)
        pipe = self.r.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, int(window) + 1)
        taken, _ = pipe.execute()
        return int(taken) <= limit

    def performer_field_stats(self) -> dict[str, Any]:
        """`stats --json`'s `performer_field`: the confirmed key (or null) and its evidence —
        agreeing answers, distinct performers — or, while none is confirmed, the leading key's;
        contradictions seen in all, and the last one."""
        raw: dict[str, str] = self.r.hgetall(self.keys.performer_field) or {}
        confirmed = raw.get("confirmed") or None
        counts = {k[2:]: int(v) for k, v in raw.items() if k.startswith("n:")}
        lead = confirmed or max(sorted(counts), key=lambda k: counts[k], default=None)
        performers = len([p for p in raw.get(f"p:{lead}", "").split(",") if p]) if lead else 0
        last = json.loads(raw["last"]) if raw.get("last") else None
        return {
            "field": confirmed,
            "candidate": lead,
            "answers": counts.get(lead, 0) if lead else 0,
            "performers": performers,
            "contradictions": int(raw.get("c", 0)),
            "last_contradiction": last,
        }

    def claim_step(self, rebook_id: str, token: str) -> Rebook | None:
        """Writes this step's fencing token into the record and reads it, in one call. Every
        write of the step then requires the token: a step whose lease ran out while it was in
        an upstream call finds its writes refused, and the step that took over decides."""
        shard = self.shard_of(rebook_id)
        if shard is None:
            return None
        raw = self._claim(keys=[self.keys.record(shard, rebook_id)], args=[token])
        if not raw:
            return None
        return Rebook.from_hash(rebook_id, dict(zip(raw[::2], raw[1::2], strict=True)))

    def _one_connection(self, key: str) -> Any:
        """A transaction-less pipeline whose commands all go on one connection: of the client,
        or in a cluster of the node that holds `key`."""
        if self.cluster:
            return self.r.get_node_from_key(key).redis_connection.pipeline(transaction=False)
        return self.r.pipeline(transaction=False)

    def server_time(self, rebook_id: str | None = None) -> float:
        """Redis's own clock (`TIME`), to the millisecond: the one clock the exactly-once proof
        is timed on, whatever the worker clocks say (the marks the scripts write use it too).
        In a cluster, the clock of the node that runs `rebook_id`'s scripts (its shard's)."""
        if self.server_clock is not None:
            return round(self.server_clock(), 3)
        client = self.r
        if self.cluster:
            shard = self.shard_of(rebook_id) if rebook_id is not None else None
            key = self._script_args(shard if shard is not None else 0)[0][0]
            client = self.r.get_node_from_key(key).redis_connection
        secs, micros = client.time()
        return float(f"{int(secs)}.{int(micros) // 1000:03d}")

    def _run_transition(
        self,
        rebook_id: str,
        to: State,
        *,
        from_: Iterable[State] | None,
        reason: str,
        due: float | str,
        fields: dict[str, Any] | None,
        require: dict[str, Any] | None,
        outcome: str = "",
        detail: dict[str, Any] | None = None,
        now: float | None = None,
        gate: str = "",
        wait: tuple[int, int] | None = None,
    ) -> tuple[bool, str, int, str]:
        """The transition; with `wait` (replicas, timeout ms), then `WAIT` on the connection that
        ran it, and its answer (else 0); last, the "=TIME" stamp the script wrote (else "")."""
        shard = self.shard_of(rebook_id)
        if shard is None:
            return False, "", 0, ""
        keys, prefix = self._script_args(shard)
        ts = self.clock() if now is None else now
        argv = self._transition_argv(
            prefix, rebook_id, from_, to, ts, reason, due, outcome, fields, require, detail, gate
        )
        if wait is None:
            result, got = self._transition(keys=keys, args=argv), 0
        else:
            pipe = self._one_connection(keys[0])
            self._transition(keys=keys, args=argv, client=pipe)
            pipe.wait(*wait)
            result, got = pipe.execute()
        stamp = str(result[2]) if len(result) > 2 else ""
        return bool(result[0]), str(result[1] or ""), int(got), stamp

    def _transition_argv(
        self,
        prefix: str,
        ids: str,
        from_: Iterable[State] | None,
        to: State,
        ts: float,
        reason: str,
        due: float | str,
        outcome: str,
        fields: dict[str, Any] | None,
        require: dict[str, Any] | None = None,
        detail: dict[str, Any] | None = None,
        gate: str = "",
    ) -> list[Any]:
        """ARGV of transition.lua (its header lists them), built in one place."""
        return [
            prefix,
            ids,
            "*" if from_ is None else ",".join(s.value for s in from_),
            to.value,
            repr(ts),
            iso_z(datetime.fromtimestamp(ts, UTC)),
            scrub(reason)[:500],
            due if isinstance(due, str) else repr(due),
            outcome,
            self.retention,
            json.dumps({k: _field(v) for k, v in (fields or {}).items()}),
            json.dumps({k: _field(v) for k, v in (require or {}).items()}),
            json.dumps(scrubbed(detail or {}), default=str),
            self.lease,
            gate,
            "" if self.server_clock is None else repr(self.server_time()),
        ]

    def claim_booking(self, new_booking_id: int, rebook_id: str) -> bool:
        """Marks an upstream booking as ours; False if another rebook already owns it."""
        key = self.keys.claimed(new_booking_id)
        if self.r.set(key, rebook_id, nx=True, ex=self.retention + 86400):
            return True
        return self.r.get(key) == rebook_id

    def owner_of(self, new_booking_id: int) -> str | None:
        return self.r.get(self.keys.claimed(new_booking_id))

    def owners_of(self, booking_ids: Sequence[int]) -> list[str | None]:
        if not booking_ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for bid in booking_ids:
            pipe.get(self.keys.claimed(bid))
        return list(pipe.execute())

    def lock(self, rebook_id: str, timeout: float | None = None) -> StepLock:
        """Per-rebook lock so two workers never run a step of the same rebook at once."""
        return self.r.lock(self.keys.lock(rebook_id), timeout=timeout or self.lease, blocking=False)

    # -- watch cache -----------------------------------------------------------------------------

    def cache_bookings(self, user_id: str, bookings: dict[int, str], ttl: float) -> None:
        """A member's bookings as read by one MadeBookings call, shared for one interval. The
        `LISTED` field says the read is done, even when it found nothing."""
        key = self.keys.watchcache(user_id)
        pipe = self.r.pipeline(transaction=not self.cluster)
        pipe.delete(key)
        pipe.hset(key, mapping={LISTED: "1", **{str(k): v for k, v in bookings.items()}})
        pipe.pexpire(key, max(1, int(ttl * 1000)))
        pipe.execute()

    def forget_cached(self, user_id: str, booking_id: int) -> None:
        """After we changed a booking (confirm), its next read goes upstream."""
        self.r.hdel(self.keys.watchcache(user_id), str(booking_id))

    def cached_booking(self, user_id: str, booking_id: int) -> tuple[bool, str | None]:
        """(whether the member's list has been read this interval, the booking as listed)."""
        listed, value = self.r.hmget(self.keys.watchcache(user_id), [LISTED, str(booking_id)])
        return listed is not None, str(value) if value is not None else None

    # -- performers ----------------------------------------------------------------------------

    def claim_window(self, name: str, seconds: float) -> float:
        """Lets one caller (of all workers) act per window of `seconds`.

        Returns 0 when this caller may act now, else the seconds until the window ends.
        """
        key = self.keys.window(name)
        if self.r.set(key, "1", nx=True, px=max(1, int(seconds * 1000))):
            return 0.0
        return max(0.001, int(self.r.pttl(key)) / 1000)

    def claim_presence_call(self, performer_id: int, interval: float) -> float:
        """At most one presence call per performer per interval, across all workers."""
        return self.claim_window(self.keys.presence_window(performer_id), interval)

    def release_presence_call(self, performer_id: int) -> None:
        """The claimed call was not made (rate budget): the next check may go at once."""
        self.r.delete(self.keys.window(self.keys.presence_window(performer_id)))

    def waiting_count(self, performer_id: int) -> int:
        """O(1) per shard: enough to decide whether a presence call is needed at all."""
        pipe = self.r.pipeline(transaction=False)
        for shard in self.shards:
            pipe.scard(self.keys.waiting_on(shard, performer_id))
        return sum(int(n) for n in pipe.execute())

    def waiting_for(self, performer_id: int) -> list[str]:
        pipe = self.r.pipeline(transaction=False)
        for shard in self.shards:
            pipe.smembers(self.keys.waiting_on(shard, performer_id))
        return sorted(set().union(*pipe.execute()))

    def schedule_performer(self, performer_id: int, at: float) -> bool:
        """Next presence check at `at` while rebooks wait on the performer; False if none wait."""
        waiting = False
        for shard in self.shards:
            keys, prefix = self._script_args(shard)
            waiting |= bool(self._performer_next(keys=keys, args=[prefix, performer_id, repr(at)]))
        return waiting

    def keep_presence_turn(self, performer_id: int, now: float) -> None:
        """The check made no call: the performer goes back to its place in the line (the one it
        was claimed from), not behind everyone polled since."""
        for shard in self.shards:
            keys, prefix = self._script_args(shard)
            self._presence_keep(keys=keys, args=[prefix, performer_id, repr(now), repr(self.lease)])

    def note_presence_call(
        self,
        now: float,
        performer_id: int | None = None,
        online: bool | None = None,
        error: str = "",
    ) -> None:
        """Counts one presence call made, in the bounded record `stats` reads; with a
        performer, also keeps its last answer (`presence_seen`) in the same round trip."""
        key = self.keys.presence_calls(int(now // PRESENCE_BUCKET_SECONDS))
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(key, "calls", 1)
        pipe.hsetnx(key, "first", repr(now))
        pipe.expire(key, 2 * PRESENCE_RECORD_SECONDS)
        if performer_id is not None:
            seen = self.keys.presence_seen(performer_id)
            answer = "unknown" if online is None else "online" if online else "offline"
            pipe.hset(
                seen, mapping={"at": repr(now), "answer": answer, "error": scrub(error)[:300]}
            )
            if online is False:
                pipe.hsetnx(seen, "offline_since", repr(now))  # the first of an offline run
            elif online:
                pipe.hdel(seen, "offline_since")
            pipe.expire(seen, PRESENCE_SEEN_SECONDS)
        pipe.execute()

    def presence_seen(self, performer_id: int) -> PresenceSeen | None:
        """The last presence answer for a performer, for the console's "why is it waiting"
        (None before the first check, or once nobody waited on them for a week)."""
        raw = self.r.hgetall(self.keys.presence_seen(performer_id))
        if not raw.get("at"):
            return None
        since = raw.get("offline_since")
        return PresenceSeen(
            at=float(raw["at"]),
            answer=raw.get("answer", "unknown"),
            offline_since=float(since) if since else None,
            error=raw.get("error", ""),
        )

    def note_presence_performers(self, now: float) -> int:
        """The sweep's sample of performers tracked (those with waiting rebooks), per bucket."""
        pipe = self.r.pipeline(transaction=False)
        for shard in self.shards:
            pipe.zcard(self.keys.performers(shard))
        count = sum(int(n) for n in pipe.execute())
        self.r.set(
            self.keys.presence_performers(int(now // PRESENCE_BUCKET_SECONDS)),
            count,
            ex=2 * PRESENCE_RECORD_SECONDS,
        )
        return count

    def achieved_presence_interval(
        self, now: float, seconds: float = PRESENCE_RECORD_SECONDS
    ) -> float | None:
        """Mean time between two presence calls of one performer over the last `seconds`, as
        made: mean performers tracked / calls per second. None until a call was recorded."""
        last = int(now // PRESENCE_BUCKET_SECONDS)
        buckets = list(range(last - int(seconds // PRESENCE_BUCKET_SECONDS) + 1, last + 1))
        pipe = self.r.pipeline(transaction=False)
        for b in buckets:
            pipe.hmget(self.keys.presence_calls(b), ["calls", "first"])
            pipe.get(self.keys.presence_performers(b))
        rows = pipe.execute()
        calls = [int(c or 0) for c, _ in rows[0::2]]
        firsts = [float(f) for _, f in rows[0::2] if f is not None]
        perfs = [int(n) for n in rows[1::2] if n is not None]
        if not sum(calls) or not perfs:
            return None
        # from the first call recorded (a young deployment) or the window's start, to now
        start = max(firsts[0], now - seconds)
        span = max(1.0, now - start)
        return (sum(perfs) / len(perfs)) / (sum(calls) / span)

    # -- sweep & housekeeping ----------------------------------------------------------------------

    def claim_due(
        self, now: float, batch: int, ahead: float = 0.0, performers: int | None = None
    ) -> tuple[list[str], dict[int, float]]:
        """Claims what is overdue in every shard (the sweep walks all shards): rebook ids, and
        performers whose presence check is due by `now + ahead`, with its due time — at most
        `performers` of them (split over the shards), the longest due first."""
        all_ids: list[str] = []
        all_pids: dict[int, float] = {}
        limit = batch if performers is None else min(batch, performers)
        per_shard = max(1, -(-limit // len(self.shards)))
        for shard in self.shards:
            keys, prefix = self._script_args(shard)
            ids, pids, ats = self._sweep(
                keys=keys,
                args=[prefix, repr(now), repr(self.lease), batch, repr(ahead), per_shard],
            )
            for rid in ids:
                self._shard_cache.setdefault(rid, shard)
            all_ids.extend(ids)
            for pid, at in zip(pids, ats, strict=True):
                all_pids[int(pid)] = min(float(at), all_pids.get(int(pid), float("inf")))
        return all_ids, all_pids

    def performer_due(self, performer_id: int) -> float | None:
        """When the performer's next presence check is due (the console's "next check")."""
        pipe = self.r.pipeline(transaction=False)
        for shard in self.shards:
            pipe.zscore(self.keys.performers(shard), performer_id)
        scores = [float(s) for s in pipe.execute() if s is not None]
        return min(scores) if scores else None

    def last_sweep(self) -> float | None:
        value = self.r.get(self.keys.sweep_last())
        return float(value) if value else None

    def expire_finished(self, now: float, batch: int = 1000) -> int:
        """Deletes finished records older than the retention; trims the streams the same way."""
        cutoff = now - self.retention
        removed = 0
        for shard in self.shards:
            ids = self.r.zrangebyscore(
                self.keys.finished(shard), "-inf", cutoff, start=0, num=batch
            )
            if ids:
                rows = self.r.pipeline(transaction=False)
                for rid in ids:
                    rows.hmget(
                        self.keys.record(shard, rid),
                        ["state", "user_id", "performer_id", "booking_id"],
                    )
                found = rows.execute()
                # one command per key, not per id (1,000 ids: a few hundred commands, not 7,000)
                gone: list[str] = []
                by_set: dict[str, list[str]] = {}
                by_zset: dict[str, list[str]] = {
                    self.keys.created(shard): list(ids),
                    self.keys.finished(shard): list(ids),
                }
                for rid, (state, uid, pid, bid) in zip(ids, found, strict=True):
                    gone += [self.keys.record(shard, rid), self.keys.history(shard, rid)]
                    if state:
                        by_set.setdefault(self.keys.in_state(shard, state), []).append(rid)
                    # the console's indexes (worker/core/search.py) lose the id with its record
                    for name, value in (("user", uid), ("perf", pid), ("book", bid)):
                        if value:
                            key = self.keys.search_index(shard, name, value)
                            by_zset.setdefault(key, []).append(rid)
                pipe = self.r.pipeline(transaction=not self.cluster)
                pipe.delete(*gone)
                for key, members in by_set.items():
                    pipe.srem(key, *members)
                for key, members in by_zset.items():
                    pipe.zrem(key, *members)
                pipe.execute()
                if self.sharded:
                    self.r.delete(*[self.keys.location(rid) for rid in ids])
                removed += len(ids)
            self.r.xtrim(
                self.keys.outcomes(shard), minid=f"{int(cutoff * 1000)}-0", approximate=True
            )
        self.r.xtrim(self.keys.deadletter, minid=f"{int(cutoff * 1000)}-0", approximate=True)
        return removed

    # -- members ---------------------------------------------------------------------------------

    def active_of_user(self, user_id: str) -> list[str]:
        shard = self.shard_for_user(user_id)
        return sorted(self.r.smembers(self.keys.of_member(shard, user_id)))

    def _member_day(self, user_id: str, now: float) -> str:
        return self.keys.member_day(user_id, datetime.fromtimestamp(now, UTC).strftime("%Y%m%d"))

    def member_posts_today(self, user_id: str, now: float) -> int:
        """Rebook POSTs sent for the member this UTC day (REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY)."""
        return int(self.r.get(self._member_day(user_id, now)) or 0)

    def take_member_post(self, user_id: str, cap: int, now: float) -> bool:
        """Counts one POST of the member today, atomically; False (nothing counted) past `cap`."""
        key = self._member_day(user_id, now)
        pipe = self.r.pipeline(transaction=not self.cluster)
        pipe.incr(key)
        pipe.expire(key, 2 * 86400)
        count = int(pipe.execute()[0])
        if count > cap:
            self.r.decr(key)
            return False
        return True

    def give_back_member_post(self, user_id: str, now: float) -> None:
        """A counted POST that did not go out after all."""
        self.r.decr(self._member_day(user_id, now))

    def park_detail(self, rec: Rebook) -> dict[str, Any] | None:
        """The detail of the record's last NEEDS_ATTENTION outcome (its `why`, ...), looked up
        in its shard's outcome stream around its last update (clocks a minute apart at most)."""
        shard = self.shard_of(rec.rebook_id)
        if shard is None:
            return None
        at = rec.updated_ts or rec.created_ts
        rows = self.r.xrange(
            self.keys.outcomes(shard), min=f"{int((at - 60) * 1000)}-0",
            max=f"{int((at + 60) * 1000)}-0", count=5000,
        )  # fmt: skip
        found: dict[str, Any] | None = None
        for _, fields in rows:
            ours = fields.get("rebook_id") == rec.rebook_id
            if ours and fields.get("state") == "NEEDS_ATTENTION":
                try:
                    found = json.loads(fields.get("detail") or "{}")
                except ValueError:
                    found = {}
        return found

    # -- queries ---------------------------------------------------------------------------------

    def list_rebooks(self, state: State | None = None, limit: int = 50) -> list[Rebook]:
        """Newest first; `limit` 0 means all."""
        end = -1 if limit <= 0 else limit - 1
        ranked: list[tuple[float, str]] = []
        for shard in self.shards:
            if state is None:
                rows = self.r.zrevrange(self.keys.created(shard), 0, end, withscores=True)
                ranked.extend((float(score), rid) for rid, score in rows)
            else:
                members = sorted(self.r.smembers(self.keys.in_state(shard, state.value)))
                pipe = self.r.pipeline(transaction=False)
                for rid in members:
                    pipe.zscore(self.keys.created(shard), rid)
                ranked.extend(
                    (float(score or 0), rid)
                    for rid, score in zip(members, pipe.execute(), strict=True)
                )
        ranked.sort(key=lambda row: -row[0])
        ids = [rid for _, rid in ranked][: limit if limit > 0 else None]
        return self.get_many(ids)

    def outcome_counts(self) -> dict[str, int]:
        """Outcomes written so far, by state (all shards)."""
        pipe = self.r.pipeline(transaction=False)
        for shard in self.shards:
            pipe.hgetall(self.keys.outcome_counts(shard))
        totals: dict[str, int] = {}
        for counts in pipe.execute():
            for name, value in counts.items():
                totals[name] = totals.get(name, 0) + int(value)
        return totals

    def stats(self, now: float | None = None) -> dict[str, Any]:
        ts = self.clock() if now is None else now
        pipe = self.r.pipeline(transaction=False)
        for shard in self.shards:
            for state in State:
                pipe.scard(self.keys.in_state(shard, state.value))
            pipe.zrange(self.keys.due(shard), 0, 0, withscores=True)
            pipe.xlen(self.keys.outcomes(shard))
            pipe.zcard(self.keys.performers(shard))
        pipe.xlen(self.keys.deadletter)
        *rows, dead = pipe.execute()
        width = len(State) + 3
        states = dict.fromkeys((s.value for s in State), 0)
        oldest: float | None = None
        outcomes = performers = 0
        for shard in self.shards:
            chunk = rows[shard * width : (shard + 1) * width]
            for state, count in zip(State, chunk[: len(State)], strict=True):
                states[state.value] += int(count)
            due_row, n_outcomes, n_performers = chunk[len(State) :]
            if due_row:
                score = float(due_row[0][1])
                oldest = score if oldest is None else min(oldest, score)
            outcomes += int(n_outcomes)
            performers += int(n_performers)
        lag = max(0.0, ts - oldest) if oldest is not None else 0.0
        last = self.last_sweep()
        gated = self._gated_count()
        return {
            "states": states,
            "active": sum(n for name, n in states.items() if State(name) in ACTIVE_STATES),
            "due_lag_seconds": round(lag, 3),
            "deadletter": int(dead),
            "gated": gated,
            "outcomes": outcomes,
            "performers_tracked": performers,
            "last_sweep_seconds_ago": None if last is None else round(ts - last, 3),
            "presence": {
                **presence_figures(
                    performers,
                    self.presence_interval,
                    self.upstream_rate,
                    self.achieved_presence_interval(ts),
                ),
                "unreadable": self.presence_unreadable_count(),
            },
            "zone": self.zone_observation(),
            "performer_field": self.performer_field_stats(),
            "paused": self.circuit.public(),
            "shadow": self.shadow_figures(states),
        }

    def shadow_figures(self, states: dict[str, int]) -> dict[str, Any]:
        """What shadow mode would have done (README "Shadow mode"): rebooks that would have been
        booked (SHADOWED), seconds from their performer seen online to the POST they would have
        sent (p50, p99; None before the first), and GAVE_UP. Reads the SHADOWED records still
        kept (`REBOOK_RETENTION_DAYS`), a random `SHADOW_SAMPLE` of them when there are more."""
        lags: list[float] = []
        shadowed = states.get(State.SHADOWED.value, 0)
        for shard in self.shards if shadowed else ():
            key = self.keys.in_state(shard, State.SHADOWED.value)
            # SRANDMEMBER with a count: distinct members, all of them when the set is smaller
            ids = self.r.srandmember(key, SHADOW_SAMPLE)
            pipe = self.r.pipeline(transaction=False)
            for rid in ids:
                pipe.hmget(self.keys.record(shard, rid), "online_ts", "would_post_ts")
            for online, posted in pipe.execute():
                if online and posted:
                    lags.append(max(0.0, float(posted) - float(online)))
        return {
            "enabled": self.shadow,
            "would_book": shadowed,
            "online_to_post_seconds": {
                "p50": _percentile(lags, 0.50),
                "p99": _percentile(lags, 0.99),
                "count": len(lags),
            },
            "gave_up": states.get(State.GAVE_UP.value, 0),
        }

    # -- presence answers that say nothing ---------------------------------------------------------

    def note_presence_unreadable(self, now: float, performer_id: int, why: str, answer: str) -> int:
        """Counts an unreadable presence answer and keeps the last one (scrubbed, cut) for
        `doctor`; returns the count."""
        last = {"at": iso_z(datetime.fromtimestamp(now, UTC)), "performer_id": performer_id}
        last.update(why=scrub(why)[:300], answer=scrub(answer)[:500])
        pipe = self.r.pipeline(transaction=False)
        pipe.incr(self.keys.presence_unreadable("count"))
        pipe.set(self.keys.presence_unreadable("last"), json.dumps(last), ex=86400)
        return int(pipe.execute()[0])

    def presence_unreadable_count(self) -> int:
        return int(self.r.get(self.keys.presence_unreadable("count")) or 0)

    def last_presence_unreadable(self) -> dict[str, Any] | None:
        raw = self.r.get(self.keys.presence_unreadable("last"))
        return json.loads(raw) if raw else None

    def zone_observation(self) -> dict[str, Any] | None:
        """`{"configured", "observed_offset_minutes", "agrees", "at", ...}` of the last booking
        the upstream made (worker.core.zonecheck), or None before the first one."""
        return zonecheck.read(self.r, self.keys.zone)

    def _gated_count(self) -> int:
        """RESCHEDULING rebooks held by another's gate (O(rescheduling): they are few)."""
        total = 0
        for shard in self.shards:
            ids = list(self.r.smembers(self.keys.in_state(shard, State.RESCHEDULING.value)))
            if not ids:
                continue
            pipe = self.r.pipeline(transaction=False)
            for rid in ids:
                pipe.hget(self.keys.record(shard, rid), "gated_since")
            total += sum(1 for v in pipe.execute() if v)
        return total

    # -- streams ---------------------------------------------------------------------------------

    def deadletter(
        self, reason: str, payload: Any, *, task_id: str = "", task: str = "", raw: str = ""
    ) -> str:
        """Appends an invalid message with its reason; the payload is redacted and bounded.
        `raw` is the item as the broker held it, already scrubbed by the caller (frames)."""
        body = json.dumps(redact(payload), default=str, ensure_ascii=False)
        if len(body) > DEADLETTER_PAYLOAD_LIMIT:
            body = body[:DEADLETTER_PAYLOAD_LIMIT] + "…(truncated)"
        now = datetime.now(UTC)
        fields = {
            "reason": scrub(reason)[:1000],
            "payload": body,
            "task_id": task_id,
            "task": task,
            "at": iso_z(now),
        }
        if raw:
            fields["raw"] = raw[: DEADLETTER_PAYLOAD_LIMIT + 16]
        return str(
            self.r.xadd(
                self.keys.deadletter,
                fields,
                maxlen=self.deadletter_max_entries,
                approximate=True,
            )
        )

    def deadletters(self, count: int = 100) -> list[dict[str, str]]:
        return [
            {"id": sid, **fields}
            for sid, fields in self.r.xrevrange(self.keys.deadletter, count=count)
        ]

    def deadletter_entry(self, entry_id: str) -> dict[str, str] | None:
        rows = self.r.xrange(self.keys.deadletter, min=entry_id, max=entry_id)
        return {"id": rows[0][0], **rows[0][1]} if rows else None

    def outcome_streams(self) -> list[tuple[int, str]]:
        """`{prefix}outcomes`; on a sharded store one stream per shard."""
        return [(shard, self.keys.outcomes(shard)) for shard in self.shards]

    def outcomes(self, count: int = 100, after: str = "-") -> list[dict[str, str]]:
        """Oldest first (merged across shards by stream id, i.e. by time)."""
        rows: list[dict[str, str]] = []
        for _, stream in self.outcome_streams():
            rows.extend(
                {"id": sid, **fields}
                for sid, fields in self.r.xrange(stream, min=after, count=count)
            )
        rows.sort(key=lambda row: _stream_order(row["id"]))
        return rows[:count]

    def latest_outcomes(self, count: int = 50) -> list[dict[str, str]]:
        """The newest `count`, oldest first."""
        rows: list[dict[str, str]] = []
        for _, stream in self.outcome_streams():
            rows.extend(
                {"id": sid, **fields} for sid, fields in self.r.xrevrange(stream, count=count)
            )
        rows.sort(key=lambda row: _stream_order(row["id"]))
        return rows[-count:] if count > 0 else []

    def follow_outcomes(self, last_id: str = "$", block_ms: int = 1000) -> Iterator[dict[str, str]]:
        streams: dict[str, str] = {}
        for _, stream in self.outcome_streams():
            if last_id == "$":  # pin "now" once, or entries between two reads would be skipped
                newest = self.r.xrevrange(stream, count=1)
                streams[stream] = newest[0][0] if newest else "0-0"
            else:
                streams[stream] = last_id
        while True:
            found: list[dict[str, str]] = []
            for stream, since in list(streams.items()):
                # one stream per call: on a cluster the shards live on different nodes
                wait = block_ms if len(streams) == 1 else None
                for _name, rows in self.r.xread({stream: since}, block=wait, count=100) or []:
                    for sid, fields in rows:
                        streams[stream] = sid
                        found.append({"id": sid, **fields})
            found.sort(key=lambda row: _stream_order(row["id"]))
            yield from found
            if not found and len(streams) > 1:
                time.sleep(block_ms / 1000)


SHADOW_SAMPLE = 10_000
"""SHADOWED records read per shard for the online→POST percentiles (`Store.shadow_figures`)."""


def _percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (None for no values), rounded to milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return round(ordered[rank - 1], 3)


def _stream_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _id_text(value: Any) -> str | None:
    """An id as the upstream may write it (a number, or digits in a string) as text; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip().isdigit():
        return str(int(value.strip()))
    return None


SERVER_NOW = "=TIME"
"""A field value that transition.lua replaces with Redis's own clock (`Store.server_time`)."""


def _field(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, State):
        return value.value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return json.dumps(list(value), separators=(",", ":"))
    return str(value)
