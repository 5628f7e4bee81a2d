"""`make upgrade-check`: would the newest releases the bounds allow still work?

In a scratch directory: re-resolve pyproject.toml with `uv pip compile --upgrade` (the same
arguments as `make lock`), print every pin that changed (old -> new), install the result in a
scratch venv, and run there the peers' own suites against rebook's patches (`tests/peers`:
Flower's unit tests with the launcher's patches, and any other peer suite that lives there)
plus rebook's unit tests. requirements.lock and .venv are left as they are; if it passes, `make
lock` with the new bounds (or `uv pip compile --upgrade-package NAME`) takes the upgrade.

Exit status: 0 when everything passed, 1 when a test failed, 2 when the resolution failed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.peers.sdist import peers_dir

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
#: as the Makefile's LOCK_ARGS
COMPILE_ARGS = ["--all-extras", "--universal", "--python-version", "3.11", "--quiet"]
#: rebook patches the internals of these (README "Pinned dependencies")
PATCHED = ("celery", "kombu", "flower")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


def pins(text: str) -> dict[str, str]:
    """`name -> version` of a lock (a name pinned twice under markers: both, joined by `|`)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = _PIN.match(line.strip())
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            found.setdefault(name, [])
            if match.group(2) not in found[name]:
                found[name].append(match.group(2))
    return {name: "|".join(vs) for name, vs in found.items()}


def changes(old: dict[str, str], new: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, old, new) for every pin added, removed or moved; "-" for none."""
    return [
        (name, old.get(name, "-"), new.get(name, "-"))
        for name in sorted(old.keys() | new.keys())
        if old.get(name) != new.get(name)
    ]


def uv() -> str:
    found = Path(sys.prefix) / "bin" / "uv"
    return str(found) if found.exists() else (shutil.which("uv") or "uv")


def run(cmd: list[str], **kw: object) -> int:
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=False, **kw).returncode  # type: ignore[call-overload,no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make upgrade-check", description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="rebook-upgrade-"))
    try:
        new_lock = scratch / "requirements.lock"
        code = run(
            [
                uv(),
                "pip",
                "compile",
                "pyproject.toml",
                *COMPILE_ARGS,
                "--upgrade",
                "-o",
                str(new_lock),
            ],
            cwd=ROOT,
        )
        if code != 0:
            print("upgrade-check: the newest allowed releases do not resolve", flush=True)
            return 2
        old, new = pins(LOCK.read_text()), pins(new_lock.read_text())
        moved = changes(old, new)
        venv = scratch / "venv"
        python = str(venv / "bin" / "python")
        steps = [
            [uv(), "venv", "--quiet", "--seed", "--python", sys.executable, str(venv)],
            [uv(), "pip", "install", "--quiet", "--python", python, "-r", str(new_lock)],
            [uv(), "pip", "install", "--quiet", "--python", python, "--no-deps", "-e", "."],
            # the dev tools' distribution (devtools/): the tests' conftest imports it
            [uv(), "pip", "install", "--quiet", "--python", python, "--no-deps", "-e", "devtools"],
        ]
        for step in steps:
            if run(step, cwd=ROOT) != 0:
                print("upgrade-check: the scratch venv could not be built", flush=True)
                return 2
        suites = ["tests/unit"]
        if (ROOT / "tests" / "peers").is_dir():
            suites.append("tests/peers")
        # the peers' sdists are kept by version: share the main venv's cache
        env = {**os.environ, "REBOOK_PEERS_DIR": str(peers_dir())}
        tests = run([python, "-m", "pytest", "-q", *suites], cwd=ROOT, env=env)
        print("\nupgrade-check: newest releases allowed by pyproject.toml vs requirements.lock")
        if not moved:
            print("  nothing changed: the lock already has the newest allowed releases")
        width = max((len(n) for n, _, _ in moved), default=0)
        for name, before, after in moved:
            mark = "  (patched internals)" if name in PATCHED else ""
            print(f"  {name:<{width}}  {before} -> {after}{mark}")
        verdict = "passed" if tests == 0 else "FAILED"
        print(f"upgrade-check: {' + '.join(suites)} at the new versions: {verdict}")
        if tests == 0 and moved:
            print("upgrade-check: to take them: uv pip compile --upgrade (or `make lock` after")
            print("  raising a bound), then make install && make test")
        return 0 if tests == 0 else 1
    finally:
        if args.keep:
            print(f"upgrade-check: scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
