"""The step's context is an argument, not module state; the flow's steering is no upstream error."""

from __future__ import annotations

import contextvars
import importlib
import pkgutil
import time
from typing import Any

import pytest

import worker.core.flow
from worker.core.errors import (
    Capped,
    Found,
    Gated,
    LeaseLost,
    StepInterrupted,
    Unmarked,
    UpstreamError,
)
from worker.core.flow import StepContext


class Lock:
    """A lease that is extended (True), taken over (False), or whose owner check raises."""

    def __init__(self, held: bool | None) -> None:
        self.held = held
        self.extended: list[float] = []

    def extend(self, seconds: float, replace_ttl: bool = False) -> bool:
        if self.held is None:
            raise RuntimeError("LockNotOwnedError")
        self.extended.append(seconds)
        return self.held


def context(lock: Any) -> StepContext:
    return StepContext("r1", "token", lock, time.time, 7.5)


def test_hold_extends_the_lease_over_the_longest_call_or_raises_lease_lost() -> None:
    lock = Lock(True)
    context(lock).hold()
    assert lock.extended == [7.5]
    for lost in (Lock(False), Lock(None)):
        with pytest.raises(LeaseLost, match="r1"):
            context(lost).hold()


@pytest.mark.parametrize("cls", [LeaseLost, Gated, Capped, Found, Unmarked])
def test_the_flow_s_steering_is_caught_by_no_handler_of_upstream_errors(cls: type) -> None:
    assert issubclass(cls, StepInterrupted)
    assert not issubclass(cls, UpstreamError)


def test_no_module_of_the_flow_keeps_step_state() -> None:
    names = [m.name for m in pkgutil.iter_modules(worker.core.flow.__path__)]
    assert "reschedule" in names and "context" in names
    for name in names:
        module = importlib.import_module(f"worker.core.flow.{name}")
        held = [k for k, v in vars(module).items() if isinstance(v, contextvars.ContextVar)]
        assert held == [], f"worker.core.flow.{name}: {held}"
