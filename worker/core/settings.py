"""Settings from the environment (`REBOOK_*`) and `.env`, validated once at start-up.

A bad value must stop a process before it touches a message, with one line naming the variable:
`load_settings()` turns pydantic's multi-line report into :class:`ConfigError`.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.core.errors import ConfigError
from worker.core.redis_tls import refuse_weak_tls, tls_options

ENV_PREFIX = "REBOOK_"
#: The documented hosts (README "The upstream"): the API, and OAuth on the platform host.
PRODUCTION_API_URL = "https://api.adultwork.com"
PRODUCTION_TOKEN_URL = "https://platform.adultwork.com/OAuth/token"


# Checks of one value each, as module-level functions bound to the fields' types below: the
# class keeps the names and defaults; a ValueError here becomes the one line `REBOOK_NAME: msg`.

_URL_SCHEMES = {"redis", "rediss", "unix", "sentinel", "amqp", "amqps", "pyamqp", "memory"}


def _broker_url(value: str | None) -> str | None:
    if not value:
        return None  # REBOOK_BROKER_URL falls back to REBOOK_REDIS_URL
    scheme = urlsplit(value).scheme
    if scheme not in _URL_SCHEMES:
        raise ValueError(f"expected a redis:// or amqp:// URL, got scheme {scheme!r}")
    return refuse_weak_tls(value)  # `?ssl_cert_reqs=none` would win over our checks


def _store_url(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return str(_broker_url(value))


def _readable_file(value: str | None) -> str | None:
    if not value:
        return None
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise ValueError(f"{value}: not a readable file")
    return value


def _basic_auth(hint: str) -> Callable[[SecretStr | None], SecretStr | None]:
    def check(value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        for pair in value.get_secret_value().split(","):
            user, sep, password = pair.partition(":")
            if not sep or not user or not password:
                raise ValueError(hint)
        return value

    return check


def _optional_http_url(value: str | None) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"expected an http(s) URL, got {mask_url(value)!r}")
    return value.rstrip("/")


def _http_url(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return str(_optional_http_url(value))


def _host_root(value: str) -> str:
    root = _http_url(value)
    if root.lower().endswith("/v1"):
        raise ValueError("give the host root, without /v1")
    return root


def _not_blank(value: object) -> object:
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(raw, str) and not raw.strip():
        raise ValueError("must not be empty")
    return value


def _header_name(value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ValueError("must be an HTTP header name (letters, digits, -)")
    return value


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


def _fernet(value: SecretStr | None) -> SecretStr | None:
    if value is None or not value.get_secret_value().strip(" ,"):
        return None
    from cryptography.fernet import Fernet

    for i, key in enumerate(_split_keys(value.get_secret_value()), start=1):
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            raise ValueError(
                f"key {i} is not a Fernet key (32 url-safe base64 bytes); make one with "
                "`rebook tokens keygen`"
            ) from None
    return value


def _level(value: str) -> str:
    level = value.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def _prefix(value: str) -> str:
    if not value or any(ch.isspace() for ch in value):
        raise ValueError("must be non-empty with no spaces")
    return value


_Required = BeforeValidator(_not_blank)
_ReadableFile = Annotated[str | None, AfterValidator(_readable_file)]
_FernetKeys = Annotated[SecretStr | None, AfterValidator(_fernet)]


class Settings(BaseSettings):
    """Every knob of rebook. Names are public interface (docs/interface.md "Settings")."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        populate_by_name=True,  # `load_settings(sentry_dsn=...)` beside the aliased env names
    )

    redis_url: Annotated[str, AfterValidator(_store_url)] = "redis://localhost:6379/0"
    redis_cluster: bool = False
    shards: int = Field(1, ge=1, le=1024)
    broker_url: Annotated[str | None, AfterValidator(_broker_url)] = None
    redis_sentinel_master: str | None = None
    """REBOOK_REDIS_SENTINEL_MASTER: the service name the sentinels monitor; needed when
    REBOOK_REDIS_URL (or REBOOK_BROKER_URL) is `sentinel://h1:26379;sentinel://h2:26379;...`."""
    redis_ca_file: _ReadableFile = None
    """REBOOK_REDIS_CA_FILE: CA bundle that signs the server certificate of a `rediss://` store
    or broker (default: the system's). Certificates are always verified, hostnames too."""
    redis_cert_file: _ReadableFile = None
    """REBOOK_REDIS_CERT_FILE / REBOOK_REDIS_KEY_FILE: a client certificate (mutual TLS)."""
    redis_key_file: _ReadableFile = None
    exporter_bind: str = "127.0.0.1"
    """REBOOK_EXPORTER_BIND: the exporter's listen address (0.0.0.0 to expose it)."""
    exporter_basic_auth: Annotated[
        SecretStr | None, AfterValidator(_basic_auth("expected user:password[,user:password]"))
    ] = None
    """REBOOK_EXPORTER_BASIC_AUTH: `user:password[,user2:password2]` the exporter requires."""
    broker_key_prefix: str = ""
    key_prefix: Annotated[str, AfterValidator(_prefix)] = "rebook:"

    # The production upstream; nothing talks to it by accident: the key and the OAuth client
    # have no defaults (`rebook sandbox` prints the variables for the local sandbox).
    api_base_url: Annotated[str, AfterValidator(_host_root)] = PRODUCTION_API_URL
    api_key: Annotated[SecretStr, _Required]
    api_key_in: Literal["header", "query"] = "header"
    api_key_header: Annotated[str, AfterValidator(_header_name)] = "apiKey"
    api_timezone: Annotated[str, AfterValidator(_zone)] = "Europe/London"
    zone_tolerance_seconds: float = Field(300.0, gt=0)
    oauth_token_url: Annotated[str, AfterValidator(_http_url)] = PRODUCTION_TOKEN_URL
    oauth_client_id: Annotated[str, _Required]
    oauth_client_secret: Annotated[SecretStr, _Required]
    token_key: _FernetKeys = None
    token_keys: _FernetKeys = None
    """REBOOK_TOKEN_KEYS: comma-separated Fernet keys, the newest first (it encrypts), the older
    ones still read: a rolling key rotation. REBOOK_TOKEN_KEY, if also set, is read too."""
    token_refresh_margin_seconds: float = Field(60.0, ge=0)
    refresh_token_lifetime_seconds: float = Field(14 * 86400.0, gt=0)
    token_keepalive_before_seconds: float = Field(3 * 86400.0, gt=0)
    token_keepalive_interval_seconds: float = Field(300.0, gt=0)
    token_keepalive_batch: int = Field(200, ge=1, le=100_000)
    audit_interval_seconds: float = Field(900.0, gt=0)
    """REBOOK_AUDIT_INTERVAL_SECONDS: how often beat runs the ledger audit (`rebook.audit`)."""
    audit_window_seconds: float = Field(172800.0, gt=0)
    """REBOOK_AUDIT_WINDOW_SECONDS: the audit checks the members with a rebook received within
    this long."""

    presence_interval_seconds: float = Field(30.0, gt=0)
    watch_interval_seconds: float = Field(30.0, gt=0)
    sweep_interval_seconds: float = Field(2.0, gt=0)
    sweep_batch: int = Field(1000, ge=1, le=100_000)
    max_wait_seconds: int = Field(43200, ge=1, le=7 * 86400)
    step_lease_seconds: float = Field(60.0, gt=0)
    http_timeout_seconds: float = Field(10.0, gt=0)
    http_deadline_seconds: float | None = Field(None, gt=0)
    """REBOOK_HTTP_DEADLINE_SECONDS: the total of one upstream request — connect, headers and
    body — however slowly the server answers (default 2 x REBOOK_HTTP_TIMEOUT_SECONDS; at least
    the timeout, below the step lease). Read it as `call_bound_seconds`."""
    upstream_rate_per_second: float = Field(20.0, ge=0)
    retry_base_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float = Field(300.0, gt=0)
    reconcile_grace_seconds: float = Field(5.0, ge=0)
    reconcile_window_seconds: float = Field(120.0, gt=0)
    reconcile_proof_reads: int = Field(3, ge=1, le=20)
    reconcile_max_seconds: float = Field(1800.0, gt=0)
    reconcile_lookback_seconds: float = Field(3 * 3600.0, ge=0)
    reconcile_max_tries: int = Field(5, ge=1)
    reschedule_max_attempts: int = Field(5, ge=1)
    gate_max_wait_seconds: float = Field(900.0, gt=0)
    shared_read_seconds: float = Field(10.0, ge=0, le=60)
    """REBOOK_SHARED_READ_SECONDS: how long one read of a member's bookings before a POST may
    serve that member's later POSTs in the same worker process (README "Exactly one booking",
    the read before a POST); 0 reads before every POST."""
    pause_probe_seconds: float = Field(30.0, gt=0)
    """REBOOK_PAUSE_PROBE_SECONDS: while a deployment fault (wrong client, key, scope) pauses
    calls, one call per this interval across all workers goes out as the probe."""
    max_rebooks_per_member_per_day: int | None = Field(None, ge=1)
    """REBOOK_MAX_REBOOKS_PER_MEMBER_PER_DAY: POSTs per member per UTC day; past it a rebook
    parks `member_cap` before any POST (unset: no cap)."""
    made_bookings_list_names: str = "WebcamBookings,MadeBookings,Bookings,WebcamMadeBookings"
    redis_wait_replicas: int = Field(0, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(1000, ge=1, le=60_000)

    auto_confirm: bool = False
    shadow: bool = False
    """REBOOK_SHADOW: everything runs but no Reschedule/Confirm/Cancel is sent (README
    "Shadow mode"); a rebook that would have been POSTed ends SHADOWED."""
    # Sentry's own variables (what its SDK and every other service read) when the REBOOK_ ones
    # are unset; REBOOK_ wins when both are set.
    sentry_dsn: SecretStr | None = Field(
        None, validation_alias=AliasChoices("REBOOK_SENTRY_DSN", "SENTRY_DSN")
    )
    sentry_environment: str = Field(
        "production",
        validation_alias=AliasChoices("REBOOK_SENTRY_ENVIRONMENT", "SENTRY_ENVIRONMENT"),
    )
    flower_basic_auth: Annotated[
        SecretStr | None,
        AfterValidator(_basic_auth("expected user:password (comma-separated for several)")),
    ] = None
    retention_days: float = Field(14.0, gt=0)
    deadletter_max_entries: int = Field(100_000, ge=100)
    token_ttl_days: float = Field(90.0, ge=0)
    outcome_task: str | None = None
    outcome_queue: str = "rebook.outcomes"
    webhook_url: Annotated[str | None, AfterValidator(_optional_http_url)] = None
    webhook_secret: SecretStr | None = None
    fanout_max_attempts: int = Field(12, ge=1)
    beat_scheduler: Literal["default", "redbeat"] = "default"
    log_format: Literal["console", "json"] = "console"
    log_level: Annotated[str, AfterValidator(_level)] = "INFO"

    @model_validator(mode="after")
    def _relations(self) -> Settings:
        _check_relations(self)
        return self

    def redis_ssl_options(self, url: str) -> dict[str, Any]:
        """redis-py options for a `rediss://` URL: the server certificate and hostname are
        verified (never a silent fallback to no check), with the CA and client certificate the
        settings name. Empty for any other URL."""
        return tls_options(
            url,
            ca_file=self.redis_ca_file,
            cert_file=self.redis_cert_file,
            key_file=self.redis_key_file,
        )

    def broker_ssl_options(self) -> dict[str, Any] | None:
        """kombu's `broker_use_ssl` for a `rediss://` broker (the same verification)."""
        options = self.redis_ssl_options(self.broker)
        if not options:
            return None
        import ssl

        # a dict: kombu copies it into redis-py's SSLConnection (with `ssl=True` alone it would
        # fall back to a plain connection)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        return options

    @property
    def token_key_list(self) -> list[str]:
        """Every token key, the one that encrypts first: REBOOK_TOKEN_KEYS in order, then
        REBOOK_TOKEN_KEY unless already listed. Empty when neither is set."""
        keys = _split_keys(self.token_keys.get_secret_value()) if self.token_keys else []
        if self.token_key is not None and self.token_key.get_secret_value() not in keys:
            keys.append(self.token_key.get_secret_value())
        return keys

    @property
    def limiter_max_wait(self) -> float:
        """Longest wait of a call in the shared rate limiter before it gives up (Throttled)."""
        if self.upstream_rate_per_second <= 0:
            return 0.0
        return self.step_lease_seconds / 4

    @property
    def call_bound_seconds(self) -> float:
        """How long a request may be in flight once sent: its total deadline."""
        if self.http_deadline_seconds is None:  # only before validation
            return 2 * self.http_timeout_seconds
        return self.http_deadline_seconds

    @property
    def replica_wait_seconds(self) -> float:
        """How long the POST may wait for replicas to have its mark (`WAIT`) before sending."""
        return self.redis_wait_timeout_ms / 1000 if self.redis_wait_replicas else 0.0

    @property
    def send_bound_seconds(self) -> float:
        """From "POST sent" to the latest moment the request can still be in flight."""
        return self.replica_wait_seconds + self.call_bound_seconds + 1.0

    @property
    def longest_call_seconds(self) -> float:
        """One upstream call of a step, rate-limit wait included; a step's lease is extended
        to this before each call, so the lease must be at least as long."""
        return self.limiter_max_wait + self.send_bound_seconds

    @property
    def list_names(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.made_bookings_list_names.split(",") if n.strip())

    @property
    def fanout_enabled(self) -> bool:
        return bool(self.outcome_task or self.webhook_url)

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def token_url(self) -> str:
        return self.oauth_token_url

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.api_timezone)

    @property
    def retention_seconds(self) -> int:
        return int(self.retention_days * 86400)


def _check_relations(s: Settings) -> None:
    """The checks that read two settings or more (and the defaults that depend on another)."""
    if s.retry_max_seconds < s.retry_base_seconds:
        raise ValueError("REBOOK_RETRY_MAX_SECONDS must be >= REBOOK_RETRY_BASE_SECONDS")
    if s.redis_cluster and not s.broker_url:
        raise ValueError(
            "REBOOK_BROKER_URL must be set when REBOOK_REDIS_CLUSTER is on "
            "(Celery's Redis broker cannot use a cluster)"
        )
    if s.redis_cluster and s.shards == 1:
        s.shards = 16  # spread the rebooks over the cluster's nodes
    uses_sentinel = any(u.startswith("sentinel://") for u in (s.redis_url, s.broker_url or ""))
    if uses_sentinel and not s.redis_sentinel_master:
        raise ValueError(
            "REBOOK_REDIS_SENTINEL_MASTER must be set for a sentinel:// REBOOK_REDIS_URL "
            "or REBOOK_BROKER_URL (the service name the sentinels monitor)"
        )
    if s.webhook_url and s.webhook_secret is None:
        raise ValueError("REBOOK_WEBHOOK_SECRET must be set when REBOOK_WEBHOOK_URL is")
    if s.http_deadline_seconds is None:
        s.http_deadline_seconds = 2 * s.http_timeout_seconds
    if s.http_deadline_seconds < s.http_timeout_seconds:
        raise ValueError(
            "REBOOK_HTTP_DEADLINE_SECONDS: must be at least REBOOK_HTTP_TIMEOUT_SECONDS "
            f"({s.http_timeout_seconds:g} s): a connect alone may take that long"
        )
    if s.http_deadline_seconds >= s.step_lease_seconds:
        raise ValueError(
            "REBOOK_HTTP_DEADLINE_SECONDS: must be below REBOOK_STEP_LEASE_SECONDS "
            f"({s.step_lease_seconds:g} s): a request must end while its step holds "
            "the rebook"
        )
    if s.step_lease_seconds < s.longest_call_seconds:
        raise ValueError(
            f"REBOOK_STEP_LEASE_SECONDS must cover the longest upstream call: at least "
            f"{s.longest_call_seconds:g} s (rate-limit wait {s.limiter_max_wait:g} s "
            f"+ replica wait {s.replica_wait_seconds:g} s + the request's deadline "
            "REBOOK_HTTP_DEADLINE_SECONDS + 1 s)"
        )
    if s.reconcile_window_seconds < s.reconcile_grace_seconds:
        raise ValueError(
            "REBOOK_RECONCILE_WINDOW_SECONDS must be >= REBOOK_RECONCILE_GRACE_SECONDS"
        )
    if s.reconcile_max_seconds < s.reconcile_window_seconds:
        raise ValueError("REBOOK_RECONCILE_MAX_SECONDS must be >= REBOOK_RECONCILE_WINDOW_SECONDS")
    if not s.list_names:
        raise ValueError("REBOOK_MADE_BOOKINGS_LIST_NAMES: give at least one name")
    if s.token_keepalive_before_seconds >= s.refresh_token_lifetime_seconds:
        raise ValueError(
            "REBOOK_TOKEN_KEEPALIVE_BEFORE_SECONDS must be < REBOOK_REFRESH_TOKEN_LIFETIME_SECONDS"
        )


def _one_line(exc: ValidationError) -> str:
    """First error as `REBOOK_NAME: message` — what a person needs to fix it; settings that are
    missing come first, all of them on the one line."""
    missing = [
        f"{ENV_PREFIX}{str(err['loc'][0]).upper()}"
        for err in exc.errors()
        if err.get("type") == "missing" and err.get("loc")
    ]
    if missing:
        return f"{', '.join(missing)}: required, not set"
    err = exc.errors()[0]
    loc = [str(part) for part in err.get("loc", ()) if part != "__root__"]
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if loc:  # a field's name, or the alias it was read under (REBOOK_SENTRY_DSN, SENTRY_DSN)
        name = loc[0] if loc[0].isupper() else f"{ENV_PREFIX}{loc[0].upper()}"
        return f"{name}: {msg}"
    return msg if msg.startswith(ENV_PREFIX) else f"settings: {msg}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, or :class:`ConfigError` with one line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def settings_or_exit(program: str = "rebook") -> Settings:
    """For process entry points: the settings, or one line on stderr and exit status 2."""
    try:
        return get_settings()
    except ConfigError as exc:
        print(f"{program}: bad setting: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call `get_settings.cache_clear()`)."""
    return load_settings()


_SECRET_PARAM = re.compile(r"(?i)(^|&)((?:api_?key|access_token|token|secret)[^=&]*=)[^&]*")


def mask_url(url: str) -> str:
    """URL with its password and any API key or token in its query replaced, for messages a
    person reads (`REBOOK_API_KEY_IN=query` puts the key in every request's URL)."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    if parts.query:
        parts = parts._replace(query=_SECRET_PARAM.sub(r"\1\2***", parts.query))
    return urlunsplit(parts)


def _split_keys(value: str) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()]


def sentinel_hosts(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """`sentinel://[user:pw@]h1:26379[/db];sentinel://h2:26379;...` (kombu's form) as the
    sentinels' addresses and the options of the master's connections (password, db)."""
    hosts: list[tuple[str, int]] = []
    options: dict[str, Any] = {}
    for part in url.split(";"):
        part = part.strip()
        if not part:
            continue
        split = urlsplit(part)
        hosts.append((split.hostname or "localhost", split.port or 26379))
        if split.password:
            options["password"] = split.password
        if split.username:
            options["username"] = split.username
        db = split.path.strip("/")
        if db.isdigit():
            options["db"] = int(db)
    return hosts, options
