"""Flower through our launcher, and the rebook exporter, as the processes they run as.

Flower: basic auth on every page *including* `/metrics` (stock Flower leaves it open), the API
closed too, `/healthcheck` open, worker events reaching it, and no start without credentials.
Exporter: after one rebook is submitted, a scrape shows it, with `rebook_up 1`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from rebook_dev.embedded import free_port
from tests.integration.conftest import Proc, System, wait_for
from worker.core.states import State

pytestmark = pytest.mark.integration

AUTH = ("ops", "s3cret")
AUTH_ENV = {"REBOOK_FLOWER_BASIC_AUTH": "ops:s3cret"}


def _env(system: System, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in system.env.items() if not k.startswith(("REBOOK_FLOWER_", "FLOWER_"))}
    env.update(extra)
    return env


def _get(url: str, auth: tuple[str, str] | None = None) -> requests.Response | None:
    try:
        return requests.get(url, auth=auth, timeout=5)
    except requests.RequestException:
        return None


def _answers(url: str, proc: Proc) -> bool:
    assert proc.popen is not None
    if proc.popen.poll() is not None:
        raise AssertionError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.text()[-3000:]}")
    found = _get(url)
    return found is not None and found.status_code == 200


@pytest.fixture(scope="module")
def flower(system: System) -> Iterator[str]:
    port = free_port()
    proc = Proc(
        "flower",
        [sys.executable, "-m", "worker.operations.flower", "--port", str(port)],
        _env(system, **AUTH_ENV),
        system.logdir / "flower.log",
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthcheck", proc), 60, "flower answering")
        yield base
    finally:
        proc.stop()


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    found = _get(url, auth)
    assert found is not None, f"no answer from {url}"
    return found.status_code


def test_metrics_need_basic_auth(flower: str) -> None:
    assert _status(f"{flower}/metrics") == 401
    assert _status(f"{flower}/metrics", ("ops", "wrong")) == 401
    found = _get(f"{flower}/metrics", AUTH)
    assert found is not None and found.status_code == 200
    assert "flower_events_total" in found.text
    assert "flower_worker_online" in found.text


def test_pages_and_api_need_basic_auth_healthcheck_is_open(flower: str) -> None:
    assert _status(f"{flower}/api/workers") == 401
    assert _status(f"{flower}/api/tasks") == 401
    assert _status(f"{flower}/") == 401
    assert _status(f"{flower}/healthcheck") == 200
    assert _status(f"{flower}/", AUTH) == 200


def test_flower_sees_worker_events(flower: str, system: System) -> None:
    """Heartbeats of the system's worker (started with -E) show in Flower's metrics."""

    def online() -> bool:
        found = _get(f"{flower}/metrics", AUTH)
        return found is not None and f'flower_worker_online{{worker="{system.node}@' in found.text

    wait_for(online, 30, "worker heartbeat in flower_worker_online")


def test_refuses_to_start_without_basic_auth(system: System, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker.operations.flower", "--port", str(free_port())],
        env=_env(system),
        cwd=tmp_path,  # no .env of a developer's checkout
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "REBOOK_FLOWER_BASIC_AUTH" in lines[0]
    assert done.stdout == ""


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_exporter_serves_rebook_metrics(system: System) -> None:
    port = free_port()
    proc = Proc(
        "exporter",
        [sys.executable, "-m", "worker.operations.exporter", "--port", str(port)],
        _env(system),
        system.logdir / "exporter.log",
    ).start()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for(lambda: _answers(url, proc), 30, "exporter answering")
        user = system.member()
        rid, _ = system.rebook(user, system.performer(online=False))
        system.wait_state(rid, State.WAITING)

        def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            found = _get(url)
            if found is None or found.status_code != 200:
                return None
            samples = _samples(found.text)
            waiting = samples.get(("rebook_rebooks", (("state", "WAITING"),)), 0)
            # the presence check for the offline performer goes upstream and is counted
            called = any(name == "rebook_upstream_calls_total" for name, _ in samples)
            return samples if waiting >= 1 and called else None

        samples = wait_for(scraped, 20, "WAITING rebook and an upstream call in the scrape")
        assert samples[("rebook_up", ())] == 1
        for state in ("WATCHING", "RESCHEDULING", "NEEDS_ATTENTION", "ACCEPTED"):
            assert ("rebook_rebooks", (("state", state),)) in samples
        assert ("rebook_due_lag_seconds", ()) in samples
        assert ("rebook_deadletter_total", ()) in samples
        assert samples[("rebook_last_sweep_age_seconds", ())] < 30  # beat is sweeping
        assert ("rebook_outcomes_total", (("state", "ACCEPTED"),)) in samples
    finally:
        proc.stop()
