"""A Celery consumer that dead-letters what it cannot run instead of only logging it.

Stock Celery logs and drops a message it cannot decode (another serializer, broken body), an
unknown task name or an invalid message. On our queues every such message was meant for us, so it
goes to the dead-letter stream with the reason, and the worker keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

from worker import compat

log = logging.getLogger("rebook.consumer")
compat.patch_celery_dump_body()


def _deadletter(reason: str, message: Any, body: Any = None) -> None:
    from worker.runtime import services

    headers = dict(getattr(message, "headers", None) or {})
    raw = getattr(message, "body", b"") or b""
    payload = {
        "task": headers.get("task"),
        "content_type": getattr(message, "content_type", None),
        "delivery_info": dict(getattr(message, "delivery_info", None) or {}),
        "body_bytes": len(raw),
        # a decoded body is redacted field by field; an undecodable one is never copied
        "body": body if isinstance(body, (dict, list, tuple)) else "(not stored)",
    }
    try:
        services().store.deadletter(
            reason,
            payload,
            task_id=str(headers.get("id") or ""),
            task=str(headers.get("task") or ""),
        )
    except Exception:  # the stock handling (log + ack/reject) still happens
        log.exception("could not dead-letter a message: %s", reason)


class RebookConsumer(Consumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        _deadletter(f"undecodable message ({type(exc).__name__}: {exc})"[:500], message)
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _deadletter("not a Celery task message", message, body)
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        _deadletter(f"unknown task name ({exc})"[:500], message, body)
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        _deadletter(f"invalid task message ({exc})"[:500], message, body)
        super().on_invalid_task(body, message, exc)
