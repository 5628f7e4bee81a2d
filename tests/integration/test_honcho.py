"""`honcho start` runs the whole Procfile (worker, beat, flower, exporter, sandbox) and a rebook
goes through it, the way an operator tries the system locally."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from rebook_dev.embedded import free_port
from rebook_dev.sandbox import SandboxClient
from tests.conftest import TEST_TOKEN_KEY, WaitTimeout
from tests.integration.conftest import ROOT, wait_for
from worker.celeryapp.app import EVENTS_QUEUE, create_app
from worker.celeryapp.runtime import build_services
from worker.core.models import TokenSet
from worker.core.settings import load_settings
from worker.core.states import State
from worker.core.store import rebook_id_for

pytestmark = pytest.mark.integration


def _up(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


def _listening(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (Linux /proc, hex as it is there:
    `0100007F` is 127.0.0.1, `00000000` every IPv4 interface)."""
    found: set[str] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(name):
            continue
        with open(name) as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                address, _, hexport = fields[1].partition(":")
                if int(hexport, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    found.add(address)
    return found


# Long on purpose: the Procfile as a new user runs it, start to a booked rebook to a clean stop.
def test_honcho_start_runs_the_procfile_and_a_rebook_goes_through(
    redis_url: str, tmp_path: Path
) -> None:
    prefix = f"rebook-honcho-{uuid.uuid4().hex[:6]}:"
    sandbox_port, exporter_port = free_port(), free_port()
    # honcho gives the i-th Procfile process PORT = base + 100 i; only flower (the third) binds
    # it, so the free port is picked for flower and the base derived from it (a free base alone
    # left base + 200 to chance: "Address already in use" stopped the whole Procfile once)
    base_port = free_port() - 200
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REBOOK_")},
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "REBOOK_REDIS_URL": redis_url,
        "REBOOK_KEY_PREFIX": prefix,
        "REBOOK_BROKER_KEY_PREFIX": prefix,
        # the Procfile's `rebook sandbox` with its default key and OAuth client
        "REBOOK_API_BASE_URL": f"http://127.0.0.1:{sandbox_port}",
        "REBOOK_API_KEY": "sandbox-key",
        "REBOOK_OAUTH_TOKEN_URL": f"http://127.0.0.1:{sandbox_port}/OAuth/token",
        "REBOOK_OAUTH_CLIENT_ID": "sandbox-client",
        "REBOOK_OAUTH_CLIENT_SECRET": "sandbox-secret",
        "REBOOK_SANDBOX_PORT": str(sandbox_port),
        "REBOOK_EXPORTER_PORT": str(exporter_port),
        "REBOOK_TOKEN_KEY": TEST_TOKEN_KEY,
        "REBOOK_FLOWER_BASIC_AUTH": "ops:honcho-pass",
        "REBOOK_PRESENCE_INTERVAL_SECONDS": "0.5",
        "REBOOK_WATCH_INTERVAL_SECONDS": "0.5",
        "REBOOK_SWEEP_INTERVAL_SECONDS": "0.5",
        "TMPDIR": str(tmp_path),
    }
    log = (tmp_path / "honcho.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "honcho",
            "start",
            "-f",
            str(ROOT / "Procfile"),
            "-d",
            str(ROOT),
            "-p",
            str(base_port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    text = lambda: (tmp_path / "honcho.log").read_text(errors="replace")  # noqa: E731
    try:
        wait_for(lambda: _up(f"http://127.0.0.1:{sandbox_port}/_sandbox/stats"), 60, "sandbox")
        # both Celery workers of the Procfile (worker: intake and steps, prefork; io: steps,
        # threads) say so
        wait_for(lambda: text().count(" ready.") >= 2, 60, "both workers ready")
        wait_for(lambda: _up(f"http://127.0.0.1:{exporter_port}/metrics"), 60, "exporter")
        settings = load_settings(
            **{
                k[7:].lower(): v
                for k, v in env.items()
                if k.startswith("REBOOK_")
                and k not in ("REBOOK_SANDBOX_PORT", "REBOOK_EXPORTER_PORT")
            }
        )
        svc = build_services(settings)
        sandbox = SandboxClient(settings.api_base_url)
        svc.token_store.save(
            "m1", TokenSet.from_token_response(sandbox.add_user("m1"), time.time())
        )
        booking = sandbox.add_booking("m1", 4242)
        sandbox.set_online(4242, True)
        event_id = f"honcho-{uuid.uuid4().hex}"
        create_app(settings).send_task(
            "rebook.request",
            queue=EVENTS_QUEUE,
            kwargs={
                "event_id": event_id,
                "booking_id": booking,
                "user_id": "m1",
                "performer_id": 4242,
            },
        )
        rid = rebook_id_for(event_id)
        rec = wait_for(
            lambda: (
                (r := svc.store.records.get(rid)) is not None and r.state == State.WATCHING and r
            ),
            60,
            "the rebook booked",
        )
        sandbox.set_status(rec.new_booking_id, "Accepted")
        wait_for(lambda: svc.store.records.get(rid).state == State.ACCEPTED, 90, "accepted")  # type: ignore[union-attr]
        # the Procfile's Flower and exporter listen on 127.0.0.1 only (RUNBOOK, Processes)
        flower_port = base_port + 200
        wait_for(lambda: _up(f"http://127.0.0.1:{flower_port}/healthcheck"), 60, "flower")
        if os.path.exists("/proc/net/tcp"):
            assert _listening(flower_port) == {"0100007F"}, _listening(flower_port)
            assert _listening(exporter_port) == {"0100007F"}, _listening(exporter_port)
        metrics = requests.get(f"http://127.0.0.1:{exporter_port}/metrics", timeout=5).text
        assert 'rebook_rebooks{state="ACCEPTED"} 1.0' in metrics
        assert "rebook_up 1.0" in metrics
    except WaitTimeout as exc:  # what the processes said is the only clue: keep it
        raise WaitTimeout(f"{exc}\n--- honcho's log, the end ---\n{text()[-6000:]}") from exc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
    assert "flower" in text() and "beat" in text(), text()[-2000:]
