"""The log scrubber: every secret pattern the issue found it missing (issue 12, item 6)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.conftest import fast_settings
from worker.core.observability import register_settings_secrets, scrub

SECRET = "S3cr3t-value-42"


@pytest.mark.parametrize(
    "text",
    [
        f"GET /v1/x?token={SECRET}&a=1",
        f"secret={SECRET}",
        f'{{"access_token": "{SECRET}"}}',
        f'{{"id_token":"{SECRET}"}}',
        f'{{\\"refresh_token\\": \\"{SECRET}\\"}}',  # JSON inside a JSON string
        f"Authorization: Basic {SECRET}",
        f"authorization: Bearer {SECRET}",
        f"X-Api-Key: {SECRET}",
        f"apiKey={SECRET}",
        f"redis://default:{SECRET}@redis.internal:6379/0",
        f"rediss://:{SECRET}@redis.internal:6380/0",
        f"client_secret='{SECRET}'",
        f"password: {SECRET}",
    ],
)
def test_each_pattern_is_scrubbed(text: str) -> None:
    assert SECRET not in scrub(text), scrub(text)


def test_ids_and_plain_words_stay() -> None:
    text = "rebook rb-1: booking_id=12 user_id=m-1 performer_id=7 event_id=ev-1; the token store"
    assert scrub(text) == text


def test_each_flower_password_and_url_passwords_are_secrets(prefix: str) -> None:
    settings = fast_settings(
        "redis://u:redis-pw-123456@127.0.0.1:6379/0",
        "http://127.0.0.1:9",
        prefix,
        flower_basic_auth="ops:first-pw-1234,viewer:second-pw-5678",
        broker_url="amqp://rb:amqp-pw-abcdef@127.0.0.1:5672//",
    )
    register_settings_secrets(settings)
    for secret in ("first-pw-1234", "second-pw-5678", "redis-pw-123456", "amqp-pw-abcdef"):
        assert secret not in scrub(f"failed: {secret} was wrong"), secret


def test_member_tokens_are_literal_secrets_however_they_are_echoed() -> None:
    """An OAuth server's "refresh token X is invalid" matches no pattern: the token itself is
    known to the scrubber once its pair was loaded (issue 21, item 7)."""
    from worker.core.observability import register_token

    token = "Qm9uZ3VzLXJlZnJlc2gtdG9rZW4tOTk"
    assert token in scrub(f"refresh token {token} is invalid")
    register_token(token, None, "")
    for text in (
        f"refresh token {token} is invalid",
        f"input_value='{token}'",
        f"{token}{token}",
        f"({token})",
    ):
        assert token not in scrub(text), scrub(text)


def test_the_member_token_registry_is_bounded_and_forgets_the_oldest() -> None:
    from worker.core.observability import LiteralIndex

    index = LiteralIndex(limit=3)
    for value in ("aaaaaaaa-1", "aaaaaaaa-2", "bbbbbbbb-3"):
        index.add(value)
    index.add("aaaaaaaa-1")  # used again: now the newest
    index.add("cccccccc-4")  # the oldest (aaaaaaaa-2) goes
    assert len(index) == 3
    assert index.redact("aaaaaaaa-1 aaaaaaaa-2 bbbbbbbb-3 cccccccc-4") == (
        "[redacted] aaaaaaaa-2 [redacted] [redacted]"
    )
    assert index.redact("short") == "short"


def _json_line(settings_prefix: str, log: Any) -> dict[str, Any]:
    """What `log(logger)` writes with REBOOK_LOG_FORMAT=json, as one parsed line."""
    import io
    import logging

    from worker.core.observability import configure_logging

    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging(
            fast_settings(
                "redis://127.0.0.1:6379/0", "http://127.0.0.1:9", settings_prefix
            ).model_copy(update={"log_format": "json"}),
            stream,
        )
        log(logging.getLogger("rebook.test"))
    finally:
        root.handlers[:], root.level = handlers, level
    (line,) = stream.getvalue().splitlines()
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_json_lines_carry_the_bound_ids_and_nothing_unscrubbed(prefix: str) -> None:
    """The library formatter writes the fixed fields only: Celery's `extra={"data": ...}` (a
    task's args) would otherwise reach the line past the scrubber."""
    from worker.core.observability import JSON_FIELDS, bound

    def log(logger: Any) -> None:
        with bound(rebook_id="rb-1", booking_id=12):
            logger.warning("refused token=%s", SECRET, extra={"data": {"args": SECRET}})

    line = _json_line(prefix, log)
    assert list(line) == ["ts", "level", "logger", "msg", "process", "rebook_id", "booking_id"]
    assert set(line) <= set(JSON_FIELDS)
    assert line["level"] == "warning" and line["logger"] == "rebook.test"
    assert line["msg"] == "refused token=[redacted]"
    assert line["rebook_id"] == "rb-1" and line["booking_id"] == 12
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["ts"]), line["ts"]
    assert SECRET not in json.dumps(line)


def test_json_lines_scrub_the_traceback(prefix: str) -> None:
    def log(logger: Any) -> None:
        try:
            raise RuntimeError(f"upstream said apiKey={SECRET}")
        except RuntimeError:
            logger.exception("call failed")

    line = _json_line(prefix, log)
    assert line["msg"] == "call failed" and "RuntimeError" in line["exc"]
    assert SECRET not in line["exc"] and "apiKey=[redacted]" in line["exc"]
