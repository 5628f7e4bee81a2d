"""Token keep-alive (`rebook.keep_tokens`'s function), against the real sandbox and Redis.

Lifetimes are a second or two, so the sandbox's refresh tokens really die unused
(`refresh_token_has_expired`); each test drives the function as beat would, run after run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rebook_dev.sandbox import SandboxClient, SandboxServer
from tests.component.test_flow import Recorder
from tests.conftest import fast_settings, wait_for
from worker.adapters.keepalive import keep_tokens
from worker.celeryapp.runtime import Services, build_services
from worker.core.errors import ReauthRequired
from worker.core.flow import Flow
from worker.core.models import TokenSet
from worker.core.states import State
from worker.core.store import rebook_id_for

LIFETIME = 1.2
BEFORE = 0.8  # refresh once less than this is left: due 0.4 s after each refresh


@pytest.fixture
def svc(
    redis_url: str, sandbox_server: SandboxServer, sandbox: SandboxClient, prefix: str
) -> Iterator[Services]:
    sandbox.configure(refresh_token_ttl_seconds=LIFETIME)
    settings = fast_settings(
        redis_url,
        sandbox_server.url,
        prefix,
        refresh_token_lifetime_seconds=LIFETIME,
        token_keepalive_before_seconds=BEFORE,
        token_keepalive_batch=50,
    )
    services = build_services(settings)
    yield services
    services.client.close()
    keys = list(services.store.r.scan_iter(match=prefix + "*", count=1000))
    if keys:
        services.store.r.delete(*keys)
    services.store.r.close()


def member(
    svc: Services, sandbox: SandboxClient, user: str, *, due: bool = False, **kw: Any
) -> dict[str, Any]:
    """A member whose pair was stored now, or with `due` as if stored long enough ago that the
    keep-alive must refresh it."""
    answer = sandbox.add_user(user, **kw)
    stored = time.time() - (LIFETIME - BEFORE + 0.05 if due else 0.0)
    svc.token_store.save(user, TokenSet.from_token_response(answer, stored))
    return answer


def run(svc: Services, park: Callable[[str, str], int] | None = None, **kw: Any) -> dict[str, int]:
    options: dict[str, Any] = {"before_seconds": BEFORE, "batch": 50, "budget_seconds": 10.0}
    options.update(kw)
    return keep_tokens(svc.tokens, park or (lambda user, detail: 0), **options)


def outlive(svc: Services, seconds: float) -> None:
    """Runs the keep-alive as beat would, every few tens of ms, until `seconds` have passed."""
    end = time.monotonic() + seconds
    wait_for(lambda: run(svc) is not None and time.monotonic() > end, timeout=seconds + 10)


def test_an_idle_member_s_tokens_outlive_their_refresh_token(
    svc: Services, sandbox: SandboxClient
) -> None:
    first = member(svc, sandbox, "idle", expires_in=3600)
    member(svc, sandbox, "forgotten", expires_in=3600)
    svc.token_store.unindex("forgotten")  # what every pair was before the keep-alive
    svc.store.r.set(f"{svc.token_store.records.index_key}:indexed", "1")  # and no backfill for it
    outlive(svc, LIFETIME * 2.5)
    assert sandbox.stats()["refreshes"] >= 2  # rotated several times, none of them needed
    stored = svc.token_store.load("idle")
    assert stored is not None and stored.refresh_token != first["refresh_token"]
    assert stored.refresh_issued_at > time.time() - LIFETIME
    # the pair still works: a step whose access token ran out refreshes as usual
    sandbox.expire_user("idle")
    svc.token_store.save("idle", stored.model_copy(update={"expires_at": 0.0}))
    assert svc.tokens.access_token("idle") != stored.access_token
    # ...while a pair nobody kept alive is dead
    svc.token_store.save(
        "forgotten",
        svc.token_store.load("forgotten").model_copy(update={"expires_at": 0.0}),  # type: ignore[union-attr]
    )
    with pytest.raises(ReauthRequired, match="refresh_token_has_expired"):
        svc.tokens.access_token("forgotten")


def test_only_due_pairs_are_refreshed_and_a_run_is_bounded(
    svc: Services, sandbox: SandboxClient
) -> None:
    for n in range(5):
        member(svc, sandbox, f"m{n}")
    assert run(svc) == {}  # all fresh: nothing read but the index
    assert sandbox.stats()["refreshes"] == 0
    wait_for(lambda: svc.token_store.due(time.time() + BEFORE, 10) == [f"m{n}" for n in range(5)])
    assert run(svc, batch=2) == {"refreshed": 2}
    assert sandbox.stats()["refreshes"] == 2
    assert run(svc) == {"refreshed": 3}
    assert run(svc) == {}
    assert sandbox.stats()["refreshes"] == 5


def test_a_pair_stored_before_the_index_is_found_once(
    svc: Services, sandbox: SandboxClient
) -> None:
    old = TokenSet.from_token_response(sandbox.add_user("old"), time.time())
    svc.token_store.save("old", old.model_copy(update={"refresh_issued_at": 0.0}))  # as before
    member(svc, sandbox, "known")
    for user in ("old", "known"):
        svc.token_store.unindex(user)
    # the one with no recorded issue is refreshed at once, the other goes to its place
    assert run(svc) == {"indexed": 2, "refreshed": 1, "fresh": 1}
    assert sandbox.stats()["refreshes"] == 1
    assert run(svc) == {}
    for user in ("old", "known"):
        assert svc.store.r.zscore(svc.token_store.records.index_key, user) > time.time()


def test_single_flight_with_a_step_s_refresh(svc: Services, sandbox: SandboxClient) -> None:
    member(svc, sandbox, "busy", due=True)
    lock = svc.store.r.lock(svc.token_store.records.keys.token_lock("busy"), timeout=5)
    assert lock.acquire(blocking=False)
    try:
        assert run(svc) == {"busy": 1}
        assert sandbox.stats()["refreshes"] == 0
    finally:
        lock.release()
    assert run(svc) == {"refreshed": 1}


def test_an_upstream_failure_ends_the_run_and_leaves_the_rest_due(
    svc: Services, sandbox: SandboxClient
) -> None:
    for n in range(3):
        member(svc, sandbox, f"f{n}", due=True)
    sandbox.fault("token", "http_503", count=1)
    assert run(svc) == {"failed": 1}
    assert run(svc) == {"refreshed": 3}


def test_a_refused_refresh_parks_the_member_as_reauth(
    svc: Services, sandbox: SandboxClient
) -> None:
    member(svc, sandbox, "gone", due=True)
    member(svc, sandbox, "kept", due=True)
    rec = Recorder()
    flow = Flow(svc.settings, svc.store, svc.client, svc.tokens, rec)
    booking = sandbox.add_booking("gone", 8)
    event = {"event_id": "e-gone", "booking_id": booking, "user_id": "gone", "performer_id": 8}
    assert flow.intake((), event) == "created"
    sandbox.revoke_user("gone")
    assert run(svc, park=flow.park_member) == {"refused": 1, "refreshed": 1}
    parked = svc.store.records.get(rebook_id_for("e-gone"))
    assert parked is not None
    assert parked.state is State.NEEDS_ATTENTION and parked.reason == "reauth"
    # not tried again at every run; a new `tokens set` indexes the pair afresh
    assert run(svc) == {}
    member(svc, sandbox, "gone")
    assert svc.store.r.zscore(svc.token_store.records.index_key, "gone") > time.time()
