"""Operations: a producer without Celery, two beats under celery-redbeat, Sentry from a worker."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import threading
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from tests.integration.conftest import (
    Proc,
    System,
    raw_celery_message,
    running_system,
    wait_for,
)
from worker.core.states import State
from worker.core.store import rebook_id_for

pytestmark = pytest.mark.integration


def test_event_from_a_producer_without_celery(system: System) -> None:
    user = system.member()
    performer = system.performer(online=True)
    booking = system.sandbox.add_booking(user, performer)
    event_id = f"raw-{uuid.uuid4().hex}"
    message = raw_celery_message(
        "rebook.request",
        {"event_id": event_id, "booking_id": booking, "user_id": user, "performer_id": performer},
        "rebook.events",
    )
    plain = redis.Redis.from_url(system.settings.redis_url)
    plain.lpush(system.settings.broker_key_prefix + "rebook.events", message)
    plain.close()
    system.wait_state(rebook_id_for(event_id), State.WATCHING)


@pytest.fixture(scope="module")
def redbeat_system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(
        redis_url, tmp_path_factory.mktemp("redbeat"), beat_scheduler="redbeat"
    ) as sysm:
        yield sysm


def test_two_beats_with_redbeat_one_sweeps_and_the_other_takes_over(
    redbeat_system: System,
) -> None:
    system = redbeat_system
    second = Proc(
        "beat2",
        [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO"],
        system.env,
        system.logdir / "beat2.log",
    ).start()
    try:
        wait_for(
            lambda: "beat: Starting" in second.text() or "Starting" in second.text(),
            20,
            "second beat started",
        )
        user = system.member()
        performer = system.performer(online=True)
        rids = [system.rebook(user, performer)[0] for _ in range(4)]
        for rid in rids:
            system.wait_state(rid, State.WATCHING)
        sending = [p.text().count("Sending due task rebook-sweep") for p in (system.beat, second)]
        assert sending[0] > 0 and sending[1] == 0, sending  # only the lock holder schedules
        news = system.sandbox.stats()["new_bookings"]
        assert all(news[str(system.get(r).booking_id)] == 1 for r in rids)  # type: ignore[union-attr]
        # the active beat dies: the second one takes the lock and sweeps
        system.beat.kill(signal.SIGKILL)
        wait_for(
            lambda: second.text().count("Sending due task rebook-sweep") > 0,
            30,
            "second beat taking over",
        )
    finally:
        second.stop()
        system.beat.start()


class SentryCollector:
    """A local Sentry ingest endpoint: stores every envelope it receives."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    raw = gzip.decompress(raw)
                elif encoding == "deflate":
                    raw = zlib.decompress(raw)
                elif encoding == "br":
                    raw = b""  # not expected: we don't install brotli
                collector.envelopes.append(raw)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def items(self, kind: str) -> list[dict[str, Any]]:
        found = []
        for env in self.envelopes:
            lines = env.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                try:
                    if json.loads(header).get("type") == kind:
                        found.append(json.loads(payload))
                except ValueError:
                    continue
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_sentry_captures_a_failing_step_and_beat_check_ins(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, pool: str
) -> None:
    """In both pools the Procfile runs: the threads pool runs tracers the consumer built in the
    main process, which did not reach Sentry until `init_sentry` pointed them at its wrapper."""
    collector = SentryCollector()
    dsn = f"http://abcdef0123456789@127.0.0.1:{collector.port}/42"
    try:
        with running_system(
            redis_url,
            tmp_path_factory.mktemp("sentry"),
            pool=pool,
            sentry_dsn=dsn,
            sentry_environment="ci-test",
        ) as system:
            user = system.member()
            tokens = system.svc.token_store.load(user)
            assert tokens is not None
            # a record that cannot be read: the step fails, Sentry must see it
            broken = "rb-broken0000000000"
            system.store.r.hset(
                system.store.key("r", broken), mapping={"state": "WATCHING", "rebook_id": broken}
            )
            system.producer.send_task("rebook.watch", kwargs={"rebook_id": broken})
            events = wait_for(lambda: collector.items("event"), 30, "a Sentry event")
            event = events[0]
            assert event["environment"] == "ci-test"
            assert event["release"].startswith("rebook@")
            wait_for(lambda: collector.items("check_in"), 30, "a cron check-in from beat")
            blob = b"".join(collector.envelopes)
            for secret in (
                tokens.access_token,
                tokens.refresh_token,
                "sandbox-secret",
                system.settings.token_key.get_secret_value(),
            ):  # type: ignore[union-attr]
                assert secret.encode() not in blob
    finally:
        collector.close()


def test_messages_celery_cannot_run_are_dead_lettered(system: System) -> None:
    """Another serializer, kwargs that are not a mapping, an unknown task name: each ends in the
    dead-letter stream with its reason; the worker keeps serving. (A payload that is not even a
    kombu envelope never reaches Celery: kombu drops it and reconnects.)"""
    before = system.store.sweep.stats()["deadletter"]
    queue = system.settings.broker_key_prefix + "rebook.events"
    raw = [
        raw_celery_message(
            "rebook.request",
            {"event_id": "x"},
            "rebook.events",
            content_type="application/x-python-serialize",
        ),
        raw_celery_message("rebook.request", [1, 2, 3], "rebook.events"),
        raw_celery_message("rebook.requets", {"event_id": "typo"}, "rebook.events"),
    ]
    system.store.r.lpush(queue, *raw)
    system.producer.send_task(
        "rebook.request", kwargs={"event_id": "p"}, queue="rebook.events", serializer="pickle"
    )
    wait_for(
        lambda: system.store.sweep.stats()["deadletter"] >= before + 4, 20, "4 more dead letters"
    )
    rows = system.store.outcomes.deadletters(4)
    reasons = " | ".join(r["reason"] for r in rows[:4])
    assert reasons.count("(pickle) is not accepted") == 2, reasons
    assert "unknown task name" in reasons and "rebook.requets" in reasons, reasons
    assert "not a mapping" in reasons, reasons
    rid, _ = system.rebook(system.member(), system.performer(online=True))
    system.wait_state(rid, State.WATCHING)


def test_doctor_lists_every_check_and_fails_on_a_problem(system: System) -> None:
    def doctor(**env: str) -> subprocess.CompletedProcess[str]:
        return system.cli("doctor", env=env)

    plain = redis.Redis.from_url(system.settings.redis_url, decode_responses=True)
    before = plain.config_get("appendonly")["appendonly"]
    try:
        plain.config_set("appendonly", "no")
        failing = doctor()
        assert failing.returncode == 1
        assert "FAIL redis" in failing.stdout and "AOF is off" in failing.stdout
        plain.config_set("appendonly", "yes")
        plain.config_set("maxmemory-policy", "noeviction")
        passing = doctor()
        assert passing.returncode == 0, passing.stdout
        for name in ("settings", "redis", "broker", "upstream", "token key", "beat", "workers"):
            assert f"ok   {name}:" in passing.stdout, passing.stdout
        wrong_key = doctor(REBOOK_API_KEY="not-the-key")
        assert wrong_key.returncode == 1 and "FAIL upstream" in wrong_key.stdout
    finally:
        plain.config_set("appendonly", before)
        plain.close()


def test_json_logs_bind_the_ids_on_every_line_a_step_writes(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with running_system(redis_url, tmp_path_factory.mktemp("jsonlogs"), log_format="json") as sysm:
        rid, booking = sysm.rebook(sysm.member(), sysm.performer(online=True))
        rec = sysm.wait_state(rid, State.WATCHING)
        # the step logs "booked" just after it records it: wait for the line, not only the state
        wait_for(lambda: f"rebook {rid}: booked" in sysm.worker.text(), 20, "the booked log line")
        lines = []
        for raw in sysm.worker.text().splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))  # every log line is one JSON object
        steps = [line for line in lines if line.get("rebook_id") == rid]
        assert {line["logger"] for line in steps} >= {"rebook.flow"}
        messages = " | ".join(line["msg"] for line in steps)
        assert "received event" in messages and "booked" in messages
        for line in steps:
            assert line["event_id"] == rec.event_id
            assert line["booking_id"] == booking
            assert line["performer_id"] == rec.performer_id
            assert line["task_id"]  # the Celery task id of the step that wrote it


def test_tokens_import_reads_json_lines_and_resumes_reauth(system: System) -> None:
    """A site hands over many members at once; bad lines are named, never echoed (tokens)."""
    parked = system.member(expires_in=0)
    system.sandbox.revoke_user(parked)
    rid, _ = system.rebook(parked, system.performer(online=True))
    system.wait_state(rid, State.NEEDS_ATTENTION)
    fresh = system.sandbox.add_user(parked)
    other = system.sandbox.add_user("imported-2")
    secret_of_bad = "leaky-access-token-123"
    lines = [
        json.dumps({"user_id": parked, **fresh}),
        "",
        json.dumps({"user_id": "imported-2", **other}),
        json.dumps({"user_id": "bad-3", "access_token": secret_of_bad}),  # no refresh/expiry
        "not json",
    ]
    proc = system.cli("tokens", "import", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stored 2 member(s) (verified); refused 2; resumed 1" in proc.stdout
    assert "line 4 (bad-3)" in proc.stderr and "line 5: not JSON" in proc.stderr
    for secret in (secret_of_bad, fresh["access_token"], other["refresh_token"]):
        assert secret not in proc.stdout + proc.stderr
    stored = system.svc.token_store.load("imported-2")
    assert stored is not None and stored.refresh_token == other["refresh_token"]
    assert system.svc.token_store.load("bad-3") is None
    system.wait_state(rid, State.WATCHING)
