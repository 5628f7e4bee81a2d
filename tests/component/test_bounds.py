"""Bounds on what can grow in Redis (dead letters, tokens) and the memory figures that warn before
Redis reaches maxmemory (where every write is refused: OOM). Real Redis servers throughout."""

from __future__ import annotations

import math

import pytest
import redis
from cryptography.fernet import Fernet

from rebook_dev.embedded import EmbeddedRedis
from tests.component.test_auth import tokens
from tests.component.test_exporter import scrape, value
from tests.conftest import fast_settings
from tests.inspect_store import new_store
from worker.adapters.auth import TokenStore
from worker.core.settings import load_settings
from worker.core.store import Store
from worker.core.store.tokens import TokenRecords
from worker.operations import doctor


def test_the_dead_letter_stream_is_capped_by_count(store: Store) -> None:
    store = new_store(store.r, prefix=store.keys.prefix, deadletter_max_entries=100)
    for i in range(1000):
        store.outcomes.deadletter(f"bad {i}", {"i": i})
    length = store.r.xlen(store.key("deadletter"))
    # approximate trimming (MAXLEN ~) keeps whole stream nodes: a little over the cap
    assert 100 <= length <= 300, length
    assert store.outcomes.deadletters(1)[0]["reason"] == "bad 999"


def test_the_cap_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REBOOK_DEADLETTER_MAX_ENTRIES", "5000")
    monkeypatch.setenv("REBOOK_API_KEY", "k")
    assert load_settings().deadletter_max_entries == 5000
    assert load_settings(deadletter_max_entries=100_000).deadletter_max_entries == 100_000


def test_stored_tokens_expire_after_the_ttl_and_each_save_renews_it(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = TokenStore(
        TokenRecords(redis_client, prefix), Fernet.generate_key().decode(), ttl_seconds=3600
    )
    store.save("u1", tokens())
    key = f"{prefix}tok:u1"
    assert 3500 < redis_client.ttl(key) <= 3600
    redis_client.expire(key, 10)
    store.save("u1", tokens(access="acc-2"))  # a refresh stores the pair again
    assert redis_client.ttl(key) > 3500
    unbounded = TokenStore(TokenRecords(redis_client, prefix), Fernet.generate_key().decode())
    unbounded.save("u2", tokens())
    assert redis_client.ttl(f"{prefix}tok:u2") == -1
    redis_client.delete(key, f"{prefix}tok:u2")


def test_exporter_shows_memory_headroom(store: Store, redis_client: redis.Redis) -> None:
    assert math.isinf(value(scrape(store), "rebook_redis_memory_headroom_ratio"))
    used = int(redis_client.info("memory")["used_memory"])
    redis_client.config_set("maxmemory", used * 4)
    try:
        samples = scrape(store)
    finally:
        redis_client.config_set("maxmemory", 0)
    assert value(samples, "rebook_redis_maxmemory_bytes") == used * 4
    assert value(samples, "rebook_redis_used_memory_bytes") > 0
    assert 0.5 < value(samples, "rebook_redis_memory_headroom_ratio") < 0.9


def test_doctor_fails_redis_above_80_percent_of_maxmemory(prefix: str) -> None:
    with EmbeddedRedis(appendonly=True) as server:
        settings = fast_settings(server.url, "http://127.0.0.1:9", prefix)
        admin = redis.Redis.from_url(server.url)
        try:
            assert doctor._redis(settings).ok
            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory", int(used * 1.1))
            check = doctor._redis(settings)
            assert not check.ok and "of maxmemory" in check.detail, check
            admin.config_set("maxmemory", used * 2)
            assert doctor._redis(settings).ok
        finally:
            admin.close()
