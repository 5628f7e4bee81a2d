"""A failed task's exception text and traceback are scrubbed before its `task-failed` event
leaves the worker (issue 21, item 7): in the pool child (`task_failure`), and again when the event
is sent (`scrub_event`)."""

from __future__ import annotations

import pickle

from billiard.einfo import ExceptionInfo
from pydantic import BaseModel, ValidationError

from worker.celeryapp.failures import ScrubbedError, on_task_failure, scrub_event
from worker.core.errors import Rejected
from worker.core.observability import register_token

TOKEN = "unit-failure-token-3f9a7c21d0"


class _Record(BaseModel):
    booking_id: int


def _einfo(exc: BaseException) -> ExceptionInfo:
    try:
        raise exc
    except BaseException:
        return ExceptionInfo()


def test_an_upstream_error_echoing_a_member_token_is_scrubbed_in_place() -> None:
    register_token(TOKEN)
    exc = Rejected(f"refresh token {TOKEN} is invalid", endpoint="token", status=400)
    einfo = _einfo(exc)
    assert TOKEN in einfo.traceback
    on_task_failure(einfo=einfo, exception=exc)
    assert TOKEN not in einfo.traceback and "[redacted]" in einfo.traceback
    inner = einfo.exception.exc
    assert isinstance(inner, Rejected) and inner.endpoint == "token"  # same type, same fields
    assert TOKEN not in repr(inner) and TOKEN not in str(inner) and TOKEN not in inner.message
    # what the parent receives (pickled through the pool) is the scrubbed one
    assert TOKEN not in repr(pickle.loads(pickle.dumps(einfo.exception)))


def test_an_exception_whose_text_cannot_be_changed_is_replaced_by_a_stand_in() -> None:
    register_token(TOKEN)
    try:
        _Record.model_validate({"booking_id": TOKEN})
    except ValidationError as caught:
        exc = caught
    einfo = _einfo(exc)
    on_task_failure(einfo=einfo, exception=exc)
    inner = einfo.exception.exc
    assert isinstance(inner, ScrubbedError)
    assert repr(inner).startswith("ValidationError(") and "[redacted]" in repr(inner)
    assert TOKEN not in repr(inner) + einfo.traceback
    assert TOKEN not in repr(pickle.loads(pickle.dumps(inner)))


def test_a_clean_exception_is_left_as_it_is() -> None:
    exc = ValueError("booking 12 not found")
    einfo = _einfo(exc)
    on_task_failure(einfo=einfo, exception=exc)
    assert einfo.exception.exc is exc and str(exc) == "booking 12 not found"


def test_the_event_fields_are_scrubbed_when_sent() -> None:
    register_token(TOKEN)
    fields = {"exception": f"Rejected('{TOKEN}')", "traceback": f"... {TOKEN} ...", "x": TOKEN}
    sent = scrub_event("task-failed", dict(fields))
    assert TOKEN not in sent["exception"] + sent["traceback"]
    assert sent["x"] == TOKEN  # only the failure's text fields
    assert scrub_event("task-succeeded", dict(fields)) == fields
