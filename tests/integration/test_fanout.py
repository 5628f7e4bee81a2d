"""Outcome fan-out (signed webhook with retries, REBOOK_OUTCOME_TASK) and REBOOK_AUTO_CONFIRM."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.integration.conftest import System, running_system, wait_for
from worker.adapters.webhook import verify
from worker.core.states import State

pytestmark = pytest.mark.integration
SECRET = "whsec-test-0123456789"


class Receiver:
    """A webhook receiver on 127.0.0.1 that refuses the first `fail_first` deliveries."""

    def __init__(self, fail_first: int = 2) -> None:
        self.fail_left = fail_first
        self.received: list[dict[str, Any]] = []
        self.refused = 0
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify(
                    SECRET,
                    self.headers["X-Rebook-Timestamp"],
                    body,
                    self.headers["X-Rebook-Signature"],
                )
                if not ok:
                    receiver.bad_signatures += 1
                if receiver.fail_left > 0:
                    receiver.fail_left -= 1
                    receiver.refused += 1
                    self.send_response(503)
                else:
                    receiver.received.append(
                        {"delivery": self.headers["X-Rebook-Delivery"], **json.loads(body)}
                    )
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.close()


@pytest.fixture(scope="module")
def fan_system(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[System]:
    with running_system(
        redis_url,
        tmp_path_factory.mktemp("fanout"),
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        outcome_task="acme.on_rebook_outcome",
        auto_confirm=True,
    ) as sysm:
        yield sysm


def test_webhook_signed_retried_and_outcome_task_sent(
    fan_system: System, receiver: Receiver
) -> None:
    system = fan_system
    rid, booking = system.rebook(system.member(), system.performer(online=True))
    rec = system.wait_state(rid, State.WATCHING)
    system.sandbox.set_status(rec.new_booking_id, "Rejected", "not today")  # type: ignore[arg-type]
    system.wait_state(rid, State.REJECTED)
    got = wait_for(
        lambda: [
            r for r in receiver.received if r["rebook_id"] == rid and r["state"] == "REJECTED"
        ],
        20,
        "REJECTED webhook",
    )
    states = [r["state"] for r in receiver.received if r["rebook_id"] == rid]
    assert states == ["BOOKED", "REJECTED"]  # in order, each once, despite two refusals
    assert receiver.refused == 2 and receiver.bad_signatures == 0
    assert got[0]["booking_id"] == booking and got[0]["new_booking_id"] == rec.new_booking_id
    # REBOOK_OUTCOME_TASK: one message per outcome on the outcome queue, nothing secret in it
    queue = system.settings.broker_key_prefix + system.settings.outcome_queue
    messages = wait_for(lambda: system.store.r.lrange(queue, 0, -1), 10, "outcome task messages")
    bodies = [json.loads(m) for m in messages]
    assert {b["headers"]["task"] for b in bodies} == {"acme.on_rebook_outcome"}


def test_auto_confirm_confirms_an_accepted_booking(fan_system: System) -> None:
    system = fan_system
    rid, _ = system.rebook(system.member(), system.performer(online=True))
    rec = system.wait_state(rid, State.WATCHING)
    system.sandbox.set_status(rec.new_booking_id, "Accepted")  # type: ignore[arg-type]
    done = system.wait_state(rid, State.CONFIRMED)
    assert done.reason == "auto-confirmed"
    assert system.sandbox.booking(rec.new_booking_id)["Status"] == "Confirmed"  # type: ignore[arg-type]
    assert system.sandbox.stats()["calls"]["ConfirmMadeBooking"] == 1
