"""The total deadline of an upstream request (REBOOK_HTTP_DEADLINE_SECONDS) against the real
sandbox over HTTP: an answer that trickles in (no socket timeout ever fires) is cut at the
deadline; a POST cut there is Ambiguous (it was made), a read Transient."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from rebook_dev.sandbox import SandboxClient, SandboxServer
from worker.adapters.deadline import WATCHDOG
from worker.adapters.upstream import UpstreamClient
from worker.core.errors import Ambiguous, Transient, UpstreamError

KEY = "sandbox-key"
TIMEOUT = 0.5  # each socket read
DEADLINE = 1.0  # the whole request
EVERY = 0.1  # a trickled byte every 0.1 s: no read ever waits TIMEOUT; hundreds of bytes > 10 s
SLACK = 1.0  # a busy 2-core machine


@pytest.fixture
def client(sandbox_server: SandboxServer) -> Iterator[UpstreamClient]:
    c = UpstreamClient(sandbox_server.url, KEY, timeout=TIMEOUT, deadline=DEADLINE)
    yield c
    c.close()


@pytest.fixture
def member(sandbox: SandboxClient) -> dict[str, Any]:
    tokens = sandbox.add_user("alice")
    booking = sandbox.add_booking("alice", 7)
    sandbox.set_online(7, True)
    return {"token": tokens["access_token"], "refresh": tokens["refresh_token"], "booking": booking}


def timed(call: Callable[[], Any]) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        call()
    return info.value, time.monotonic() - started


@pytest.mark.parametrize("part", ["all", "body"])
def test_a_trickling_post_is_ambiguous_at_the_deadline_and_was_made(
    client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any], part: str
) -> None:
    sandbox.fault("RescheduleMadeBooking", "trickle", delay=EVERY, part=part)
    exc, elapsed = timed(lambda: client.reschedule(member["token"], member["booking"]))
    assert isinstance(exc, Ambiguous), exc
    assert "deadline" in str(exc)
    assert DEADLINE * 0.9 <= elapsed <= DEADLINE + SLACK, elapsed
    # after_commit: the booking exists; reconciliation, not a second POST, must find it
    assert sandbox.stats()["new_bookings"] == {str(member["booking"]): 1}


@pytest.mark.parametrize("part", ["all", "body"])
def test_a_trickling_read_is_transient_at_the_deadline(
    client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any], part: str
) -> None:
    sandbox.fault("MadeBookings", "trickle", delay=EVERY, part=part)
    exc, elapsed = timed(lambda: client.made_bookings(member["token"]))
    assert isinstance(exc, Transient) and not isinstance(exc, Ambiguous), exc
    assert "deadline" in str(exc)
    assert DEADLINE * 0.9 <= elapsed <= DEADLINE + SLACK, elapsed
    # the connection that was cut is not reused: the next call on the client works
    assert client.made_bookings(member["token"]).bookings


def test_the_token_endpoint_has_the_deadline_too(
    client: UpstreamClient, sandbox: SandboxClient, sandbox_server: SandboxServer, member: Any
) -> None:
    sandbox.fault("token", "trickle", delay=EVERY)
    exc, elapsed = timed(
        lambda: client.refresh_token(
            sandbox_server.url + "/OAuth/token",
            client_id="sandbox-client",
            client_secret="sandbox-secret",
            refresh_token=member["refresh"],
        )
    )
    assert isinstance(exc, Transient), exc
    assert DEADLINE * 0.9 <= elapsed <= DEADLINE + SLACK, elapsed


def test_a_slow_answer_within_the_deadline_is_read_whole(
    sandbox_server: SandboxServer, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    """The deadline cuts only what runs past it: a body that dribbles in quickly enough, and
    the calls after it on the same keep-alive connection, are untouched."""
    c = UpstreamClient(sandbox_server.url, KEY, timeout=TIMEOUT, deadline=8.0)
    try:
        sandbox.fault("MadeBookingDetails", "trickle", delay=0.002, part="body")
        b = c.booking_details(member["token"], member["booking"])
        assert b.booking_id == member["booking"]
        for _ in range(3):
            assert c.booking_details(member["token"], member["booking"]).booking_id > 0
    finally:
        c.close()


def test_one_watchdog_thread_for_many_calls_in_flight(
    sandbox_server: SandboxServer, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    """No thread per request: four calls cut at once share the process's one watchdog."""
    sandbox.fault("MadeBookingDetails", "trickle", delay=EVERY, count=4)
    errors: list[BaseException] = []

    def one() -> None:
        c = UpstreamClient(sandbox_server.url, KEY, timeout=TIMEOUT, deadline=DEADLINE)
        try:
            c.booking_details(member["token"], member["booking"])
        except UpstreamError as exc:
            errors.append(exc)
        finally:
            c.close()

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE + 5)
    assert time.monotonic() - started <= DEADLINE + SLACK + 0.5
    assert len(errors) == 4 and all(isinstance(e, Transient) for e in errors)
    watchdogs = [t for t in threading.enumerate() if t.name == "rebook-http-deadline"]
    assert len(watchdogs) == 1 and WATCHDOG._thread is watchdogs[0]


@pytest.fixture
def unanswered() -> Iterator[str]:
    """A loopback port whose accept queue is full: a connect to it never completes (Linux drops
    the SYN), as with a host that does not answer."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers: list[socket.socket] = []
    for _ in range(8):  # fill the queue (its length varies by kernel)
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
    except OSError:
        pass  # the connect timed out: what the test needs
    else:
        pytest.skip("this kernel accepts connections beyond the backlog")
    yield f"http://127.0.0.1:{port}"
    for s in fillers:
        s.close()
    server.close()


def test_a_connect_that_never_completes_ends_in_time_and_sent_nothing(unanswered: str) -> None:
    """The connect counts against the deadline too (here deadline = timeout); a POST whose
    connection never opened sent nothing: Transient, not Ambiguous."""
    c = UpstreamClient(unanswered, KEY, timeout=TIMEOUT, deadline=TIMEOUT)
    try:
        exc, elapsed = timed(lambda: c.reschedule("t", 1))
        assert isinstance(exc, Transient) and not isinstance(exc, Ambiguous), exc
        assert elapsed <= TIMEOUT + SLACK, elapsed
        exc, elapsed = timed(lambda: c.booking_details("t", 1))
        assert isinstance(exc, Transient), exc
        assert elapsed <= TIMEOUT + SLACK, elapsed
    finally:
        c.close()


@pytest.fixture
def trickling_tls() -> Iterator[str]:
    """A TCP server that answers a TLS ClientHello with the header of a 16 KB handshake record,
    then one byte of it every 0.1 s: the handshake never ends, no read ever times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(4096)  # the ClientHello
            conn.sendall(b"\x16\x03\x03\x40\x00")
            while not stop.wait(EVERY):
                conn.sendall(b"\x00")

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield f"https://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    acceptor.join(5)
    server.close()


def test_a_stuck_tls_handshake_ends_in_time_and_sent_nothing(trickling_tls: str) -> None:
    """Stuck while connecting (the TLS handshake; Python's ssl bounds one handshake by the
    socket timeout, the deadline by its total): nothing of the request went out, so even the
    POST is Transient, not Ambiguous."""
    c = UpstreamClient(trickling_tls, KEY, timeout=TIMEOUT, deadline=DEADLINE)
    try:
        for call in (lambda: c.reschedule("t", 1), lambda: c.booking_details("t", 1)):
            exc, elapsed = timed(call)
            assert isinstance(exc, Transient) and not isinstance(exc, Ambiguous), exc
            assert "not sent" in str(exc)
            assert elapsed <= DEADLINE + SLACK, elapsed
    finally:
        c.close()


def test_the_sandbox_checks_the_trickle_options(sandbox: SandboxClient) -> None:
    with pytest.raises(requests.HTTPError):
        sandbox.fault("MadeBookings", "timeout", part="body")  # part is trickle's
    with pytest.raises(requests.HTTPError):
        sandbox.fault("MadeBookings", "trickle", part="headers")
    sandbox.fault("MadeBookings", "trickle", part="body", delay=0.5)
    assert sandbox.stats()["faults_pending"] == 1
