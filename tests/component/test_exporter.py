"""The Prometheus collector against a real (private) Redis: what a scrape shows, and Redis gone."""

from __future__ import annotations

import math
import socket
import time

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
from tests.inspect_store import new_store
from worker.celeryapp.runtime import CallCounter
from worker.core.settings import get_settings, load_settings
from worker.core.states import State
from worker.core.store import REMOVE, Store, rebook_id_for
from worker.core.store.counters import Tally
from worker.operations import exporter

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(store: Store) -> Samples:
    """Renders the collector as Prometheus serves it and parses the text back."""
    registry = CollectorRegistry()
    registry.register(exporter.collector(store))
    text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def create(store: Store, event_id: str, booking_id: int, performer: int | None, now: float) -> str:
    rid = rebook_id_for(event_id)
    store.records.create(
        rebook_id=rid,
        event_id=event_id,
        booking_id=booking_id,
        user_id="u1",
        performer_id=performer,
        deadline=now + 3600,
        now=now,
    )
    return rid


def test_empty_prefix_exports_every_series_with_zeros(store: Store) -> None:
    samples = scrape(store)
    assert value(samples, "rebook_up") == 1
    for state in State:
        assert value(samples, "rebook_rebooks", state=state.value) == 0
    assert value(samples, "rebook_due_lag_seconds") == 0
    assert value(samples, "rebook_deadletter_total") == 0
    assert math.isinf(value(samples, "rebook_last_sweep_age_seconds"))  # beat never ran
    for outcome in exporter.OUTCOME_STATES:
        assert value(samples, "rebook_outcomes_total", state=outcome) == 0
    assert not [name for name, _ in samples if name.startswith("rebook_upstream_")]


def test_states_lag_outcomes_and_upstream_counters(store: Store) -> None:
    now = time.time()
    waiting = create(store, "ev-wait", 1, 7, now)
    overdue = create(store, "ev-overdue", 2, None, now - 100)  # due at once: 100 s late
    watching = create(store, "ev-watch", 3, 7, now)
    accepted = create(store, "ev-acc", 4, 7, now)
    create(store, "ev-dup", 1, 7, now)  # same booking as `waiting`: DUPLICATE, counted
    assert store.transitions.transition(watching, State.RESCHEDULING, from_=[State.WAITING])
    assert store.transitions.transition(
        watching, State.WATCHING, from_=[State.RESCHEDULING], outcome="BOOKED"
    )
    assert store.transitions.transition(accepted, State.ACCEPTED, due=REMOVE, outcome="ACCEPTED")
    store.outcomes.deadletter("bad event", {"event_id": 5})
    store.outcomes.deadletter("bad event", {"event_id": 6})
    store.r.set(store.key("sweep", "last"), repr(now - 5))
    upstream = store.key("metrics", "upstream")
    store.r.hincrby(upstream, "RescheduleMadeBooking:ok", 3)
    store.r.hincrby(upstream, "RescheduleMadeBooking:Transient", 2)
    store.r.hincrby(upstream, "RescheduleMadeBooking:Ambiguous", 1)
    store.r.hincrby(upstream, "getUserSummary:ok", 5)
    store.r.hincrby(upstream, "token:AuthExpired", 1)

    samples = scrape(store)

    assert value(samples, "rebook_up") == 1
    assert store.records.get(waiting) is not None and store.records.get(overdue) is not None
    assert value(samples, "rebook_rebooks", state="WAITING") == 2
    assert value(samples, "rebook_rebooks", state="WATCHING") == 1
    assert value(samples, "rebook_rebooks", state="ACCEPTED") == 1
    assert value(samples, "rebook_rebooks", state="DUPLICATE") == 1
    assert value(samples, "rebook_rebooks", state="NEEDS_ATTENTION") == 0
    assert 99 <= value(samples, "rebook_due_lag_seconds") < 130
    assert value(samples, "rebook_deadletter_total") == 2
    assert 4 <= value(samples, "rebook_last_sweep_age_seconds") < 60
    assert value(samples, "rebook_outcomes_total", state="BOOKED") == 1
    assert value(samples, "rebook_outcomes_total", state="ACCEPTED") == 1
    assert value(samples, "rebook_outcomes_total", state="DUPLICATE") == 1
    assert value(samples, "rebook_outcomes_total", state="EXPIRED") == 0
    calls = "rebook_upstream_calls_total"
    assert value(samples, calls, endpoint="RescheduleMadeBooking", outcome="ok") == 3
    assert value(samples, calls, endpoint="RescheduleMadeBooking", outcome="Transient") == 2
    assert value(samples, calls, endpoint="RescheduleMadeBooking", outcome="Ambiguous") == 1
    assert value(samples, calls, endpoint="token", outcome="AuthExpired") == 1
    errors = "rebook_upstream_errors_total"
    assert value(samples, errors, endpoint="RescheduleMadeBooking") == 3
    assert value(samples, errors, endpoint="getUserSummary") == 0
    assert value(samples, errors, endpoint="token") == 1


def test_counters_survive_an_exporter_restart(store: Store) -> None:
    """The counts live in Redis, so a new collector (a restarted exporter) sees the same totals."""
    store.r.hincrby(store.key("metrics", "outcomes"), "GAVE_UP", 4)
    first = scrape(store)
    second = scrape(new_store(store.r, prefix=store.keys.prefix))
    assert value(first, "rebook_outcomes_total", state="GAVE_UP") == 4
    assert value(second, "rebook_outcomes_total", state="GAVE_UP") == 4


def test_unreachable_redis_still_answers_with_up_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_settings(redis_url=f"redis://:pw@127.0.0.1:{port}/0", key_prefix="t-dead:")
    dead = exporter.store_for(settings)
    registry = CollectorRegistry()
    registry.register(exporter.collector(dead))  # registering must not touch Redis
    started = time.monotonic()
    text = generate_latest(registry).decode()
    assert time.monotonic() - started < 2.0  # no client-side retries with backoff
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["rebook_up 0.0"]
    assert "***" in caplog.text and ":pw@" not in caplog.text  # the password is masked


def test_bad_setting_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REBOOK_REDIS_URL", "http://not-redis")
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exc:
            exporter.main(["--port", "0"])
    finally:
        get_settings.cache_clear()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "REBOOK_REDIS_URL" in err


def test_upstream_calls_are_counted_in_redis_within_a_second(
    redis_client: redis.Redis, prefix: str
) -> None:
    """Counted in the process, added to Redis in one pipeline a second later: no round trip per
    upstream call, and nothing lost while the process lives."""
    key = f"{prefix}metrics:upstream"
    count = CallCounter(Tally(redis_client, key))
    for _ in range(3):
        count("getUserSummary", "ok")
    count("RescheduleMadeBooking", "Ambiguous")
    assert not redis_client.exists(key)  # not yet: batched
    wait_for(lambda: redis_client.hlen(key) == 2, 5, "the counts to be flushed")
    assert redis_client.hgetall(key) == {
        "getUserSummary:ok": "3",
        "RescheduleMadeBooking:Ambiguous": "1",
    }


def test_exporter_serves_behind_basic_auth_on_loopback(store: Store) -> None:
    """REBOOK_EXPORTER_BIND defaults to 127.0.0.1; with REBOOK_EXPORTER_BASIC_AUTH a scrape
    without (or with wrong) credentials gets 401, each configured user gets the metrics."""
    import requests

    from worker.core.settings import Settings

    assert Settings.model_fields["exporter_bind"].default == "127.0.0.1"
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter.collector(store))
    server, _ = exporter.serve(registry, "127.0.0.1", 0, "prom:s3cret-1,ops:s3cret-2")
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        assert requests.get(url, timeout=5).status_code == 401
        assert requests.get(url, auth=("prom", "wrong"), timeout=5).status_code == 401
        for auth in (("prom", "s3cret-1"), ("ops", "s3cret-2")):
            answer = requests.get(url, auth=auth, timeout=5)
            assert answer.status_code == 200 and "rebook_up 1.0" in answer.text
    finally:
        server.shutdown()
        server.server_close()
    open_server, _ = exporter.serve(registry, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{open_server.server_port}/metrics"
        assert "rebook_up 1.0" in requests.get(url, timeout=5).text
    finally:
        open_server.shutdown()
        open_server.server_close()


def test_presence_capacity_gauges(store: Store) -> None:
    """Needed against budget against achieved, for the short-budget alert."""
    store = new_store(store.r, prefix=store.keys.prefix, presence_interval=1.0, upstream_rate=20.0)
    now = time.time()
    for k in range(50):
        create(store, f"e-{k}", 100 + k, 700 + k, now)
    samples = scrape(store)
    assert value(samples, "rebook_presence_performers") == 50
    assert value(samples, "rebook_presence_interval_seconds") == 1.0
    assert value(samples, "rebook_presence_needed_calls_per_second") == 50.0
    assert value(samples, "rebook_presence_budget_calls_per_second") == pytest.approx(
        14 / 1.05, abs=1e-3
    )
    assert math.isnan(value(samples, "rebook_presence_achieved_interval_seconds"))  # none made
    store.presence.note_presence_performers(now - 20)
    for _ in range(100):
        store.presence.note_presence_call(now - 20)
    achieved = value(scrape(store), "rebook_presence_achieved_interval_seconds")
    assert achieved == pytest.approx(50 / (100 / 20), rel=0.05)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:  # no IPv6, or no ::1 configured (some containers)
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no ::1 on this machine")
def test_exporter_serves_on_ipv6_loopback(store: Store) -> None:
    """`::1` counts as loopback, so it must also bind (a plain WSGIServer is IPv4 only)."""
    import requests

    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter.collector(store))
    server, _ = exporter.serve(registry, "::1", 0)
    try:
        answer = requests.get(f"http://[::1]:{server.server_port}/metrics", timeout=5)
        assert answer.status_code == 200 and "rebook_up 1.0" in answer.text
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "exporter.internal"])
def test_exporter_on_a_network_address_without_basic_auth_refuses_to_start(
    host: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the Flower launcher does: /metrics open to the network only behind basic auth."""
    monkeypatch.delenv("REBOOK_EXPORTER_BASIC_AUTH", raising=False)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exc:
            exporter.main(["--port", "0", "--host", host])
    finally:
        get_settings.cache_clear()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "REBOOK_EXPORTER_BASIC_AUTH" in err and host in err


def test_only_loopback_addresses_count_as_local() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert exporter.is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "rebook-exporter", ""):
        assert not exporter.is_loopback(host), host


def test_a_deployment_fault_shows_as_rebook_paused(store: Store) -> None:
    from worker.core.errors import DeploymentFault

    before = scrape(store)
    assert value(before, "rebook_paused", reason="api_key") == 0
    store.circuit.open(DeploymentFault("api_key", "Invalid or missing API key."))
    after = scrape(store)
    assert value(after, "rebook_paused", reason="api_key") == 1
    assert value(after, "rebook_paused", reason="oauth_client") == 0
    assert store.sweep.stats()["paused"]["setting"] == "REBOOK_API_KEY"
    store.circuit.close("test")
    assert value(scrape(store), "rebook_paused", reason="api_key") == 0
    assert store.sweep.stats()["paused"] is None
