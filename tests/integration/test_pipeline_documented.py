"""test_pipeline's flows once more, against the sandbox in its documented mode: OAuth on a host of
its own, `StartDate` only as `yyyy-mm-dd`, unset dates as `0001-01-01T00:00:00`, the API key in
the documented `?apiKey=` query form. What passes against our guesses must pass against the docs.

One pass on the Redis broker (the broker does not change how the upstream answers).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration import test_pipeline as flows
from tests.integration.conftest import System, running_system

pytestmark = pytest.mark.integration

# the same test functions, collected here with this module's `system`
for _name in dir(flows):
    if _name.startswith("test_"):
        globals()[_name] = getattr(flows, _name)


@pytest.fixture(scope="module")
def system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(
        redis_url,
        tmp_path_factory.mktemp("system-documented"),
        sandbox_options={"oauth_port": 0, "documented": True},
        api_key_in="query",
    ) as sysm:
        yield sysm


def test_the_documented_mode_is_on(system: System) -> None:
    """Guards the pass above: without these, it would only repeat test_pipeline."""
    config = system.sandbox.configure()
    assert config["documented"] and config["strict_start_date"] and config["year_one_unset"]
    assert not system.settings.token_url.startswith(system.settings.api_base_url)
    assert system.settings.api_key_in == "query"
    # the reconciliation read went out with a date-only StartDate (strict mode: 400 otherwise)
    user = system.member()
    system.sandbox.fault("RescheduleMadeBooking", "http_500_after_commit")
    rid, booking = system.rebook(user, system.performer(online=True))
    system.wait_state(rid, flows.State.WATCHING)
    assert system.sandbox.stats()["new_bookings"][str(booking)] == 1
    made = [c for c in system.sandbox.calls()["calls"] if c["op"] == "MadeBookings"]
    assert made and all(c["status"] == 200 for c in made)
