"""Rolling token-key rotation: workers read every key of REBOOK_TOKEN_KEYS and write with the
first; ops/rotate-token-key.py re-encrypts the rest with the first key, on one Redis and on a
Redis Cluster (every primary scanned), without ever overwriting a pair stored meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet
from redis.cluster import RedisCluster

from tests.integration.conftest import redis_cluster
from worker.adapters.auth import TokenStore
from worker.core.errors import ConfigError
from worker.core.models import TokenSet
from worker.core.settings import load_settings
from worker.core.store.tokens import TokenRecords

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).resolve().parents[2] / "ops" / "rotate-token-key.py"


def pair(n: int) -> TokenSet:
    return TokenSet(
        access_token=f"acc-{n}", refresh_token=f"ref-{n}", expires_at=2e9, lifetime=3600
    )


def rotate(url: str, prefix: str, keys: list[str], *args: str, cluster: bool = False) -> str:
    env = {
        **os.environ,
        "REBOOK_REDIS_URL": url,
        "REBOOK_KEY_PREFIX": prefix,
        "REBOOK_TOKEN_KEYS": ",".join(keys),
        "REBOOK_REDIS_CLUSTER": "true" if cluster else "",
    }
    env.pop("REBOOK_TOKEN_KEY", None)
    env.pop("REBOOK_TOKEN_KEY_NEW", None)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode in (0, 1), done.stderr
    return f"rc={done.returncode} {done.stdout}"


def test_settings_list_the_keys_newest_first() -> None:
    new, old, legacy = (Fernet.generate_key().decode() for _ in range(3))
    s = load_settings(token_keys=f"{new}, {old}", token_key=legacy)
    assert s.token_key_list == [new, old, legacy]
    assert load_settings(token_key=legacy).token_key_list == [legacy]
    with pytest.raises(Exception, match="key 2 is not a Fernet key"):
        load_settings(token_keys=f"{new},nope")


def test_a_rolling_rotation_reads_old_writes_new(redis_client: redis.Redis, prefix: str) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before = TokenStore(TokenRecords(redis_client, prefix), old)
    before.save("u1", pair(1))
    rolled = TokenStore(TokenRecords(redis_client, prefix), [new, old])  # workers after step 1
    assert rolled.load("u1") == pair(1)
    rolled.save("u2", pair(2))
    assert TokenStore(TokenRecords(redis_client, prefix), new).load("u2") == pair(
        2
    )  # written with the new
    with pytest.raises(ConfigError):
        TokenStore(TokenRecords(redis_client, prefix), new).load(
            "u1"
        )  # u1 is still under the old key


def _rotation_round(client: Any, url: str, prefix: str, *, cluster: bool = False) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before = TokenStore(TokenRecords(client, prefix), old, ttl_seconds=3600)
    users = [f"m{i}-{uuid.uuid4().hex[:4]}" for i in range(40)]
    for i, user in enumerate(users):
        before.save(user, pair(i))
    TokenStore(TokenRecords(client, prefix), [new, old], ttl_seconds=3600).save(
        users[0], pair(100)
    )  # new
    client.set(f"{prefix}tok:junk", "not a fernet token")
    only_new = TokenStore(TokenRecords(client, prefix), new)

    out = rotate(url, prefix, [new, old], "--check", cluster=cluster)
    assert out.startswith("rc=1") and "40 do not decrypt" in out, out
    out = rotate(url, prefix, [new, old], "--dry-run", cluster=cluster)
    assert "would re-encrypt 39" in out, out
    with pytest.raises(ConfigError):
        only_new.load(users[1])  # a dry run changes nothing
    out = rotate(url, prefix, [new, old], cluster=cluster)
    assert "re-encrypted 39, already under the first key 1, unreadable 1" in out, out
    assert [only_new.load(u) for u in users] == [pair(100)] + [pair(i) for i in range(1, 40)]
    assert all(0 < client.ttl(f"{prefix}tok:{u}") <= 3600 for u in users)  # TTLs kept
    client.delete(f"{prefix}tok:junk")
    assert rotate(url, prefix, [new], "--check", cluster=cluster).startswith("rc=0")


def test_rotation_script_on_one_redis(
    redis_url: str, redis_client: redis.Redis, prefix: str
) -> None:
    _rotation_round(redis_client, redis_url, prefix)


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


def test_rotation_script_on_a_cluster_scans_every_primary(cluster_url: str, prefix: str) -> None:
    client = RedisCluster.from_url(cluster_url, decode_responses=True)
    try:
        _rotation_round(client, cluster_url, prefix, cluster=True)
        # the tokens were spread: more than one primary held some (else the test proves little)
        holders = [
            node
            for node in client.get_primaries()
            if any(
                True for _ in client.get_redis_connection(node).scan_iter(match=f"{prefix}tok:*")
            )
        ]
        assert len(holders) > 1
    finally:
        client.close()
