"""The frame checks alone (no I/O): what each refuses and that nothing they raise escapes as
anything but a reason."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from kombu.message import Message

from worker.celeryapp import frames

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _message(body: bytes = b"", **changes: Any) -> Message:
    headers = {"task": "rebook.request", "id": str(uuid.uuid4())}
    headers.update(changes.pop("headers", {}))
    options: dict[str, Any] = {"content_type": "application/json", "content_encoding": "utf-8"}
    options.update(changes)
    return Message(body=body or json.dumps([[], {}, EMBED]).encode(), headers=headers, **options)


def _item(headers: dict[str, Any] | None = None, **changes: Any) -> str:
    envelope = {
        "body": base64.b64encode(json.dumps([[], {}, EMBED]).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "rebook.request", "id": "i-1", **(headers or {})},
        "properties": {"delivery_tag": "t-1", "body_encoding": "base64", "delivery_info": {}},
    }
    envelope.update(changes)
    return json.dumps(envelope)


def _decode(body: Any, encoding: Any) -> bytes:
    return base64.b64decode(body, validate=True)


def test_a_plain_event_passes_both_checks() -> None:
    assert frames.check_task_message(_message()) is None
    assert frames.check_redis_item(_item(), _decode)["properties"]["delivery_tag"] == "t-1"


@pytest.mark.parametrize("encoding", ["utf-8", "UTF8", "utf_8", "ascii", "us-ascii", None])
def test_utf8_and_ascii_content_encodings_are_accepted(encoding: str | None) -> None:
    assert frames.check_task_message(_message(content_encoding=encoding)) is None


@pytest.mark.parametrize("encoding", ["x-rot47", "utf-16", "binary", "latin-1", "\x00"])
def test_any_other_content_encoding_is_refused(encoding: str) -> None:
    reason = frames.check_task_message(_message(content_encoding=encoding))
    assert reason is not None and "content encoding" in reason and "utf-8 only" in reason


def test_the_limit_is_the_whole_item_headers_included() -> None:
    big = {"argsrepr": "x" * frames.MAX_FRAME_BYTES}
    reason = frames.check_task_message(_message(headers=big))
    assert reason is not None and str(frames.MAX_FRAME_BYTES) in reason
    with pytest.raises(frames.BadFrame, match="the whole item"):
        frames.check_redis_item(_item(big), _decode)
    # replies the worker does not run (no_ack) are not limited
    assert frames.check_redis_item(_item(big), _decode, None)["headers"]["argsrepr"]


def test_what_a_check_raises_becomes_a_one_line_reason() -> None:
    deep = _item().replace('"headers": {', '"headers": {"nest": ' + "[" * 5000 + "]" * 5000 + ", ")
    with pytest.raises(RecursionError) as raised:
        frames.check_redis_item(deep, _decode)
    assert frames.refusal(raised.value).startswith("broken envelope: nested too deeply")
    assert frames.refusal(MemoryError()) == "frame too large to read (MemoryError)"
    assert frames.refusal(frames.BadFrame("x")) == "x"
    assert "\n" not in frames.refusal(ValueError("a\nb"))
    # and what a dead letter keeps of such an item is still at most 4 KB of text, id and task
    assert len(frames.raw_preview(deep).encode()) <= frames.RAW_LIMIT + 32
    assert frames.delivery_tag_of(deep) == "t-1"
    assert frames._headers_of(deep) == {"id": "i-1", "task": "rebook.request"}


def test_a_large_items_task_and_id_are_found_for_its_dead_letter() -> None:
    body = base64.b64encode(b"[" * 300_000).decode()
    assert frames._headers_of(_item(body=body)) == {"id": "i-1", "task": "rebook.request"}
    tail = _item({"argsrepr": '"id": "not-this"' + "x" * 300_000})
    assert frames._headers_of(tail)["id"] == "i-1"
