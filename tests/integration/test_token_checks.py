"""Token pairs are checked on the way in: `tokens set` and `tokens import` ask the sandbox (over
HTTP) whose pair it is (verifyCredentials) and what it may do (GetPermissions) before storing it.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.integration.conftest import System

pytestmark = pytest.mark.integration


def _user() -> str:
    return f"tc-{uuid.uuid4().hex[:8]}"


def _no_secret(text: str, *answers: dict[str, object]) -> None:
    for answer in answers:
        for name in ("access_token", "refresh_token"):
            assert str(answer[name]) not in text, f"{name} in the output"


def test_tokens_set_refuses_the_pair_of_another_member(system: System) -> None:
    victim, other = _user(), _user()
    answer = system.sandbox.add_user(other)
    proc = system.cli("tokens", "set", victim, stdin=json.dumps(answer))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"refused tokens of {victim}" in proc.stderr
    assert f"belongs to UserID {other}, not {victim}" in proc.stderr
    _no_secret(proc.stdout + proc.stderr, answer)
    assert system.svc.token_store.load(victim) is None


def test_tokens_set_refuses_a_pair_without_the_webcam_bookings_scope(system: System) -> None:
    user = _user()
    answer = system.sandbox.add_user(user, scopes=["userid"])
    proc = system.cli("tokens", "set", user, stdin=json.dumps(answer))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"refused tokens of {user}" in proc.stderr
    assert "account_webcam_bookings not granted" in proc.stderr
    _no_secret(proc.stdout + proc.stderr, answer)
    assert system.svc.token_store.load(user) is None


def test_tokens_set_stores_a_good_pair_and_no_verify_stores_unchecked(system: System) -> None:
    user = _user()
    answer = system.sandbox.add_user(user)
    proc = system.cli("tokens", "set", user, stdin=json.dumps(answer))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"stored tokens of {user} (verified;" in proc.stdout
    stored = system.svc.token_store.load(user)
    assert stored is not None and stored.access_token == answer["access_token"]

    # offline: the pair of another member is stored as it is, and said to be unverified
    offline, other = _user(), _user()
    theirs = system.sandbox.add_user(other)
    proc = system.cli("tokens", "set", offline, "--no-verify", stdin=json.dumps(theirs))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"stored tokens of {offline} (unverified;" in proc.stdout
    stored = system.svc.token_store.load(offline)
    assert stored is not None and stored.refresh_token == theirs["refresh_token"]


def test_tokens_set_refreshes_an_expired_access_token_and_stores_the_new_pair(
    system: System,
) -> None:
    user = _user()
    answer = system.sandbox.add_user(user, expires_in=0)
    proc = system.cli("tokens", "set", user, stdin=json.dumps(answer))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified, refreshed" in proc.stdout
    stored = system.svc.token_store.load(user)
    assert stored is not None
    assert stored.refresh_token != answer["refresh_token"]  # the handed-over one is dead now
    assert stored.expires_at > time.time()


def test_tokens_import_checks_each_pair_and_says_why_per_member(system: System) -> None:
    good = [_user() for _ in range(3)]
    stranger, scopeless, owner = _user(), _user(), _user()
    lines = [json.dumps({"user_id": u, **system.sandbox.add_user(u)}) for u in good]
    lines.append(json.dumps({"user_id": stranger, **system.sandbox.add_user(owner)}))
    lines.append(
        json.dumps({"user_id": scopeless, **system.sandbox.add_user(scopeless, scopes=["userid"])})
    )
    proc = system.cli("tokens", "import", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stored 3 member(s) (verified); refused 2" in proc.stdout
    assert f"refused {stranger}: the pair belongs to UserID {owner}" in proc.stderr
    assert f"refused {scopeless}: account_webcam_bookings not granted" in proc.stderr
    for user in good:
        assert system.svc.token_store.load(user) is not None
    assert system.svc.token_store.load(stranger) is None
    assert system.svc.token_store.load(scopeless) is None


def test_tokens_import_of_10000_lines_without_verification_shows_counts(system: System) -> None:
    """How a site hands over its members offline: fast, counted, nothing asked upstream."""
    run = uuid.uuid4().hex[:6]
    lines = [
        json.dumps(
            {
                "user_id": f"bulk-{run}-{i}",
                "access_token": f"at-{run}-{i:05d}-xxxxxxxx",
                "refresh_token": f"rt-{run}-{i:05d}-xxxxxxxx",
                "expires_in": 1200,
            }
        )
        for i in range(10_000)
    ]
    lines[17] = "not json"
    before = system.sandbox.stats()["calls"]
    started = time.monotonic()
    proc = system.cli("tokens", "import", "--no-verify", stdin="\n".join(lines) + "\n")
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stored 9999 member(s) (unverified); refused 1" in proc.stdout
    assert "refused line 18: not JSON" in proc.stderr
    assert "at-" not in proc.stdout + proc.stderr
    assert system.sandbox.stats()["calls"] == before  # nothing asked upstream
    stored = system.svc.token_store.load(f"bulk-{run}-9999")
    assert stored is not None and stored.access_token == f"at-{run}-09999-xxxxxxxx"
    assert took < 45, f"10,000 lines took {took:.1f}s"
