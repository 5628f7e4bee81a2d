"""Finding rebooks by business keys, newest first, with cursor paging — without a scan of every
record — and the per-hour counters behind the console's charts.

Why a module of its own: the CLI (`rebook list`, bulk `retry`/`cancel`) and the console
(`worker/operations/console/`) ask the same questions and must get the same answers. Same layer as
the store (no Celery, no HTTP).

Indexes, all in the record's shard. The new ones hold only rebooks that have had an outcome
(BOOKED, NEEDS_ATTENTION or terminal; written by the outcome part of `transition.lua` and by
`create.lua` for DUPLICATE), because the existing active indexes already name every rebook
before that: a waiting rebook costs no byte more. Housekeeping empties them with the record;
`reindex` backfills records written before they existed.

| key | holds | read for |
|---|---|---|
| `created` (zset, existing) | every rebook by creation time | no filter, `since`, `q` prefix |
| `st:STATE` (set, existing) | ids per state | `state` |
| `user:M` (set, existing) + `ix:user:M` (zset) | active / with an outcome | `user_id` |
| `perf:P`, `st:RESCHEDULING` + `ix:perf:P` | waiting, rescheduling / rest | `performer_id` |
| `active:B` (string, existing) + `ix:book:B` (zset) | active / finished | `booking_id` |

A query takes the smallest of the candidate indexes that apply as its driver, walks it newest
first and checks every other filter on the record itself. `reason` and `q` as a prefix have no
index: alone they walk `created` (ids only for `q`), bounded per request by `MAX_EXAMINED`; a
page that stops at the bound still returns a `next` cursor, so paging goes on where it stopped.
"""

from __future__ import annotations

import heapq
import itertools
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from worker.core.states import State
from worker.core.store import Rebook, Store, rebook_id_for
from worker.core.store.index import Pair, SearchIndex

CHUNK = 500
MAX_EXAMINED = 20_000
"""Records read (and ids looked at, x10) per request before a page is cut with a cursor."""
SMALL_SET = 2_000
"""A state set up to this size is read whole and sorted; a larger one is met by walking
`created` and asking `SMISMEMBER` a chunk at a time (it is then dense enough)."""
HOURS = 48
BOOKED_EDGES = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200)
"""Bucket upper edges in seconds (received → BOOKED); must match `transition.lua`."""
SUMMARY_CAP = 1000
"""Matches counted per state for a filtered view (past it the counts say "at least")."""
STATE_ALIASES = {"PARKED": State.NEEDS_ATTENTION.value}
"""What operators call a state, accepted as its name (`state=parked`)."""
_ID_TEXT = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class BadFilter(ValueError):
    """A filter value an operator typed wrong (the message names the parameter)."""


@dataclass(frozen=True)
class Filters:
    """The filters of `rebook list` and of `/rebooks` (README "Command line", "Console (in
    Flower)")."""

    state: State | None = None
    reason: str = ""
    user_id: str = ""
    performer_id: int | None = None
    booking_id: int | None = None
    q: str = ""
    since: float | None = None
    since_text: str = field(default="", compare=False)
    """`since` as typed (`today`, `24h`): links keep it, so a shared "today" stays today."""

    NAMES = ("state", "reason", "user_id", "performer_id", "booking_id", "q", "since")

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> Filters:
        """From query parameters or CLI options (strings); empty values are no filter."""

        def text(name: str) -> str:
            value = params.get(name)
            return "" if value is None else str(value).strip()

        state: State | None = None
        if text("state"):
            wanted = text("state").upper()
            try:
                state = State(STATE_ALIASES.get(wanted, wanted))
            except ValueError:
                raise BadFilter(
                    f"state: unknown state {text('state')!r}; one of "
                    + ", ".join(s.value for s in State)
                ) from None
        ints: dict[str, int | None] = {}
        for name in ("performer_id", "booking_id"):
            raw = text(name)
            if not raw:
                ints[name] = None
                continue
            try:
                ints[name] = int(raw)
            except ValueError:
                raise BadFilter(f"{name}: expected a number, got {raw!r}") from None
            if ints[name] is not None and int(raw) <= 0:
                raise BadFilter(f"{name}: must be > 0")
        return cls(
            state=state,
            reason=text("reason")[:500],
            user_id=text("user_id")[:64],
            performer_id=ints["performer_id"],
            booking_id=ints["booking_id"],
            q=text("q")[:128],
            since=parse_since(text("since")) if text("since") else None,
            since_text=text("since")[:64],
        )

    def params(self) -> dict[str, str]:
        """The query parameters of this filter (a filtered view is a link)."""
        out: dict[str, str] = {}
        if self.state is not None:
            out["state"] = self.state.value
        for name in ("reason", "user_id", "q"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        for name in ("performer_id", "booking_id"):
            if getattr(self, name) is not None:
                out[name] = str(getattr(self, name))
        if self.since is not None:
            out["since"] = self.since_text or (
                datetime.fromtimestamp(self.since, UTC).isoformat().replace("+00:00", "Z")
            )
        return out

    @property
    def empty(self) -> bool:
        return not self.params()

    def matches(self, rec: Rebook) -> bool:
        """Every filter, checked on the record (the index only proposes candidates)."""
        if self.state is not None and rec.state != self.state:
            return False
        if self.reason and not _reason_matches(self.reason, rec.reason):
            return False
        if self.user_id and rec.user_id != self.user_id:
            return False
        if self.performer_id is not None and rec.performer_id != self.performer_id:
            return False
        if self.booking_id is not None and rec.booking_id != self.booking_id:
            return False
        if self.q and not _q_matches(self.q, rec):
            return False
        return self.since is None or rec.created_ts >= self.since


def _reason_matches(wanted: str, reason: str) -> bool:
    """Exact, or a prefix when it ends with `*` (`ambiguous*`)."""
    if wanted.endswith("*"):
        return reason.startswith(wanted[:-1])
    return reason == wanted


def _q_matches(q: str, rec: Rebook) -> bool:
    return rec.event_id == q or rec.rebook_id.startswith(q)


def parse_since(raw: str, now: float | None = None) -> float:
    """`2024-05-01T10:00:00Z`, a date, unix seconds, an age such as `90m`, `6h`, `2d`, or
    `today` (since 00:00 UTC: every time the console and the CLI show is UTC)."""
    value = raw.strip()
    if value.lower() == "today":
        day = datetime.fromtimestamp(time.time() if now is None else now, UTC).date()
        return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
    age = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", value)
    if age:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[age.group(2)]
        return datetime.now(UTC).timestamp() - float(age.group(1)) * scale
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadFilter(
            f"since: expected today, an age like 6h or 2d, an ISO time or unix seconds, got {raw!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def encode_cursor(pair: Pair) -> str:
    return f"{pair[0]!r}~{pair[1]}"


def decode_cursor(raw: str) -> Pair:
    score, sep, rid = raw.partition("~")
    try:
        value = float(score)
    except ValueError:
        raise BadFilter("cursor: not a cursor of this list") from None
    if not sep or not _ID_TEXT.match(rid):
        raise BadFilter("cursor: not a cursor of this list")
    return value, rid


@dataclass
class Page:
    items: list[Rebook]
    next: str | None
    examined: int = 0


@dataclass(frozen=True)
class Summary:
    """Matches of a filter per state; `complete` False when counting stopped at the cap."""

    counts: dict[str, int]
    total: int
    complete: bool


@dataclass
class _Plan:
    """One shard's candidate stream: (created score, id), newest first."""

    stream: Iterator[Pair]
    id_filter: Callable[[Sequence[str]], list[bool]] | None = field(default=None)


def _before(pair: Pair, cursor: Pair | None) -> bool:
    """Strictly after the cursor in newest-first order (score desc, id desc)."""
    return cursor is None or pair < cursor


def _zset_stream(
    store: Store, key: str, cursor: Pair | None, since: float | None, chunk: int = CHUNK
) -> Iterator[Pair]:
    """A zset read newest first, a chunk per round trip, from the cursor on."""
    top: Any = "+inf" if cursor is None else repr(cursor[0])
    low: Any = "-inf" if since is None else repr(since)
    offset = 0
    while True:
        rows = SearchIndex(store).newest(key, top, low, offset, chunk)
        for pair in rows:
            if _before(pair, cursor):
                yield pair
        if len(rows) < chunk:
            return
        offset += chunk


def _scored(store: Store, shard: int, ids: Sequence[str]) -> list[Pair]:
    """Ids with their creation score (from `created`), missing ones dropped."""
    ids = list(ids)
    if not ids:
        return []
    scores = SearchIndex(store).created_scores(shard, ids)
    return [(float(s), rid) for rid, s in zip(ids, scores, strict=True) if s is not None]


def _list_stream(pairs: Sequence[Pair], cursor: Pair | None, since: float | None) -> Iterator[Pair]:
    for pair in sorted(set(pairs), reverse=True):
        if _before(pair, cursor) and (since is None or pair[0] >= since):
            yield pair


class Progress(Protocol):
    """What a long walk reports as it goes (`rebook reindex`, bulk `retry`/`cancel`): the CLI
    draws a bar on a terminal, or counts now and then."""

    def start(self, total: int) -> None: ...
    def step(self, outcome: str = "done", n: int = 1) -> None: ...


class Search:
    """Queries over one store (all shards)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.index = SearchIndex(store)

    def _driver(self, f: Filters) -> str:
        """The smallest index that applies (exact keys first; they are a handful of ids)."""
        if f.q and self._exact(f.q):
            return "q"
        if f.booking_id is not None:
            return "booking"
        if f.user_id:
            return "user"
        sizes: dict[str, int] = {}
        keys = self.store.keys
        wanted: list[tuple[str, str]] = []
        names: list[str] = []
        for shard in self.store.shards:
            if f.performer_id is not None:
                wanted.append(("zset", keys.search_index(shard, "perf", f.performer_id)))
                wanted.append(("set", keys.waiting_on(shard, f.performer_id)))
                wanted.append(("set", keys.in_state(shard, State.RESCHEDULING.value)))
                names += ["performer", "performer", "performer"]
            if f.state is not None:
                wanted.append(("set", keys.in_state(shard, f.state.value)))
                names.append("state")
        for name, n in zip(names, self.index.sizes(wanted), strict=True):
            sizes[name] = sizes.get(name, 0) + n
        if not sizes:
            return "created"
        return min(sizes, key=lambda name: sizes[name])

    def _exact(self, q: str) -> list[str]:
        """Rebooks whose id or event id is exactly `q`."""
        found: list[str] = []
        for rid in dict.fromkeys([q, rebook_id_for(q)]):
            shard = self.store.shard_of(rid)
            if shard is not None and self.index.has_record(shard, rid):
                found.append(rid)
        return found

    def _plans(self, f: Filters, cursor: Pair | None) -> list[_Plan]:
        st, since = self.store, f.since
        driver = self._driver(f)
        plans: list[_Plan] = []
        if driver == "q":
            pairs: list[Pair] = []
            for rid in self._exact(f.q):
                pairs += _scored(st, st.shard_of(rid) or 0, [rid])
            return [_Plan(_list_stream(pairs, cursor, since))]
        for shard in st.shards:
            if driver == "booking":
                pairs = self.index.whole(st.keys.search_index(shard, "book", f.booking_id))
                owner = self.index.active_of_booking(shard, f.booking_id)
                pairs += _scored(st, shard, [owner] if owner else [])
                plans.append(_Plan(_list_stream(pairs, cursor, since)))
            elif driver == "user":
                if st.shard_for_user(f.user_id) != shard:
                    continue
                pairs = self.index.whole(st.keys.search_index(shard, "user", f.user_id))
                pairs += _scored(st, shard, self.index.members(st.keys.of_member(shard, f.user_id)))
                plans.append(_Plan(_list_stream(pairs, cursor, since)))
            elif driver == "performer":
                indexed = _zset_stream(
                    st, st.keys.search_index(shard, "perf", f.performer_id), cursor, since
                )
                # before its first outcome a rebook is WAITING (perf:P) or RESCHEDULING (few)
                early = self.index.members(
                    st.keys.waiting_on(shard, f.performer_id),
                    st.keys.in_state(shard, State.RESCHEDULING.value),
                )
                unindexed = _list_stream(_scored(st, shard, list(early)), cursor, since)
                plans.append(_Plan(_dedupe(heapq.merge(indexed, unindexed, reverse=True))))
            elif driver == "state" and f.state is not None:
                key = st.keys.in_state(shard, f.state.value)
                if self.index.size(key) <= SMALL_SET:
                    pairs = _scored(st, shard, self.index.members(key))
                    plans.append(_Plan(_list_stream(pairs, cursor, since)))
                else:
                    plans.append(
                        _Plan(
                            _zset_stream(st, st.keys.created(shard), cursor, since),
                            id_filter=partial(self.index.member_flags, key),
                        )
                    )
            else:
                plans.append(_Plan(_zset_stream(st, st.keys.created(shard), cursor, since)))
        return plans

    def query(
        self, f: Filters, *, limit: int = 50, cursor: str | None = None, budget: int = MAX_EXAMINED
    ) -> Page:
        """Newest first. `limit` 0 means all (the CLI's `--limit 0`; no budget then)."""
        after = decode_cursor(cursor) if cursor else None
        plans = self._plans(f, after)
        prefix = f.q if f.q and not self._exact(f.q) else ""
        streams = [self._filtered(plan, prefix) for plan in plans]
        merged = heapq.merge(*streams, reverse=True)
        unbounded = limit <= 0
        items: list[Rebook] = []
        examined = 0
        last: Pair | None = None
        while True:
            batch: list[Pair] = []
            for pair in merged:
                batch.append(pair)
                if len(batch) >= CHUNK:
                    break
            if not batch:
                return Page(items, None, examined)
            records = {
                r.rebook_id: r for r in self.store.records.get_many([rid for _, rid in batch])
            }
            for pair in batch:
                examined += 1
                rec = records.get(pair[1])
                if rec is not None and f.matches(rec):
                    if not unbounded and len(items) == limit:
                        return Page(items, encode_cursor(last or pair), examined)
                    items.append(rec)
                last = pair
            if not unbounded and examined >= budget:
                return Page(items, encode_cursor(last) if last else None, examined)

    def _filtered(self, plan: _Plan, prefix: str) -> Iterator[Pair]:
        """A plan's stream with its id-level checks (state membership, id prefix) applied a
        chunk at a time, before any record is read."""
        seen = 0
        while True:
            chunk: list[Pair] = []
            for pair in plan.stream:
                seen += 1
                if prefix and not pair[1].startswith(prefix):
                    if seen >= MAX_EXAMINED * 10:
                        break
                    continue
                chunk.append(pair)
                if len(chunk) >= CHUNK:
                    break
            if not chunk:
                return
            keep = plan.id_filter([rid for _, rid in chunk]) if plan.id_filter else None
            for i, pair in enumerate(chunk):
                if keep is None or keep[i]:
                    yield pair
            if prefix and seen >= MAX_EXAMINED * 10:
                return

    def summary(self, f: Filters, cap: int = SUMMARY_CAP) -> Summary:
        """How many rebooks match, per state (a member's day at a glance: how many were
        accepted, rejected, are parked...). Counts the first `cap` matches, newest first."""
        page = self.query(f, limit=cap)
        counts: dict[str, int] = {}
        for rec in page.items:
            counts[rec.state.value] = counts.get(rec.state.value, 0) + 1
        ordered: dict[str, int] = {s.value: counts[s.value] for s in State if s.value in counts}
        return Summary(ordered, len(page.items), complete=page.next is None)

    # -- charts --------------------------------------------------------------------------------

    def outcomes_per_hour(self, now: float, hours: int = HOURS) -> list[tuple[int, dict[str, int]]]:
        """(hour start as unix seconds, outcomes by state) for the last `hours`, oldest first."""
        current = int(now // 3600)
        wanted = list(range(current - hours + 1, current + 1))
        rows = iter(self.index.chart_rows("out", wanted))
        out: list[tuple[int, dict[str, int]]] = []
        for hour in wanted:
            counts: dict[str, int] = {}
            for _ in self.store.shards:
                for name, n in next(rows).items():
                    counts[name] = counts.get(name, 0) + int(n)
            out.append((hour * 3600, counts))
        return out

    def booked_histogram(self, now: float, hours: int = HOURS) -> list[tuple[str, int]]:
        """Received → BOOKED time over the last `hours`, in `BOOKED_EDGES` buckets."""
        current = int(now // 3600)
        counts = [0] * (len(BOOKED_EDGES) + 1)
        for row in self.index.chart_rows("booked", range(current - hours + 1, current + 1)):
            for bucket, n in row.items():
                index = int(bucket)
                if 0 <= index < len(counts):
                    counts[index] += int(n)
        labels = [f"≤ {_span(BOOKED_EDGES[0])}"]
        labels += [f"{_span(a)}-{_span(b)}" for a, b in itertools.pairwise(BOOKED_EDGES)]
        labels.append(f"> {_span(BOOKED_EDGES[-1])}")
        return list(zip(labels, counts, strict=True))

    # -- backfill --------------------------------------------------------------------------------

    def reindex(self, chunk: int = 1000, progress: Progress | None = None) -> int:
        """Adds records written before the console's indexes existed to them (idempotent: NX).
        Walks `created` once; run it once after upgrading (`rebook reindex`). `progress` hears
        of each chunk: `indexed`, and `skipped` for an id whose record is gone."""
        return self.index.reindex(chunk, progress)


def _dedupe(pairs: Iterator[Pair]) -> Iterator[Pair]:
    last: Pair | None = None
    for pair in pairs:
        if pair != last:
            yield pair
        last = pair


def _span(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
