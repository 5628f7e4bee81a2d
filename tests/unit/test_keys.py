"""Key names are built in one place (`worker.core.keys`): the Lua scripts may compose only the
names listed there, and the default layout is the documented one (no hash tags unsharded)."""

from __future__ import annotations

import re
from importlib import resources

from worker.core.keys import LUA_NAMES, Keys

SCRIPTS = ("worker.core.store", "worker.celeryapp")


def _lua_sources() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in SCRIPTS:
        folder = resources.files(package).joinpath("lua")
        for entry in folder.iterdir():
            if entry.name.endswith(".lua"):
                found[f"{package}/{entry.name}"] = entry.read_text()
    return found


def test_lua_builds_only_the_names_the_keys_module_lists() -> None:
    used: dict[str, set[str]] = {}
    for name, text in _lua_sources().items():
        for literal in re.findall(r"\bp \.\. '([a-z_:]+)'", text):
            used.setdefault(literal, set()).add(name)
    assert used, "the scan found no key names: its pattern no longer matches the scripts"
    unknown = {k: sorted(v) for k, v in used.items() if k not in LUA_NAMES}
    assert not unknown, f"add these to worker.core.keys.LUA_NAMES (and a builder): {unknown}"


def test_every_lua_name_is_built_by_the_keys_module_the_same_way() -> None:
    keys = Keys("rebook:")
    built = {
        keys.record(0, "x"): "r:x",
        keys.history(0, "x"): "h:x",
        keys.due(0): "due",
        keys.created(0): "created",
        keys.finished(0): "finished",
        keys.in_state(0, "WAITING"): "st:WAITING",
        keys.waiting_on(0, 7): "perf:7",
        keys.performers(0): "performers",
        keys.of_member(0, "u"): "user:u",
        keys.search_index(0, "user", "u"): "ix:user:u",
        keys.search_index(0, "perf", 7): "ix:perf:7",
        keys.search_index(0, "book", 9): "ix:book:9",
        keys.outcomes(0): "outcomes",
        keys.outcome_counts(0): "metrics:outcomes",
        keys.active(0, 9): "active:9",
        keys.gate(0, "u", 7): "gate:u:7",
        keys.posted(0, "u", 7): "posted:u:7",
        keys.chart(0, "out", 5): "chart:out:5",
        keys.chart(0, "booked", 5): "chart:booked:5",
        # where the sweep's fair presence round stands: only the Lua reads and writes it
        keys.skey(0, "presence", "place"): "presence:place",
        keys.sweep_last(): "sweep:last",
    }
    for key, suffix in built.items():
        assert key == "rebook:" + suffix
    covered = {
        name
        for name in LUA_NAMES
        for suffix in built.values()
        if suffix == name or (name.endswith(":") and suffix.startswith(name))
    }
    assert covered == LUA_NAMES, f"no builder for {sorted(LUA_NAMES - covered)}"


def test_sharded_keys_carry_their_hash_tag_and_global_keys_do_not() -> None:
    keys = Keys("app:", shards=4)
    assert keys.record(2, "rb-1") == "app:{rb2}:r:rb-1"
    assert keys.outcomes(0) == "app:{rb0}:outcomes"
    assert keys.token("u1") == "app:tok:u1" and keys.lock("rb-1") == "app:lock:rb-1"
    assert Keys("app:").record(0, "rb-1") == "app:r:rb-1"


def test_a_scan_pattern_escapes_the_prefix() -> None:
    assert Keys("a*b?:").glob("tok:") == "a[*]b[?]:tok:*"
