"""requirements.lock against pyproject.toml: no stale lock, and bounds on the patched peers."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.peers.upgrade_check import pins

ROOT = Path(__file__).resolve().parents[2]


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    return [Requirement(r) for r in [*project["dependencies"], *(r for e in extras for r in e)]]


def test_every_requirement_is_locked_at_a_version_it_allows() -> None:
    """Fails after a change to pyproject.toml without `make lock`."""
    locked = pins((ROOT / "requirements.lock").read_text())
    wrong = []
    for req in requirements():
        name = canonicalize_name(req.name)
        if name not in locked:
            wrong.append(f"{req}: not in requirements.lock")
            continue
        versions = locked[name].split("|")
        if not any(req.specifier.contains(v, prereleases=True) for v in versions):
            wrong.append(f"{req}: locked at {locked[name]}")
    assert not wrong, "run `make lock`: " + "; ".join(wrong)


def test_patched_peers_are_bounded_below_their_next_minor() -> None:
    """DESIGN "Dependency pins": celery, kombu and flower (and urllib3, whose connection pool the
    request deadline subclasses) each have `<X.(Y+1)`."""
    seen = set()
    for req in requirements():
        name = canonicalize_name(req.name)
        if name not in ("celery", "kombu", "flower", "urllib3"):
            continue
        seen.add(name)
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        upper = [Version(s.version) for s in req.specifier if s.operator == "<"]
        assert lower and upper, f"{req}: needs >=X.Y,<X.(Y+1)"
        low, high = lower[0], upper[0]
        assert (high.major, high.minor) == (low.major, low.minor + 1), f"{req}: not one minor"
    assert seen == {"celery", "kombu", "flower", "urllib3"}
