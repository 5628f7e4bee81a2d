"""Insecure settings are refused, not obeyed (issue 21, item 8): an `ssl_*` override in a Redis or
broker URL that weakens the checks, and Flower on every interface by default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.core.errors import ConfigError
from worker.core.redis_tls import weak_tls_override
from worker.core.settings import load_settings
from worker.operations import flower

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"api_key": "k", "oauth_client_id": "c", "oauth_client_secret": "s"}
WEAK = [
    "rediss://:pw@redis.internal:6380/0?ssl_cert_reqs=none",
    "rediss://:pw@redis.internal:6380/0?ssl_cert_reqs=CERT_NONE",
    "rediss://:pw@redis.internal:6380/0?ssl_cert_reqs=optional",
    "rediss://:pw@redis.internal:6380/0?ssl_check_hostname=false",
    "rediss://redis.internal:6380/0?socket_timeout=5&SSL_CHECK_HOSTNAME=0",
    "sentinel://s1:26379;sentinel://s2:26379?ssl_cert_reqs=none",
]


@pytest.mark.parametrize("url", WEAK)
@pytest.mark.parametrize("field", ["redis_url", "broker_url"])
def test_a_url_that_weakens_tls_checks_is_refused_naming_the_variable(url: str, field: str) -> None:
    values = {"redis_url": "redis://127.0.0.1:6379/0", **REQUIRED, field: url}
    with pytest.raises(ConfigError) as exc:
        load_settings(**values)
    message = str(exc.value)
    assert message.lower().startswith(f"rebook_{field}: ssl_"), message
    assert "\n" not in message and ":pw@" not in message


@pytest.mark.parametrize(
    "url",
    [
        "rediss://:pw@redis.internal:6380/0",
        "rediss://:pw@redis.internal:6380/0?ssl_cert_reqs=required",
        "rediss://redis.internal:6380/0?ssl_check_hostname=true&ssl_ca_certs=/etc/ca.pem",
        "redis://127.0.0.1:6379/0?socket_timeout=5",
    ],
)
def test_urls_that_keep_the_checks_are_accepted(url: str) -> None:
    assert weak_tls_override(url) is None
    settings = load_settings(redis_url=url, **REQUIRED)
    if url.startswith("rediss://"):
        options = settings.redis_ssl_options(url)
        assert options["ssl_cert_reqs"] == "required" and options["ssl_check_hostname"] is True


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REBOOK_")}
    env.update(
        REBOOK_API_KEY="k",
        REBOOK_OAUTH_CLIENT_ID="c",
        REBOOK_OAUTH_CLIENT_SECRET="s",
        REBOOK_TOKEN_KEY="x" * 43 + "=",
        **extra,
    )
    return env


def test_a_process_with_such_a_url_refuses_to_start_with_one_line() -> None:
    """`rebook doctor` as the one entry point checked here (the worker, beat, Flower and the
    exporter load the same settings the same way)."""
    proc = subprocess.run(
        [sys.executable, "-m", "worker.operations.cli", "doctor"],
        env=_env(REBOOK_REDIS_URL="rediss://:pw@127.0.0.1:1/0?ssl_cert_reqs=none"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "REBOOK_REDIS_URL" in lines[0] and "ssl_cert_reqs" in lines[0]


def test_the_token_key_rotation_script_refuses_it_too() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "rotate-token-key.py"), "--check"],
        env=_env(REBOOK_REDIS_URL="rediss://:pw@127.0.0.1:1/0?ssl_check_hostname=false"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "REBOOK_REDIS_URL" in lines[0] and "ssl_check_hostname" in lines[0]


def test_the_rotation_script_uses_the_workers_tls_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same verification as the worker's client, with the CA the settings name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rotate", ROOT / "ops" / "rotate-token-key.py")
    assert spec is not None and spec.loader is not None
    rotate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rotate)
    monkeypatch.setenv("REBOOK_REDIS_CA_FILE", "/etc/rebook/ca.pem")
    url = "rediss://:pw@redis.internal:6380/0"
    assert rotate._tls(url) == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": "/etc/rebook/ca.pem",
    }
    assert rotate._tls("redis://127.0.0.1:6379/0") == {}


def test_flower_binds_loopback_unless_flower_address_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the Procfile starts it (`python -m worker.operations.flower`, basic auth set): Flower
    alone would listen on every interface."""
    monkeypatch.delenv("FLOWER_ADDRESS", raising=False)
    address = flower.resolve_address()
    assert address == "127.0.0.1"
    assert "--address=127.0.0.1" in flower.flower_argv(5555, "ops:pw", False, address)
    monkeypatch.setenv("FLOWER_ADDRESS", "0.0.0.0")
    address = flower.resolve_address()
    assert address is None  # Flower reads FLOWER_ADDRESS itself
    assert not any(a.startswith("--address") for a in flower.flower_argv(5555, "ops:pw", False))
    assert "--address=127.0.0.1" in flower.flower_argv(5555, None, True, address)  # --local
