"""Settings (README "Settings"): defaults, the REBOOK_ environment, one-line errors, secrets."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from worker.core.errors import ConfigError
from worker.core.settings import Settings, get_settings, load_settings, mask_url

REPO = Path(__file__).resolve().parents[2]
#: The settings with no default (README "Settings"): set for every test but the ones about them.
REQUIRED_ENV = {
    "REBOOK_API_KEY": "k-required",
    "REBOOK_OAUTH_CLIENT_ID": "cid-required",
    "REBOOK_OAUTH_CLIENT_SECRET": "cs-required",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No REBOOK_* from the caller's shell and no `.env` from the working directory; only the
    settings that have no default."""
    for name in list(os.environ):
        if name.upper().startswith("REBOOK_"):
            monkeypatch.delenv(name)
    for name, value in REQUIRED_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def config_error(**env: str) -> str:
    mp = pytest.MonkeyPatch()
    try:
        for name, value in env.items():
            mp.setenv(name, value)
        with pytest.raises(ConfigError) as info:
            load_settings()
    finally:
        mp.undo()
    return str(info.value)


# --- defaults ------------------------------------------------------------------------------------


def test_defaults_match_design() -> None:
    s = load_settings()
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.broker_url is None
    assert s.broker == s.redis_url
    assert s.api_key_header == "apiKey"
    assert s.api_timezone == "Europe/London"
    assert s.zone.key == "Europe/London"
    assert s.presence_interval_seconds == 30
    assert s.watch_interval_seconds == 30
    assert s.sweep_interval_seconds == 2
    assert s.max_wait_seconds == 43200
    assert s.http_timeout_seconds == 10
    assert s.auto_confirm is False
    assert s.key_prefix == "rebook:"
    assert s.log_format == "console"
    # production, as documented: the API host, and OAuth on the platform host
    assert s.api_base_url == "https://api.adultwork.com"
    assert s.token_url == "https://platform.adultwork.com/OAuth/token"
    assert s.api_key_in == "header"
    for optional in (
        "sentry_dsn",
        "flower_basic_auth",
        "outcome_task",
        "webhook_url",
        "webhook_secret",
    ):
        assert getattr(s, optional) is None, optional
    assert s.upstream_rate_per_second == 20.0  # README "Settings": calls/s for all workers
    assert s.retention_days == 14
    assert s.retention_seconds == int(s.retention_days * 86400)


def test_intervals_are_floats() -> None:
    s = load_settings(
        presence_interval_seconds=0.25, watch_interval_seconds=0.1, sweep_interval_seconds=0.05
    )
    assert (
        s.presence_interval_seconds,
        s.watch_interval_seconds,
        s.sweep_interval_seconds,
    ) == (0.25, 0.1, 0.05)
    for name in ("presence_interval_seconds", "watch_interval_seconds", "sweep_interval_seconds"):
        assert isinstance(getattr(s, name), float)


# --- the environment -----------------------------------------------------------------------------


def test_env_vars_with_the_prefix_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key().decode()
    env = {
        "REBOOK_REDIS_URL": "redis://redis.internal:6380/3",
        "REBOOK_BROKER_URL": "amqp://guest:guest@mq//",
        "REBOOK_API_BASE_URL": "https://api.example.com/",
        "REBOOK_API_KEY": "k-123",
        "REBOOK_API_KEY_HEADER": "X-Api-Key",
        "REBOOK_OAUTH_TOKEN_URL": "https://auth.example.com/OAuth/token",
        "REBOOK_OAUTH_CLIENT_ID": "cid",
        "REBOOK_OAUTH_CLIENT_SECRET": "csecret",
        "REBOOK_TOKEN_KEY": key,
        "REBOOK_API_TIMEZONE": "America/New_York",
        "REBOOK_PRESENCE_INTERVAL_SECONDS": "0.5",
        "REBOOK_WATCH_INTERVAL_SECONDS": "7.5",
        "REBOOK_SWEEP_INTERVAL_SECONDS": "0.2",
        "REBOOK_MAX_WAIT_SECONDS": "600",
        "REBOOK_HTTP_TIMEOUT_SECONDS": "3",
        "REBOOK_UPSTREAM_RATE_PER_SECOND": "5",
        "REBOOK_AUTO_CONFIRM": "true",
        "REBOOK_SENTRY_DSN": "https://pub@sentry.example.com/1",
        "REBOOK_SENTRY_ENVIRONMENT": "staging",
        "REBOOK_FLOWER_BASIC_AUTH": "admin:pw,ops:pw2",
        "REBOOK_KEY_PREFIX": "rb2:",
        "REBOOK_RETENTION_DAYS": "2",
        "REBOOK_OUTCOME_TASK": "billing.rebook_outcome",
        "REBOOK_WEBHOOK_URL": "https://hooks.example.com/rebook",
        "REBOOK_WEBHOOK_SECRET": "whsec",
        "REBOOK_LOG_FORMAT": "json",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.redis_url == "redis://redis.internal:6380/3"
    assert s.broker == "amqp://guest:guest@mq//"
    assert s.api_base_url == "https://api.example.com"  # trailing slash dropped
    assert s.api_key.get_secret_value() == "k-123"
    assert s.api_key_header == "X-Api-Key"
    assert s.token_url == "https://auth.example.com/OAuth/token"
    assert s.oauth_client_id == "cid"
    assert s.oauth_client_secret.get_secret_value() == "csecret"
    assert s.token_key is not None and s.token_key.get_secret_value() == key
    assert s.zone.key == "America/New_York"
    assert s.presence_interval_seconds == 0.5
    assert s.watch_interval_seconds == 7.5
    assert s.sweep_interval_seconds == 0.2
    assert s.max_wait_seconds == 600
    assert s.http_timeout_seconds == 3
    assert s.upstream_rate_per_second == 5
    assert s.auto_confirm is True
    assert s.sentry_dsn is not None
    assert s.sentry_environment == "staging"
    assert s.flower_basic_auth is not None
    assert s.key_prefix == "rb2:"
    assert s.retention_seconds == 2 * 86400
    assert s.outcome_task == "billing.rebook_outcome"
    assert s.webhook_url == "https://hooks.example.com/rebook"
    assert s.webhook_secret is not None and s.webhook_secret.get_secret_value() == "whsec"
    assert s.log_format == "json"


def test_unprefixed_names_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY_PREFIX", "nope:")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:1/0")
    s = load_settings()
    assert s.key_prefix == "rebook:"
    assert s.redis_url == "redis://localhost:6379/0"


def test_dotenv_is_read_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "REBOOK_KEY_PREFIX=dotenv:\nREBOOK_WATCH_INTERVAL_SECONDS=4.5\n", encoding="utf-8"
    )
    s = load_settings()
    assert s.key_prefix == "dotenv:" and s.watch_interval_seconds == 4.5
    monkeypatch.setenv("REBOOK_KEY_PREFIX", "env:")
    assert load_settings().key_prefix == "env:"


def test_get_settings_is_cached_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REBOOK_KEY_PREFIX", "one:")
    assert get_settings().key_prefix == "one:"
    monkeypatch.setenv("REBOOK_KEY_PREFIX", "two:")
    assert get_settings().key_prefix == "one:"
    get_settings.cache_clear()
    assert get_settings().key_prefix == "two:"


def test_bad_env_var_fails_get_settings_with_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REBOOK_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError):
        get_settings()


# --- required settings ---------------------------------------------------------------------------


def test_every_missing_required_setting_is_named_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in REQUIRED_ENV:
        monkeypatch.delenv(name)
    monkeypatch.setenv("REBOOK_SWEEP_INTERVAL_SECONDS", "-1")  # missing ones are named first
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "REBOOK_API_KEY, REBOOK_OAUTH_CLIENT_ID, REBOOK_OAUTH_CLIENT_SECRET: required"
    )


def test_one_missing_setting_is_named_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REBOOK_API_KEY")
    assert config_error() == "REBOOK_API_KEY: required, not set"


@pytest.mark.parametrize("name", sorted(REQUIRED_ENV))
def test_a_blank_required_setting_is_an_error(name: str) -> None:
    assert config_error(**{name: "  "}).startswith(f"{name}: ")


def test_api_key_in_query_is_accepted_and_anything_else_is_not() -> None:
    assert load_settings(api_key_in="query").api_key_in == "query"
    assert config_error(REBOOK_API_KEY_IN="cookie").startswith("REBOOK_API_KEY_IN: ")


def test_empty_token_url_is_a_config_error() -> None:
    assert config_error(REBOOK_OAUTH_TOKEN_URL="").startswith("REBOOK_OAUTH_TOKEN_URL: ")


# --- one-line errors -----------------------------------------------------------------------------

BAD_VALUES = [
    ("REBOOK_REDIS_URL", "http://localhost:6379/0"),
    ("REBOOK_REDIS_URL", "localhost:6379"),
    ("REBOOK_BROKER_URL", "ftp://broker"),
    ("REBOOK_API_BASE_URL", "api.example.com"),
    ("REBOOK_API_BASE_URL", "ftp://api.example.com"),
    ("REBOOK_API_BASE_URL", "https://api.example.com/v1"),
    ("REBOOK_API_BASE_URL", "https://api.example.com/V1/"),
    ("REBOOK_OAUTH_TOKEN_URL", "not a url"),
    ("REBOOK_WEBHOOK_URL", "mailto:ops@example.com"),
    ("REBOOK_API_TIMEZONE", "Mars/Olympus_Mons"),
    ("REBOOK_API_TIMEZONE", "../../etc/passwd"),
    ("REBOOK_TOKEN_KEY", "not-a-fernet-key"),
    ("REBOOK_PRESENCE_INTERVAL_SECONDS", "-1"),
    ("REBOOK_PRESENCE_INTERVAL_SECONDS", "0"),
    ("REBOOK_PRESENCE_INTERVAL_SECONDS", "soon"),
    ("REBOOK_WATCH_INTERVAL_SECONDS", "-0.5"),
    ("REBOOK_SWEEP_INTERVAL_SECONDS", "-1"),
    ("REBOOK_HTTP_TIMEOUT_SECONDS", "0"),
    ("REBOOK_HTTP_DEADLINE_SECONDS", "0"),
    ("REBOOK_HTTP_DEADLINE_SECONDS", "soon"),
    ("REBOOK_HTTP_DEADLINE_SECONDS", "9.5"),  # below the timeout (10 s)
    ("REBOOK_HTTP_DEADLINE_SECONDS", "60"),  # not below the step lease (60 s)
    ("REBOOK_MAX_WAIT_SECONDS", "0"),
    ("REBOOK_MAX_WAIT_SECONDS", str(7 * 86400 + 1)),
    ("REBOOK_UPSTREAM_RATE_PER_SECOND", "-1"),
    ("REBOOK_RETENTION_DAYS", "0"),
    ("REBOOK_AUTO_CONFIRM", "perhaps"),
    ("REBOOK_LOG_FORMAT", "xml"),
    ("REBOOK_LOG_FORMAT", "JSON "),
    ("REBOOK_LOG_LEVEL", "LOUD"),
    ("REBOOK_KEY_PREFIX", "has space:"),
    ("REBOOK_FLOWER_BASIC_AUTH", "admin"),
    ("REBOOK_FLOWER_BASIC_AUTH", "admin:"),
    ("REBOOK_FLOWER_BASIC_AUTH", ":password"),
    ("REBOOK_FLOWER_BASIC_AUTH", "admin:pw,ops"),
    ("REBOOK_EXPORTER_BASIC_AUTH", "admin"),
    # a fixed valid key: a random one would name the test differently in every collection
    (
        "REBOOK_TOKEN_KEYS",
        f"{base64.urlsafe_b64encode(bytes(range(32))).decode()},not-a-fernet-key",
    ),
    ("REBOOK_API_KEY_HEADER", "api key"),
    ("REBOOK_REDIS_CA_FILE", "/nonexistent/ca.pem"),
    ("REBOOK_REDIS_CERT_FILE", "/nonexistent/client.pem"),
    ("REBOOK_REDIS_KEY_FILE", "/nonexistent/client.key"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_value_is_one_line_naming_the_variable(name: str, value: str) -> None:
    message = config_error(**{name: value})
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{name}: "), message
    assert len(message) > len(name) + 5  # says what is wrong, not only where


def test_http_deadline_defaults_to_twice_the_timeout_and_bounds_the_call() -> None:
    s = load_settings(
        api_key="k", oauth_client_id="c", oauth_client_secret="s", http_timeout_seconds=3
    )
    assert s.http_deadline_seconds == 6 and s.call_bound_seconds == 6
    s = load_settings(
        api_key="k", oauth_client_id="c", oauth_client_secret="s", http_deadline_seconds=25
    )
    assert s.call_bound_seconds == 25
    assert s.longest_call_seconds == s.limiter_max_wait + 25 + 1


def test_retry_bounds_name_a_variable() -> None:
    message = config_error(REBOOK_RETRY_BASE_SECONDS="10", REBOOK_RETRY_MAX_SECONDS="1")
    assert "\n" not in message
    assert message.startswith("REBOOK_RETRY_MAX_SECONDS")


def test_overrides_give_the_same_errors() -> None:
    with pytest.raises(ConfigError, match=r"^REBOOK_SWEEP_INTERVAL_SECONDS: "):
        load_settings(sweep_interval_seconds=-1)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REBOOK_TOKEN_KEY", "sup3r-s3cret-not-a-key"),
        ("REBOOK_FLOWER_BASIC_AUTH", "sup3r-s3cret"),
        ("REBOOK_REDIS_URL", "http://:sup3r-s3cret@redis:6379/0"),
    ],
)
def test_errors_do_not_echo_secrets(name: str, value: str) -> None:
    assert "sup3r-s3cret" not in config_error(**{name: value})


def test_http_url_error_does_not_echo_a_password() -> None:
    message = config_error(REBOOK_WEBHOOK_URL="ftp://hook:sup3r-s3cret@hooks.example.com/x")
    assert "sup3r-s3cret" not in message


def test_empty_api_base_url_is_a_config_error() -> None:
    message = config_error(REBOOK_API_BASE_URL="")
    assert message.startswith("REBOOK_API_BASE_URL: ")


def test_empty_redis_url_is_default_or_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REBOOK_REDIS_URL", "")
    try:
        s = load_settings()
    except ConfigError as exc:
        assert str(exc).startswith("REBOOK_REDIS_URL: ")
        return
    # accepted: then it must be a usable URL (the default), not None
    assert isinstance(s.redis_url, str) and s.redis_url.startswith("redis")
    assert isinstance(s.broker, str)


def test_empty_api_key_header_is_a_config_error() -> None:
    message = config_error(REBOOK_API_KEY_HEADER="")
    assert message.startswith("REBOOK_API_KEY_HEADER: ")


def test_a_good_fernet_key_is_accepted_and_empty_means_none() -> None:
    key = Fernet.generate_key().decode()
    assert load_settings(token_key=key).token_key is not None
    assert load_settings(token_key="").token_key is None


# --- secrets and masking -------------------------------------------------------------------------


def test_secrets_are_secretstr_and_hidden() -> None:
    key = Fernet.generate_key().decode()
    s = load_settings(
        api_key="apikey-SECRET",
        oauth_client_secret="client-SECRET",
        token_key=key,
        sentry_dsn="https://dsn-SECRET@sentry.example.com/1",
        flower_basic_auth="admin:flower-SECRET",
        webhook_secret="webhook-SECRET",
    )
    for name in (
        "api_key",
        "oauth_client_secret",
        "token_key",
        "sentry_dsn",
        "flower_basic_auth",
        "webhook_secret",
    ):
        assert isinstance(getattr(s, name), SecretStr), name
    for text in (repr(s), str(s), s.model_dump_json()):
        assert "SECRET" not in text
        assert key not in text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
        (
            "rediss://default:s3cret@redis.example.com:6380",
            "rediss://default:***@redis.example.com:6380",
        ),
        ("amqp://guest:guest@mq:5672//", "amqp://guest:***@mq:5672//"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://user@host/0", "redis://user@host/0"),
        (
            "https://api.example.com/v1/x?UserID=7&apiKey=s3cret&b=1",
            "https://api.example.com/v1/x?UserID=7&apiKey=***&b=1",
        ),
        ("https://api.example.com/v1/x?api_key=s3cret", "https://api.example.com/v1/x?api_key=***"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    masked = mask_url(url)
    assert masked == expected
    assert "s3cret" not in masked


def test_settings_class_reads_prefix() -> None:
    assert Settings.model_config.get("env_prefix") == "REBOOK_"


# --- the real start-up path ----------------------------------------------------------------------


def _child_env(required: bool = True, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("REBOOK_")}
    if required:
        env.update(REQUIRED_ENV)
    env.update(extra)
    return env


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-c", "import worker.app"],
        [str(Path(sys.executable).parent / "celery"), "-A", "worker", "report"],
    ],
    ids=["import", "celery-report"],
)
def test_bad_setting_stops_the_process_with_one_line(argv: list[str]) -> None:
    if not Path(argv[0]).exists():
        pytest.skip(f"{argv[0]} not installed")
    proc = subprocess.run(
        argv,
        cwd=REPO,
        env=_child_env(REBOOK_SWEEP_INTERVAL_SECONDS="-1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "REBOOK_SWEEP_INTERVAL_SECONDS" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


CELERY = str(Path(sys.executable).parent / "celery")
REBOOK = str(Path(sys.executable).parent / "rebook")


@pytest.mark.parametrize(
    "argv",
    [
        [CELERY, "-A", "worker", "worker", "-Q", "rebook.events,rebook.work"],
        [CELERY, "-A", "worker", "beat"],
        [REBOOK, "doctor"],
    ],
    ids=["worker", "beat", "doctor"],
)
def test_with_no_settings_worker_beat_and_doctor_refuse_with_one_line(argv: list[str]) -> None:
    """Nothing talks to the production upstream without a key, and nothing falls back to a
    sandbox: the process stops before it connects anywhere."""
    if not Path(argv[0]).exists():
        pytest.skip(f"{argv[0]} not installed")
    proc = subprocess.run(
        argv,
        cwd=REPO,
        env=_child_env(required=False),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for name in REQUIRED_ENV:
        assert name in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_sentinel_urls_need_the_master_name_and_parse_as_kombu_writes_them() -> None:
    from worker.core.settings import sentinel_hosts

    url = "sentinel://:pw@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"
    hosts, options = sentinel_hosts(url)
    assert hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert options == {"password": "pw", "db": 2}
    with pytest.raises(ConfigError, match="REBOOK_REDIS_SENTINEL_MASTER"):
        load_settings(redis_url=url)
    assert load_settings(redis_url=url, redis_sentinel_master="m").redis_sentinel_master == "m"


def test_importing_a_module_reads_no_settings_and_builds_no_app() -> None:
    """Only `worker.app` (what `celery -A worker` loads) builds an app at import; every other
    module imports with a broken setting and leaves kombu and Celery as they were."""
    modules = [
        "worker.celeryapp.app", "worker.celeryapp.dispatch", "worker.celeryapp.consumer",
        "worker.core.flow", "worker.core.store", "worker.adapters.upstream",
        "worker.operations.cli", "worker.operations.console.handlers", "tasks.intake",
        "tasks.sweep", "tasks.watch",
    ]  # fmt: skip
    code = (
        f"import {', '.join(modules)}\n"
        "from celery import current_app\n"
        "from kombu.transport import redis\n"
        "assert current_app.main != 'rebook', current_app.main\n"
        "assert not getattr(redis.Channel._connparams, '_rebook_patched', False)\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=_child_env(REBOOK_SWEEP_INTERVAL_SECONDS="-1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_sentry_own_variables_are_read_when_the_rebook_ones_are_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("REBOOK_SENTRY_DSN", "REBOOK_SENTRY_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SENTRY_DSN", "https://plain@sentry.example.com/2")
    monkeypatch.setenv("SENTRY_ENVIRONMENT", "eu-staging")
    s = load_settings()
    assert s.sentry_dsn is not None
    assert s.sentry_dsn.get_secret_value() == "https://plain@sentry.example.com/2"
    assert s.sentry_environment == "eu-staging"
    # REBOOK_ wins when both are set
    monkeypatch.setenv("REBOOK_SENTRY_DSN", "https://mine@sentry.example.com/3")
    monkeypatch.setenv("REBOOK_SENTRY_ENVIRONMENT", "rebook-staging")
    s = load_settings()
    assert s.sentry_dsn is not None
    assert s.sentry_dsn.get_secret_value() == "https://mine@sentry.example.com/3"
    assert s.sentry_environment == "rebook-staging"
    # neither: no Sentry, environment "production"
    for name in ("REBOOK_SENTRY_DSN", "REBOOK_SENTRY_ENVIRONMENT", "SENTRY_DSN"):
        monkeypatch.delenv(name)
    monkeypatch.delenv("SENTRY_ENVIRONMENT")
    s = load_settings()
    assert s.sentry_dsn is None
    assert s.sentry_environment == "production"
    assert load_settings(sentry_environment="by-name").sentry_environment == "by-name"
