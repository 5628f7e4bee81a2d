"""A running system per test module: private Redis, the sandbox over HTTP, a real Celery worker
and beat as subprocesses (prefork, as in production), and a producer app. Nothing is eager.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from pydantic import SecretStr

from rebook_dev.embedded import reachable, redis_server_binary
from rebook_dev.sandbox import SandboxClient, SandboxServer
from rebook_dev.supervisor import Child
from tests.conftest import fast_settings, wait_for
from worker.celeryapp.app import EVENTS_QUEUE, create_app
from worker.celeryapp.runtime import Services, build_services
from worker.core.models import TokenSet
from worker.core.settings import Settings
from worker.core.states import State
from worker.core.store import Rebook, rebook_id_for

ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as `REBOOK_*` variables for a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"REBOOK_{name.upper()}"] = str(value)
    return env


def raw_celery_message(
    task: str, kwargs: Any, queue: str, args: Any = (), content_type: str = "application/json"
) -> str:
    """What a non-Python producer pushes: Celery protocol 2, JSON body, kombu's Redis envelope."""
    task_id = str(uuid.uuid4())
    body = json.dumps(
        [list(args), kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": {
                "lang": "js",
                "task": task,
                "id": task_id,
                "root_id": task_id,
                "parent_id": None,
                "group": None,
                "retries": 0,
                "eta": None,
                "expires": None,
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


class Proc(Child):
    """A child process of a test, in its own process group, run from the repository root."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        super().__init__(name, args, env, log, cwd=ROOT)


TEST_POOL = os.environ.get("REBOOK_TEST_POOL", "prefork")
"""The worker's pool in the integration and chaos suites: `REBOOK_TEST_POOL=threads make chaos`
runs them with one `-P threads -c 16` worker instead of `-P prefork -c 3`."""


class System:
    """Everything a test needs to drive the pipeline from the outside."""

    def __init__(
        self, settings: Settings, sandbox: SandboxClient, logdir: Path, pool: str | None = None
    ) -> None:
        self.settings = settings
        self.pool = pool or TEST_POOL
        self.sandbox = sandbox
        self.logdir = logdir
        self.env = {**os.environ, **settings_env(settings)}
        if settings.broker_url is None:
            self.env.pop("REBOOK_BROKER_URL", None)  # an inherited one must not win
        self.svc: Services = build_services(settings)
        self.store = self.svc.store
        self.producer: Celery = create_app(settings)
        self.node = f"t{uuid.uuid4().hex[:6]}"
        self.worker = self._worker()
        self.beat = Proc(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "beat",
                "-l",
                "INFO",
                "-s",
                str(logdir / f"beat-{self.node}"),
            ],
            self.env,
            logdir / "beat.log",
        )

    def _worker(self) -> Proc:
        return Proc(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "worker",
                "-Q",
                "rebook.events,rebook.work",
                "-c",
                "16" if self.pool == "threads" else "3",
                "-P",
                self.pool,
                "-E",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"{self.node}@%h",
                "-l",
                "INFO",
            ],
            self.env,
            self.logdir / "worker.log",
        )

    def start_worker(self) -> None:
        before = self.worker.text().count(" ready.")
        self.worker.start()
        wait_for(lambda: self.worker.text().count(" ready.") > before, 30, "worker ready")

    def start(self) -> System:
        self.start_worker()
        self.beat.start()
        wait_for(self.store.sweep.last_sweep, 30, "first sweep")
        return self

    def stop(self) -> None:
        self.beat.stop()
        self.worker.stop()

    # -- driving -------------------------------------------------------------------------------

    def member(self, user_id: str | None = None, **token_extra: Any) -> str:
        user = user_id or f"m-{uuid.uuid4().hex[:8]}"
        answer = self.sandbox.add_user(user, **token_extra)
        self.svc.token_store.save(user, TokenSet.from_token_response(answer, time.time()))
        return user

    def performer(self, online: bool = False) -> int:
        pid = int(uuid.uuid4().int % 10**8) + 1000
        self.sandbox.set_online(pid, online)
        return pid

    def submit(self, **kwargs: Any) -> str:
        kwargs.setdefault("event_id", f"ev-{uuid.uuid4().hex}")
        self.producer.send_task("rebook.request", kwargs=kwargs, queue=EVENTS_QUEUE)
        return rebook_id_for(kwargs["event_id"]) if isinstance(kwargs["event_id"], str) else ""

    def send_raw(self, *args: Any, **kwargs: Any) -> None:
        self.producer.send_task("rebook.request", args=args, kwargs=kwargs, queue=EVENTS_QUEUE)

    def rebook(self, user: str, performer: int, **extra: Any) -> tuple[str, int]:
        booking = self.sandbox.add_booking(user, performer)
        rid = self.submit(booking_id=booking, user_id=user, performer_id=performer, **extra)
        return rid, booking

    def get(self, rid: str) -> Rebook | None:
        return self.store.records.get(rid)

    def wait_state(
        self, rid: str, states: State | Iterable[State], timeout: float = 20.0
    ) -> Rebook:
        wanted = {states} if isinstance(states, State) else set(states)

        def check() -> Rebook | None:
            rec = self.store.records.get(rid)
            return rec if rec is not None and rec.state in wanted else None

        try:
            return wait_for(check, timeout, f"{rid} in {sorted(wanted)}")
        except AssertionError:
            rec = self.store.records.get(rid)
            raise AssertionError(
                f"{rid} is {rec.state if rec else 'missing'} "
                f"({rec.reason if rec else ''}), wanted {sorted(wanted)}; "
                f"history {self.store.records.history(rid)}\n--- worker log tail ---\n"
                f"{self.worker.text()[-3000:]}"
            ) from None

    def cli(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`rebook ARGS` as an operator runs it, against this system (`env` overrides)."""
        return subprocess.run(
            [sys.executable, "-m", "worker.operations.cli", *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            timeout=60,
        )

    def history_states(self, rid: str) -> list[str]:
        return [h["to"] for h in self.store.records.history(rid)]


AMQP_URL = os.environ.get("REBOOK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")


def rabbitmq_reachable() -> bool:
    host, _, port = AMQP_URL.rsplit("@", 1)[-1].partition(":")
    try:
        with socket.create_connection((host, int(port or 5672)), timeout=1):
            return True
    except OSError:
        return False


def require_rabbitmq() -> None:
    """Skips with a visible reason locally; in CI (CI=true) RabbitMQ must be there."""
    if rabbitmq_reachable():
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_URL} and CI requires it")
    pytest.skip(f"RabbitMQ is not reachable at {AMQP_URL} (these tests run in CI)")


@contextlib.contextmanager
def amqp_vhost() -> Iterator[str]:
    """A private vhost when rabbitmqctl can make one (parallel runs never share queues)."""
    name = f"rebook-test-{uuid.uuid4().hex[:8]}"
    ctl = shutil.which("rabbitmqctl")
    made = False
    if ctl:
        made = (
            subprocess.run([ctl, "add_vhost", name], capture_output=True, timeout=30).returncode
            == 0
            and subprocess.run(
                [ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                capture_output=True,
                timeout=30,
            ).returncode
            == 0
        )
    try:
        yield f"{AMQP_URL}/{name}" if made else f"{AMQP_URL}//"
    finally:
        if made and ctl:
            subprocess.run([ctl, "delete_vhost", name], capture_output=True, timeout=30)


def _free_cluster_port() -> int:
    """A port whose cluster-bus twin (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        with contextlib.ExitStack() as stack:
            try:
                for candidate in (port, port + 10000):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


@contextlib.contextmanager
def redis_cluster(tmp: Path, nodes: int = 3) -> Iterator[str]:
    """A local Redis Cluster of `nodes` primaries on free ports (redis-server --cluster-enabled)."""
    binary = redis_server_binary()
    cli = shutil.which("redis-cli", path=str(Path(binary).parent)) or shutil.which("redis-cli")
    assert cli, "redis-cli is needed to create the cluster"
    ports = [_free_cluster_port() for _ in range(nodes)]
    procs = []
    try:
        for port in ports:
            home = tmp / f"node-{port}"
            home.mkdir(parents=True)
            procs.append(
                subprocess.Popen(
                    [
                        binary,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--protected-mode",
                        "no",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(home / "nodes.conf"),
                        "--cluster-node-timeout",
                        "3000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(home),
                        "--logfile",
                        str(home / "redis.log"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            wait_for(
                lambda port=port: reachable(f"redis://127.0.0.1:{port}/0", 0.2),
                20,
                f"cluster node {port}",
            )
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stdout + created.stderr

        def ready() -> bool:
            for port in ports:
                client = redis.Redis(port=port, socket_timeout=1)
                try:
                    if client.cluster("info").get("cluster_state") != "ok":
                        return False
                finally:
                    client.close()
            return True

        wait_for(ready, 30, "cluster_state:ok")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def running_system(
    redis_url: str,
    logdir: Path,
    broker: str = "redis",
    sandbox_options: dict[str, Any] | None = None,
    pool: str | None = None,
    **extra: Any,
) -> Iterator[System]:
    """A whole system with its own sandbox, key prefix and queues; `extra` overrides settings.

    `broker="amqp"` uses RabbitMQ (a private vhost) as the broker, Redis stays the store.
    `broker="cluster"` keeps the broker on `redis_url` and puts the store on a local 3-node Redis
    Cluster (8 shards).
    """
    prefix = f"rebook-it-{uuid.uuid4().hex[:8]}:"
    with contextlib.ExitStack() as stack:
        if broker == "amqp":
            require_rabbitmq()
            extra["broker_url"] = stack.enter_context(amqp_vhost())
        else:
            extra.setdefault("broker_key_prefix", prefix)
        if broker == "cluster":
            extra.update(broker_url=redis_url, redis_cluster=True, shards=8)
            redis_url = stack.enter_context(redis_cluster(logdir / "cluster"))
        server = stack.enter_context(SandboxServer(port=0, **(sandbox_options or {})))
        extra.setdefault("oauth_token_url", server.token_url)
        settings = fast_settings(redis_url, server.url, prefix, **extra)
        client = SandboxClient(server.url)
        sysm = System(settings, client, logdir, pool)
        try:
            yield sysm.start()
        finally:
            sysm.stop()
            client.close()


@pytest.fixture(scope="module")
def system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(redis_url, tmp_path_factory.mktemp("system")) as sysm:
        yield sysm


@pytest.fixture(scope="module", params=["redis", "amqp", "cluster"])
def any_broker_system(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """The same system on each broker (Redis, RabbitMQ) and with the store on a Redis Cluster."""
    with running_system(
        redis_url, tmp_path_factory.mktemp(f"system-{request.param}"), broker=request.param
    ) as sysm:
        yield sysm
