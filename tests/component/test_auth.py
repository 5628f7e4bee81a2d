"""Member tokens: encrypted at rest, refreshed single-flight against the real sandbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet

from rebook_dev.sandbox import SandboxClient
from worker.adapters.auth import TokenManager, TokenStore
from worker.celeryapp.runtime import Services, build_services
from worker.core.errors import Challenged, ConfigError, DeploymentFault, ReauthRequired
from worker.core.models import TokenSet
from worker.core.settings import Settings
from worker.core.store.tokens import TokenRecords


@pytest.fixture
def svc(settings: Settings) -> Iterator[Services]:
    services = build_services(settings)
    yield services
    services.client.close()
    keys = list(services.store.r.scan_iter(match=settings.key_prefix + "*", count=1000))
    if keys:
        services.store.r.delete(*keys)
    services.store.r.close()


def save_member(svc: Services, sandbox: SandboxClient, user: str, **kw: Any) -> dict[str, Any]:
    answer = sandbox.add_user(user, **kw)
    svc.token_store.save(user, TokenSet.from_token_response(answer, time.time()))
    return answer


def tokens(access: str = "acc-PLAIN", refresh: str = "ref-PLAIN", exp: float = 2e9) -> TokenSet:
    return TokenSet(access_token=access, refresh_token=refresh, expires_at=exp)


# --- TokenStore -----------------------------------------------------------------------------------


def test_tokens_are_encrypted_at_rest(redis_client: redis.Redis, prefix: str) -> None:
    store = TokenStore(TokenRecords(redis_client, prefix), Fernet.generate_key().decode())
    store.save("u1", tokens())
    raw = redis_client.get(f"{prefix}tok:u1")
    assert raw is not None
    assert "acc-PLAIN" not in raw and "ref-PLAIN" not in raw
    loaded = store.load("u1")
    assert loaded == tokens()
    assert store.load("nobody") is None
    assert store.delete("u1") is True
    assert store.load("u1") is None
    assert store.delete("u1") is False


def test_missing_key_is_config_error_naming_the_variable(
    redis_client: redis.Redis, prefix: str
) -> None:
    store = TokenStore(TokenRecords(redis_client, prefix), None)
    with pytest.raises(ConfigError) as info:
        store.save("u1", tokens())
    assert str(info.value).startswith("REBOOK_TOKEN_KEY")
    assert redis_client.get(f"{prefix}tok:u1") is None
    # reading stored tokens needs the key too
    TokenStore(TokenRecords(redis_client, prefix), Fernet.generate_key().decode()).save(
        "u1", tokens()
    )
    with pytest.raises(ConfigError, match="REBOOK_TOKEN_KEY"):
        store.load("u1")


def test_wrong_key_is_config_error(redis_client: redis.Redis, prefix: str) -> None:
    TokenStore(TokenRecords(redis_client, prefix), Fernet.generate_key().decode()).save(
        "u1", tokens()
    )
    other = TokenStore(TokenRecords(redis_client, prefix), Fernet.generate_key().decode())
    with pytest.raises(ConfigError, match="REBOOK_TOKEN_KEY"):
        other.load("u1")


# --- TokenManager ---------------------------------------------------------------------------------


def test_valid_token_is_returned_without_refresh(svc: Services, sandbox: SandboxClient) -> None:
    answer = save_member(svc, sandbox, "alice")
    assert svc.tokens.access_token("alice") == answer["access_token"]
    assert svc.tokens.access_token("alice") == answer["access_token"]
    assert sandbox.stats()["refreshes"] == 0


def test_expired_token_is_refreshed_once_and_rotation_stored(
    svc: Services, sandbox: SandboxClient
) -> None:
    answer = save_member(svc, sandbox, "alice", expires_in=0)
    fresh = svc.tokens.access_token("alice")
    assert fresh != answer["access_token"]
    assert sandbox.stats()["refreshes"] == 1
    stored = svc.token_store.load("alice")
    assert stored is not None
    assert stored.access_token == fresh
    assert stored.refresh_token != answer["refresh_token"]
    assert stored.expires_at > time.time() + 600
    # the stored pair is the one the upstream honours now
    booking = sandbox.add_booking("alice", 7)
    assert svc.client.booking_details(fresh, booking).booking_id == booking
    # and it is used from now on, without another refresh
    assert svc.tokens.access_token("alice") == fresh
    assert sandbox.stats()["refreshes"] == 1


def test_token_inside_the_margin_is_refreshed(svc: Services, sandbox: SandboxClient) -> None:
    # a token issued for an hour with 30 s left; the manager refreshes 60 s before expiry
    answer = sandbox.add_user("alice")
    issued = TokenSet.from_token_response({**answer, "expires_in": 3600}, time.time() - 3570)
    svc.token_store.save("alice", issued)
    assert svc.tokens.access_token("alice") != answer["access_token"]
    assert sandbox.stats()["refreshes"] == 1


def test_margin_adapts_to_a_short_lived_token(svc: Services, sandbox: SandboxClient) -> None:
    """Tokens that live 2 s, under a 60 s margin: 200 calls make O(1) refreshes (one per
    token lifetime), not one per call; every token handed out is honoured upstream."""
    assert svc.tokens.margin == 60
    sandbox.configure(token_ttl_seconds=2)
    save_member(svc, sandbox, "alice", expires_in=2)
    booking = sandbox.add_booking("alice", 7)
    started = time.monotonic()
    for _ in range(200):
        access = svc.tokens.access_token("alice")
        assert svc.client.booking_details(access, booking).booking_id == booking
    elapsed = time.monotonic() - started
    refreshes = sandbox.stats()["refreshes"]
    # a token is used for 3/4 of its life: at most one refresh per 1.5 s, and one to start
    assert refreshes <= 2 + elapsed / 1.5, (refreshes, elapsed)
    stored = svc.token_store.load("alice")
    assert stored is not None and stored.lifetime == pytest.approx(2, abs=0.01)
    assert svc.tokens.margin_for(stored) == pytest.approx(0.5, abs=0.01)


def test_refresh_lock_outlives_the_longest_refresh(svc: Services, settings: Settings) -> None:
    """Rate-limit wait plus connect and read timeouts: the lock cannot expire inside a refresh
    that is still within its bounds (35 s against 5 s + 20 s was the bug)."""
    longest = settings.limiter_max_wait + 2 * settings.http_timeout_seconds
    assert svc.tokens.lock_timeout > longest
    production = Settings(
        api_key="k", oauth_client_id="c", oauth_client_secret="s", upstream_rate_per_second=5
    )
    production_svc = build_services(production)
    try:
        wanted = production.limiter_max_wait + 2 * production.http_timeout_seconds
        assert production_svc.tokens.lock_timeout > wanted
    finally:
        production_svc.client.close()
        production_svc.store.r.close()


def test_a_refresh_that_lost_a_race_uses_the_winners_pair(
    settings: Settings, svc: Services, sandbox: SandboxClient
) -> None:
    """Should the lock still expire inside a stalled refresh, another worker refreshes; the
    stalled one then sends a rotated-away refresh token and is refused. That is not a reauth:
    it finds the pair rotated in the store and uses it."""
    other = build_services(settings)
    try:
        save_member(svc, sandbox, "alice", expires_in=0)
        real = svc.tokens.client.refresh_token

        def stalled(*args: Any, **kwargs: Any) -> dict[str, Any]:
            svc.store.r.delete(f"{settings.key_prefix}toklock:alice")  # our lock "expired"
            winner.append(other.tokens.access_token("alice"))  # meanwhile another refreshes
            return real(*args, **kwargs)  # then our stale refresh token goes out

        winner: list[str] = []
        svc.tokens.client.refresh_token = stalled  # type: ignore[method-assign]
        got = svc.tokens.access_token("alice")
        assert winner and got == winner[0]
        assert sandbox.stats()["refreshes"] == 1
        stored = svc.token_store.load("alice")
        assert stored is not None and stored.access_token == got
    finally:
        other.client.close()
        other.store.r.close()


def test_rejected_forces_a_refresh(svc: Services, sandbox: SandboxClient) -> None:
    answer = save_member(svc, sandbox, "alice")
    sandbox.expire_user("alice")  # upstream says 401 although our clock says valid
    fresh = svc.tokens.access_token("alice", rejected=answer["access_token"])
    assert fresh != answer["access_token"]
    assert sandbox.stats()["refreshes"] == 1
    # a stale `rejected` (someone else refreshed already) does not refresh again
    assert svc.tokens.access_token("alice", rejected=answer["access_token"]) == fresh
    assert sandbox.stats()["refreshes"] == 1


def test_concurrent_refresh_is_single_flight(svc: Services, sandbox: SandboxClient) -> None:
    save_member(svc, sandbox, "alice", expires_in=0)
    barrier = threading.Barrier(20)
    results: list[str] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            barrier.wait(timeout=5)
            results.append(svc.tokens.access_token("alice"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(results) == 20
    assert len(set(results)) == 1
    assert sandbox.stats()["refreshes"] == 1


def test_concurrent_managers_share_the_lock(
    settings: Settings, svc: Services, sandbox: SandboxClient
) -> None:
    """Two processes' worth of managers (separate clients, same Redis) still refresh once."""
    other = build_services(settings)
    try:
        save_member(svc, sandbox, "alice", expires_in=0)
        out: list[str] = []
        threads = [
            threading.Thread(target=lambda m=m: out.append(m.access_token("alice")))
            for m in [svc.tokens, other.tokens] * 5
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert len(out) == 10 and len(set(out)) == 1
        assert sandbox.stats()["refreshes"] == 1
    finally:
        other.client.close()
        other.store.r.close()


def test_revoked_member_must_reauthorise(svc: Services, sandbox: SandboxClient) -> None:
    answer = save_member(svc, sandbox, "alice", expires_in=0)
    sandbox.revoke_user("alice")
    with pytest.raises(ReauthRequired) as info:
        svc.tokens.access_token("alice")
    assert info.value.user_id == "alice"
    assert answer["refresh_token"] not in str(info.value)
    assert answer["access_token"] not in str(info.value)
    # the stored pair is left alone for an operator to replace
    stored = svc.token_store.load("alice")
    assert stored is not None and stored.refresh_token == answer["refresh_token"]


def test_no_tokens_stored_is_reauth(svc: Services) -> None:
    with pytest.raises(ReauthRequired, match="no tokens"):
        svc.tokens.access_token("ghost")


def test_refresh_sends_the_configured_client(svc: Services, sandbox: SandboxClient) -> None:
    save_member(svc, sandbox, "alice", expires_in=0)
    bad = TokenManager(
        svc.token_store,
        svc.client,
        token_url=svc.settings.token_url,
        client_id="sandbox-client",
        client_secret="wrong-secret",
    )
    before = svc.token_store.load("alice")
    with pytest.raises(DeploymentFault) as refused:  # the site's client: no member's fault
        bad.access_token("alice")
    assert refused.value.reason == "oauth_client" and not refused.value.paused
    assert sandbox.stats()["refreshes"] == 0
    assert svc.token_store.load("alice") == before  # nothing rotated, nothing lost
    # the circuit is open for every worker: the next refresh is not even sent
    assert svc.store.circuit.public()["setting"].startswith("REBOOK_OAUTH_CLIENT_ID")
    calls = sandbox.stats()["calls"]["token"]
    with pytest.raises(DeploymentFault) as paused:
        bad.access_token("alice")
    assert paused.value.paused and sandbox.stats()["calls"]["token"] == calls


def test_check_client_spends_no_members_token(svc: Services, sandbox: SandboxClient) -> None:
    """doctor's check: a made-up refresh token; `invalid_grant` means the client passed."""
    answer = save_member(svc, sandbox, "bob")
    assert svc.tokens.check_client()[0] == "ok"
    bad = TokenManager(
        svc.token_store,
        svc.client,
        token_url=svc.settings.token_url,
        client_id="sandbox-client",
        client_secret="wrong-secret",
    )
    svc.client.circuit = None  # doctor's client: no circuit, it only reports
    assert bad.check_client() == ("refused", "invalid_client")
    sandbox.fault("token", "unauthorized_client")
    assert svc.tokens.check_client() == ("refused", "unauthorized_client")
    sandbox.fault("token", "http_503")
    assert svc.tokens.check_client()[0] == "unknown"
    assert sandbox.stats()["refreshes"] == 0
    stored = svc.token_store.load("bob")
    assert stored is not None and stored.refresh_token == answer["refresh_token"]


def test_a_probe_that_passes_closes_the_circuit(svc: Services, sandbox: SandboxClient) -> None:
    save_member(svc, sandbox, "carol", expires_in=0)
    svc.store.circuit.cache_seconds = 0.0
    svc.store.circuit.open(DeploymentFault("oauth_client", "invalid_client"))
    with pytest.raises(DeploymentFault):  # within the probe interval: paused
        svc.tokens.access_token("carol")
    svc.store.r.delete(svc.store.keys.paused("probe"))  # the probe interval is over
    assert svc.tokens.access_token("carol")  # the probe: the refresh goes and succeeds
    assert svc.store.circuit.state(fresh=True) is None


def test_a_challenge_page_on_the_token_endpoint_is_not_reauth(
    svc: Services, sandbox: SandboxClient
) -> None:
    """A CDN page in front of OAuth never reached it: the member keeps the stored pair (the
    refresh token was not used) and the next try refreshes."""
    before = save_member(svc, sandbox, "html-u", expires_in=0)
    sandbox.fault("token", "html_challenge", count=1, status=403)
    with pytest.raises(Challenged):
        svc.tokens.access_token("html-u")
    kept = svc.token_store.load("html-u")
    assert kept is not None and kept.refresh_token == before["refresh_token"]
    assert svc.tokens.access_token("html-u") != before["access_token"]
