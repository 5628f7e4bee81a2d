"""Secrets never leak: after a whole pipeline run (with a forced token refresh, a refused one,
an invalid event carrying a token, and a failing step), search worker and beat logs, every Redis
key (store, streams, broker queues), Flower's task API, Sentry events, the CLI's outcome output
and the webhook bodies for the member tokens, the API key, the OAuth client secret and the other
configured secrets; and each secret pattern planted in an upstream error body is scrubbed before
it reaches a reason, an outcome, a dead letter or a webhook."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from rebook_dev.embedded import free_port
from tests.integration.conftest import Proc, System, running_system, wait_for
from tests.integration.test_ops import SentryCollector
from worker.core.states import State

pytestmark = pytest.mark.integration

API_KEY = "ak-LEAKCHECK-5f1c9e7a2b"
CLIENT_SECRET = "cs-LEAKCHECK-93d0aa41c7"
FLOWER_PASSWORD = "fl-LEAKCHECK-0b7e"
VIEWER_PASSWORD = "fl-LEAKCHECK-viewer-51aa"
"""The second user of a multi-user REBOOK_FLOWER_BASIC_AUTH: each password is a secret alone."""
EVENT_TOKEN = "ev-LEAKCHECK-token-9e3f"
"""A token a producer put in a valid event (an unknown field) and in its repr headers."""
WEBHOOK_SECRET = "wh-LEAKCHECK-2c44d1"


class Hook:
    """A webhook receiver that takes every delivery and keeps its raw body."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def text(self) -> str:
        return "\n".join(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def collector() -> Iterator[SentryCollector]:
    c = SentryCollector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


@pytest.fixture(scope="module")
def secret_system(
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    collector: SentryCollector,
    hook: Hook,
) -> Iterator[System]:
    with running_system(
        redis_url,
        tmp_path_factory.mktemp("secrets"),
        sandbox_options={"api_key": API_KEY, "client_secret": CLIENT_SECRET},
        api_key=API_KEY,
        oauth_client_secret=CLIENT_SECRET,
        flower_basic_auth=f"ops:{FLOWER_PASSWORD},viewer:{VIEWER_PASSWORD}",
        webhook_url=hook.url,
        webhook_secret=WEBHOOK_SECRET,
        sentry_dsn=f"http://abcdef0123456789@127.0.0.1:{collector.port}/7",
        log_level="DEBUG",
    ) as sysm:
        yield sysm


def redis_dump(system: System) -> str:
    """Every key and value in the Redis the system uses, as text."""
    r = system.store.r
    parts: list[str] = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        value: Any
        if kind == "string":
            value = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = r.xrange(key)
        else:
            value = kind
        parts.append(f"{key} {value}")
    return "\n".join(parts)


# Long on purpose: one run through every place a secret could leak, each checked in turn.
def test_no_secret_anywhere_after_a_full_run(
    secret_system: System, collector: SentryCollector, hook: Hook
) -> None:
    system = secret_system
    tokens_seen: list[str] = []
    user = system.member(expires_in=0)  # forces a refresh: the rotated pair is a secret too
    first = system.svc.token_store.load(user)
    assert first is not None
    tokens_seen += [first.access_token, first.refresh_token]
    performer = system.performer(online=True)
    rids = [system.rebook(user, performer)[0] for _ in range(3)]
    recs = [system.wait_state(rid, State.WATCHING) for rid in rids]
    system.sandbox.set_status(recs[0].new_booking_id, "Accepted")  # type: ignore[arg-type]
    system.sandbox.set_status(recs[1].new_booking_id, "Rejected", "no")  # type: ignore[arg-type]
    system.wait_state(rids[0], State.ACCEPTED)
    system.wait_state(rids[1], State.REJECTED)
    second = system.svc.token_store.load(user)
    assert second is not None and second.refresh_token != first.refresh_token
    tokens_seen += [second.access_token, second.refresh_token]

    # a member whose refresh is refused (the error path logs and parks)
    refused = system.member(expires_in=0)
    refused_tokens = system.svc.token_store.load(refused)
    assert refused_tokens is not None
    tokens_seen += [refused_tokens.access_token, refused_tokens.refresh_token]
    system.sandbox.revoke_user(refused)
    parked, _ = system.rebook(refused, performer)
    system.wait_state(parked, State.NEEDS_ATTENTION)

    # a producer that puts a token in an event; and a step that crashes (Sentry event)
    system.submit(
        event_id="leaky",
        booking_id="x",
        user_id=user,
        access_token=second.access_token,
        refresh_token=second.refresh_token,
    )
    broken = "rb-broken00secret00"
    system.store.r.hset(system.store.key("r", broken), mapping={"state": "WATCHING"})
    system.producer.send_task("rebook.watch", kwargs={"rebook_id": broken})
    wait_for(
        lambda: system.store.sweep.stats()["deadletter"] >= 1, 20, "the leaky event dead-lettered"
    )
    wait_for(lambda: collector.items("event"), 30, "a Sentry event")

    # Flower's task API, with the same credentials an operator uses
    port = free_port()
    flower = Proc(
        "flower",
        [sys.executable, "-m", "worker.operations.flower", "--port", str(port)],
        system.env,
        system.logdir / "flower.log",
    ).start()
    try:
        auth = ("ops", FLOWER_PASSWORD)

        def tasks() -> str | None:
            try:
                found = requests.get(f"http://127.0.0.1:{port}/api/tasks", auth=auth, timeout=5)
            except requests.RequestException:
                return None
            return found.text if found.status_code == 200 and "rebook." in found.text else None

        # Flower sees tasks from the moment it connects: run one more rebook while it watches
        wait_for(lambda: _up(port), 60, "flower up")
        more, _ = system.rebook(user, performer)
        system.wait_state(more, State.WATCHING)
        # a valid event carrying a token in an extra field and in hostile repr headers
        booking = system.sandbox.add_booking(user, performer)
        leaky_id = f"leaky-valid-{booking}"
        system.producer.send_task(
            "rebook.request",
            kwargs={
                "event_id": leaky_id,
                "booking_id": booking,
                "user_id": user,
                "performer_id": performer,
                "access_token": EVENT_TOKEN,
            },
            queue="rebook.events",
            kwargsrepr=f"{{'access_token': '{EVENT_TOKEN}'}}",
            argsrepr=f"('{EVENT_TOKEN}',)",
        )
        wait_for(lambda: leaky_id in (tasks() or ""), 30, "the leaky event in Flower")
        flower_text = wait_for(tasks, 30, "tasks in Flower's API")
    finally:
        flower.stop()

    outcomes = system.cli("outcomes", "--json", "--count", "1000").stdout
    assert "BOOKED" in outcomes
    haystacks = {
        "worker log": system.worker.text(),
        "beat log": system.beat.text(),
        "flower log": flower.text(),
        "redis": redis_dump(system),
        "flower api": flower_text,
        "sentry": b"".join(collector.envelopes).decode("utf-8", errors="replace"),
        "outcomes": outcomes,
        "dead letters": json.dumps(system.store.outcomes.deadletters(100)),
        "webhooks": hook.text(),
    }
    assert "[redacted]" in haystacks["dead letters"]
    assert "BOOKED" in haystacks["webhooks"]
    secrets = {
        "api key": API_KEY,
        "client secret": CLIENT_SECRET,
        "token key": system.settings.token_key.get_secret_value(),  # type: ignore[union-attr]
        "flower password": FLOWER_PASSWORD,
        "flower viewer password": VIEWER_PASSWORD,
        "token in an event": EVENT_TOKEN,
        "webhook secret": WEBHOOK_SECRET,
        **{f"token {i}": t for i, t in enumerate(tokens_seen)},
    }
    leaks = [
        f"{name} in {where}"
        for name, secret in secrets.items()
        for where, text in haystacks.items()
        if secret in text
    ]
    assert not leaks, leaks


PLANTED: dict[str, tuple[str, str]] = {
    "token=": ("token=pl-LEAK-tokeq-7a1c", "pl-LEAK-tokeq-7a1c"),
    "secret=": ("secret=pl-LEAK-seceq-2b9d", "pl-LEAK-seceq-2b9d"),
    'JSON "access_token"': ('{"access_token": "pl-LEAK-jsontok-4e0f"}', "pl-LEAK-jsontok-4e0f"),
    "Authorization: Basic": ("Authorization: Basic cGwtTEVBSy1iYXNpYy0xMWFh", "cGwtTEVBSy1iYXNp"),
    "Authorization: Bearer": ("Authorization: Bearer pl-LEAK-bearer-5c3e", "pl-LEAK-bearer-5c3e"),
    "X-Api-Key:": ("X-Api-Key: pl-LEAK-xapikey-8d2a", "pl-LEAK-xapikey-8d2a"),
    "Redis URL password": (
        "redis://rebook:pl-LEAK-redispw-6f4b@cache.internal:6379/0",
        "pl-LEAK-redispw-6f4b",
    ),
    "the API key itself": (f"echo of ?apiKey {API_KEY} in a proxy page", API_KEY),
}
"""Each pattern the scrubber knows, as an upstream error body could echo it."""


def test_upstream_error_text_is_scrubbed_before_it_is_stored(
    secret_system: System, hook: Hook
) -> None:
    """A refused reschedule (HTTP 400) ends FAILED with the upstream's message as its reason:
    that text reaches the record, its history, the outcome stream and the webhook, so it is
    scrubbed before it is stored. One rebook per planted pattern."""
    system = secret_system
    user = system.member()
    performer = system.performer(online=True)
    rids = []
    for text, _ in PLANTED.values():
        system.sandbox.fault(
            "RescheduleMadeBooking", "http_400", message=f"Refused: {text} (request echoed)"
        )
        rid, _ = system.rebook(user, performer)
        rids.append(rid)
        system.wait_state(rid, State.FAILED)
    for rid in rids:
        wait_for(
            lambda rid=rid: any(rid in b and "FAILED" in b for b in hook.bodies),
            20,
            "the FAILED webhook",
        )
    failed = [o for o in system.store.outcomes.outcomes(10_000) if o["rebook_id"] in rids]
    assert len(failed) == len(PLANTED) and all("Refused:" in o["reason"] for o in failed)
    # the upstream client masks its own API key as ***; every other pattern is [redacted]
    masked = [o["reason"] for o in failed if "[redacted]" in o["reason"] or "***" in o["reason"]]
    assert len(masked) == len(PLANTED), [o["reason"] for o in failed]
    haystacks = {
        "redis": redis_dump(system),
        "outcomes": system.cli("outcomes", "--json", "--count", "10000").stdout,
        "status": "\n".join(system.cli("status", rid, "--json").stdout for rid in rids),
        "webhooks": hook.text(),
        "dead letters": json.dumps(system.store.outcomes.deadletters(100)),
        "worker log": system.worker.text(),
    }
    leaks = [
        f"{name} in {where}"
        for name, (_, secret) in PLANTED.items()
        for where, text in haystacks.items()
        if secret in text
    ]
    assert not leaks, leaks


def _up(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2)
        return True
    except requests.RequestException:
        return False
