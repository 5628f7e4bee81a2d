"""The log scrubber: every secret pattern the issue found it missing (issue 12, item 6)."""

from __future__ import annotations

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
