"""Every Redis key rebook uses, by name, built in one place.

Key names are wire format: old and new workers share them during a rolling upgrade, so a name
here changes only with a two-step release (ops/RUNBOOK.md "Upgrades"). The Lua scripts compose
the same names from the prefix they are given (`p .. 'r:' .. id`); `LUA_NAMES` lists what they
may use and `tests/unit/test_keys.py` checks that they use nothing else.

Sharding (Redis Cluster): every key of a rebook lives in the shard of its member and carries
the hash tag `{rbK}`, so one script touches one slot. Keys that one command reads alone (locks,
claims, tokens, the rate limit, dead letters) stay global. With one shard and no cluster (the
default) a shard key is exactly `{prefix}r:{id}`, `{prefix}outcomes`, ...
"""

from __future__ import annotations

#: The shard-key names a Lua script may build from its prefix (see the module docstring).
LUA_NAMES = frozenset(
    {
        "r:", "h:", "due", "created", "finished", "st:", "perf:", "performers", "user:",
        "ix:user:", "ix:perf:", "ix:book:", "outcomes", "metrics:outcomes", "active:", "gate:",
        "posted:", "chart:out:", "chart:booked:", "presence:place", "sweep:last",
    }
)  # fmt: skip


class Keys:
    """The names of one deployment's keys (`REBOOK_KEY_PREFIX`, its shards)."""

    def __init__(self, prefix: str = "rebook:", shards: int = 1, sharded: bool = False) -> None:
        self.prefix = prefix
        self.sharded = sharded or shards > 1
        self.shard_prefixes = (
            [f"{prefix}{{rb{k}}}:" for k in range(shards)] if self.sharded else [prefix]
        )

    def key(self, *parts: object) -> str:
        """A global key (single-key commands only)."""
        return self.prefix + ":".join(str(p) for p in parts)

    def skey(self, shard: int, *parts: object) -> str:
        """A key of one shard (the same hash slot as everything else of that shard)."""
        return self.shard_prefixes[shard] + ":".join(str(p) for p in parts)

    def glob(self, *parts: object) -> str:
        """A SCAN pattern for global keys starting with `parts`: the prefix's glob characters
        escaped, `*` after."""
        literal = self.key(*parts)
        return "".join(f"[{c}]" if c in "*?[]\\" else c for c in literal) + "*"

    # -- one rebook (in its member's shard) ------------------------------------------------------

    def record(self, shard: int, rebook_id: str) -> str:
        """The record: a hash of the public fields and the bookkeeping."""
        return self.skey(shard, "r", rebook_id)

    def history(self, shard: int, rebook_id: str) -> str:
        """Its transitions, a list of JSON entries (the first, "received", is implied)."""
        return self.skey(shard, "h", rebook_id)

    def location(self, rebook_id: str) -> str:
        """Which shard a rebook lives in (sharded stores only)."""
        return self.key("loc", rebook_id)

    def lock(self, rebook_id: str) -> str:
        """The step lease of a rebook (a redis-py lock)."""
        return self.key("lock", rebook_id)

    # -- indexes of a shard ----------------------------------------------------------------------

    def due(self, shard: int) -> str:
        """Rebook id -> when its next step is due (the sweep reads the head)."""
        return self.skey(shard, "due")

    def created(self, shard: int) -> str:
        return self.skey(shard, "created")

    def finished(self, shard: int) -> str:
        """Terminal rebooks by when they ended (housekeeping expires them)."""
        return self.skey(shard, "finished")

    def in_state(self, shard: int, state: str) -> str:
        return self.skey(shard, "st", state)

    def waiting_on(self, shard: int, performer_id: object) -> str:
        """The rebooks WAITING on one performer (one presence call serves them all)."""
        return self.skey(shard, "perf", performer_id)

    def performers(self, shard: int) -> str:
        """Performer -> when their next presence check is due."""
        return self.skey(shard, "performers")

    def of_member(self, shard: int, user_id: str) -> str:
        """The active rebooks of one member (reauth parks and resumes them together)."""
        return self.skey(shard, "user", user_id)

    def search_index(self, shard: int, name: str, value: object) -> str:
        """The console's indexes (`user`, `perf`, `book`): rebooks with an outcome, by creation."""
        return self.skey(shard, "ix", name, value)

    def active(self, shard: int, booking_id: object) -> str:
        """The one active rebook of an original booking (a second event is a DUPLICATE)."""
        return self.skey(shard, "active", booking_id)

    def gate(self, shard: int, user_id: str, performer_id: object) -> str:
        """The member+performer gate: at most one unsettled POST per pair. With no performer
        (`gate:{uid}:`) it is the member's gate, taken while the performer field is unconfirmed:
        then no other POST of the member may be unsettled at all."""
        return self.skey(shard, "gate", f"{user_id}:{performer_id or ''}")

    def posted(self, shard: int, user_id: str, performer_id: object) -> str:
        """Rebooks of the pair that have POSTed (siblings a stray booking could belong to); with
        no performer, every rebook of the member that has POSTed, whatever its performer."""
        return self.skey(shard, "posted", f"{user_id}:{performer_id or ''}")

    def outcomes(self, shard: int) -> str:
        """The outcome stream (`rebook:outcomes` unsharded)."""
        return self.skey(shard, "outcomes")

    def outcome_counts(self, shard: int) -> str:
        return self.skey(shard, "metrics", "outcomes")

    def chart(self, shard: int, kind: str, hour: int) -> str:
        """Per-hour counters of the console's charts (`out`, `booked`)."""
        return self.skey(shard, "chart", kind, hour)

    def sweep_last(self) -> str:
        """When the sweep last ran (shard 0 holds it)."""
        return self.skey(0, "sweep", "last")

    def fanout(self, shard: int, *parts: object) -> str:
        """The outcome fan-out's cursor, per-receiver queues, retries and attempts."""
        return self.skey(shard, "fanout", *parts)

    # -- global ----------------------------------------------------------------------------------

    def claimed(self, new_booking_id: object) -> str:
        """Which rebook owns a new booking (no two rebooks ever adopt one booking)."""
        return self.key("claimed", new_booking_id)

    def watchcache(self, user_id: str) -> str:
        return self.key("watchcache", user_id)

    def window(self, name: str) -> str:
        """A once-per-window claim (`Store.claim_window`)."""
        return self.key(name)

    @staticmethod
    def presence_window(performer_id: int) -> str:
        """The name of a performer's once-per-interval presence claim (a `window`)."""
        return f"presence:{performer_id}"

    def presence_seen(self, performer_id: object) -> str:
        """A performer's last presence answer (when, online/offline/unknown, offline since)."""
        return self.key("presence", "seen", performer_id)

    def presence_calls(self, bucket: int) -> str:
        return self.key("presence", "calls", bucket)

    def presence_performers(self, bucket: int) -> str:
        return self.key("presence", "performers", bucket)

    @property
    def performer_field(self) -> str:
        """Which key of a booking's `Performer` names the performer's user id, as learned from
        answers whose meaning is known (`performer_learn.lua`; a hash, no secrets)."""
        return self.key("shape", "performer")

    @property
    def deadletter(self) -> str:
        return self.key("deadletter")

    @property
    def zone(self) -> str:
        """The zone check's last observation (worker.core.zonecheck; JSON, no secrets)."""
        return self.key("zone")

    @property
    def audit(self) -> str:
        """The ledger audit's findings, each appended once (worker.core.audit)."""
        return self.key("audit")

    @property
    def audit_seen(self) -> str:
        """Fingerprints of the findings appended to `audit` (kind, original, new bookings)."""
        return self.key("audit", "seen")

    @property
    def audit_counts(self) -> str:
        """Findings appended, by kind, for the exporter."""
        return self.key("metrics", "audit")

    @property
    def audit_checked(self) -> str:
        """Member -> when the audit last looked at them (the least recently checked go first)."""
        return self.key("audit", "checked")

    @property
    def audit_last(self) -> str:
        """The last audit run's summary (JSON: when, members checked and not checked)."""
        return self.key("audit", "last")

    @property
    def upstream_calls(self) -> str:
        """Upstream calls per `endpoint:outcome`, for the exporter."""
        return self.key("metrics", "upstream")

    @property
    def rate_limit(self) -> str:
        """The shared rate limiter's sliding window (a sorted set). The GCRA of earlier
        versions kept a string at `ratelimit`: a new name let old and new workers run side by
        side during that roll (each side counted its own)."""
        return self.key("ratelimit", "log")

    @property
    def fanout_lock(self) -> str:
        return self.key("fanout", "lock")

    def token(self, user_id: str) -> str:
        """A member's encrypted token pair."""
        return self.key(f"tok:{user_id}")

    def token_lock(self, user_id: str) -> str:
        """Single-flight refresh of one member's pair, across all workers."""
        return self.key(f"toklock:{user_id}")

    @property
    def token_index(self) -> str:
        """Members by when their refresh token lapses (no secrets)."""
        return self.key("tokkeep")

    @property
    def redbeat_prefix(self) -> str:
        """celery-redbeat's keys, when beat runs on it."""
        return self.key("redbeat:")

    # -- deployment faults (worker/core/circuit.py) ----------------------------------------------

    def paused(self, *parts: object) -> str:
        """The circuit of deployment faults (`paused`: a hash), its probe window
        (`paused:probe`), the rebooks and performers it holds (`paused:held`,
        `paused:performers`)."""
        return self.key("paused", *parts)

    def member_day(self, user_id: str, day: str) -> str:
        """A member's reschedule POSTs on one UTC day (`YYYYMMDD`; the daily cap)."""
        return self.key("cap", user_id, day)

    def presence_unreadable(self, *parts: object) -> str:
        """Presence answers that said nothing readable: a count and the last one (JSON)."""
        return self.key("presence", "unreadable", *parts)
