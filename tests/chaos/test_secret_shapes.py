"""Secrets in other shapes: a member's token that arrives where no pattern finds it.

An OAuth server that echoes the refresh token in its refusal ("refresh token X is invalid"), and a
task whose exception text quotes a token (a corrupt record): both reach the worker's reasons,
outcomes, webhooks, logs, Sentry and, through Celery's `task-failed` event, Flower. Each member's
tokens are registered with the scrubber when loaded, and a failure's text is scrubbed before the
event leaves the worker. A real worker (one prefork child, so the child that loaded the tokens is
the one that fails), beat, Flower and the sandbox over HTTP.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from rebook_dev.embedded import free_port
from tests.chaos.test_secrets import Hook, redis_dump
from tests.integration.conftest import Proc, System, running_system, wait_for
from tests.integration.test_ops import SentryCollector
from worker.core.states import State

pytestmark = pytest.mark.integration

FLOWER_PASSWORD = "fl-SHAPES-5d1e"


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
def shapes_system(
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    collector: SentryCollector,
    hook: Hook,
) -> Iterator[System]:
    with running_system(
        redis_url,
        tmp_path_factory.mktemp("shapes"),
        flower_basic_auth=f"ops:{FLOWER_PASSWORD}",
        webhook_url=hook.url,
        webhook_secret="wh-SHAPES-77ab31",
        sentry_dsn=f"http://abcdef0123456789@127.0.0.1:{collector.port}/7",
        log_level="DEBUG",
    ) as sysm:
        # one prefork child: the one that loaded a member's tokens is the one whose task fails
        sysm.worker.stop()
        args = list(sysm.worker.args)
        args[args.index("-c") + 1] = "1"
        sysm.worker = Proc("worker", args, sysm.env, sysm.logdir / "worker-c1.log")
        sysm.start_worker()
        sysm.sandbox.configure(echo_tokens=True)
        yield sysm


def _flower_tasks(port: int) -> str | None:
    try:
        found = requests.get(
            f"http://127.0.0.1:{port}/api/tasks", auth=("ops", FLOWER_PASSWORD), timeout=5
        )
    except requests.RequestException:
        return None
    return found.text if found.status_code == 200 else None


def test_tokens_echoed_by_the_upstream_or_quoted_by_a_failure_never_leave_the_worker(
    shapes_system: System, collector: SentryCollector, hook: Hook
) -> None:
    system = shapes_system
    port = free_port()
    flower = Proc(
        "flower",
        [sys.executable, "-m", "worker.operations.flower", "--port", str(port)],
        system.env,
        system.logdir / "flower.log",
    ).start()
    try:
        wait_for(lambda: _flower_tasks(port) is not None, 60, "flower up")
        performer = system.performer(online=True)

        # 1. the OAuth server refuses a refresh and echoes the refresh token it was given
        refused = system.member(expires_in=0)
        refused_pair = system.svc.token_store.load(refused)
        assert refused_pair is not None
        system.sandbox.revoke_user(refused)
        parked, _ = system.rebook(refused, performer)
        rec = system.wait_state(parked, State.NEEDS_ATTENTION)
        assert rec.reason == "reauth"

        # 2. a task fails with an exception quoting a member's tokens (a corrupt record)
        member = system.member()
        booked, _ = system.rebook(member, performer)  # the child loads the member's pair
        system.wait_state(booked, State.WATCHING)
        pair = system.svc.token_store.load(member)
        assert pair is not None
        broken = "rb-shapes0corrupt0"
        system.store.r.hset(
            system.store.key("r", broken),
            mapping={
                "state": "WATCHING",
                "booking_id": pair.access_token,
                "performer_id": pair.refresh_token,
            },
        )
        result = system.producer.send_task("rebook.watch", kwargs={"rebook_id": broken})

        def failed_in_flower() -> str | None:
            text = _flower_tasks(port)
            if text is None or result.id not in text:
                return None
            task = json.loads(text).get(result.id, {})
            return text if task.get("state") == "FAILURE" and task.get("traceback") else None

        flower_text = wait_for(failed_in_flower, 30, "the failed task in Flower")
        wait_for(
            lambda: any(parked in b and "NEEDS_ATTENTION" in b for b in hook.bodies),
            20,
            "the reauth webhook",
        )
        wait_for(lambda: collector.items("event"), 30, "a Sentry event")
    finally:
        flower.stop()

    failed = json.loads(flower_text)[result.id]
    system.store.r.delete(system.store.key("r", broken))  # the corrupt record we wrote ourselves
    # the failure is there, readable, with the tokens cut out of it
    assert "ValidationError" in failed["exception"] + failed["traceback"]
    assert "[redacted]" in failed["exception"] + failed["traceback"]
    haystacks: dict[str, Any] = {
        "flower api": flower_text,
        "flower log": flower.text(),
        "worker log": system.worker.text(),
        "redis": redis_dump(system),
        "outcomes": system.cli("outcomes", "--json", "--count", "1000").stdout,
        "status": system.cli("status", parked, "--json").stdout,
        "webhooks": hook.text(),
        "sentry": b"".join(collector.envelopes).decode("utf-8", errors="replace"),
    }
    # the echo did reach the worker (so the scrubber, not luck, kept it out)
    assert "is invalid" in haystacks["worker log"], "the sandbox's echo never arrived"
    secrets = {
        "refused member's refresh token": refused_pair.refresh_token,
        "refused member's access token": refused_pair.access_token,
        "member's access token": pair.access_token,
        "member's refresh token": pair.refresh_token,
    }
    leaks = [
        f"{name} in {where}"
        for name, secret in secrets.items()
        for where, text in haystacks.items()
        if secret in text
    ]
    assert not leaks, leaks
