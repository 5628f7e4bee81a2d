"""Queries by business keys against a real (private) Redis: every filter, newest first, cursor
paging across shards, backfill of old records, housekeeping and the chart counters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from tests.inspect_store import new_store
from worker.core.search import BadFilter, Filters, Search, decode_cursor, parse_since
from worker.core.states import State
from worker.core.store import REMOVE, Store, rebook_id_for

T0 = 1_700_000_000.0


@pytest.fixture(params=[1, 4], ids=["one-shard", "four-shards"])
def store(
    request: pytest.FixtureRequest, redis_client: redis.Redis, prefix: str
) -> Iterator[Store]:
    s = new_store(redis_client, prefix=prefix, retention_seconds=1000, shards=request.param)
    yield s
    keys = list(redis_client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        redis_client.delete(*keys)


def make(store: Store, n: int, *, user: str, performer: int | None, booking: int) -> str:
    rid = rebook_id_for(f"ev-{n}")
    store.records.create(
        rebook_id=rid,
        event_id=f"ev-{n}",
        booking_id=booking,
        user_id=user,
        performer_id=performer,
        deadline=T0 + 10_000,
        now=T0 + n,
    )
    return rid


@pytest.fixture
def population(store: Store) -> dict[int, str]:
    """30 rebooks: members u0..u2, performers 10/11, bookings 1000+n; every 5th parked reauth,
    every 7th finished GAVE_UP."""
    ids: dict[int, str] = {}
    for n in range(30):
        ids[n] = make(store, n, user=f"u{n % 3}", performer=10 + n % 2, booking=1000 + n)
    for n in range(0, 30, 5):
        assert store.transitions.transition(
            ids[n], State.NEEDS_ATTENTION, reason="reauth", outcome="NEEDS_ATTENTION", now=T0 + 100
        )
    for n in range(1, 30, 7):
        assert store.transitions.transition(
            ids[n], State.GAVE_UP, reason="max wait", outcome="GAVE_UP", due=REMOVE, now=T0 + 100
        )
    return ids


def ids_of(search: Search, f: Filters, limit: int = 50) -> list[str]:
    return [r.rebook_id for r in search.query(f, limit=limit).items]


def expect(population: dict[int, str], wanted: list[int]) -> list[str]:
    return [population[n] for n in sorted(wanted, reverse=True)]


def test_each_filter_newest_first(store: Store, population: dict[int, str]) -> None:
    s = Search(store)
    assert ids_of(s, Filters()) == expect(population, list(range(30)))
    assert ids_of(s, Filters(user_id="u1")) == expect(
        population, [n for n in range(30) if n % 3 == 1]
    )
    assert ids_of(s, Filters(performer_id=11)) == expect(
        population, [n for n in range(30) if n % 2 == 1]
    )
    assert ids_of(s, Filters(booking_id=1008)) == [population[8]]
    assert ids_of(s, Filters(booking_id=1008)) == [population[8]]
    assert ids_of(s, Filters(booking_id=1015)) == [population[15]]  # finished: ix:book
    parked = [n for n in range(0, 30, 5) if n % 7 != 1]  # 15 parked, then gave up
    assert ids_of(s, Filters(state=State.NEEDS_ATTENTION)) == expect(population, parked)
    assert ids_of(s, Filters(reason="reauth")) == expect(population, parked)
    assert ids_of(s, Filters(reason="rea*")) == expect(population, parked)
    assert ids_of(s, Filters(state=State.NEEDS_ATTENTION, user_id="u0")) == expect(
        population, [n for n in parked if n % 3 == 0]
    )
    assert ids_of(s, Filters(q="ev-12")) == [population[12]]  # event id
    assert ids_of(s, Filters(q=population[12])) == [population[12]]  # rebook id
    assert ids_of(s, Filters(q=population[12][:9])) == [
        rid for rid in expect(population, list(range(30))) if rid.startswith(population[12][:9])
    ]
    assert ids_of(s, Filters(since=T0 + 25)) == expect(population, [25, 26, 27, 28, 29])
    assert ids_of(s, Filters(user_id="nobody")) == []


def test_cursor_pages_cover_everything_once(store: Store, population: dict[int, str]) -> None:
    s = Search(store)
    for f in (Filters(), Filters(performer_id=10), Filters(state=State.WAITING)):
        seen: list[str] = []
        cursor = None
        while True:
            page = s.query(f, limit=4, cursor=cursor)
            assert len(page.items) <= 4
            seen += [r.rebook_id for r in page.items]
            if page.next is None:
                break
            cursor = page.next
        assert seen == ids_of(s, f, limit=0)
        assert len(seen) == len(set(seen))


def test_large_state_set_walks_created_with_membership(
    store: Store, population: dict[int, str]
) -> None:
    """Above SMALL_SET a state is found by walking `created`; same answer as the small path."""
    import worker.core.search as search

    s = Search(store)
    small = ids_of(s, Filters(state=State.WAITING), limit=0)
    old = search.SMALL_SET
    search.SMALL_SET = 1
    try:
        assert ids_of(s, Filters(state=State.WAITING), limit=0) == small
    finally:
        search.SMALL_SET = old


def test_reindex_backfills_records_written_before_the_indexes(
    store: Store, population: dict[int, str], redis_client: redis.Redis, prefix: str
) -> None:
    for key in redis_client.scan_iter(match=prefix + "*ix:*"):
        redis_client.delete(key)
    s = Search(store)
    finished_waiting = [population[n] for n in range(1, 30, 7)]
    assert population[1] not in ids_of(s, Filters(user_id="u1"))
    assert ids_of(s, Filters(booking_id=1015)) == []
    heard: list[tuple[str, int]] = []

    class Tally:
        def start(self, total: int) -> None:
            heard.append(("total", total))

        def step(self, outcome: str = "done", n: int = 1) -> None:
            heard.append((outcome, n))

    assert s.reindex(chunk=8, progress=Tally()) == 30
    assert heard[0] == ("total", 30) and {o for o, _ in heard[1:]} == {"indexed"}
    assert sum(n for _, n in heard[1:]) == 30
    assert all(0 < n <= 8 for _, n in heard[1:])  # as each chunk is done, not once at the end
    assert ids_of(s, Filters(user_id="u1")) == expect(
        population, [n for n in range(30) if n % 3 == 1]
    )
    assert ids_of(s, Filters(booking_id=1015)) == [population[15]]
    assert all(rid in ids_of(s, Filters(), limit=0) for rid in finished_waiting)


def test_housekeeping_removes_index_entries(
    store: Store, population: dict[int, str], redis_client: redis.Redis, prefix: str
) -> None:
    removed = store.sweep.expire_finished(T0 + 100 + 2000)
    assert removed == 5
    s = Search(store)
    assert ids_of(s, Filters(booking_id=1015)) == []
    members = set()
    for key in redis_client.scan_iter(match=prefix + "*ix:*"):
        members |= set(redis_client.zrange(key, 0, -1))
    assert not members & {population[n] for n in range(1, 30, 7)}


def test_charts_count_outcomes_per_hour_and_booked_time(store: Store) -> None:
    rid = make(store, 1, user="u", performer=5, booking=77)
    now = T0 + 95  # 94 s after receipt: the 60-120 s bucket
    assert store.transitions.transition(rid, State.RESCHEDULING, reason="online", now=T0 + 50)
    assert store.transitions.transition(
        rid,
        State.WATCHING,
        reason="booked",
        fields={"new_booking_id": 9},
        outcome="BOOKED",
        now=now,
    )
    assert store.transitions.transition(
        rid, State.ACCEPTED, reason="accepted", outcome="ACCEPTED", now=now + 10
    )
    s = Search(store)
    hours = s.outcomes_per_hour(now + 10)
    assert len(hours) == 48
    assert hours[-1][1] == {"BOOKED": 1, "ACCEPTED": 1}
    assert sum(sum(c.values()) for _, c in hours[:-1]) == 0
    histogram = dict(s.booked_histogram(now + 10))
    assert histogram["1m-2m"] == 1
    assert sum(histogram.values()) == 1
    assert s.outcomes_per_hour(now + 49 * 3600)[-1][1] == {}  # out of the window
    assert ids_of(s, Filters(booking_id=77)) == [rid]


def test_bad_filters_name_the_parameter() -> None:
    with pytest.raises(BadFilter, match="state"):
        Filters.parse({"state": "SLEEPING"})
    with pytest.raises(BadFilter, match="performer_id"):
        Filters.parse({"performer_id": "abc"})
    with pytest.raises(BadFilter, match="since"):
        parse_since("yesterday-ish")
    with pytest.raises(BadFilter, match="cursor"):
        decode_cursor("<script>")
    f = Filters.parse({"state": "waiting", "user_id": " m1 ", "performer_id": "3", "q": ""})
    assert f == Filters(state=State.WAITING, user_id="m1", performer_id=3)
    assert Filters.parse(f.params()) == f
    assert abs(parse_since("2h") - (parse_since("0s") - 7200)) < 5


def test_performer_found_in_every_phase(store: Store) -> None:
    """Waiting (perf:P), rescheduling (st:RESCHEDULING), after an outcome (ix:perf:P), and a
    performer learnt late (the event named none)."""
    s = Search(store)
    waiting = make(store, 1, user="a", performer=5, booking=1)
    moving = make(store, 2, user="b", performer=5, booking=2)
    late = make(store, 3, user="c", performer=None, booking=3)
    other = make(store, 4, user="d", performer=6, booking=4)
    assert store.transitions.transition(moving, State.RESCHEDULING, reason="online", now=T0 + 10)
    assert store.transitions.transition(
        late, State.WAITING, reason="performer read", fields={"performer_id": 5}, now=T0 + 10
    )
    assert ids_of(s, Filters(performer_id=5)) == [late, moving, waiting]
    for rid in (waiting, moving, late):
        assert store.transitions.transition(
            rid, State.NEEDS_ATTENTION, reason="x", outcome="NEEDS_ATTENTION", now=T0 + 20
        )
    assert ids_of(s, Filters(performer_id=5)) == [late, moving, waiting]
    assert ids_of(s, Filters(performer_id=6)) == [other]


def test_today_and_parked_are_words_an_operator_types() -> None:
    now = datetime(2026, 5, 4, 15, 30, tzinfo=UTC).timestamp()
    assert parse_since("today", now) == datetime(2026, 5, 4, tzinfo=UTC).timestamp()
    assert parse_since(" Today ", now) == parse_since("today", now)
    f = Filters.parse({"since": "today", "state": "parked", "user_id": "m1"})
    assert f.state == State.NEEDS_ATTENTION
    # a link keeps the word, so a shared "today" view stays today tomorrow
    assert f.params() == {"state": "NEEDS_ATTENTION", "user_id": "m1", "since": "today"}
    assert Filters.parse({"since": "24h"}).params() == {"since": "24h"}
    with pytest.raises(BadFilter, match="today, an age like 6h"):
        parse_since("yesterday")


def test_summary_counts_a_filtered_view_per_state(store: Store, population: dict[int, str]) -> None:
    s = Search(store)
    summary = s.summary(Filters(user_id="u0"))
    members = [n for n in range(30) if n % 3 == 0]

    def final(n: int) -> str:  # as `population` leaves them: GAVE_UP last
        return "GAVE_UP" if n % 7 == 1 else "NEEDS_ATTENTION" if n % 5 == 0 else "WAITING"

    expected: dict[str, int] = {}
    for n in members:
        expected[final(n)] = expected.get(final(n), 0) + 1
    assert summary.total == len(members) and summary.complete
    assert summary.counts == expected and len(expected) == 3
    assert list(summary.counts) == ["WAITING", "NEEDS_ATTENTION", "GAVE_UP"]  # state order
    capped = s.summary(Filters(user_id="u0"), cap=3)
    assert capped.total == 3 and not capped.complete
