"""What a consumer refuses before kombu or Celery see it: broker items that are not runnable.

Stock kombu and Celery assume well-formed frames. On the Redis transport a list item that is not
JSON, an envelope without `properties`, or a body that is not base64 raises inside the consumer's
event loop: the worker exits ("Unrecoverable error") or reconnects, and the item stays in the
unacked set to stop the next worker. A compressed body is inflated in the main process whatever
its size. Celery's request builder raises on a body that is not `[args, kwargs, embed]`.

Here each such item is dead-lettered with a readable reason and the raw item (secrets scrubbed,
truncated to 4 KB), then removed from the broker, and the consumer goes on:

- `check_redis_item` validates a Redis list item (the Redis transport calls it before kombu
  builds a message from it);
- `check_task_message` validates a message kombu could build (both transports: the consumer
  calls it before Celery's strategy);
- `install_bounded_decompression` replaces kombu's decompressors by ones that stop at
  `MAX_INFLATED_BYTES` (kombu decompresses while building the message, on both transports).

A check that raises anything else (`RecursionError` from headers nested 100,000 deep,
`MemoryError`, a bug) refuses the item the same way (`refusal`): no item leaves the broker without
being run or dead-lettered, and the consumer never stops on one.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import codecs
import json
import logging
import lzma
import re
import zlib
from collections.abc import Callable
from typing import Any

from worker.core.models import MAX_EVENT_BYTES

log = logging.getLogger("rebook.frames")

RAW_LIMIT = 4096
"""Bytes of the raw item kept in a dead letter."""
MAX_FRAME_BYTES = MAX_EVENT_BYTES
"""The whole raw item (envelope, headers, body) may be at most this: a message over 64 KB is
invalid, wherever its bytes are (a 1 MB `argsrepr` header too)."""
_SCRUB_WINDOW = 4 * RAW_LIMIT
"""Of a large item only this much is parsed and scrubbed for its dead letter (4 KB are kept)."""
ENCODINGS = {"utf-8", "ascii"}
"""Content encodings of a JSON body (after `codecs.lookup`): Celery sends utf-8; anything else
(an unknown codec too) is refused rather than guessed at."""
SOURCE_KEY = "x-rebook-source-queue"
"""rebook's Redis transport writes into `delivery_info` the list it popped an item from (what the
producer wrote there is not evidence: it is part of the item)."""
MAX_INFLATED_BYTES = MAX_EVENT_BYTES
"""A compressed body may inflate to at most this (a message over 64 KB is invalid anyway)."""
JSON_TYPES = {"application/json"}
_TAG = re.compile(r'"delivery_tag"\s*:\s*"((?:[^"\\]|\\.)*)"')


class BadFrame(Exception):
    """An item that is not a runnable message; `reason` is one readable line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:500]


class InflateLimit(Exception):
    """A compressed body inflates past MAX_INFLATED_BYTES (refused before inflating it all)."""


def _first_line(exc: BaseException) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # an exception whose str() fails is still named
        text = type(exc).__name__
    return " ".join(text.split())[:200]


def refusal(exc: BaseException) -> str:
    """The dead-letter reason for whatever a frame check raised."""
    if isinstance(exc, BadFrame):
        return exc.reason
    if isinstance(exc, RecursionError):
        return f"broken envelope: nested too deeply to read ({_first_line(exc)})"
    if isinstance(exc, MemoryError):
        return "frame too large to read (MemoryError)"
    return f"frame check failed ({_first_line(exc)})"


# -- the raw item, as a dead letter keeps it ----------------------------------------------------


def _elide_opaque_body(envelope: dict[str, Any]) -> dict[str, Any]:
    """A base64 body that does not decode to JSON (pickle, compressed, binary) is replaced by a
    note: no scrubber can read secrets inside it, and an operator learns nothing from it."""
    body = envelope.get("body")
    if not isinstance(body, str):
        return envelope
    try:
        decoded = base64.b64decode(body, validate=True)
        json.loads(decoded)
    except (binascii.Error, ValueError):
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return envelope  # not base64: the text is what it is (scrubbed below)
        return {**envelope, "body": f"<{len(body)} base64 chars, not JSON: not copied>"}
    return envelope


def raw_preview(raw: bytes | str) -> str:
    """The raw item as text: secrets scrubbed, an opaque body elided, at most 4 KB. Never raises
    on the item: a large one is cut before it is read, one that cannot be parsed is kept as text."""
    from worker.core.observability import scrub

    if len(raw) > _SCRUB_WINDOW:
        raw = raw[:_SCRUB_WINDOW]  # no JSON parse of a cut item: it is not JSON any more
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        envelope = json.loads(text)
        if isinstance(envelope, dict):
            text = json.dumps(_elide_opaque_body(envelope), ensure_ascii=False)
    except Exception:  # not JSON, nested too deeply, ...: the text as it is
        pass
    text = scrub(text)
    encoded = text.encode("utf-8")
    if len(encoded) > RAW_LIMIT:
        text = encoded[:RAW_LIMIT].decode("utf-8", errors="ignore") + "…(truncated)"
    return text


def delivery_tag_of(raw: bytes | str) -> str | None:
    """The delivery tag of an item, even one that is not JSON (the pop script may have recorded
    it in `unacked` when Redis's JSON parser accepted what Python's refuses)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        item = json.loads(text)
        props = item.get("properties") if isinstance(item, dict) else None
        tag = props.get("delivery_tag") if isinstance(props, dict) else None
        return tag if isinstance(tag, str) and tag else None
    except Exception:  # not JSON, or nested too deeply for Python's parser
        found = _TAG.search(text)
        return found.group(1) if found else None


# -- checks --------------------------------------------------------------------------------------


def check_redis_item(
    raw: bytes | str,
    decode_body: Callable[[Any, Any], Any],
    max_bytes: int | None = MAX_FRAME_BYTES,
) -> dict[str, Any]:
    """The envelope of a Redis list item, or BadFrame: what kombu's virtual Message needs
    (`properties` with a delivery tag, `headers` a mapping, a body its encoding decodes), within
    `max_bytes` as a whole (None: no limit, for replies the worker does not run)."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise BadFrame(f"item is {len(raw)} bytes; the limit is {max_bytes} (the whole item)")
    try:
        item = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise BadFrame(f"not a JSON envelope ({_first_line(exc)})") from None
    if not isinstance(item, dict):
        raise BadFrame(f"broken envelope: a JSON {type(item).__name__}, not an object")
    props = item.get("properties")
    if not isinstance(props, dict):
        raise BadFrame("broken envelope: no 'properties' object")
    tag = props.get("delivery_tag")
    if not isinstance(tag, str) or not tag:
        raise BadFrame("broken envelope: no 'properties.delivery_tag'")
    for name, kinds in (("headers", dict), ("content-type", str), ("content-encoding", str)):
        if item.get(name) is not None and not isinstance(item[name], kinds):
            raise BadFrame(f"broken envelope: '{name}' is a {type(item[name]).__name__}")
    info = props.get("delivery_info")
    if info is not None and not isinstance(info, dict):
        raise BadFrame("broken envelope: 'properties.delivery_info' is not an object")
    body = item.get("body")
    if body:
        encoding = props.get("body_encoding")
        if not isinstance(body, str):
            raise BadFrame(f"broken envelope: 'body' is a {type(body).__name__}")
        if encoding is not None and not isinstance(encoding, str):
            raise BadFrame("broken envelope: 'properties.body_encoding' is not a string")
        try:
            decode_body(body, encoding)
        except Exception as exc:
            raise BadFrame(
                f"body does not decode as {encoding or 'utf-8'} ({_first_line(exc)})"
            ) from None
    return item


def message_bytes(message: Any) -> int:
    """What a message weighs as its producer sent it, near enough: body and headers (on Redis
    the transport has measured the whole item before)."""
    body = getattr(message, "body", b"") or b""
    headers = message.headers or {}
    return len(body) + len(json.dumps(headers, default=str, ensure_ascii=False).encode())


def check_task_message(message: Any) -> str | None:
    """Why a message kombu could build is not runnable, or None. Protocol 2 only: a message
    without a `task` header is left to Celery (protocol 1, or unknown: dead-lettered there)."""
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        return None
    if not isinstance(headers["task"], str) or not headers["task"]:
        return "broken envelope: header 'task' is not a task name"
    if not isinstance(headers.get("id"), str) or not headers["id"]:
        return "broken envelope: header 'id' is not a task id"
    size = message_bytes(message)
    if size > MAX_FRAME_BYTES:
        return f"message is {size} bytes; the limit is {MAX_FRAME_BYTES} (headers included)"
    content_type = (message.content_type or "").split(";")[0].strip().lower()
    if content_type not in JSON_TYPES:
        from kombu.serialization import registry

        name = registry.type_to_name.get(content_type)
        known = f" ({name})" if name else ""
        return (
            f"content type {message.content_type or '(none)'!r}{known} is not accepted: JSON only"
        )
    encoding = message.content_encoding
    if encoding is not None:
        try:
            codec: str | None = codecs.lookup(str(encoding)).name
        except Exception:  # LookupError, or a name codecs cannot even look up
            codec = None
        if codec not in ENCODINGS:
            what = "unknown" if codec is None else "not accepted"
            return f"content encoding {str(encoding)[:60]!r} is {what}: utf-8 only"
    try:
        body = message.decode()
    except Exception as exc:
        return f"body is not JSON ({_first_line(exc)})"
    if not (isinstance(body, list) and len(body) == 3):
        shape = f"a list of {len(body)}" if isinstance(body, list) else type(body).__name__
        return f"body is not Celery's [args, kwargs, embed] (a JSON {shape})"
    args, kwargs, embed = body
    if not isinstance(args, list):
        return (
            "body is not Celery's [args, kwargs, embed]: positional args are a "
            f"{type(args).__name__}, not a list"
        )
    if not isinstance(kwargs, dict):
        return (
            "body is not Celery's [args, kwargs, embed]: kwargs are a "
            f"{type(kwargs).__name__}, not a mapping"
        )
    if embed is not None and not isinstance(embed, dict):
        return f"body is not Celery's [args, kwargs, embed]: embed is a {type(embed).__name__}"
    return None


_HEADER = {
    name: re.compile(rf'"{name}"\s*:\s*"([^"\\]{{1,200}})"'.encode()) for name in ("id", "task")
}


def _headers_of(raw: bytes | str) -> dict[str, Any]:
    """The `id` and `task` headers of a refused item, for its dead letter: parsed when the item
    is small enough, else (or when it is no JSON Python reads) looked up in its first and last
    64 KB, where kombu's envelope puts them (a base64 body holds no quotes)."""
    data = raw.encode("utf-8", errors="replace") if isinstance(raw, str) else raw
    if len(data) <= MAX_FRAME_BYTES:
        try:
            envelope = json.loads(data)
            found = envelope.get("headers") if isinstance(envelope, dict) else None
            if isinstance(found, dict):
                return found
        except Exception:  # not JSON, nested too deeply: look for the two headers below
            pass
    windows = (data[:MAX_FRAME_BYTES], data[-MAX_FRAME_BYTES:])
    headers: dict[str, Any] = {}
    for name, pattern in _HEADER.items():
        for window in windows:
            match = pattern.search(window)
            if match:
                headers[name] = match.group(1).decode("utf-8", errors="replace")
                break
    return headers


def deadletter_frame(
    reason: str, raw: bytes | str, *, queue: str, headers: Any = None, content_type: Any = None
) -> bool:
    """Writes the dead letter of a refused item; False if the store refused it too (the caller
    then leaves the item where the broker gives it back later, when it can)."""
    from worker.celeryapp.runtime import services

    if headers is None:
        headers = _headers_of(raw)
    headers = headers if isinstance(headers, dict) else {}
    task_id, task = headers.get("id"), headers.get("task")
    try:
        services().store.outcomes.deadletter(
            reason,
            {"queue": queue, "content_type": content_type, "raw_bytes": len(raw)},
            task_id=task_id if isinstance(task_id, str) else "",
            task=task if isinstance(task, str) else "",
            raw=raw_preview(raw),
        )
    except Exception as exc:
        log.error("could not dead-letter a refused item (%s): %s", _first_line(exc), reason)
        return False
    log.warning("refused an item on %s, dead-lettered: %s", queue, reason)
    return True


# -- bounded decompression ----------------------------------------------------------------------


def _limited(name: str, make: Callable[[], Any]) -> Callable[[bytes], bytes]:
    def decompress(body: bytes) -> bytes:
        inflater = make()
        out = inflater.decompress(bytes(body), MAX_INFLATED_BYTES + 1)
        if len(out) > MAX_INFLATED_BYTES:
            raise InflateLimit(
                f"{name} body inflates past {MAX_INFLATED_BYTES} bytes (refused unread)"
            )
        if not getattr(inflater, "eof", True):
            raise InflateLimit(f"{name} body is truncated")
        return bytes(out)

    return decompress


def _refuse(name: str) -> Callable[[bytes], bytes]:
    def decompress(body: bytes) -> bytes:
        raise InflateLimit(f"{name} compression is not accepted (no bounded decoder)")

    return decompress


BOUNDED = {
    "application/x-gzip": _limited("zlib", zlib.decompressobj),
    "application/x-bz2": _limited("bzip2", bz2.BZ2Decompressor),
    "application/x-lzma": _limited("lzma", lzma.LZMADecompressor),
}


def install_bounded_decompression() -> None:
    """Every kombu decompressor in this process stops at MAX_INFLATED_BYTES; one we cannot bound
    (brotli, zstd, a third party's) refuses. A refused body is a decode error: dead-lettered."""
    from kombu import compression

    for content_type in list(compression._decoders):
        compression._decoders[content_type] = BOUNDED.get(content_type) or _refuse(content_type)
