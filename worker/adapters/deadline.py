"""A total deadline on an HTTP request: connect, headers and body together.

Socket timeouts bound each `recv`, not the request: an answer that trickles in one byte a
second never trips a 10 s read timeout and can hold a worker for minutes. Here one watchdog
thread per process keeps the deadlines of the requests in flight; when one passes, it shuts the
request's socket down (`shutdown(SHUT_RDWR)`), so the blocked `recv` in the caller's thread
returns at once and requests/urllib3 raise as for a dropped connection. The caller asks its
`Guard` whether that happened (`cut`) and classifies the failure itself.

The socket is found through the connection classes of `DeadlineAdapter`, which attach every
connection a request uses (new or pooled) to the guard active in the calling thread. A connection
given back to the pool is detached first, so the watchdog never touches a socket another request
may be using. Nothing is started per request and nothing is abandoned: a request whose guard
expired ends in the caller's own thread, at once.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_OWNER = "_rebook_deadline_guard"
"""Attribute of a connection naming the guard that may shut it down."""


class Guard:
    """One request's deadline. `expired`: it passed while the request was in flight; `cut`: and
    the watchdog shut the request's socket, so what the request got is not to be trusted (a
    body read "to the end" may have ended at the shutdown). A request on connections the
    watchdog does not know (another adapter) may expire but is never cut. `connected`: a
    connection of the request was up (TCP); `sent`: the request began to go out on it. A
    request that failed connected but not sent (a TLS handshake or proxy tunnel that failed,
    timed out or was cut) sent nothing."""

    __slots__ = ("active", "connected", "conns", "cut", "expired", "expires", "seconds", "sent")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.active = True
        self.expired = False
        self.cut = False
        self.sent = False
        self.connected = False
        self.conns: list[tuple[Any, Any]] = []
        """(connection, its socket then): http.client drops `conn.sock` once the headers say
        `Connection: close`, while the body is still read from that socket."""


_CURRENT: ContextVar[Guard | None] = ContextVar("rebook_deadline_guard", default=None)


def _shut(sock: Any) -> None:
    sock = getattr(sock, "socket", sock)  # urllib3's SSLTransport (TLS in a TLS proxy)
    if isinstance(sock, socket.socket):
        # the plain socket's shutdown: SSLSocket's own would also drop its TLS state, which the
        # caller's thread may be reading right now
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Watchdog:
    """One daemon thread per process that ends requests at their deadline (module doc)."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # prefork children start afresh

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Guard]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, seconds: float) -> Iterator[Guard]:
        """The deadline of the requests made inside the block, in this thread."""
        guard = Guard(seconds)
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="rebook-http-deadline", daemon=True
                )
                self._thread.start()
            first = not self._heap or guard.expires < self._heap[0][0]
            heapq.heappush(self._heap, (guard.expires, next(self._seq), guard))
            if first:
                self._cond.notify()
        token = _CURRENT.set(guard)
        try:
            yield guard
        finally:
            _CURRENT.reset(token)
            with self._cond:
                guard.active = False
                for conn, _ in guard.conns:
                    if getattr(conn, _OWNER, None) is guard:
                        setattr(conn, _OWNER, None)
                guard.conns.clear()

    def attach(self, conn: Any, sock: Any = None) -> None:
        """`conn` (with `sock`, else its open socket) serves the request of this thread's guard
        (if any) from now on."""
        guard = _CURRENT.get()
        sock = sock if sock is not None else getattr(conn, "sock", None)
        if guard is None or sock is None:
            return
        with self._cond:
            if not guard.active:
                return
            setattr(conn, _OWNER, guard)
            guard.conns.append((conn, sock))
            guard.connected = True
            if guard.expired:  # it passed while the connection was being opened
                guard.cut = True
                _shut(sock)

    def sending(self) -> None:
        """The request of this thread's guard starts to go out now."""
        guard = _CURRENT.get()
        if guard is not None:
            guard.sent = True

    def detach(self, conn: Any) -> None:
        """`conn` goes back to the pool: no deadline may shut it any more."""
        if getattr(conn, _OWNER, None) is None:
            return
        with self._cond:
            setattr(conn, _OWNER, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or not self._heap[0][2].active):
                    _, _, guard = heapq.heappop(self._heap)
                    if guard.active:
                        guard.expired = True
                        for conn, sock in guard.conns:
                            if getattr(conn, _OWNER, None) is guard:
                                guard.cut = True
                                _shut(sock)
                wait = self._heap[0][0] - now if self._heap else None
                self._cond.wait(wait)


WATCHDOG = Watchdog()


class _Attached:
    """Connection mixin: every connection a request opens or reuses is attached to its guard,
    a new one from the moment its TCP connection is up (so a TLS handshake or a proxy tunnel
    that trickles is cut too)."""

    def _new_conn(self) -> Any:
        sock = super()._new_conn()  # type: ignore[misc]
        WATCHDOG.attach(self, sock)
        return sock

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        WATCHDOG.attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "sock", None) is None:
            # connect first (http.client would, inside the send): then "sent" means sent
            self.connect()
        WATCHDOG.attach(self)  # a pooled connection (a new one attached in `_new_conn`)
        WATCHDOG.sending()
        super().request(*args, **kwargs)  # type: ignore[misc]


class DeadlineHTTPConnection(_Attached, HTTPConnection):
    pass


class DeadlineHTTPSConnection(_Attached, HTTPSConnection):
    pass


class DeadlineHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = DeadlineHTTPConnection

    def _put_conn(self, conn: Any) -> None:
        WATCHDOG.detach(conn)
        super()._put_conn(conn)


class DeadlineHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = DeadlineHTTPSConnection

    def _put_conn(self, conn: Any) -> None:
        WATCHDOG.detach(conn)
        super()._put_conn(conn)


_POOLS = {"http": DeadlineHTTPConnectionPool, "https": DeadlineHTTPSConnectionPool}


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter with connections the watchdog can shut (HTTP and HTTPS proxies too;
    a SOCKS proxy keeps its own connections, bounded by the socket timeouts only).

    Up to `POOL_SIZE` connections per host stay open: a worker with the threads pool has that
    many calls in flight at once (requests' default, 10, would close and reopen the rest)."""

    POOL_SIZE = 64

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("pool_maxsize", self.POOL_SIZE)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager
