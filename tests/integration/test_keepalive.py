"""`rebook.keep_tokens` on a real beat and worker: an idle member's pair outlives its refresh
token's lifetime (the sandbox really lets it die unused), and their next rebook just runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.conftest import System, running_system
from worker.core.states import State

LIFETIME = 2.0


@pytest.fixture(scope="module")
def keep_system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    logdir: Path = tmp_path_factory.mktemp("keepalive")
    with running_system(
        redis_url,
        logdir,
        sandbox_options={"refresh_token_ttl_seconds": LIFETIME},
        refresh_token_lifetime_seconds=LIFETIME,
        token_keepalive_before_seconds=LIFETIME * 0.6,
        token_keepalive_interval_seconds=0.3,
    ) as sysm:
        yield sysm


def test_an_idle_member_rebooks_after_their_refresh_token_s_lifetime(
    keep_system: System,
) -> None:
    system = keep_system
    index = system.svc.token_store.records.index_key
    wait_for(lambda: system.store.r.exists(f"{index}:indexed"), 20, "first keep-alive run")
    idle = system.member(expires_in=3600)
    forgotten = system.member(expires_in=3600)
    system.svc.token_store.unindex(forgotten)  # a pair nobody keeps alive
    started = time.monotonic()
    wait_for(
        lambda: (
            time.monotonic() - started > LIFETIME * 2.5 and system.sandbox.stats()["refreshes"] >= 2
        ),
        30,
        "the idle pair refreshed over two lifetimes",
    )
    performer = system.performer(online=True)
    for user in (idle, forgotten):
        system.sandbox.expire_user(user)  # the access token is dead too: a refresh is needed
    rid, _ = system.rebook(idle, performer)
    lost, _ = system.rebook(forgotten, performer)
    system.wait_state(rid, State.WATCHING)
    parked = system.wait_state(lost, State.NEEDS_ATTENTION)
    assert parked.reason == "reauth"
    assert "Task rebook.keep_tokens" in system.worker.text()
