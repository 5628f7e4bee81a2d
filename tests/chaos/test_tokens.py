"""Tokens under load: one refresh for many concurrent rebooks, rotation stored, refusal parks."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.integration.conftest import System, running_system
from worker.core.states import State

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def token_system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(redis_url, tmp_path_factory.mktemp("tokens")) as sysm:
        yield sysm


def test_many_rebooks_of_a_member_with_an_expired_token_refresh_once(
    token_system: System,
) -> None:
    system = token_system
    user = system.member(expires_in=0)  # the stored access token is already expired
    stored = system.svc.token_store.load(user)
    assert stored is not None
    performer = system.performer(online=False)
    before = system.sandbox.stats()["refreshes"]
    rids = [system.rebook(user, performer)[0] for _ in range(50)]
    for rid in rids:
        system.wait_state(rid, State.WAITING)
    system.sandbox.set_online(performer, True)
    for rid in rids:
        system.wait_state(rid, State.WATCHING, timeout=60)
    assert system.sandbox.stats()["refreshes"] - before == 1
    fresh = system.svc.token_store.load(user)
    assert fresh is not None and fresh.refresh_token != stored.refresh_token
    # the stored refresh token is the rotated, working one: a forced refresh succeeds with it
    system.sandbox.expire_user(user)
    assert system.svc.tokens.access_token(user, rejected=fresh.access_token) != fresh.access_token
    assert system.sandbox.stats()["refreshes"] - before == 2


def test_refused_refresh_parks_every_rebook_of_the_member_and_tokens_set_resumes(
    token_system: System,
) -> None:
    system = token_system
    user = system.member(expires_in=0)
    system.sandbox.revoke_user(user)
    performer = system.performer(online=True)
    rids = [system.rebook(user, performer)[0] for _ in range(10)]
    for rid in rids:
        rec = system.wait_state(rid, State.NEEDS_ATTENTION)
        assert rec.reason == "reauth" and "tokens set" in rec.action
    answer = system.sandbox.add_user(user)
    proc = system.cli("tokens", "set", user, stdin=json.dumps(answer))
    assert proc.returncode == 0, proc.stderr
    for rid in rids:
        system.wait_state(rid, State.WATCHING, timeout=30)
    news = system.sandbox.stats()["new_bookings"]
    assert all(news[str(system.get(r).booking_id)] == 1 for r in rids)  # type: ignore[union-attr]
