"""A wrong setting is the site's fault, not the members' (issue 21), through a real worker and
beat: a wrong OAuth client secret and a wrong API key pause the calls they affect, park nobody,
and everything settles after the fix and a restart, with no `tokens set`. And the members'
money: a POST refused for lack of credits parks `no_credits`; the daily cap parks `member_cap`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.conftest import System, running_system
from worker.core.states import State

pytestmark = pytest.mark.integration
SETTLED = {State.WATCHING, State.ACCEPTED, State.CONFIRMED}


def restart_with(sysm: System, **env: str) -> None:
    """The operator fixes the setting and restarts the worker and beat."""
    sysm.stop()
    sysm.env.update(env)  # the worker's and beat's environment (shared dict)
    sysm.start_worker()
    sysm.beat.start()


def never_parked(sysm: System, rids: list[str]) -> None:
    for rid in rids:
        rec = sysm.get(rid)
        assert rec is not None and rec.state is not State.NEEDS_ATTENTION, (rid, rec)


def test_a_wrong_client_secret_parks_nobody_and_settles_after_the_fix(
    redis_url: str, tmp_path: Path
) -> None:
    with running_system(
        redis_url, tmp_path, oauth_client_secret="typo", pause_probe_seconds=0.5
    ) as sysm:
        members = [sysm.member(expires_in=0) for _ in range(3)]  # every step needs a refresh
        performer = sysm.performer(online=True)
        rids = [sysm.rebook(m, performer)[0] for m in members for _ in range(2)]
        wait_for(lambda: sysm.store.circuit.public(), 30, "the circuit to open")
        paused = sysm.store.circuit.public()
        assert paused is not None and paused["reason"] == "oauth_client"

        def all_paused() -> bool:
            recs = [sysm.get(r) for r in rids]
            return all(rec is not None and "paused" in rec.reason for rec in recs)

        wait_for(all_paused, 30, "every rebook paused")
        never_parked(sysm, rids)
        doctor = sysm.cli("doctor")
        assert doctor.returncode == 1
        assert "FAIL oauth client" in doctor.stdout
        assert "REBOOK_OAUTH_CLIENT_SECRET" in doctor.stdout
        assert "FAIL paused" in doctor.stdout
        stats = sysm.cli("stats", "--json")
        assert '"oauth_client"' in stats.stdout
        assert sysm.sandbox.stats()["refreshes"] == 0
        restart_with(sysm, REBOOK_OAUTH_CLIENT_SECRET="sandbox-secret")
        for rid in rids:
            sysm.wait_state(rid, SETTLED, timeout=30)
        assert sysm.store.circuit.public() is None
        assert all(n == 1 for n in sysm.sandbox.stats()["new_bookings"].values())


@pytest.mark.full  # ~25 s (two system starts); the component tests cover each path quickly
def test_a_wrong_api_key_refreshes_no_member_twice_and_settles_after_the_fix(
    redis_url: str, tmp_path: Path
) -> None:
    with running_system(redis_url, tmp_path, api_key="not-the-key") as sysm:
        members = [sysm.member(expires_in=0) for _ in range(3)]
        performer = sysm.performer(online=True)
        rids = [sysm.rebook(m, performer)[0] for m in members]
        wait_for(lambda: sysm.store.circuit.public(), 30, "the circuit to open")
        assert sysm.store.circuit.public()["setting"] == "REBOOK_API_KEY"  # type: ignore[index]
        doctor = sysm.cli("doctor")
        assert doctor.returncode == 1 and "REBOOK_API_KEY" in doctor.stdout
        never_parked(sysm, rids)
        restart_with(sysm, REBOOK_API_KEY="sandbox-key")
        for rid in rids:
            sysm.wait_state(rid, SETTLED, timeout=30)
        by_member = sysm.sandbox.stats()["refreshes_by_user"]
        assert all(by_member.get(m, 0) <= 1 for m in members), by_member


@pytest.fixture(scope="module")
def capped(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> System:
    with running_system(
        redis_url, tmp_path_factory.mktemp("money"), max_rebooks_per_member_per_day=1
    ) as sysm:
        yield sysm  # type: ignore[misc]


def test_no_credits_parks_and_retry_after_the_top_up_books(capped: System) -> None:
    member = capped.member()
    capped.sandbox.set_credits(member, 0)
    rid, booking = capped.rebook(member, capped.performer(online=True))
    rec = capped.wait_state(rid, State.NEEDS_ATTENTION)
    assert rec.reason == "no_credits"
    assert capped.sandbox.stats()["new_bookings"].get(str(booking)) is None
    capped.sandbox.set_credits(member, 1000)
    retried = capped.cli("retry", rid)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    capped.wait_state(rid, SETTLED)
    assert capped.sandbox.stats()["new_bookings"][str(booking)] == 1


def test_the_member_cap_parks_before_any_post(capped: System) -> None:
    member = capped.member()
    performer = capped.performer(online=True)
    first, _ = capped.rebook(member, performer)
    capped.wait_state(first, SETTLED)
    second, booking = capped.rebook(member, performer)
    rec = capped.wait_state(second, State.NEEDS_ATTENTION)
    assert rec.reason == "member_cap" and "REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY" in rec.action
    assert capped.sandbox.stats()["new_bookings"].get(str(booking)) is None
