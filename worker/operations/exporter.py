"""Prometheus exporter for rebook's own numbers: `python -m worker.operations.exporter [--port]
[--host]`.

Flower sees Celery tasks; it cannot see what matters here: how many rebooks wait, how late the
sweep runs, what ended how, and how the upstream answers. Those live in Redis (the durable truth),
so this process reads them there on every scrape instead of keeping counters of its own: any
number of workers feed the same numbers, and restarting the exporter loses nothing.

One scrape = `Sweep.stats()` (one pipeline plus the last-sweep read) and one pipeline for the two
counter hashes, `{prefix}metrics:outcomes` (`STATE -> n`, written by the transition script) and
`{prefix}metrics:upstream` (`endpoint:outcome -> n`, added by each worker process at most a
second after its calls). When Redis cannot be reached the scrape still answers, with
`rebook_up 0`, so the alert says "Redis" rather than "exporter down".
"""

from __future__ import annotations

import argparse
import base64
import hmac
import ipaddress
import logging
import math
import signal
import socket
import sys
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from worker.core.audit import KINDS as AUDIT_KINDS
from worker.core.errors import FAULT_SETTINGS, StoreUnavailable
from worker.core.settings import Settings, mask_url, settings_or_exit
from worker.core.states import TERMINAL_STATES, State
from worker.core.store import Store
from worker.core.store.client import RedisError, Server, no_retry
from worker.core.store.counters import Tally

log = logging.getLogger(__name__)

DEFAULT_PORT = 9808
OK = "ok"
# Outcomes the transition script records; always exported (zero included) so rate() works at once.
OUTCOME_STATES = ("BOOKED", State.NEEDS_ATTENTION.value, *sorted(s.value for s in TERMINAL_STATES))
# A scrape must answer within Prometheus' default 10 s scrape timeout, even with Redis gone:
# short socket timeouts and no client-side retries (redis-py retries with backoff by default;
# the next scrape is the retry).
SOCKET_TIMEOUT = 3.0
CONNECT_TIMEOUT = 2.0


class RebookCollector(Collector):
    """Reads rebook's state and counters from Redis on each `collect()`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> Iterable[Metric]:
        """Names only, so registering does not touch Redis."""
        return [_up(), *_families().values()]

    def collect(self) -> Iterable[Metric]:
        try:
            stats = self.store.sweep.stats()
            outcomes = self.store.outcomes.outcome_counts()
            upstream = Tally.upstream_calls(self.store).read()
            memory = Server.of(self.store).info("memory")
            audit = Tally.audit_findings(self.store).read()
        except (RedisError, StoreUnavailable, OSError) as exc:
            log.warning(
                "rebook exporter: cannot read Redis at %s: %s",
                mask_url(self.store.url),
                type(exc).__name__,
            )
            up = _up()
            up.add_metric([], 0)
            return [up]
        up = _up()
        up.add_metric([], 1)
        fams = _families()
        for state, count in stats["states"].items():
            fams["rebooks"].add_metric([state], count)
        fams["due_lag"].add_metric([], stats["due_lag_seconds"])
        fams["deadletter"].add_metric([], stats["deadletter"])
        fams["performers"].add_metric([], stats["performers_tracked"])
        presence = stats["presence"]
        fams["presence_performers"].add_metric([], presence["performers"])
        fams["presence_interval"].add_metric([], presence["interval_seconds"])
        fams["presence_needed"].add_metric([], presence["needed_calls_per_second"])
        budget, achieved = (
            presence["budget_calls_per_second"],
            presence["achieved_interval_seconds"],
        )
        fams["presence_budget"].add_metric([], math.inf if budget is None else budget)
        fams["presence_achieved"].add_metric([], math.nan if achieved is None else achieved)
        last = stats["last_sweep_seconds_ago"]
        # Never swept: +Inf, so a "sweep older than N s" alert fires when beat never ran.
        fams["sweep_age"].add_metric([], math.inf if last is None else max(0.0, last))
        for state, count in _merge_outcomes(outcomes):
            fams["outcomes"].add_metric([state], count)
        calls, errors = _upstream(upstream)
        for (endpoint, outcome), count in calls:
            fams["calls"].add_metric([endpoint, outcome], count)
        for endpoint, count in errors:
            fams["errors"].add_metric([endpoint], count)
        used, limit = float(memory.get("used_memory", 0)), float(memory.get("maxmemory", 0))
        fams["memory_used"].add_metric([], used)
        fams["memory_max"].add_metric([], limit)
        # no maxmemory: unbounded headroom (+Inf), so a "headroom below x" alert stays quiet
        fams["memory_headroom"].add_metric([], max(0.0, 1 - used / limit) if limit else math.inf)
        shadow = stats["shadow"]
        fams["shadow"].add_metric([], 1 if shadow["enabled"] else 0)
        lag = shadow["online_to_post_seconds"]
        for q in ("p50", "p99"):
            fams["shadow_lag"].add_metric([q], math.nan if lag[q] is None else lag[q])
        for kind in AUDIT_KINDS:  # zeros included, so increase() works from the first finding
            fams["audit"].add_metric([kind], _count(audit.get(kind, "0")))
        paused = stats.get("paused")
        for reason in FAULT_SETTINGS:  # every reason, 0 or 1: an alert needs no absent series
            fams["paused"].add_metric([reason], 1 if paused and paused["reason"] == reason else 0)
        fams["presence_unreadable"].add_metric([], presence.get("unreadable", 0))
        zone = stats.get("zone")
        if zone:  # nothing before the first booking the upstream made
            fams["zone_agrees"].add_metric([zone["configured"]], 1 if zone["agrees"] else 0)
            fams["zone_observed"].add_metric([], zone["observed_offset_minutes"])
            fams["zone_configured"].add_metric([], zone["configured_offset_minutes"])
        return [up, *fams.values()]


def _up() -> GaugeMetricFamily:
    return GaugeMetricFamily("rebook_up", "1 if the exporter could read rebook's Redis, else 0")


def _families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
    """Fresh, empty metric families; one set per scrape (the collector keeps no state)."""
    return {
        "rebooks": GaugeMetricFamily(
            "rebook_rebooks", "Rebooks currently in each state", labels=["state"]
        ),
        "shadow": GaugeMetricFamily(
            "rebook_shadow", "1 in shadow mode (REBOOK_SHADOW: nothing is booked), else 0"
        ),
        "shadow_lag": GaugeMetricFamily(
            "rebook_shadow_online_to_post_seconds",
            "SHADOWED rebooks: performer seen online to the POST they would have sent",
            labels=["quantile"],
        ),
        "due_lag": GaugeMetricFamily(
            "rebook_due_lag_seconds", "How overdue the oldest record in the due index is"
        ),
        "deadletter": GaugeMetricFamily(
            "rebook_deadletter_total", "Entries in the dead-letter stream (length, not a rate)"
        ),
        "performers": GaugeMetricFamily(
            "rebook_performers_tracked", "Performers with a scheduled presence check"
        ),
        "presence_performers": GaugeMetricFamily(
            "rebook_presence_performers", "Performers with waiting rebooks (presence demand)"
        ),
        "presence_interval": GaugeMetricFamily(
            "rebook_presence_interval_seconds", "REBOOK_PRESENCE_INTERVAL_SECONDS, as configured"
        ),
        "presence_needed": GaugeMetricFamily(
            "rebook_presence_needed_calls_per_second",
            "Presence calls a second needed to poll every performer once per interval",
        ),
        "presence_budget": GaugeMetricFamily(
            "rebook_presence_budget_calls_per_second",
            "The presence share of REBOOK_UPSTREAM_RATE_PER_SECOND (+Inf: no limit)",
        ),
        "presence_achieved": GaugeMetricFamily(
            "rebook_presence_achieved_interval_seconds",
            "Mean time between two presence calls of one performer over the last 5 min, as made "
            "(NaN: none made)",
        ),
        "sweep_age": GaugeMetricFamily(
            "rebook_last_sweep_age_seconds", "Seconds since the beat sweep last ran (+Inf: never)"
        ),
        "outcomes": CounterMetricFamily(
            "rebook_outcomes", "Outcomes published, by state", labels=["state"]
        ),
        "calls": CounterMetricFamily(
            "rebook_upstream_calls",
            'Upstream calls by endpoint and outcome ("ok" or the error class)',
            labels=["endpoint", "outcome"],
        ),
        "errors": CounterMetricFamily(
            "rebook_upstream_errors", "Upstream calls that did not succeed", labels=["endpoint"]
        ),
        "audit": CounterMetricFamily(
            "rebook_audit_findings",
            "Ledger audit findings appended to {prefix}audit, by kind (each finding once)",
            labels=["kind"],
        ),
        "memory_used": GaugeMetricFamily(
            "rebook_redis_used_memory_bytes", "Memory the store Redis uses (INFO used_memory)"
        ),
        "memory_max": GaugeMetricFamily(
            "rebook_redis_maxmemory_bytes", "The store Redis's maxmemory (0: none set)"
        ),
        "memory_headroom": GaugeMetricFamily(
            "rebook_redis_memory_headroom_ratio",
            "1 - used/maxmemory of the store Redis (+Inf: no maxmemory); at 0 writes fail (OOM)",
        ),
        "paused": GaugeMetricFamily(
            "rebook_paused",
            "1 while a deployment fault (wrong OAuth client, API key, scope) pauses calls",
            labels=["reason"],
        ),
        "presence_unreadable": CounterMetricFamily(
            "rebook_presence_unreadable",
            "Presence answers that did not say whether the performer is online",
        ),
        "zone_agrees": GaugeMetricFamily(
            "rebook_zone_agrees",
            "1 if the last booking the upstream made agrees with REBOOK_API_TIMEZONE, else 0",
            labels=["configured"],
        ),
        "zone_observed": GaugeMetricFamily(
            "rebook_zone_observed_offset_minutes",
            "The upstream's UTC offset, from its last booking's CreateDate and Date header",
        ),
        "zone_configured": GaugeMetricFamily(
            "rebook_zone_configured_offset_minutes",
            "The UTC offset REBOOK_API_TIMEZONE had at that booking",
        ),
    }


def _count(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        return 0


def _merge_outcomes(raw: dict[str, int]) -> list[tuple[str, int]]:
    counts = dict.fromkeys(OUTCOME_STATES, 0)
    for state, value in raw.items():
        counts[state] = counts.get(state, 0) + value
    return sorted(counts.items())


def _upstream(
    raw: dict[str, str],
) -> tuple[list[tuple[tuple[str, str], int]], list[tuple[str, int]]]:
    """`endpoint:outcome -> n` split into calls by (endpoint, outcome) and errors by endpoint."""
    calls: dict[tuple[str, str], int] = {}
    errors: dict[str, int] = {}
    for field, value in raw.items():
        endpoint, sep, outcome = field.rpartition(":")
        if not sep or not endpoint:
            endpoint, outcome = field, "unknown"
        n = _count(value)
        calls[(endpoint, outcome)] = calls.get((endpoint, outcome), 0) + n
        errors.setdefault(endpoint, 0)
        if outcome != OK:
            errors[endpoint] += n
    return sorted(calls.items()), sorted(errors.items())


def collector(store: Store) -> Collector:
    """The collector for `store`; register it on a `CollectorRegistry`."""
    return RebookCollector(store)


def store_for(settings: Settings) -> Store:
    """A store with short socket timeouts: a scrape must answer even while Redis is away."""
    return Store.from_settings(
        settings,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        retry=no_retry(),
    )


def basic_auth(app: Any, credentials: str | None) -> Any:
    """The WSGI app behind HTTP basic auth (`user:pw[,user2:pw2]`); as is when None."""
    if not credentials:
        return app
    allowed = [base64.b64encode(pair.strip().encode()).decode() for pair in credentials.split(",")]

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = header.partition(" ")
        ok = scheme.lower() == "basic" and any(
            hmac.compare_digest(value.strip(), a) for a in allowed
        )
        if not ok:
            start_response(
                "401 Unauthorized",
                [("WWW-Authenticate", 'Basic realm="rebook"'), ("Content-Type", "text/plain")],
            )
            return [b"authentication required\n"]
        return app(environ, start_response)

    return guarded


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would drown the logs."""


def serve(
    registry: CollectorRegistry, host: str, port: int, credentials: str | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """`/metrics` (any path) on host:port in a thread; basic auth when `credentials` is set.

    prometheus_client's own `make_wsgi_app` on its `ThreadingWSGIServer`, bound as its
    `start_wsgi_server` binds (the address family from the address, so `::1` works);
    `start_wsgi_server` itself takes no WSGI middleware, and the auth is one."""
    family, *_, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    app = basic_auth(make_wsgi_app(registry), credentials)
    server = make_server(str(sockaddr[0]), port, app, Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.operations.exporter", description="Prometheus exporter for rebook."
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default 9808")
    parser.add_argument(
        "--host",
        default=None,
        help="address to bind (default REBOOK_EXPORTER_BIND, 127.0.0.1; 0.0.0.0 for all)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is out of range 0-65535")
    return args


def is_loopback(host: str) -> bool:
    """Only this machine can connect: 127.0.0.0/8, ::1 or `localhost`. Anything else (0.0.0.0,
    a name, an interface address) may be reached from the network."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_or_exit("rebook exporter")
    host = args.host or settings.exporter_bind
    auth = settings.exporter_basic_auth
    if auth is None and not is_loopback(host):
        # the metrics name workers, queues, members' counts and upstream errors: not for anyone
        print(
            f"rebook exporter: REBOOK_EXPORTER_BASIC_AUTH is not set (user:password); refusing "
            f"to serve /metrics on {host} without auth (set it, or bind 127.0.0.1)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector(store_for(settings)))
    try:
        server, _thread = serve(
            registry, host, args.port, auth.get_secret_value() if auth else None
        )
    except OSError as exc:
        print(f"rebook exporter: cannot listen on {host}:{args.port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info(
        "rebook exporter on http://%s:%s/metrics (redis %s, %s)",
        host,
        server.server_port,
        mask_url(settings.redis_url),
        "basic auth" if auth else "no auth",
    )
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop.wait(1.0):
        pass
    server.shutdown()


if __name__ == "__main__":
    main()
