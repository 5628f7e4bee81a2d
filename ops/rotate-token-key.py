#!/usr/bin/env python3
"""Re-encrypt every stored member token with the first key of REBOOK_TOKEN_KEYS (key rotation).

rebook stores each member's OAuth pair in Redis under `{REBOOK_KEY_PREFIX}tok:{user_id}`,
Fernet-encrypted. Workers encrypt with the first key of REBOOK_TOKEN_KEYS (comma-separated, the
newest first) and decrypt with any of them (REBOOK_TOKEN_KEY, if set, is read as well). A rolling
rotation (ops/RUNBOOK.md "Token rotation"), with workers running throughout:

    1. REBOOK_TOKEN_KEYS="<new>,<old>" on every worker, restart them one by one;
    2. python ops/rotate-token-key.py            # re-encrypt what is still under <old>
       python ops/rotate-token-key.py --check    # every token opens with <new>? (exit 0)
    3. REBOOK_TOKEN_KEYS="<new>" everywhere.

Each token is replaced only if it is unchanged since it was read (one compare-and-set script per
key), so a refresh that stores a new pair meanwhile is never overwritten. With
REBOOK_REDIS_CLUSTER=true every primary node of the cluster is scanned.

The older form still works: REBOOK_TOKEN_KEY=<old> REBOOK_TOKEN_KEY_NEW=<new> (then the workers,
which know only <old>, must be stopped: the script refuses while a refresh lock is held).

Safe to run again; a token that decrypts with none of the keys is reported and left as it is
(exit status 1).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

# Outside the app on purpose: it must run even when the app's settings would refuse to load
# because the key they name no longer matches the stored tokens. The one import of rebook is
# `worker.core.redis_tls` (no settings): the same TLS checks as the worker's Redis client
# (REBOOK_REDIS_CA_FILE / _CERT_FILE / _KEY_FILE; `?ssl_cert_reqs=none` in the URL refused).

CAS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""
"""Replace a token only if it is still the blob that was read (a refresh may have stored a new
pair since: that one is newer and already under the first key)."""


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _keys_from(name: str) -> list[str]:
    return [k.strip() for k in os.environ.get(name, "").split(",") if k.strip()]


def _fernets(keys: list[str]) -> list[Any]:
    from cryptography.fernet import Fernet

    out = []
    for i, value in enumerate(keys, start=1):
        try:
            out.append(Fernet(value.encode()))
        except (ValueError, TypeError):
            sys.exit(
                f"rotate-token-key: key {i} is not a Fernet key (make one: rebook tokens keygen)"
            )
    return out


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _tls(url: str) -> dict[str, Any]:
    """The worker's TLS options for `url` (worker.core.redis_tls), or exit naming the override
    in the URL that would weaken them."""
    from worker.core.redis_tls import tls_options, weak_tls_override

    why = weak_tls_override(url)
    if why:
        sys.exit(f"rotate-token-key: REBOOK_REDIS_URL: {why}; remove it from the URL")
    return tls_options(
        url,
        ca_file=os.environ.get("REBOOK_REDIS_CA_FILE") or None,
        cert_file=os.environ.get("REBOOK_REDIS_CERT_FILE") or None,
        key_file=os.environ.get("REBOOK_REDIS_KEY_FILE") or None,
    )


def _client(url: str) -> tuple[Any, list[Any]]:
    """The client and what to scan: every primary of a cluster, else the one server."""
    import redis

    tls = _tls(url)
    if _truthy("REBOOK_REDIS_CLUSTER"):
        from redis.cluster import RedisCluster

        cluster = RedisCluster.from_url(url, decode_responses=False, **tls)
        return cluster, [cluster.get_redis_connection(node) for node in cluster.get_primaries()]
    single = redis.Redis.from_url(url, decode_responses=False, **tls)
    return single, [single]


def _scan(nodes: list[Any], pattern: str, prefix: bytes) -> list[bytes]:
    return sorted(
        {
            key
            for node in nodes
            for key in node.scan_iter(match=pattern, count=1000)
            if key.startswith(prefix)
        }
    )


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="count, change nothing")
    mode.add_argument(
        "--check",
        action="store_true",
        help="only check that every token decrypts with the first key",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="(REBOOK_TOKEN_KEY_NEW form) run although a token refresh lock is held",
    )
    return parser.parse_args()


def _check(r: Any, tokens: list[bytes], first: Any) -> int:
    """--check: every pair decrypts with the first key (exit 1 naming those that do not)."""
    from cryptography.fernet import InvalidToken

    bad = 0
    for key in tokens:
        blob = r.get(key)
        if blob is None:
            continue
        try:
            first.decrypt(blob)
        except InvalidToken:
            bad += 1
            print(f"does not decrypt with the first key: {key.decode(errors='replace')}")
    print(f"{len(tokens)} member token(s); {bad} do not decrypt with the first key")
    return 1 if bad else 0


def _rotate_one(r: Any, cas: Any, key: bytes, first: Any, every: Any, dry_run: bool) -> str:
    """One pair: "done", "current", "unreadable" or "vanished". Optimistic: read again if the
    key changed under us (a worker refreshed it), at most five times."""
    from cryptography.fernet import InvalidToken

    name = key.decode(errors="replace")
    for _ in range(5):
        blob = r.get(key)
        if blob is None:
            return "vanished"
        try:
            first.decrypt(blob)
            return "current"  # already under the first key
        except InvalidToken:
            pass
        try:
            fresh = every.rotate(blob)
        except InvalidToken:
            print(f"decrypts with none of the keys, left as is: {name}")
            return "unreadable"
        if dry_run or int(cas(keys=[key], args=[blob, fresh])):
            return "done"
    print(f"kept changing during rotation, not rotated: {name}")
    return "unreadable"


def main() -> int:
    args = _arguments()
    import redis
    from cryptography.fernet import MultiFernet

    legacy_new = _keys_from("REBOOK_TOKEN_KEY_NEW")
    keys = legacy_new + _keys_from("REBOOK_TOKEN_KEYS")
    keys += [k for k in _keys_from("REBOOK_TOKEN_KEY") if k not in keys]
    if not keys:
        sys.exit("rotate-token-key: REBOOK_TOKEN_KEYS (or REBOOK_TOKEN_KEY) is not set")
    fernets = _fernets(keys)
    first, every = fernets[0], MultiFernet(fernets)

    url = os.environ.get("REBOOK_REDIS_URL", "redis://localhost:6379/0")
    prefix = os.environ.get("REBOOK_KEY_PREFIX", "rebook:")
    try:
        r, nodes = _client(url)
        r.ping()
    except redis.RedisError as exc:
        sys.exit(f"rotate-token-key: cannot reach Redis ({type(exc).__name__})")
    token_prefix = f"{prefix}tok:".encode()
    tokens = _scan(nodes, _escape_glob(f"{prefix}tok:") + "*", token_prefix)
    if args.check:
        return _check(r, tokens, first)

    if legacy_new and not args.force:
        locks = _scan(nodes, _escape_glob(f"{prefix}toklock:") + "*", f"{prefix}toklock:".encode())
        if locks:
            sys.exit(
                f"rotate-token-key: {len(locks)} token refresh lock(s) held: a worker is "
                "refreshing tokens with the old key only. Stop every worker first (or --force), "
                "or roll out REBOOK_TOKEN_KEYS=<new>,<old> instead."
            )

    cas = r.register_script(CAS)
    counts = {"done": 0, "current": 0, "unreadable": 0, "vanished": 0}
    for key in tokens:
        counts[_rotate_one(r, cas, key, first, every, args.dry_run)] += 1
    verb = "would re-encrypt" if args.dry_run else "re-encrypted"
    print(
        f"{len(tokens)} member token(s): {verb} {counts['done']}, already under the first key "
        f"{counts['current']}, unreadable {counts['unreadable']}, deleted meanwhile "
        f"{counts['vanished']}"
    )
    if not args.dry_run and counts["done"] and legacy_new:
        print("now set REBOOK_TOKEN_KEY to the new key everywhere, then start the workers")
    return 1 if counts["unreadable"] else 0


if __name__ == "__main__":
    sys.exit(main())
