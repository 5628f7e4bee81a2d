"""The simulated parts around the real code: a Redis client whose every command is an I/O point,
the store's time-to-live primitives on virtual time, Celery as a lossy queue, and the upstream as
a requests adapter, so the real `UpstreamClient` (its error mapping, its parsing) is what the flow
talks to."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import redis
import requests
from redis.client import Pipeline
from requests.adapters import BaseAdapter
from urllib3.exceptions import NewConnectionError

from tests.sim.engine import Engine, Proc
from worker.core.store import Store
from worker.core.store.connection import Connection
from worker.core.store.model import Created
from worker.core.store.presence import Presence
from worker.core.store.records import Records
from worker.core.store.watch import Watch

RESCHEDULING: ContextVar[str | None] = ContextVar("sim_rescheduling", default=None)
"""The rebook whose reschedule step this thread runs (set by the world's task runner): the
world's record of which rebook's POST made a booking."""

# --- Redis --------------------------------------------------------------------------------------


class SimRedis(redis.Redis):
    """Every command (and every pipeline) is an I/O point: a process may die before it."""

    engine: Engine

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.engine.point()
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        pipe = _SimPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.engine = self.engine
        return pipe


class _SimPipeline(Pipeline):
    engine: Engine
    replica: Replica | None = None
    _wait: int | None = None

    def wait(self, num_replicas: int, timeout: int) -> Any:  # type: ignore[override]
        """`WAIT` at the end of the pipeline: the simulated replica gets every write so far
        (the test Redis has none: a real `WAIT` would answer 0)."""
        self._wait = num_replicas
        return self

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.engine.point()
        out = list(super().execute(raise_on_error))
        if self._wait is not None:
            replicas, self._wait = self._wait, None
            if self.replica is not None:
                self.replica.synced()
            out.append(replicas if self.replica is not None else 0)
        return out


class Expiring:
    """Keys with a time to live on the virtual clock (Redis's own TTLs run on real time)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.items: dict[str, tuple[Any, float]] = {}

    def get(self, key: str) -> Any:
        found = self.items.get(key)
        if found is None or found[1] <= self.engine.now:
            self.items.pop(key, None)
            return None
        return found[0]

    def set(self, key: str, value: Any, ttl: float) -> None:
        self.items[key] = (value, self.engine.now + ttl)

    def ttl(self, key: str) -> float:
        found = self.items.get(key)
        return max(0.0, found[1] - self.engine.now) if found else 0.0


class SimLock:
    """`Records.lock` on the virtual clock (the server's clock: one for all workers)."""

    def __init__(self, table: Expiring, name: str, timeout: float, token: str) -> None:
        self.table, self.name, self.timeout, self.token = table, name, timeout, token

    def acquire(self) -> bool:
        self.table.engine.point()
        if self.table.get(self.name) is not None:
            return False
        self.table.set(self.name, self.token, self.timeout)
        return True

    def extend(self, additional_time: float, replace_ttl: bool = False) -> bool:
        self.table.engine.point()
        if self.table.get(self.name) != self.token:
            raise redis.exceptions.LockNotOwnedError("not owned")
        self.table.set(self.name, self.token, additional_time)
        return True

    def release(self) -> None:
        self.table.engine.point()
        if self.table.get(self.name) != self.token:
            raise redis.exceptions.LockNotOwnedError("not owned")
        self.table.items.pop(self.name, None)


class SimConnection(Connection):
    """The real connection; its once-per-window claims run on virtual time, and its one-connection
    pipelines tell the replica when a `WAIT` returned."""

    table: Expiring
    replica: Replica | None = None

    def claim_window(self, name: str, seconds: float) -> float:
        self.table.engine.point()
        if self.table.get(name) is None:
            self.table.set(name, "1", seconds)
            return 0.0
        return max(0.001, self.table.ttl(name))

    def one_connection(self, key: str) -> Any:
        pipe = self.r.pipeline(transaction=False)
        pipe.replica = self.replica
        return pipe


class SimRecords(Records):
    """The real records; the step lock on virtual time."""

    conn: SimConnection
    tokens = 0
    on_created: Callable[[str], None] | None = None
    """Called with the id of each record intake creates (not `exists`, not DUPLICATE), at the
    virtual instant its script ran: no I/O point lies between the script and the return."""

    def create(self, **kwargs: Any) -> Created:
        got = super().create(**kwargs)
        if got.kind == "created" and self.on_created is not None:
            self.on_created(got.rebook_id)
        return got

    def lock(self, rebook_id: str, timeout: float | None = None) -> SimLock:  # type: ignore[override]
        SimRecords.tokens += 1
        return SimLock(
            self.conn.table, f"lock:{rebook_id}", timeout or self.lease, str(self.tokens)
        )


class SimPresence(Presence):
    """The real presence schedule; its call windows on virtual time."""

    conn: SimConnection

    def release_presence_call(self, performer_id: int) -> None:
        self.conn.table.items.pop(self.keys.presence_window(performer_id), None)


class SimWatch(Watch):
    """The real watch part; the cache on virtual time."""

    conn: SimConnection

    def cache_bookings(self, user_id: str, bookings: dict[int, str], ttl: float) -> None:
        self.conn.table.engine.point()
        self.conn.table.set(f"watch:{user_id}", dict(bookings), ttl)

    def forget_cached(self, user_id: str, booking_id: int) -> None:
        cached = self.conn.table.get(f"watch:{user_id}")
        if cached is not None:
            cached.pop(booking_id, None)

    def cached_booking(self, user_id: str, booking_id: int) -> tuple[bool, str | None]:
        self.conn.table.engine.point()
        cached = self.conn.table.get(f"watch:{user_id}")
        return cached is not None, None if cached is None else cached.get(booking_id)


class SimStore(Store):
    """The real store; only what rests on Redis's own expiry runs on virtual time instead."""

    connection_type = SimConnection
    records_type = SimRecords
    presence_type = SimPresence
    watch_type = SimWatch
    conn: SimConnection
    records: SimRecords

    server: dict[str, Any] | None = None
    """The world's Redis server: `epoch` goes up with each failover and each lost mark (README:
    Redis loses acknowledged writes only in a restart or a failover, and both change `run_id`)."""

    def server_id(self, user_id: str) -> str:
        self.table.engine.point()  # INFO: an I/O point, as the real one
        return f"sim-{self.server['epoch']}" if self.server is not None else "sim"

    @property
    def table(self) -> Expiring:
        return self.conn.table

    @table.setter
    def table(self, value: Expiring) -> None:
        self.conn.table = value

    @property
    def replica(self) -> Replica | None:
        return self.conn.replica

    @replica.setter
    def replica(self, value: Replica | None) -> None:
        self.conn.replica = value


class Replica:
    """An asynchronous replica of the run's keys (and of the virtual-time keys: locks, windows,
    caches), promoted by a failover: everything written after its copy is lost, whatever key it
    was — marks, gates, claims, locks, transitions, indexes, outcomes.

    A replica holds a prefix of the primary's writes. `WAIT` (REBOOK_REDIS_WAIT_REPLICAS) makes
    the replica hold every write up to it, so a failover never goes back before the last `WAIT`;
    between two `WAIT`s it may go back to any copy taken since. Copies are taken outside the
    simulation's I/O points (a plain client), so taking one changes no interleaving."""

    def __init__(self, redis_url: str, prefix: str, table: Expiring) -> None:
        self.r = redis.Redis.from_url(redis_url)
        self.prefix, self.table = prefix, table
        self.copies: list[tuple[float, dict[bytes, tuple[bytes, int]], dict[str, Any]]] = []
        self.failovers = 0

    def copy(self) -> None:
        keys = list(self.r.scan_iter(match=self.prefix + "*", count=1000))
        pipe = self.r.pipeline(transaction=True)
        for key in keys:
            pipe.dump(key)
            pipe.pttl(key)
        got = pipe.execute()
        data = {k: (got[2 * i], int(got[2 * i + 1])) for i, k in enumerate(keys)}
        items = {
            k: (dict(v) if isinstance(v, dict) else v, exp)
            for k, (v, exp) in self.table.items.items()
        }
        self.copies.append((self.table.engine.now, data, items))

    def synced(self) -> None:
        """A `WAIT` returned: the replica has everything so far; older copies are unreachable."""
        self.copies.clear()
        self.copy()

    def promote(self, choice: int) -> float:
        """The failover: the keyspace goes back to the `choice`-th reachable copy (modulo).
        Returns how many seconds of writes were lost."""
        if not self.copies:
            return 0.0
        at, data, items = self.copies[choice % len(self.copies)]
        now = set(self.r.scan_iter(match=self.prefix + "*", count=1000))
        pipe = self.r.pipeline(transaction=True)
        for key in now - set(data):
            pipe.delete(key)
        for key, (dumped, ttl) in data.items():
            if dumped is not None:
                pipe.restore(key, max(0, ttl), dumped, replace=True)
        pipe.execute()
        self.table.items = {
            k: (dict(v) if isinstance(v, dict) else v, exp) for k, (v, exp) in items.items()
        }
        self.failovers += 1
        self.copies = [c for c in self.copies if c[0] <= at]
        return self.table.engine.now - at

    def close(self) -> None:
        self.r.close()


# --- Celery -------------------------------------------------------------------------------------


@dataclass
class Task:
    kind: str
    args: tuple[Any, ...]
    eta: float


@dataclass
class Queue:
    """Celery as the flow sees it: messages that may be lost, redelivered or late."""

    engine: Engine
    loss: float
    duplicate: float
    tasks: list[Task] = field(default_factory=list)
    idle: list[Proc] = field(default_factory=list)
    lost: int = 0

    def push(self, kind: str, *args: Any, at: float | None = None) -> None:
        rng = self.engine.rng
        if rng.random() < self.loss:
            self.lost += 1
            return
        eta = max(self.engine.now, at or 0.0) + rng.choice([0.0, 0.0, 0.01, 0.5, 3.0])
        copies = 2 if rng.random() < self.duplicate else 1
        for _ in range(copies):
            self.tasks.append(Task(kind, args, eta))
        for proc in self.idle:
            self.engine.wake_up(proc, eta)

    def take(self) -> Task | None:
        ready = [i for i, t in enumerate(self.tasks) if t.eta <= self.engine.now]
        if not ready:
            return None
        return self.tasks.pop(ready[self.engine.rng.randrange(len(ready))])

    def next_eta(self) -> float:
        return min((t.eta for t in self.tasks), default=math.inf)


class SimDispatcher:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def check_presence(
        self, performer_id: int | None, rebook_id: str | None = None, at: float | None = None
    ) -> None:
        self.queue.push("presence", performer_id, rebook_id, at=at)

    def reschedule(self, rebook_id: str, urgent: bool = False) -> None:
        self.queue.push("reschedule", rebook_id)

    def watch(self, rebook_id: str, booking: dict[str, Any]) -> None:
        self.queue.push("watch", rebook_id)

    def batch(self) -> Any:
        return nullcontext()


class SimTokens:
    """Access tokens that a 401 makes us refresh (a new one each time); no I/O of their own."""

    def __init__(self) -> None:
        self.version: dict[str, int] = {}

    def access_token(self, user_id: str, *, rejected: str | None = None) -> str:
        if rejected is not None:
            self.version[user_id] = self.version.get(user_id, 0) + 1
        return f"tok-{user_id}.{self.version.get(user_id, 0)}"


class SimLimiter:
    """The shared rate budget saying "not now" at random: nothing is sent."""

    def __init__(self, engine: Engine, rate: float) -> None:
        self.engine, self.rate = engine, rate

    def acquire(self, share: float = 1.0) -> None:
        from worker.core.errors import Throttled

        if self.engine.current() is not None and self.engine.rng.random() < self.rate:
            raise Throttled("shared upstream rate limit", retry_after=self.engine.rng.uniform(0, 2))


# --- the upstream -------------------------------------------------------------------------------


@dataclass
class Booking:
    booking_id: int
    user_id: str
    performer_id: int
    create: float  # upstream clock
    session: float
    accept_by: float
    status: str = "Pending"
    visible_at: float = 0.0  # a list read shows it from then on (replica lag)
    made_by: str = ""  # the rebook whose POST made it ("" for originals)
    original: int = 0


@dataclass
class Faults:
    """Probabilities of each upstream behaviour, drawn per call from the engine's RNG."""

    post_refused: float = 0.05
    post_not_sent: float = 0.08
    post_5xx_before: float = 0.08
    post_5xx_after: float = 0.08
    post_timeout_after: float = 0.06
    post_late_commit: float = 0.10
    post_bad_body: float = 0.04
    post_html_challenge: float = 0.04
    post_html_gateway_after: float = 0.03
    read_error: float = 0.08
    read_unreadable: float = 0.04
    read_html: float = 0.03
    unauthorized: float = 0.03
    confirm_after_commit: float = 0.15
    confirm_late: float = 0.1
    max_commit_lag: float = 30.0
    max_visibility_lag: float = 3.0
    slow_call: float = 0.05
    #: A POST answered only after the step's lease ran out (an answer that trickles in, which
    #: no read timeout catches): another worker takes the rebook over while it is in flight.
    post_past_lease: float = 0.0
    #: A list read that takes longer than the lease (the same, while reconciling).
    read_past_lease: float = 0.0
    #: How many leases such a call may last at most.
    past_lease_max: float = 3.0
    #: How long a late commit may come after the ambiguous answer (up to the reconcile window).
    late_commit_after_answer: float = 0.0


#: The `Performer` object of a booking, as the upstream might write it (the docs do not list
#: its fields): the performer's user id; a profile id that is not the user id, with a nickname;
#: a nickname only.
SHAPES = ("user", "profile", "none")


def profile_id(performer_id: int) -> int:
    """A performer's profile id: another number than their user id (and than anyone's)."""
    return 700_000 + performer_id * 7


class SimUpstream(BaseAdapter):
    """The AdultWork API as the sim's world: mounted on a requests session, so the real client
    sends to it. Datetimes are written in the upstream's own zone and clock, which may differ
    from what the settings say; the list comes under a name the settings may or may not know."""

    def __init__(
        self,
        engine: Engine,
        faults: Faults,
        *,
        zone: ZoneInfo,
        skew: float,
        list_name: str,
        per_page: int,
        year_one: bool,
        shape: str = "user",
        lease: float = 15.0,
    ) -> None:
        super().__init__()
        self.engine, self.faults = engine, faults
        self.shape, self.lease = shape, lease
        self.zone, self.skew, self.list_name, self.per_page = zone, skew, list_name, per_page
        self.year_one = year_one
        self.bookings: dict[int, Booking] = {}
        self.online: dict[int, bool] = {}
        self.next_id = 5000
        self.posts = 0
        self.pending_commits = 0
        self.confirms: dict[int, int] = {}
        self.counts: dict[str, int] = {}  # how often each varied behaviour happened

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def close(self) -> None:
        pass

    # -- world -------------------------------------------------------------------------------------

    def clock(self) -> float:
        return self.engine.now + self.skew

    def add_original(self, user_id: str, performer_id: int) -> int:
        now = self.clock()
        self.next_id += self.engine.rng.randint(1, 3)
        b = Booking(
            self.next_id,
            user_id,
            performer_id,
            now - 7200,
            now - 3600,
            now - 3500,
            status="Accepted",
        )
        self.bookings[b.booking_id] = b
        return b.booking_id

    def add_members_own(self, user_id: str, performer_id: int) -> int:
        """The member books the performer themselves (not through rebook): a booking the list
        did not show before a POST, with a session hours ahead, unlike a reschedule's. A rebook
        that takes it for its own has claimed what the member made."""
        now = self.clock()
        self.next_id += self.engine.rng.randint(1, 3)
        ahead = self.engine.rng.choice([1800.0, 3600.0, 86400.0])
        b = Booking(self.next_id, user_id, performer_id, now, now + ahead, now + 600)
        self.bookings[b.booking_id] = b
        return b.booking_id

    def made_by(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for b in self.bookings.values():
            if b.made_by:
                out.setdefault(b.made_by, []).append(b.booking_id)
        return out

    def _commit(self, original: Booking, rebook_id: str, lag: float | None = None) -> Booking:
        now = self.clock()
        self.next_id += self.engine.rng.randint(1, 5)  # ids grow, not by one
        if lag is None:
            lag = self.engine.rng.choice(
                [0.0, 0.0, self.engine.rng.uniform(0, self.faults.max_visibility_lag)]
            )
        b = Booking(
            self.next_id,
            original.user_id,
            original.performer_id,
            now,
            now + 300,
            now + 120,
            visible_at=self.engine.now + lag,
            made_by=rebook_id,
            original=original.booking_id,
        )
        self.bookings[b.booking_id] = b
        return b

    def decide(self, booking_id: int) -> None:
        """The performer answers a new booking (a world event, not an API call)."""
        b = self.bookings.get(booking_id)
        if b is not None and b.status == "Pending" and self.clock() < b.accept_by:
            b.status = self.engine.rng.choice(["Accepted", "Rejected"])

    # -- HTTP --------------------------------------------------------------------------------------

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        rng, f = self.engine.rng, self.faults
        self.engine.point()  # dies before sending: nothing went out
        parts = urlsplit(request.url or "")
        op = parts.path.rsplit("/", 1)[-1]
        query = {k.lower(): v[-1] for k, v in parse_qs(parts.query).items()}
        body = json.loads(request.body) if request.body else {}
        auth = str(request.headers.get("Authorization", ""))
        user = auth.partition(" ")[2].removeprefix("tok-").rpartition(".")[0]
        read_timeout = timeout[1] if isinstance(timeout, tuple) else (timeout or 10.0)
        rescheduling = RESCHEDULING.get()
        if op != "getUserSummary" and rng.random() < f.unauthorized:
            return _answer(request, 401, {"Message": "Authorization has been denied."})
        if rng.random() < f.read_html and op != "RescheduleMadeBooking":
            return _html(request, rng.choice([403, 503]))
        if op == "ConfirmMadeBooking":
            return self._confirm(request, body, user, read_timeout)
        if op in ("RescheduleMadeBooking",):
            return self._post(request, body, user, rescheduling or "?", read_timeout)
        if rng.random() < f.read_error:
            self.engine.point(rng.uniform(0, 0.5))
            return _answer(request, rng.choice([500, 503]), {"Message": "An error has occurred."})
        if op != "getUserSummary" and f.read_past_lease and rng.random() < f.read_past_lease:
            self.count("reads_past_lease")
            self.engine.point(self.lease * rng.uniform(1.05, 2.0))  # outlives the step's lease
        else:
            self.engine.point(rng.uniform(0.01, 0.3))
        if op == "getUserSummary":
            pid = int(query["userid"])
            return _answer(
                request,
                200,
                {
                    "User": {"UserID": pid, "AvailableNowWebcam": self.online.get(pid, False)},
                    "Summary": [],
                },
            )
        if op == "MadeBookingDetails":
            b = self.bookings.get(int(query["bookingid"]))
            if b is None or b.user_id != user:
                return _answer(request, 404, {"Message": "No booking found."})
            return _answer(request, 200, self._json(b))
        if op == "MadeBookings":
            return self._list(request, user, query)
        return _answer(request, 404, {"Message": f"no {op} in the simulation"})

    def _post(
        self,
        request: requests.PreparedRequest,
        body: dict[str, Any],
        user: str,
        rebook_id: str,
        read_timeout: float,
    ) -> requests.Response:
        rng, f = self.engine.rng, self.faults
        self.posts += 1
        orig = self.bookings.get(int(body.get("BookingID", 0)))
        roll = rng.random()
        if roll < f.post_not_sent:
            raise requests.ConnectionError(NewConnectionError(None, "refused"))  # type: ignore[arg-type]
        roll -= f.post_not_sent
        if orig is None or orig.user_id != user:
            return _answer(request, 404, {"Message": "No booking found."})
        if roll < f.post_refused or not self.online.get(orig.performer_id, False):
            return _answer(request, 400, {"Message": "The performer is not online"})
        roll -= f.post_refused
        if roll < f.post_5xx_before:
            return _answer(request, 503, {"Message": "The service is unavailable."})
        roll -= f.post_5xx_before
        if roll < f.post_html_challenge:  # a CDN in front: the API never saw it
            return _html(request, rng.choice([403, 429, 503]))
        roll -= f.post_html_challenge
        if roll < f.post_late_commit:
            timed_out = rng.random() < 0.5
            answer_in = read_timeout if timed_out else 0.0
            if f.late_commit_after_answer and rng.random() < 0.5:
                # up to the edge of the reconcile window, counted from the answer
                lag, seen_after = answer_in + rng.uniform(0, f.late_commit_after_answer), 0.0
                self.count("commits_near_window_edge")
            else:
                lag, seen_after = rng.uniform(0, f.max_commit_lag), None
            self.pending_commits += 1

            def later() -> None:
                self.engine.sleep(lag)
                self.pending_commits -= 1
                if self.online.get(orig.performer_id, False):
                    self._commit(orig, rebook_id, seen_after)

            self.engine.spawn(f"commit-{self.posts}", later, crashable=False)
            if timed_out:
                self.engine.point(read_timeout)
                raise requests.ReadTimeout("read timed out")
            return _answer(request, 504, {"Message": "The operation has timed out."})
        roll -= f.post_late_commit
        if f.post_past_lease and rng.random() < f.post_past_lease:
            return self._past_lease(request, orig, rebook_id)
        made = self._commit(orig, rebook_id)
        latency = read_timeout * 1.5 if rng.random() < f.slow_call else rng.uniform(0.05, 1.0)
        if latency >= read_timeout:
            self.engine.point(read_timeout)  # the answer would come, but too late for us
            raise requests.ReadTimeout("read timed out")
        self.engine.point(latency)  # a crash here: made upstream, never known here
        if roll < f.post_5xx_after:
            return _answer(request, 500, {"Message": "An error has occurred."})
        roll -= f.post_5xx_after
        if roll < f.post_timeout_after:
            raise requests.ReadTimeout("read timed out")
        roll -= f.post_timeout_after
        if roll < f.post_html_gateway_after:  # a proxy gave up after forwarding it
            return _html(request, rng.choice([502, 504]))
        roll -= f.post_html_gateway_after
        if roll < f.post_bad_body:
            text = json.dumps(self._json(made))
            return _answer(request, 200, text[: len(text) // 2])
        return _answer(request, 200, self._json(made))

    def _past_lease(
        self, request: requests.PreparedRequest, orig: Booking, rebook_id: str
    ) -> requests.Response:
        """A POST whose answer trickles in for longer than the step's lease: the booking
        commits at some moment of it (or never), the worker is still inside its call when
        another takes the rebook over, and then the answer comes (or a gateway's 504)."""
        rng = self.engine.rng
        self.count("posts_past_lease")
        duration = self.lease * rng.uniform(1.05, self.faults.past_lease_max)
        made: list[Booking] = []
        if rng.random() < 0.8:
            commit_in = rng.uniform(0, duration)
            self.pending_commits += 1

            def commit() -> None:
                self.engine.sleep(commit_in)
                self.pending_commits -= 1
                made.append(self._commit(orig, rebook_id))

            self.engine.spawn(f"slow-commit-{self.posts}", commit, crashable=False)
        self.engine.point(duration)  # a crash here: the worker died inside its call
        if made and rng.random() < 0.7:
            return _answer(request, 200, self._json(made[0]))
        return _answer(request, 504, {"Message": "The operation has timed out."})

    def _confirm(
        self,
        request: requests.PreparedRequest,
        body: dict[str, Any],
        user: str,
        read_timeout: float,
    ) -> requests.Response:
        """Only an Accepted booking can be confirmed; a second confirm is refused."""
        rng, f = self.engine.rng, self.faults
        b = self.bookings.get(int(body.get("BookingID", 0)))
        if b is None or b.user_id != user:
            return _answer(request, 404, {"Message": "No booking found."})
        if b.status != "Accepted":
            return _answer(request, 400, {"Message": f"The booking is {b.status}"})
        self.confirms[b.booking_id] = self.confirms.get(b.booking_id, 0) + 1
        roll = rng.random()
        if roll < f.confirm_late:
            lag = rng.uniform(0, f.max_commit_lag)

            def later() -> None:
                self.engine.sleep(lag)
                if b.status == "Accepted":
                    b.status = "Confirmed"

            name = f"confirm-{b.booking_id}-{self.confirms[b.booking_id]}"
            self.engine.spawn(name, later, crashable=False)
            self.engine.point(read_timeout)
            raise requests.ReadTimeout("read timed out")
        b.status = "Confirmed"
        self.engine.point(rng.uniform(0.05, 1.0))
        if roll < f.confirm_late + f.confirm_after_commit:
            return _answer(request, 500, {"Message": "An error has occurred."})
        return _answer(request, 200, self._json(b))

    def _list(
        self, request: requests.PreparedRequest, user: str, query: dict[str, str]
    ) -> requests.Response:
        rng = self.engine.rng
        if rng.random() < self.faults.read_unreadable:
            return _answer(request, 200, {"PageCount": 1, "PageNumber": 1, "Items": None})
        start = query.get("startdate", "")
        since = datetime.fromisoformat(start).replace(tzinfo=self.zone).timestamp() if start else 0
        mine = sorted(
            (
                b
                for b in self.bookings.values()
                if b.user_id == user and b.create >= since and b.visible_at <= self.engine.now
            ),
            key=lambda b: -b.booking_id,
        )
        per = min(self.per_page, int(query.get("bookingsperpage", "50")))
        page = int(query.get("pagenumber", "1"))
        pages = max(1, math.ceil(len(mine) / per))
        chunk = mine[(page - 1) * per : page * per]
        return _answer(
            request,
            200,
            {
                "PageCount": pages,
                "PageNumber": page,
                "BookingsPerPage": per,
                "TotalBookings": len(mine),
                self.list_name: [self._json(b) for b in chunk],
            },
        )

    def _json(self, b: Booking) -> dict[str, Any]:
        def site(ts: float) -> str:
            local = datetime.fromtimestamp(ts, UTC).astimezone(self.zone).replace(tzinfo=None)
            return local.isoformat(timespec="milliseconds")

        unset = "0001-01-01T00:00:00" if self.year_one else None
        return {
            "WebcamBookingID": b.booking_id,
            "Duration": 10,
            "Credits": 5.0,
            "Status": b.status,
            "IsMulitple": False,
            "CreateDate": site(b.create),
            "SessionDate": site(b.session),
            "AcceptBy": site(b.accept_by),
            "AcceptedDate": unset,
            "ConfirmedDate": unset,
            "Performer": self._performer(b.performer_id),
        }

    def _performer(self, pid: int) -> dict[str, Any]:
        if self.shape == "profile":
            return {"ID": profile_id(pid), "Nickname": f"perf{pid}"}
        if self.shape == "none":
            return {"Nickname": f"perf{pid}"}
        return {"UserID": pid}


def _answer(request: requests.PreparedRequest, status: int, body: Any) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.request = request
    response.url = request.url or ""
    text = body if isinstance(body, str) else json.dumps(body)
    response._content = text.encode()
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    response.headers["Date"] = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    return response


def _html(request: requests.PreparedRequest, status: int) -> requests.Response:
    page = "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body/></html>"
    response = _answer(request, status, page)  # a CDN challenge's page (a 502/504: a gateway's)
    response.headers["Content-Type"] = "text/html; charset=utf-8"
    return response


@contextmanager
def session_for(upstream: SimUpstream) -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", upstream)
    try:
        yield session
    finally:
        session.close()


def site_offset(zone: ZoneInfo, at: float) -> timedelta:
    return datetime.fromtimestamp(at, UTC).astimezone(zone).utcoffset() or timedelta()
