"""Flower for `worker.app:app`, with basic auth on every page including `/metrics`.

`python -m worker.operations.flower [--port P] [--local]`

Why a launcher and not `celery -A worker flower --basic-auth=...`: stock Flower checks basic auth
only in handlers decorated with `@web.authenticated`; its `/metrics` handler is not, so it serves
Prometheus data (task names, worker host names, queue sizes) to anyone even with basic auth on.
Before Flower's tornado application is built we swap the `/metrics` route for a subclass whose
`prepare()` asks Flower's own `get_current_user()` (the same constant-time basic-auth check the UI
and API use) and answers 401 otherwise. `/healthcheck` stays open for load balancers.

Credentials come from `REBOOK_FLOWER_BASIC_AUTH` (`user:password`, comma-separated for several)
and are handed to Flower inside this process, never on a command line that `ps` would show.
Without them the launcher refuses to start, unless told it is local (`--local` or
`REBOOK_FLOWER_LOCAL=1`), and then it binds 127.0.0.1 only. With them it binds 127.0.0.1 too
unless `FLOWER_ADDRESS` names another address (`0.0.0.0` in a container): Flower alone would
listen on every interface. Everything else Flower offers
(`FLOWER_*` variables, `flowerconfig.py`) still works; the settings given here win.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

DEFAULT_PORT = 5555
LOCAL_ADDRESS = "127.0.0.1"
METRICS_ROUTE = r"/metrics"


def _fail(message: str) -> NoReturn:
    print(f"rebook flower: {message}", file=sys.stderr)
    raise SystemExit(2)


def close_metrics() -> None:
    """Replaces Flower's open `/metrics` route by one that requires Flower's own auth.

    `flower.app.Flower` builds its application from the module-level list `flower.urls.handlers`
    (imported by reference), so replacing the entry in place is enough and touches nothing else.
    If a future Flower moves the route, start-up fails rather than silently serving it open.
    """
    import tornado.web
    from flower import urls
    from flower.views import monitor

    class AuthenticatedMetrics(monitor.Metrics):
        """Flower's metrics handler behind the same check as every other page."""

        def prepare(self) -> None:
            # get_current_user() raises HTTPError(401) on missing or wrong basic-auth
            # credentials; it returns None when OAuth (`--auth`) is on and there is no session.
            if not self.current_user:
                raise tornado.web.HTTPError(401)

    for index, handler in enumerate(urls.handlers):
        if isinstance(handler, tuple) and handler[0] == METRICS_ROUTE:
            if not issubclass(handler[1], AuthenticatedMetrics):
                urls.handlers[index] = (METRICS_ROUTE, AuthenticatedMetrics, *handler[2:])
            return
    raise RuntimeError(f"Flower has no {METRICS_ROUTE} route to protect; check its version")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.operations.flower",
        description="Flower for rebook, with basic auth on every page including /metrics.",
    )
    parser.add_argument("--port", type=int, default=None, help="default $PORT, else 5555")
    parser.add_argument(
        "--local",
        action="store_true",
        default=os.environ.get("REBOOK_FLOWER_LOCAL", "").strip().lower() in {"1", "true", "yes"},
        help="allow running without REBOOK_FLOWER_BASIC_AUTH; binds 127.0.0.1 only "
        "(also REBOOK_FLOWER_LOCAL=1)",
    )
    return parser.parse_args(argv)


def resolve_port(arg: int | None) -> int:
    """`--port`, else `$PORT` (Procfile platforms), else 5555."""
    if arg is not None:
        port = arg
    else:
        raw = os.environ.get("PORT", "").strip()
        if not raw:
            return DEFAULT_PORT
        try:
            port = int(raw)
        except ValueError:
            _fail(f"PORT: expected a port number, got {raw!r}")
    if not 0 <= port <= 65535:
        _fail(f"port {port} is out of range 0-65535")
    return port


def flower_argv(
    port: int, basic_auth: str | None, local: bool, address: str | None = None
) -> list[str]:
    """Arguments for `celery -A worker.app:app flower ...` (parsed in-process, never exec'd).
    `address`: where to listen when not `local` (None: `FLOWER_ADDRESS` decides, as Flower reads
    it; see `resolve_address`)."""
    args = [
        "-A",
        "worker.app:app",
        "flower",
        f"--port={port}",
        "--enable_events=True",  # periodically re-enables events on workers started without -E
    ]
    if local:
        args.append(f"--address={LOCAL_ADDRESS}")
    elif address is not None:
        args.append(f"--address={address}")
    if basic_auth:
        args.append(f"--basic_auth={basic_auth}")
    return args


def resolve_address() -> str | None:
    """127.0.0.1 unless `FLOWER_ADDRESS` says otherwise (`0.0.0.0` in a container behind its
    Service or published port): Flower's own default is every interface, which a Procfile host
    would put on the network. None: the variable is set, Flower reads it itself."""
    return None if "FLOWER_ADDRESS" in os.environ else LOCAL_ADDRESS


def main(argv: list[str] | None = None) -> None:
    from worker.core.settings import settings_or_exit

    args = parse_args(argv)
    settings = settings_or_exit("rebook flower")
    auth = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else None
    if auth is None and not args.local:
        _fail(
            "REBOOK_FLOWER_BASIC_AUTH is not set (user:password); refusing to serve Flower "
            "without auth (use --local or REBOOK_FLOWER_LOCAL=1 to bind 127.0.0.1 without it)"
        )
    port = resolve_port(args.port)

    from celery.bin.celery import celery as celery_cli
    from flower.command import flower as flower_command

    close_metrics()
    from worker.operations.console import install

    install()  # /rebooks, /api/rebooks and the navbar link, behind the same auth
    celery_cli.add_command(flower_command)
    cli: Any = celery_cli
    cli.main(
        args=flower_argv(port, auth, args.local, resolve_address()),
        prog_name="celery",
        auto_envvar_prefix="CELERY",
    )


if __name__ == "__main__":
    main()
