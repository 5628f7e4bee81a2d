"""The exception text and traceback of a failed (or retried) task, scrubbed before they leave the
process: Celery puts both verbatim into its `task-failed` / `task-retried` events, which Flower
keeps and shows (`/api/tasks`, the task page). An exception may carry a secret in a shape no
logging filter sees (an upstream error echoing a member's token, a validation error quoting a
corrupt field).

Two places, because of the prefork pool: the task runs in a child, which knows the member tokens
it loaded (the scrubber's literal registry), and its `ExceptionInfo` is scrubbed there, in the
`task_failure` / `task_retry` signals, before it is pickled to the parent. The parent sends the
event; `SafeRequest.send_event` scrubs the two fields again (patterns, configured secrets), for a
pool or a path that skipped the signal (a worker lost, a time limit).
"""

from __future__ import annotations

import contextlib
from typing import Any

from worker.core.observability import scrub

SCRUBBED_EVENTS = frozenset({"task-failed", "task-retried"})
EVENT_FIELDS = ("exception", "traceback")


def scrub_exception(exc: Any) -> None:
    """In place: the exception's args and string attributes (`message`, ...), and those of its
    wrapper (billiard's ExceptionWithTraceback keeps the traceback text in `tb`)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        with contextlib.suppress(Exception):  # a type that refuses new args keeps its own
            exc.args = tuple(scrub(a) if isinstance(a, str) else a for a in exc.args)
        for name, value in list(getattr(exc, "__dict__", {}).items()):
            if isinstance(value, str):
                with contextlib.suppress(Exception):
                    setattr(exc, name, scrub(value))
        exc = getattr(exc, "exc", None)  # the wrapped exception of ExceptionWithTraceback


class ScrubbedError(Exception):
    """Stands in for an exception whose text held a secret that could not be cut out of it in
    place (its message is computed, e.g. pydantic's ValidationError): its type's name and its
    scrubbed text, shown as `TypeName('text')`."""

    def __init__(self, type_name: str, text: str) -> None:
        super().__init__(type_name, text)
        self.type_name, self.text = type_name, text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"{self.type_name}({self.text!r})"


def _leaks(exc: BaseException) -> bool:
    try:
        shown = (str(exc), repr(exc))
    except Exception:
        return True  # a text that cannot be made cannot be checked either
    return any(scrub(text) != text for text in shown)


def scrub_einfo(einfo: Any) -> None:
    """In place: what the parent will put into the event (and what the child logs next)."""
    if einfo is None:
        return
    if isinstance(getattr(einfo, "traceback", None), str):
        einfo.traceback = scrub(einfo.traceback)
    wrapper: Any = getattr(einfo, "exception", None)
    scrub_exception(wrapper)
    inner = getattr(wrapper, "exc", wrapper)  # billiard wraps it with the traceback text
    if isinstance(inner, BaseException) and _leaks(inner):
        try:
            text = scrub(str(inner))
        except Exception:
            text = "(text not shown)"
        stand_in = ScrubbedError(type(inner).__name__, text)
        if inner is not wrapper:
            wrapper.exc = stand_in
        else:
            einfo.exception = stand_in


def on_task_failure(einfo: Any = None, exception: Any = None, **_: Any) -> None:
    scrub_exception(exception)
    scrub_einfo(einfo)


def on_task_retry(request: Any = None, reason: Any = None, einfo: Any = None, **_: Any) -> None:
    scrub_exception(reason)
    scrub_einfo(einfo)


def scrub_event(type: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The fields of a task event, the exception and traceback of a failure scrubbed (called by
    `SafeRequest.send_event`, in the process that sends the event)."""
    if type in SCRUBBED_EVENTS:
        for name in EVENT_FIELDS:
            if isinstance(fields.get(name), str):
                fields[name] = scrub(fields[name])
    return fields
