"""Logging (console or JSON, secrets scrubbed), the scrubbing of Sentry events and the sweep's
check-in; Sentry itself is set up beside Celery (worker/celeryapp/sentry.py)."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from pythonjsonlogger.json import JsonFormatter as _LibJsonFormatter

from worker.core.settings import Settings

_Q = r"(?:\\?[\"'])?"  # an optional quote, maybe escaped (JSON inside a JSON string)
_SECRET_PATTERNS = [
    # Authorization: Bearer x / Basic x / any scheme; a bare "Bearer x" or "Basic x" too
    re.compile(
        r"(?i)(authorization" + _Q + r"\s*[:=]\s*" + _Q + r"(?:[A-Za-z]+\s+)?)[^\"'\s,&}\\]+"
    ),
    re.compile(r"(?i)(\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}"),
    # name=value, name: value, "name": "value" for any name ending in a secret word:
    # token, access_token, X-Api-Key, apiKey, client_secret, secret, password, passwd, ...
    re.compile(
        r"(?i)(\b[A-Za-z0-9_.-]*(?:token|secret|passw(?:or)?d|pwd|api[_-]?key|credential)"
        + _Q
        + r"\s*[:=]\s*"
        + _Q
        + r")[^\"'\s,&}\\]+"
    ),
]
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s\"']*:)[^@\s/\"']+(@)")
"""A password in a URL (redis://user:pw@host, amqp://..., https://...)."""
_secret_values: set[str] = set()


CONTEXT_FIELDS = ("rebook_id", "event_id", "booking_id", "performer_id", "task_id")
_context: ContextVar[dict[str, Any]] = ContextVar("rebook_log_context", default={})  # noqa: B039


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Every log line written inside carries these fields (ids only, never secrets)."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def bind_task(task_id: str | None) -> None:
    """Called by Celery's task_prerun/postrun signals: the task id on every line of a step."""
    _context.set({"task_id": task_id} if task_id else {})


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        for name in CONTEXT_FIELDS:
            setattr(record, name, ctx.get(name))
        record.context = " ".join(f"{k}={ctx[k]}" for k in CONTEXT_FIELDS if ctx.get(k) is not None)
        return True


def register_secret(value: str | None) -> None:
    """A literal value that must never reach a log line or a Sentry event."""
    if value and len(value) >= 6:
        _secret_values.add(value)


class LiteralIndex:
    """Literal secrets of members (their tokens), found in one pass over a text however many
    there are: each is indexed by its first `HEAD` characters, so a text costs one dictionary
    lookup per position, not one search per secret. Bounded: past `limit` the least recently
    registered is forgotten (a member whose pair was loaded long ago is not in any text now)."""

    HEAD = 8

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._order: OrderedDict[str, None] = OrderedDict()
        self._by_head: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._order)

    def add(self, value: str) -> None:
        if len(value) < self.HEAD:
            return
        with self._lock:
            if value in self._order:
                self._order.move_to_end(value)
                return
            self._order[value] = None
            self._by_head.setdefault(value[: self.HEAD], set()).add(value)
            while len(self._order) > self.limit:
                old, _ = self._order.popitem(last=False)
                bucket = self._by_head.get(old[: self.HEAD])
                if bucket is not None:
                    bucket.discard(old)
                    if not bucket:
                        del self._by_head[old[: self.HEAD]]

    def redact(self, text: str) -> str:
        heads, size = self._by_head, self.HEAD
        if not heads or len(text) < size:
            return text
        found: set[str] = set()
        for i in range(len(text) - size + 1):
            bucket = heads.get(text[i : i + size])
            if bucket:
                found.update(v for v in tuple(bucket) if text.startswith(v, i))
        for value in sorted(found, key=len, reverse=True):
            text = text.replace(value, "[redacted]")
        return text


MEMBER_SECRETS_MAX = 20_000
"""Member tokens the scrubber keeps (two per member: the 10,000 members loaded most recently);
about 3 MB at most. An error that echoes a token comes from a call made with it, in the process
that loaded it shortly before, so the most recent ones are those that matter."""
_member_secrets = LiteralIndex(MEMBER_SECRETS_MAX)


def register_token(*values: str | None) -> None:
    """A member's token (access or refresh), kept literally so that an upstream or OAuth error
    echoing it ("refresh token ... is invalid") is redacted like any secret. Called whenever a
    pair is loaded or stored; the registry is bounded (`MEMBER_SECRETS_MAX`)."""
    for value in values:
        if value:
            _member_secrets.add(value)


def register_settings_secrets(settings: Settings) -> None:
    for secret in (
        settings.api_key,
        settings.oauth_client_secret,
        settings.token_key,
        settings.token_keys,
        settings.webhook_secret,
        settings.flower_basic_auth,
        settings.sentry_dsn,
    ):
        if secret is not None:
            register_secret(secret.get_secret_value())
    for key in settings.token_key_list:  # each key of REBOOK_TOKEN_KEYS alone
        register_secret(key)
    for auth in (settings.flower_basic_auth, settings.exporter_basic_auth):
        if auth is not None:  # user1:pw1,user2:pw2: each password alone
            register_secret(auth.get_secret_value())
            for pair in auth.get_secret_value().split(","):
                register_secret(pair.partition(":")[2])
    for url in (settings.redis_url, settings.broker_url):
        if url:
            register_secret(urlsplit(url).password)


def scrub(text: str) -> str:
    for value in _secret_values:
        if value in text:
            text = text.replace(value, "[redacted]")
    text = _member_secrets.redact(text)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1[redacted]", text)
    return _URL_PASSWORD.sub(r"\1[redacted]\2", text)


class ScrubFilter(logging.Filter):
    """Renders the message early and scrubs it, so no handler ever sees a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the line
            message = str(record.msg)
        record.msg = scrub(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


JSON_FIELDS = ("ts", "level", "logger", "msg", "process", *CONTEXT_FIELDS, "exc")
"""A JSON line's fields, in this order; a field without a value is left out."""


class JsonFormatter(_LibJsonFormatter):
    """One JSON object per line, from python-json-logger (README "Logs"). It sees the record
    after `ScrubFilter`; only `JSON_FIELDS` are written, never a record's other attributes: an
    `extra=` (Celery logs each task's `data`, its args) would reach the line unscrubbed."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s %(processName)s",
            rename_fields={
                "levelname": "level",
                "name": "logger",
                "message": "msg",
                "processName": "process",
                "exc_info": "exc",
            },
            timestamp="ts",
            json_ensure_ascii=False,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        log_data["ts"] = log_data["ts"].isoformat(timespec="milliseconds")
        log_data["level"] = str(log_data["level"]).lower()
        return {k: log_data[k] for k in JSON_FIELDS if log_data.get(k) is not None}


def configure_logging(settings: Settings, stream: Any = None) -> None:
    """Replaces the root handlers; Celery is told to leave logging to us (setup_logging signal)."""
    register_settings_secrets(settings)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(ScrubFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-7s %(name)s [%(processName)s] %(message)s  %(context)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("urllib3", "requests", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def scrub_event(event: Any, hint: Any) -> Any:
    """Sentry's before_send and before_breadcrumb (worker/celeryapp/sentry.py): scrubs every
    string of an event or breadcrumb (messages, frames' vars, request)."""

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return scrub(value)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(event)


HEARTBEAT_SECONDS = 60


def sweep_heartbeat(claim: Callable[[], bool]) -> bool:
    """A Sentry cron check-in for the sweep at most once a minute (across all workers, through
    `claim`), so a dead beat shows up in Sentry as a missed check-in."""
    import sentry_sdk
    from sentry_sdk.crons import capture_checkin

    if not sentry_sdk.is_initialized() or not claim():
        return False
    capture_checkin(
        monitor_slug="rebook-sweep",
        status="ok",
        monitor_config={
            "schedule": {"type": "interval", "value": 1, "unit": "minute"},
            "checkin_margin": 2,
            "max_runtime": 1,
        },
    )
    return True
