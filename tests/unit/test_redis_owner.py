"""Redis is touched only by the store package (issue 23, item 3): a check that bites in CI.

Every module under `worker/` and `tasks/` is parsed; outside the allowed set none may import
redis, reach for a store's raw client (`.r`), register a Lua script, open a pipeline or call a
Redis command method. The policy modules (circuit, search, audit, ...) keep their decisions and
ask `worker.core.store` classes for the reads and writes.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

OWNER = "worker/core/store/"
EXEMPT = {
    # the kombu transport: a broker on the same Redis, not our store
    "worker/celeryapp/broker.py": "kombu transport (broker Lua, its own keys)",
    "worker/celeryapp/compat.py": "kombu transport patches",
}
# The dev tools (sandbox, demo, embedded Redis) live in devtools/, outside this check.

#: Method names that are Redis commands (or client machinery) and nothing else in this codebase;
#: the generic ones (`get`, `set`, `delete`) are left out, `.r` catches the direct uses.
_COMMAND_NAMES = """
register_script pipeline execute_command eval evalsha script_load
hget hgetall hmget hset hsetnx hdel hincrby hincrbyfloat hexists hkeys hvals hlen hscan_iter
zadd zrem zcard zcount zscore zrange zrevrange zrangebyscore zrevrangebyscore zincrby
zremrangebyscore zremrangebyrank zpopmin zpopmax zmscore zscan_iter
sadd srem smembers sismember scard smismember sscan_iter spop
lpush rpush lpop rpop lrange ltrim llen lrem blpop brpop lmove
xadd xrange xrevrange xread xreadgroup xlen xtrim xdel xinfo_stream xgroup_create xack
incr incrby incrbyfloat decr decrby expire pexpire expireat pexpireat ttl pttl persist
setnx setex psetex getset getdel mget mset exists unlink scan_iter
publish pubsub dbsize flushdb flushall
"""
COMMANDS = frozenset(_COMMAND_NAMES.split())
RAW = frozenset({"r", "_r"})
"""Attribute names the store's classes give the raw client."""
CLIENT_NAMES = frozenset({"client", "redis_client", "redis"})
GENERIC = frozenset({"get", "set", "delete", "exists", "lock", "ping", "info", "keys", "expire"})
"""Commands whose names other objects share: flagged only on a name that says "client"."""


def _allowed(rel: str) -> bool:
    return rel.startswith(OWNER) or any(
        rel == path or (path.endswith("/") and rel.startswith(path)) for path in EXEMPT
    )


def touches(source: str) -> list[str]:
    """Where a module touches Redis: `line: what`, empty when it does not."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if _is_redis(a.name)]
        elif isinstance(node, ast.ImportFrom) and _is_redis(node.module or ""):
            found.append(f"{node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Attribute) and node.attr in RAW:
            found.append(f"{node.lineno}: .{node.attr} (the raw client)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, receiver = node.func.attr, node.func.value
            if method in COMMANDS or (
                method in GENERIC and isinstance(receiver, ast.Name) and receiver.id in CLIENT_NAMES
            ):
                found.append(f"{node.lineno}: .{method}()")
    return sorted(found, key=lambda hit: int(hit.split(":")[0]))


def _is_redis(module: str) -> bool:
    return module == "redis" or module.startswith("redis.")


def modules() -> list[Path]:
    return sorted(p for top in ("worker", "tasks") for p in (ROOT / top).rglob("*.py"))


def test_only_the_store_touches_redis() -> None:
    offenders = {
        rel: hits
        for path in modules()
        if not _allowed(rel := path.relative_to(ROOT).as_posix())
        and (hits := touches(path.read_text()))
    }
    assert not offenders, "Redis touched outside worker/core/store/:\n" + "\n".join(
        f"  {rel} {hit}" for rel, hits in offenders.items() for hit in hits
    )


def test_the_check_bites() -> None:
    """Each kind of touch is seen (so an empty result above means something)."""
    source = (
        "import redis\nfrom redis.exceptions import RedisError\n"
        "store.r.get('k')\nclient.hset('h', 'f', 1)\nc.register_script('x')\nc.pipeline()\n"
        "client.get('k')\nself._r.delete('k')\n"
    )
    assert [hit.split(":")[0] for hit in touches(source)] == [str(n) for n in range(1, 9)]
    assert touches("d = {}\nd.get('k')\nd.setdefault('k', 1)\n") == []
