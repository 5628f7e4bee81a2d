"""One simulated run: the real flow and store on a real Redis, simulated everything else.

`run(seed, redis_url)` builds a world from the seed: members, performers, rebook events with
duplicates, 2-4 workers that crash between any two I/O calls and come back, a beat, an operator
who cancels and retries, performers going on- and offline, an upstream with a seeded schedule of
faults (late commits, lost answers, unreadable lists, another zone and clock, year-1 dates), lost
"POST sent" marks, clocks that disagree — runs it to the end, and returns the violations of the
invariants (none is the only passing answer) with a summary.

Beyond those, each world draws what the code assumes (issue 20): the `Performer` shape of the
booking objects, calls past the step lease, failovers to a replica missing the last writes of any
key, worker clocks up to 2 min apart, late commits up to the reconcile window's edge, and invalid
events; the invariants count new bookings per original booking, whoever made them.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import redis
from redis.commands.core import Script

from tests.inspect_store import store_options
from tests.sim.engine import Crash, Engine
from tests.sim.parts import (
    RESCHEDULING,
    SHAPES,
    Expiring,
    Faults,
    Queue,
    Replica,
    SimDispatcher,
    SimLimiter,
    SimRedis,
    SimStore,
    SimTokens,
    SimUpstream,
    session_for,
)
from worker.adapters.upstream import UpstreamClient
from worker.core.flow import Flow, Refused, Step
from worker.core.settings import Settings, load_settings
from worker.core.states import TERMINAL_STATES, State
from worker.core.store import Store, rebook_id_for, store_settings
from worker.core.store.connection import Part

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z; some seeds start near a fall-back hour
SERVER_SKEW = 0.2
"""How far (s) a Redis server's clock may be from true time (NTP): README, "What is assumed"."""
FALL_BACK = 1_792_371_600.0 - 1800  # 2026-10-25T00:30Z: London's clocks go back at 01:00Z
ZONES = ["Europe/London", "Europe/Paris", "UTC", "Atlantic/Azores", "Europe/Athens"]
LIST_NAMES = ["WebcamBookings", "MadeBookings", "Bookings"]
ACTIVE = (State.WAITING, State.RESCHEDULING, State.WATCHING)
LOSE_MARKS = 0.1
#: Per world tick, the chance that a member books a performer themselves meanwhile.
MEMBERS_OWN = 0.1
UPSTREAM_STATUS = {
    State.ACCEPTED: "Accepted",
    State.REJECTED: "Rejected",
    State.CONFIRMED: "Confirmed",
}


@dataclass(frozen=True)
class Seen:
    """Another rebook of the same original, as it was when a rebook's record was created."""

    state: State
    new_booking_id: int | None
    history: list[dict[str, Any]]


@dataclass
class Result:
    seed: int
    violations: list[str]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


def sim_settings(redis_url: str, prefix: str, rng: random.Random, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "api_base_url": "http://upstream.sim",
        "api_key": "sim-key",
        "oauth_client_id": "sim-client",
        "oauth_client_secret": "sim-secret",
        "key_prefix": prefix,
        "api_timezone": "Europe/London",
        "presence_interval_seconds": 5.0,
        "watch_interval_seconds": 10.0,
        "sweep_interval_seconds": rng.choice([1.0, 2.0, 2.0, 4.0]),  # 2 s: the default
        "step_lease_seconds": 15.0,
        "http_timeout_seconds": 5.0,
        "retry_base_seconds": 1.0,
        "retry_max_seconds": 20.0,
        "reconcile_grace_seconds": 3.0,
        "reconcile_window_seconds": 40.0,
        "reconcile_proof_reads": rng.choice([2, 3]),
        "reconcile_max_seconds": 400.0,
        "reconcile_max_tries": 4,
        "reschedule_max_attempts": 4,
        "gate_max_wait_seconds": 150.0,
        "max_wait_seconds": 300,
        "upstream_rate_per_second": 0,
        "made_bookings_list_names": "WebcamBookings,MadeBookings,Bookings",
        "token_key": None,
        "auto_confirm": rng.random() < 0.3,
    }
    values.update(extra)
    return load_settings(**values)


# Long on purpose: the simulated world's actors (workers, beat, producer, world, operator) are
# closures over one run's state, so a seed's whole story reads in one place.
def run(
    seed: int,
    redis_url: str,
    *,
    shapes: tuple[str, ...] = SHAPES,
    vary: dict[str, Any] | None = None,
    skew_limit: float | None = None,
    **overrides: Any,
) -> Result:
    """One world, from its seed. `overrides` change settings (a weakened protocol must fail);
    `shapes` are the `Performer` shapes the seed may draw (any other drawn is `{"UserID"}`: the
    rest of the world is the same); `vary` sets what the seed drew (`shape`, `max_skew`,
    `failover`, `past_lease`, `past_lease_max`, `edge_commits`, `invalid`), to find which one
    a hole needs (and `worker_clocks`: the proof timed on each worker's clock, not Redis's);
    `skew_limit` caps how far apart the workers' clocks are (the upstream's is not capped)."""
    rng = random.Random(seed)
    random.seed(seed)  # the flow's own jitter: one process runs at a time, so this is replayable
    near_fall_back = rng.random() < 0.2
    engine = Engine(seed, FALL_BACK if near_fall_back else START, crash_rate=0.0)
    engine.crash_rate = rng.choice([0.0, 0.002, 0.01, 0.03])
    prefix = f"sim:{seed}:{uuid.uuid4().hex[:6]}:"
    # What this world varies beyond the faults every world has (README, "the simulation"):
    shape = SHAPES[int(rng.random() * len(SHAPES))]
    shape = shape if shape in shapes else "user"
    max_skew = rng.choice([2.0, 2.0, 30.0, 120.0])  # between workers, and the upstream's clock
    failover = rng.random() < 0.4  # a replica promoted that missed the last writes of any key
    past_lease = rng.random() < 0.4  # POSTs and reads slower than the step lease
    edge_commits = rng.random() < 0.5  # late commits up to the edge of the reconcile window
    invalid = rng.random() < 0.5  # invalid events mixed in
    if vary:  # one variation on or off, the rest of the world as drawn (finding a hole's cause)
        shape = vary.get("shape", shape)
        max_skew = vary.get("max_skew", max_skew)
        failover = vary.get("failover", failover)
        past_lease = vary.get("past_lease", past_lease)
        edge_commits = vary.get("edge_commits", edge_commits)
        invalid = vary.get("invalid", invalid)
    upstream_skew = max(30.0, max_skew)
    if skew_limit is not None:
        max_skew = min(max_skew, skew_limit)
    if failover:
        overrides.setdefault("redis_wait_replicas", 1)
    settings = sim_settings(redis_url, prefix, rng, **overrides)
    window = settings.reconcile_window_seconds
    faults = Faults(
        post_past_lease=0.06 if past_lease else 0.0,
        read_past_lease=0.03 if past_lease else 0.0,
        past_lease_max=(vary or {}).get("past_lease_max", 3.0),
        # a commit seen at most just inside the window after the answer (visibility included)
        late_commit_after_answer=max(0.0, window - 0.5) if edge_commits else 0.0,
    )
    # the upstream's zone may not be the one configured, its clock may be off
    zone = ZoneInfo("Europe/London" if rng.random() < 0.5 else rng.choice(ZONES))
    upstream = SimUpstream(
        engine,
        faults,
        zone=zone,
        skew=rng.uniform(-upstream_skew, upstream_skew),
        list_name=rng.choice(LIST_NAMES),
        per_page=rng.choice([2, 3, 50]),
        year_one=rng.random() < 0.3,
        shape=shape,
        lease=settings.step_lease_seconds,
    )
    table = Expiring(engine)
    replica = Replica(redis_url, prefix, table) if failover else None
    tokens = SimTokens()
    limiter = SimLimiter(engine, rng.choice([0.0, 0.05, 0.2]))
    queue = Queue(engine, loss=rng.choice([0.0, 0.05, 0.2]), duplicate=rng.choice([0.0, 0.1]))
    dispatcher = SimDispatcher(queue)
    raw = SimRedis.from_url(redis_url, decode_responses=True)
    raw.engine = engine
    stores: list[SimStore] = []
    # Redis's own clock, the one the exactly-once proof is timed on: true time within
    # SERVER_SKEW (NTP), and another such clock after each failover (the promoted replica's).
    # Drawn from a generator of its own, so the rest of the world is what the seed drew before.
    server_rng = random.Random(f"server-clock-{seed}")
    server: dict[str, Any] = {"skew": server_rng.uniform(-SERVER_SKEW, SERVER_SKEW), "epoch": 0}
    worker_clocks = bool((vary or {}).get("worker_clocks", False))

    def server_clock() -> float:
        return engine.now + server["skew"]

    # What the other rebooks of its original were when each record was created (read by a plain
    # client, no I/O point: the instant create.lua ran), for the per-original check (`check`)
    looker = Store(
        redis.Redis.from_url(redis_url, decode_responses=True), **store_options(prefix=prefix)
    )
    witness: dict[str, dict[str, Seen | None]] = {}

    def note_created(rid: str) -> None:
        seen: dict[str, Seen | None] = {}
        for other, booking in originals.items():
            if booking == originals.get(rid) and other != rid:
                rec = looker.records.get(other)
                seen[other] = (
                    None
                    if rec is None
                    else Seen(rec.state, rec.new_booking_id, looker.records.history(other))
                )
        witness[rid] = seen

    def flow_for(skew: float) -> tuple[Flow, Any]:
        store = SimStore(raw, **{**store_settings(settings), "retention_seconds": 86400})
        store.table = table
        store.replica = replica
        store.records.on_created = note_created
        store.server = server
        store.clock = lambda: engine.now + skew
        # (`worker_clocks`: each worker's own clock stands in for Redis's, as before issue 20's
        # fix: a weakened protocol the checks must catch)
        store.server_clock = store.clock if worker_clocks else server_clock
        stores.append(store)
        ctx = session_for(upstream)
        session = ctx.__enter__()
        client = UpstreamClient(
            settings.api_base_url,
            "sim-key",
            timeout=settings.http_timeout_seconds,
            zone=settings.zone,
            session=session,
            list_names=settings.list_names,
            limiter=limiter,
        )
        flow = Flow(settings, store, client, tokens, dispatcher, clock=store.clock)
        return flow, ctx

    members = [f"m{i}" for i in range(rng.randint(1, 3))]
    performers = [100 + i for i in range(rng.randint(1, 3))]
    events: list[dict[str, Any]] = []
    originals: dict[str, int] = {}
    for i in range(rng.randint(3, 8)):
        user, performer = rng.choice(members), rng.choice(performers)
        booking = upstream.add_original(user, performer)
        kwargs = {"event_id": f"e{seed}-{i}", "booking_id": booking, "user_id": user}
        if rng.random() < 0.85:
            kwargs["performer_id"] = performer
        events.append(kwargs)
    bad_events: list[tuple[tuple[Any, ...], Any]] = []
    if invalid:
        for i in range(rng.randint(1, 4)):
            bad_events.append(invalid_event(rng, f"x{seed}-{i}", events, members))
    wrong_events: list[dict[str, Any]] = []  # valid in form, naming what is not there
    if invalid:
        for i in range(rng.randint(0, 2)):
            base = rng.choice(events)
            others = [m for m in members if m != base["user_id"]]
            wrong = {"event_id": f"w{seed}-{i}", "performer_id": rng.choice(performers)}
            if others and rng.random() < 0.5:  # another member's booking
                wrong |= {"booking_id": base["booking_id"], "user_id": rng.choice(others)}
            else:  # a booking the upstream never had
                wrong |= {"booking_id": 90_000 + i, "user_id": base["user_id"]}
            wrong_events.append(wrong)
    refused: list[str] = []  # intakes that ended INVALID
    accepted: set[str] = set()  # rebook ids whose intake returned (the message is acked then)
    for p in performers:
        upstream.online[p] = rng.random() < 0.5
    producing_until = engine.now + 60
    end = engine.now + 4 * 3600  # AcceptBy read in a zone 2 h off ends a watch 2 h late
    sessions: list[Any] = []
    lost: set[str] = set()
    failovers: list[float] = []  # seconds of writes each failover lost

    def new_flow() -> Flow:
        flow, ctx = flow_for(rng.uniform(-max_skew, max_skew))
        sessions.append(ctx)
        return flow

    def worker(name: str) -> None:
        flow = new_flow()
        me = engine.current()
        assert me is not None
        try:
            while True:
                task = queue.take()
                if task is None:
                    queue.idle.append(me)
                    nxt = queue.next_eta()
                    if nxt < float("inf"):
                        engine.wake_up(me, nxt)
                        engine.point(max(0.0, nxt - engine.now), crash=False)
                    else:
                        engine.park()
                    queue.idle.remove(me)
                    continue
                run_task(flow, task.kind, task.args)
        except Crash:
            if me in queue.idle:
                queue.idle.remove(me)
            # the process manager starts it again a little later; its message is lost
            engine.spawn(name, lambda: (engine.sleep(rng.uniform(1, 30)), worker(name))[1])
            raise

    def run_task(flow: Flow, kind: str, args: tuple[Any, ...]) -> None:
        if kind == "intake":
            kwargs, posargs = args[0], args[1] if len(args) > 1 else ()
            step = flow.intake(posargs, kwargs)
            if step == Step.INVALID:
                refused.append(repr(kwargs)[:80])
            elif isinstance(kwargs, dict):
                accepted.add(rebook_id_for(kwargs["event_id"]))
        elif kind == "presence":
            flow.check_presence(args[0], args[1])
        elif kind == "reschedule":
            token = RESCHEDULING.set(args[0])
            try:
                flow.reschedule(args[0])
            finally:
                RESCHEDULING.reset(token)
        elif kind == "watch":
            flow.watch(args[0])

    def beat() -> None:
        flow = new_flow()
        try:
            while True:
                flow.sweep()
                engine.sleep(settings.sweep_interval_seconds)
        except Crash:
            engine.spawn("beat", lambda: (engine.sleep(rng.uniform(1, 10)), beat())[1])
            raise

    def producer() -> None:
        for posargs, bad in bad_events:
            queue.push("intake", bad, posargs, at=engine.now + rng.uniform(0, 60))
        for wrong in wrong_events:
            queue.push("intake", dict(wrong), at=engine.now + rng.uniform(0, 60))
            originals[rebook_id_for(wrong["event_id"])] = wrong["booking_id"]
        for kwargs in events:
            engine.sleep(rng.uniform(0, 10))
            queue.push("intake", dict(kwargs))
            originals[rebook_id_for(kwargs["event_id"])] = kwargs["booking_id"]
            if rng.random() < 0.15:  # the same event again
                queue.push("intake", dict(kwargs))
            if rng.random() < 0.1:  # another event for the same booking
                again = {**kwargs, "event_id": kwargs["event_id"] + "-b"}
                queue.push("intake", again)
                originals[rebook_id_for(again["event_id"])] = kwargs["booking_id"]

    def world() -> None:
        """Performers come and go; performers decide; Redis loses a mark now and then."""
        while engine.now < producing_until + 400:
            engine.sleep(rng.uniform(1, 15))
            p = rng.choice(performers)
            upstream.online[p] = rng.random() < 0.7
            pending = [b for b in upstream.bookings.values() if b.made_by and b.status == "Pending"]
            if pending and rng.random() < 0.5:
                upstream.decide(rng.choice(pending).booking_id)
            if rng.random() < LOSE_MARKS:
                lose_a_mark()
            if rng.random() < MEMBERS_OWN:
                upstream.add_members_own(rng.choice(members), rng.choice(performers))
            if replica is not None:
                if rng.random() < 0.5:
                    replica.copy()
                if rng.random() < 0.12:
                    lost_s = replica.promote(rng.randrange(1000))
                    failovers.append(round(lost_s, 1))
                    server["skew"] = server_rng.uniform(-SERVER_SKEW, SERVER_SKEW)
                    server["epoch"] += 1

    def lose_a_mark() -> None:
        """A failover to a replica that missed the last write: a POST's mark is gone. Only
        after its booking is visible upstream: with `WAIT` (README) a mark is never lost
        before; without it, a mark lost before the booking shows is the one loss no read can
        make up for."""
        made = upstream.made_by()
        for rid, ids in made.items():
            key = f"{prefix}r:{rid}"
            if (
                raw.hget(key, "state") == "RESCHEDULING"
                and raw.hget(key, "post_sent_ts")
                and all(upstream.bookings[i].visible_at <= engine.now for i in ids)
            ):
                raw.hdel(key, "post_sent_ts", "answer_ts", "known_ids", "empty_reads", "attempts")
                server["epoch"] += 1  # what loses a mark is a restart or a failover
                lost.add(rid)
                return

    def operator() -> None:
        while engine.now < producing_until + 200:
            engine.sleep(rng.uniform(5, 60))
            ids = list(originals)
            if not ids:
                continue
            rid = rng.choice(ids)
            op = Flow.cancel if rng.random() < 0.3 else Flow.retry
            with contextlib.suppress(Refused, LookupError):
                op(ops_flow, rid)

    ops_flow = new_flow()
    # Scripts loaded before the run: redis-py's first call of a script costs an extra round
    # trip (NOSCRIPT, then SCRIPT LOAD) that would make a run depend on the ones before it.
    parts = [part for part in vars(stores[0]).values() if isinstance(part, Part)]
    for script in (s for part in parts for s in vars(part).values()):
        if isinstance(script, Script):
            raw.script_load(script.script)
    for i in range(rng.randint(2, 4)):
        engine.spawn(f"w{i}", lambda i=i: worker(f"w{i}"))
    engine.spawn("beat", beat)
    engine.spawn("producer", producer, crashable=False)
    engine.spawn("world", world, crashable=False)
    if rng.random() < 0.5:
        engine.spawn("operator", operator, crashable=False)

    def settled() -> bool:
        if engine.now < producing_until + 450 or upstream.pending_commits:
            return False
        return not any(raw.scard(f"{prefix}st:{s.value}") for s in ACTIVE)

    try:
        engine.run(until=end, done=settled)
        result = check(seed, engine, raw, prefix, upstream, originals, queue, lost, witness)
        result.violations.extend(
            check_inputs(raw, prefix, bad_events, refused, accepted, failovers)
        )
        result.summary |= {
            "shape": shape,
            "max_skew": max_skew,
            "failovers": failovers,
            "past_lease": past_lease,
            "edge_commits": edge_commits,
            "invalid_events": len(bad_events),
            "wrong_events": len(wrong_events),
            "refused": len(refused),
            **upstream.counts,
        }
        return result
    finally:
        if replica is not None:
            replica.close()
        for ctx in sessions:
            ctx.__exit__(None, None, None)
        keys = list(raw.scan_iter(match=prefix + "*", count=1000))
        if keys:
            raw.delete(*keys)
        raw.close()
        looker.r.close()


def invalid_event(
    rng: random.Random, event_id: str, events: list[dict[str, Any]], members: list[str]
) -> tuple[tuple[Any, ...], Any]:
    """An event a producer should not have sent: (positional args, kwargs)."""
    base = {**rng.choice(events), "event_id": event_id}
    kind = rng.randrange(10)
    if kind == 0:
        return (), {**base, "booking_id": str(base["booking_id"])}  # "12" is not an id
    if kind == 1:
        return (), {k: v for k, v in base.items() if k != "booking_id"}
    if kind == 2:
        return (), {**base, "event_id": "an id with spaces"}
    if kind == 3:
        return (), {**base, "booking_id": -base["booking_id"]}
    if kind == 4:
        return (), {**base, "user_id": rng.choice(["", " ", "m\x00"])}
    if kind == 5:
        return (), {**base, "performer_id": rng.choice([True, 0, 2**64, "101"])}
    if kind == 6:
        return (), {**base, "note": "x" * 70_000}  # past the size limit
    if kind == 7:
        return (), rng.choice([[base], "event", None, 7])  # not an object
    if kind == 8:
        return (base["booking_id"],), base  # positional arguments
    return (), {**base, "max_wait_seconds": rng.choice([0, -1, 1.5, 10**12])}


def check_inputs(
    raw: Any,
    prefix: str,
    bad_events: list[tuple[tuple[Any, ...], Any]],
    refused: list[str],
    accepted: set[str],
    failovers: list[float],
) -> list[str]:
    """Invalid events: refused and dead-lettered, never recorded; every accepted event has a
    record (a failover must not lose an event whose message was acknowledged)."""
    bad: list[str] = []
    store = SimStore(raw, **store_options(prefix=prefix))
    for _, kwargs in bad_events:
        eid = kwargs.get("event_id") if isinstance(kwargs, dict) else None
        if isinstance(eid, str) and store.records.get(rebook_id_for(eid)) is not None:
            bad.append(f"INVALID ACCEPTED: event {eid} was recorded")
    sent = {repr(kwargs)[:80] for _, kwargs in bad_events}
    for what in sorted(set(refused) - sent):
        bad.append(f"REFUSED VALID: {what}")
    letters = raw.xlen(f"{prefix}deadletter") if refused else 0
    if not failovers and letters < len(refused):
        bad.append(f"{len(refused)} refused but {letters} dead letters")
    for rid in sorted(accepted):
        if store.records.get(rid) is None:
            bad.append(f"LOST EVENT: {rid} was accepted (message acked) and has no record")
    return bad


def check(
    seed: int,
    engine: Engine,
    raw: Any,
    prefix: str,
    upstream: SimUpstream,
    originals: dict[str, int],
    queue: Queue,
    lost: set[str],
    witness: dict[str, dict[str, Seen | None]] | None = None,
) -> Result:
    bad: list[str] = []
    if engine.failure:
        bad.append(engine.failure)
    store = SimStore(raw, **store_options(prefix=prefix))
    store.clock = lambda: engine.now
    made = upstream.made_by()
    records = {r.rebook_id: r for r in store.records.get_many(sorted(originals))}
    outcomes: dict[str, list[dict[str, str]]] = {}
    for row in store.outcomes.outcomes(count=100_000):
        outcomes.setdefault(row["rebook_id"], []).append(row)
    for rid, ids in made.items():
        if len(ids) > 1:
            bad.append(f"DOUBLED: {rid} made bookings {ids}")
    # per original booking, whoever made them (a member's own bookings are no rebook's)
    by_original: dict[int, list[int]] = {}
    for b in upstream.bookings.values():
        if b.made_by:
            by_original.setdefault(b.original, []).append(b.booking_id)
    anew = 0
    for original, ids in sorted(by_original.items()):
        maker = {upstream.bookings[i].made_by: i for i in ids}
        history = store.records.history
        if len(maker) == len(ids) > 1 and rebooked_anew(maker, history, witness or {}):
            anew += 1
        elif len(ids) > 1:
            makers = sorted({upstream.bookings[i].made_by for i in ids})
            bad.append(f"DOUBLED ORIGINAL: {original} has new bookings {ids} (made by {makers})")
    for rid, rec in records.items():
        if rec.new_booking_id is None or rec.new_booking_id not in upstream.bookings:
            continue
        source = upstream.bookings[rec.new_booking_id].original
        if source != originals[rid]:
            what = f"made from {source}" if source else "the member's own"
            bad.append(
                f"FOREIGN: {rid} (original {originals[rid]}) owns {rec.new_booking_id}, {what}"
            )
    for rid, rec in records.items():
        if rec.state in ACTIVE:
            bad.append(f"STRANDED: {rid} still {rec.state.value} ({rec.reason})")
        if rec.state == State.NEEDS_ATTENTION and not rec.reason:
            bad.append(f"{rid} parked without a reason")
        mine = made.get(rid, [])
        if rec.new_booking_id is not None and rec.new_booking_id not in mine:
            bad.append(f"{rid} names booking {rec.new_booking_id}, its POSTs made {mine}")
        # a rebook whose mark Redis lost may end parked, or aborted with its booking unknown
        forgiven = rid in lost or rec.state == State.NEEDS_ATTENTION
        if mine and rec.new_booking_id is None and not rec.unsettled and not forgiven:
            bad.append(f"{rid} made {mine} but says {rec.state.value} with nothing unsettled")
        rows = outcomes.get(rid, [])
        booked = [o for o in rows if o["state"] == "BOOKED"]
        if len(booked) > 1:
            bad.append(f"{rid} has {len(booked)} BOOKED outcomes")
        if rec.new_booking_id is not None and [o["new_booking_id"] for o in booked] != [
            str(rec.new_booking_id)
        ]:
            bad.append(f"{rid}: BOOKED outcomes {booked} disagree with the record")
        if rec.state not in ACTIVE:
            last = [o["state"] for o in rows if o["state"] != "BOOKED"]
            if not last or last[-1] != rec.state.value:
                bad.append(f"{rid} is {rec.state.value} but its last outcome is {last[-1:]}")
        if rec.new_booking_id is not None and rec.state in UPSTREAM_STATUS:
            status = upstream.bookings[rec.new_booking_id].status
            if status != UPSTREAM_STATUS[rec.state]:
                bad.append(f"{rid} says {rec.state.value}; upstream: {status}")
    states = Counter(r.state.value for r in records.values())
    return Result(
        seed,
        bad,
        {
            "states": dict(states),
            "posts": upstream.posts,
            "crashes": engine.crashes,
            "lost_messages": queue.lost,
            "steps": engine.steps,
            "virtual_seconds": round(engine.now - START, 1),
            "lost_marks": len(lost),
            "rebooked_anew": anew,
        },
    )


def rebooked_anew(
    made: dict[str, int],
    history: Callable[[str], list[dict[str, Any]]],
    witness: dict[str, dict[str, Seen | None]],
) -> bool:
    """Bookings of one original made by rebooks that followed one another, each a new rebook by
    the contract (DESIGN, intake: a second event makes a DUPLICATE only while the booking has an
    active rebook; exactly once is per rebook): of every two makers, the later one's record was
    created when the earlier one had finished, owning the booking it made, and the earlier one
    has not moved since (a retry that booked after a later rebook, seed 106551, is no such
    pair: its history moved). `made`: each maker's booking (a maker that made two is a doubled
    original whatever this says); `history`: a rebook's history now."""
    makers = sorted(made)

    def finished_before(earlier: str, later: str) -> bool:
        seen = witness.get(later, {}).get(earlier)
        return (
            seen is not None
            and seen.state in TERMINAL_STATES
            and seen.new_booking_id == made[earlier]
            and history(earlier) == seen.history
        )

    return all(
        finished_before(x, y) or finished_before(y, x)
        for i, x in enumerate(makers)
        for y in makers[i + 1 :]
    )
