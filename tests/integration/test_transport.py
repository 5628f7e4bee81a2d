"""Transport and access on real redis-servers: a `rediss://` store and broker verify the server
certificate by default (a CA the settings name, else the system's: an unknown CA is refused),
the ACL users of ops/redis.conf let a producer push an event but never read a token, and rebook's
Redis transport behaves as kombu's where kombu's is the contract (no_ack, an account without
INFO)."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from cryptography.fernet import Fernet
from kombu import Connection, Exchange, Producer, Queue

from rebook_dev.embedded import free_port
from tests.conftest import fast_settings, wait_for
from worker.adapters.auth import TokenStore
from worker.celeryapp import broker, frames
from worker.celeryapp.app import create_app
from worker.core.errors import StoreUnavailable
from worker.core.models import TokenSet
from worker.core.store import Store
from worker.core.store.tokens import TokenRecords

pytestmark = pytest.mark.integration
REDIS_CONF = Path(__file__).resolve().parents[2] / "ops" / "redis.conf"


def _server(args: list[str], port: int, tmp: Path, **client: object) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed"
    proc = subprocess.Popen(
        [binary, *args], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )

    def up() -> bool:
        try:
            return bool(redis.Redis(port=port, socket_timeout=1, **client).ping())  # type: ignore[arg-type]
        except redis.RedisError:
            return False

    wait_for(up, 10, "redis-server up")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA and a server certificate for localhost / 127.0.0.1 (openssl)."""
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make test certificates"
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=rebook-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=localhost")  # fmt: skip
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.crt", "-days", "2", "-extfile", "ext")  # fmt: skip
    return d


@pytest.fixture(scope="module")
def tls_url(certs: Path) -> Iterator[str]:
    port = free_port()
    args = ["--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--tls-cert-file", "srv.crt", "--tls-key-file", "srv.key",
            "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"]  # fmt: skip
    proc = _server(args, port, certs, ssl=True, ssl_ca_certs=str(certs / "ca.crt"))
    try:
        yield f"rediss://localhost:{port}/0"
    finally:
        _stop(proc)


def test_rediss_store_verifies_the_certificate(tls_url: str, certs: Path, prefix: str) -> None:
    trusted = fast_settings(
        tls_url, "http://127.0.0.1:9", prefix, redis_ca_file=str(certs / "ca.crt")
    )
    store = Store.from_settings(trusted)
    store.ping()
    store.r.set(store.key("probe"), "1")
    assert store.r.get(store.key("probe")) == "1"
    # no CA named: the system's CAs do not know ours, so the connection is refused (never a
    # silent fallback to an unchecked one)
    untrusted = Store.from_settings(fast_settings(tls_url, "http://127.0.0.1:9", prefix))
    with pytest.raises(StoreUnavailable):
        untrusted.ping()
    with pytest.raises(redis.ConnectionError, match=r"(?i)certificate"):
        untrusted.r.get(untrusted.key("probe"))


def test_rediss_broker_verifies_the_certificate(tls_url: str, certs: Path, prefix: str) -> None:
    ca = str(certs / "ca.crt")
    trusted = fast_settings(tls_url, "http://127.0.0.1:9", prefix, redis_ca_file=ca)
    app = create_app(trusted)
    assert app.conf.broker_use_ssl["ssl_ca_certs"] == ca
    app.send_task("rebook.request", kwargs={"event_id": "tls"}, queue="rebook.events")
    r = redis.Redis.from_url(tls_url, ssl_ca_certs=ca)
    assert r.llen(f"{trusted.broker_key_prefix}rebook.events") == 1
    blind = create_app(fast_settings(tls_url, "http://127.0.0.1:9", prefix))
    with (
        pytest.raises(Exception, match=r"(?i)certificate"),
        blind.connection_for_write() as conn,
    ):
        conn.ensure_connection(max_retries=1)


# --- ACL users ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """ops/redis.conf as shipped (its ACL users), on a free port with persistence off; each
    user switched on with a test password, as the conf's comment tells an operator to."""
    tmp = tmp_path_factory.mktemp("acl")
    port = free_port()
    args = [str(REDIS_CONF), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp),
            "--appendonly", "no", "--save", ""]  # fmt: skip
    proc = _server(args, port, tmp)
    admin = redis.Redis(port=port)
    for role in ("producer", "worker", "operator"):
        assert admin.acl_getuser(f"rebook-{role}") is not None, f"rebook-{role} not in redis.conf"
        admin.execute_command("ACL", "SETUSER", f"rebook-{role}", "on", f">{role}-pw")
    try:
        yield port
    finally:
        _stop(proc)


def _as(port: int, role: str) -> redis.Redis:
    return redis.Redis(port=port, username=f"rebook-{role}", password=f"{role}-pw")


def test_the_producer_user_pushes_events_and_reads_no_token(acl_redis: int) -> None:
    port = acl_redis
    key = Fernet.generate_key().decode()
    tokens = TokenStore(TokenRecords(_as(port, "worker"), "rebook:"), key)
    tokens.save(
        "m1", TokenSet(access_token="acc-SECRET", refresh_token="ref-SECRET", expires_at=2e9)
    )
    # any Celery client with the producer's URL sends an event
    producer = Celery(broker=f"redis://rebook-producer:producer-pw@127.0.0.1:{port}/0")
    producer.conf.broker_connection_retry_on_startup = True
    for i in range(2):
        producer.send_task(
            "rebook.request",
            kwargs={"event_id": f"acl-{i}", "booking_id": 1, "user_id": "m1"},
            queue="rebook.events",
        )
    worker = _as(port, "worker")
    assert worker.llen("rebook.events") == 2  # the worker user reads them
    assert tokens.load("m1") is not None
    p = _as(port, "producer")
    for attempt in (
        lambda: p.get("rebook:tok:m1"),
        lambda: p.lrange("rebook.events", 0, -1),
        lambda: p.rpop("rebook.events"),
        lambda: p.hgetall("rebook:r:any"),
        lambda: p.keys("*"),
        lambda: p.eval("return redis.call('GET', KEYS[1])", 1, "rebook:tok:m1"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    # operators read (the encrypted blob), never write; workers cannot wipe Redis
    operator = _as(port, "operator")
    assert operator.get("rebook:tok:m1") is not None
    assert operator.llen("rebook.events") == 2
    with pytest.raises(redis.exceptions.NoPermissionError):
        operator.set("rebook:tok:m1", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.flushall()


# --- rebook's Redis transport where kombu's behaviour is the contract ---------------------------


def _connection(url: str, prefix: str) -> Connection:
    return Connection(
        url,
        transport=broker.Transport,
        transport_options={"global_keyprefix": prefix, "visibility_timeout": 3600},
    )


def _unacked(url: str, prefix: str) -> list[str]:
    plain = redis.Redis.from_url(url, decode_responses=True)
    try:
        return list(plain.hkeys(f"{prefix}unacked")) + list(
            plain.zrange(f"{prefix}unacked_index", 0, -1)
        )
    finally:
        plain.close()


@pytest.mark.parametrize("no_ack", [True, False])
def test_a_no_ack_delivery_is_not_recorded_as_unacked(
    redis_url: str, prefix: str, no_ack: bool
) -> None:
    """pidbox replies (control.ping, Flower's inspect) are consumed with no_ack: kombu never
    records them, since nobody acks them; recorded, they came back after the visibility timeout."""
    queue = Queue(f"q-{uuid.uuid4().hex[:6]}", Exchange("", type="direct"))
    got: list[Any] = []
    with _connection(redis_url, prefix) as conn:
        Producer(conn.default_channel).publish({"n": 1}, routing_key=queue.name, declare=[queue])
        Producer(conn.default_channel).publish({"n": 2}, routing_key=queue.name, declare=[queue])
        with conn.Consumer(queue, no_ack=no_ack, callbacks=[lambda body, m: got.append(m)]):
            conn.drain_events(timeout=5)
        message = conn.default_channel.basic_get(queue.name, no_ack=no_ack)
        assert message is not None and got and got[0].payload == {"n": 1}
        tags = {got[0].delivery_tag, message.delivery_tag}
        recorded = set(_unacked(redis_url, prefix))
        assert recorded.isdisjoint(tags) if no_ack else tags <= recorded
        if not no_ack:
            got[0].ack()
            message.ack()
            assert not _unacked(redis_url, prefix)


@pytest.fixture(params=["info", "blmove"])
def refusing_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A private redis-server whose broker user may do everything but INFO (or BLMOVE)."""
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
            "--appendonly", "no", "--save", ""]  # fmt: skip
    proc = _server(args, port, tmp_path)
    admin = redis.Redis(port=port)
    admin.execute_command(
        "ACL", "SETUSER", "broker", "on", ">broker-pw", "~*", "&*", "+@all", f"-{request.param}"
    )
    admin.close()
    try:
        yield f"redis://broker:broker-pw@127.0.0.1:{port}/0", request.param
    finally:
        _stop(proc)


def test_a_broker_user_without_info_or_blmove_consumes_with_the_timed_wait(
    refusing_redis: tuple[str, str], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the BLMOVE probe's INFO raised NoPermissionError, which Celery treats as
    unrecoverable (and a refused BLMOVE would have too). Now the idle wait is the plain timed
    one, said once in the log."""
    url, refused = refusing_redis
    with pytest.raises(redis.exceptions.NoPermissionError):
        client = redis.Redis.from_url(url)
        if refused == "info":
            client.info("server")
        else:
            client.execute_command("BLMOVE", "a", "a", "RIGHT", "RIGHT", "0.01")
    queue = Queue(f"q-{uuid.uuid4().hex[:6]}", Exchange("", type="direct"))
    got: list[Any] = []
    caplog.set_level(logging.WARNING, logger="rebook.broker")
    broker._told.discard(refused)
    with (
        _connection(url, prefix) as conn,
        conn.Consumer(queue, callbacks=[lambda body, m: (got.append(body), m.ack())]),
    ):
        for _ in range(3):  # idle rounds: the empty pop, then the wait (where INFO was asked)
            with pytest.raises(socket.timeout):
                conn.drain_events(timeout=0.3)
        with _connection(url, prefix) as producer:
            Producer(producer.default_channel).publish({"n": 7}, routing_key=queue.name)
        conn.drain_events(timeout=5)
        assert got == [{"n": 7}]
    told = [r for r in caplog.records if f"refused {refused.upper()}" in r.getMessage()]
    assert len(told) == 1, [r.getMessage() for r in caplog.records]
    assert not _unacked(url, prefix)


@pytest.mark.parametrize("stored", [True, False])
def test_a_check_that_raises_anything_never_loses_the_item(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, stored: bool
) -> None:
    """MemoryError (or any exception) out of the frame check refuses the item like a bad frame:
    dead-lettered and dropped, or, when the dead letter cannot be written, kept in `unacked`
    (back after the visibility timeout). The consumer goes on either way."""
    letters: list[tuple[str, str]] = []

    def deadletter(reason: str, raw: bytes | str, *, queue: str, **_: Any) -> bool:
        letters.append((reason, queue))
        return stored

    def boom(*_: Any) -> Any:
        raise MemoryError()

    monkeypatch.setattr(frames, "deadletter_frame", deadletter)
    monkeypatch.setattr(frames, "check_redis_item", boom)
    queue = Queue(f"q-{uuid.uuid4().hex[:6]}", Exchange("", type="direct"))
    got: list[Any] = []
    with _connection(redis_url, prefix) as conn:
        Producer(conn.default_channel).publish({"n": 1}, routing_key=queue.name, declare=[queue])
        with (
            conn.Consumer(queue, callbacks=[lambda body, m: got.append(body)]),
            pytest.raises(socket.timeout),
        ):
            conn.drain_events(timeout=0.5)
    assert not got
    assert letters == [("frame too large to read (MemoryError)", queue.name)]
    plain = redis.Redis.from_url(redis_url)
    try:
        assert plain.llen(f"{prefix}{queue.name}") == 0
        assert len(_unacked(redis_url, prefix)) == (0 if stored else 2)  # hash + index
    finally:
        plain.close()


def test_an_item_too_deep_to_record_is_put_back_when_its_dead_letter_fails(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers nested deeper than Redis's JSON parser reads: the pop script cannot record the item
    in `unacked`, so if its dead letter cannot be written it goes back to the end of its list."""
    refused: list[str] = []

    def deadletter(reason: str, raw: bytes | str, *, queue: str, **_: Any) -> bool:
        refused.append(reason)
        return False

    monkeypatch.setattr(frames, "deadletter_frame", deadletter)
    queue = Queue(f"q-{uuid.uuid4().hex[:6]}", Exchange("", type="direct"))
    tag = str(uuid.uuid4())
    item = (
        '{"body": "", "headers": {"nest": ' + "[" * 5000 + "]" * 5000 + "}, "
        '"properties": {"delivery_tag": "' + tag + '", "body_encoding": "base64"}}'
    )
    plain = redis.Redis.from_url(redis_url)
    try:
        plain.lpush(f"{prefix}{queue.name}", item)
        with (
            _connection(redis_url, prefix) as conn,
            conn.Consumer(queue, callbacks=[]),
            pytest.raises(socket.timeout),
        ):
            conn.drain_events(timeout=0.3)
        assert refused and all("nested too deeply" in r for r in refused), refused[:3]
        assert plain.lrange(f"{prefix}{queue.name}", 0, -1) == [item.encode()]
        assert not _unacked(redis_url, prefix)
    finally:
        plain.close()
