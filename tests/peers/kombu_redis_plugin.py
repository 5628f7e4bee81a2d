"""A pytest plugin for the inner run over kombu's `test_redis.py`: rebook's Redis transport in
place of kombu's, and the expected differences marked as strict xfails.

kombu's test module patches `kombu.utils.eventio.poll` *before* it imports
`kombu.transport.redis` (its poller must be the fake). So this plugin does not import the transport
itself: an import hook waits for kombu's test module to import it, then puts rebook's classes in
its place (`QoS`, `Channel`, `Transport`, `SentinelChannel`, `SentinelTransport`). Every class the
test module derives from kombu's (`class Channel(redis.Channel)`, ...) derives from rebook's, and
every `patch('kombu.transport.redis.Channel....')` patches rebook's.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import kombu  # the installed one, imported before kombu's conftest puts its sdist on sys.path
import pytest

from tests.peers.kombu_redis_expected import XFAIL

TARGET = "kombu.transport.redis"
REPLACED = ("QoS", "Channel", "Transport", "SentinelChannel", "SentinelTransport")


def substitute(module: ModuleType) -> None:
    """rebook's transport classes in kombu's module."""
    from worker.celeryapp import broker

    for name in REPLACED:
        setattr(module, name, getattr(broker, name))


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        substitute(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Substitutes the classes when kombu's transport module is first imported."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if TARGET in sys.modules:  # imported before this plugin (it must not be): substitute now
    substitute(sys.modules[TARGET])
else:
    sys.meta_path.insert(0, _Finder())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The listed tests are strict xfails (one that passes fails the run: the list stays true);
    a listed test that does not exist any more fails the run too."""
    from worker.celeryapp import broker

    module = sys.modules[TARGET]
    if module.Channel is not broker.Channel:  # type: ignore[attr-defined]
        raise pytest.UsageError("kombu's Redis transport was not replaced by rebook's")
    if Path(str(kombu.__file__)).resolve().is_relative_to(config.rootpath.resolve()):
        raise pytest.UsageError(f"the kombu under test is the sdist's ({kombu.__file__})")
    names = {item.nodeid.split("::", 1)[-1]: item for item in items}
    missing = sorted(set(XFAIL) - set(names))
    if missing:
        raise pytest.UsageError(f"listed in expected.XFAIL but not collected: {missing}")
    for name, reason in XFAIL.items():
        names[name].add_marker(pytest.mark.xfail(reason=reason, strict=True))


def pytest_report_header(config: pytest.Config) -> Any:
    return f"rebook's transport in kombu's place; {len(XFAIL)} expected differences"
