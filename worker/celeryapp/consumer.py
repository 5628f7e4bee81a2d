"""A Celery consumer that dead-letters what it cannot run instead of only logging it.

Stock Celery logs and drops a message it cannot decode (another serializer, broken body), an
unknown task name or an invalid message, and raises on a body that is not `[args, kwargs, embed]`
or a header of the wrong type. On our queues every such message was meant for us, so it goes to
the dead-letter stream with the reason and the raw item (scrubbed, 4 KB), is acknowledged, and
the worker keeps serving. `frames` holds the checks; the Redis transport refuses the items kombu
cannot even build a message from before they get here.

Only `rebook.request` runs from `rebook.events`: producers may push there (on Redis with an account
that may push nothing else), so any other task name found there (`rebook.sweep`,
`celery.accumulate`, ...) is dead-lettered, never run. The queue a message came from is the
broker's word, not the message's: on Redis the list rebook's transport popped it from, on AMQP the
queue of the consumer tag it was delivered to.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery.utils.saferepr import saferepr
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from vine import promise

from worker.celeryapp import broker, frames
from worker.celeryapp.app import EVENTS_QUEUE
from worker.celeryapp.failures import scrub_event

log = logging.getLogger("rebook.consumer")
INTAKE_TASK = "rebook.request"
"""The one task a message on `rebook.events` may name (and a task registered with `intake=True`,
as the bench's no-op is: a producer cannot register one)."""
EVENT_FIELDS = ("event_id", "booking_id", "user_id", "performer_id", "max_wait_seconds")
"""What Flower and task events may show of a `rebook.request`: the fields README "Sending events"
documents."""


def _raw_of(message: Any) -> str:
    """The message as the broker holds it, for a person: envelope and body, scrubbed later. A
    body in another serializer or compressed is not copied (no scrubber can read it)."""
    body = getattr(message, "body", b"") or b""
    content_type = str(getattr(message, "content_type", "") or "")
    headers = dict(getattr(message, "headers", None) or {})
    if frames.JSON_TYPES.isdisjoint({content_type.split(";")[0].strip().lower()}) or (
        headers.get("compression")
    ):
        text = f"<{len(body)} bytes of {content_type or '?'}: not copied>"
    else:
        text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
    return json.dumps(
        {
            "headers": {k: v for k, v in headers.items() if k not in ("argsrepr", "kwargsrepr")},
            "content-type": content_type,
            "content-encoding": getattr(message, "content_encoding", None),
            "properties": {
                k: v
                for k, v in dict(getattr(message, "properties", None) or {}).items()
                if k in ("correlation_id", "delivery_mode", "priority", "body_encoding")
            },
            "body": text,
        },
        default=str,
        ensure_ascii=False,
    )


def _deadletter(reason: str, message: Any, body: Any = None) -> bool:
    """False if the dead letter could not be written (the caller then hands the message back)."""
    from worker.celeryapp.runtime import services

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
    task_id, task = headers.get("id"), headers.get("task")
    try:
        raw = frames.raw_preview(_raw_of(message))
    except Exception as exc:  # headers nested too deeply to serialize, ...
        raw = f"<not copied: {type(exc).__name__}>"
    try:
        services().store.outcomes.deadletter(
            reason,
            payload,
            task_id=task_id if isinstance(task_id, str) else "",
            task=task if isinstance(task, str) else "",
            raw=raw,
        )
    except Exception:  # the stock handling (log + ack/reject) still happens
        log.exception("could not dead-letter a message: %s", reason)
        return False
    return True


class RebookConsumer(Consumer):
    """Celery's consumer; each refusal is dead-lettered first, and a message whose dead letter
    cannot be written is handed back (reject + requeue) instead of Celery's ack or drop."""

    def _hand_back(self, message: Any) -> None:
        message.reject_log_error(log, tuple(self.connection_errors or ()), requeue=True)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if _deadletter(f"undecodable message ({type(exc).__name__}: {exc})"[:500], message):
            super().on_decode_error(message, exc)
        else:
            self._hand_back(message)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        if _deadletter("not a Celery task message", message, body):
            super().on_unknown_message(body, message)
        else:
            self._hand_back(message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        if _deadletter(f"unknown task name ({exc})"[:500], message, body):
            super().on_unknown_task(body, message, exc)
        else:
            self._hand_back(message)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if _deadletter(f"invalid task message ({exc})"[:500], message, body):
            super().on_invalid_task(body, message, exc)
        else:
            self._hand_back(message)

    def create_task_handler(self, promise: Any = promise) -> Any:
        """Celery's handler behind a check of what Celery assumes (`frames.check_task_message`,
        the intake rule) and a catch of what it raises on the frames it does not check: either way
        the message is dead-lettered and acknowledged instead of stopping the consumer. If the
        dead letter cannot be written the message is handed back (requeued), never dropped."""
        inner = super().create_task_handler(promise)
        connection_errors = tuple(self.connection_errors or ())

        def on_task_received(message: Any) -> Any:
            try:
                reason = frames.check_task_message(message) or self._intake_rule(message)
            except Exception as exc:  # RecursionError, MemoryError, a bug in a check
                reason = frames.refusal(exc)
            if reason is None:
                try:
                    return inner(message)
                except connection_errors:
                    raise
                except Exception as exc:
                    if getattr(message, "acknowledged", True):
                        raise
                    reason = f"message Celery cannot run ({type(exc).__name__}: {exc})"[:500]
                    log.exception("refused a message: %s", reason)
            if _deadletter(reason, message, None):
                message.ack_log_error(log, connection_errors)
            else:
                self._hand_back(message)
            return None

        return on_task_received

    def _intake_rule(self, message: Any) -> str | None:
        """Why a message may not run from the queue it came from, or None."""
        headers = message.headers if isinstance(message.headers, dict) else {}
        task = headers.get("task")
        known = self.app.tasks.get(task) if isinstance(task, str) else None
        if task == INTAKE_TASK or getattr(known, "intake", False) is True:
            return None
        if isinstance(task, str) and known is None:
            return None  # not a task here: Celery's handler dead-letters it (unknown task name)
        queue = self._source_queue(message)
        if queue is not None and queue != EVENTS_QUEUE:
            return None
        where = queue or "an unknown queue"
        if not isinstance(task, str):
            return (
                f"not a Celery task message naming {INTAKE_TASK} (protocol 2 headers): "
                f"the only kind accepted on {where}"
            )
        return f"task {task[:100]!r} may not run from {where}: only {INTAKE_TASK} is accepted there"

    def _source_queue(self, message: Any) -> str | None:
        """The queue the broker delivered `message` from (None: cannot tell, treated as
        `rebook.events`). Never the routing key the producer wrote into a Redis envelope."""
        info = getattr(message, "delivery_info", None) or {}
        if isinstance(getattr(message, "channel", None), broker.Channel):
            queue = info.get(frames.SOURCE_KEY)
            return queue if isinstance(queue, str) else None
        tag = info.get("consumer_tag")
        tags = getattr(self.task_consumer, "_active_tags", None) or {}
        if tag is not None:
            for name, active in tags.items():
                if active == tag:
                    return str(name)
        key = info.get("routing_key")
        return key if isinstance(key, str) and key else None


class SafeRequest(Request):
    """A request whose `argsrepr`/`kwargsrepr` (task events, Flower, `inspect`) come from the
    worker, not the producer: for `rebook.request` only the documented fields, since a producer
    may put anything in an event (a token) and in the repr headers too. `info()` never hands out
    the raw arguments (`inspect active`/`reserved`, which Flower calls, asks for them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._type == "rebook.request":
            given = self._kwargs if isinstance(self._kwargs, dict) else {}
            shown = {k: given[k] for k in EVENT_FIELDS if k in given}
            self._kwargsrepr = saferepr(shown, 1024)
            n = len(self._args) if isinstance(self._args, (list, tuple)) else 0
            self._argsrepr = f"({n} positional arguments, not shown)" if n else "()"
            # the headers travel on (to the pool, its debug log, the task's request)
            safe = {"argsrepr": self._argsrepr, "kwargsrepr": self._kwargsrepr}
            self._request_dict.update(safe)
            props = self._request_dict.get("properties")
            if isinstance(props, dict) and not safe.keys().isdisjoint(props):
                self._request_dict["properties"] = {**props, **safe}  # kombu copies them there

    def info(self, safe: bool = False) -> dict[str, Any]:
        return dict(super().info(safe=True))

    def send_event(self, type: str, **fields: Any) -> None:
        """A failure's exception text and traceback are scrubbed before Flower sees them."""
        super().send_event(type, **scrub_event(type, fields))
