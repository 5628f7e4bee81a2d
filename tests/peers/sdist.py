"""A peer library's source distribution (its own test suite), unpacked once per venv.

`make test` and `make upgrade-check` run peers' own tests against rebook's patches at exactly the
installed version: the sdist of that version is fetched once with pip (from PyPI, or the local
index pip is configured with) into `<venv>/peers/` and read from there afterwards, offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path


class PeerUnavailable(RuntimeError):
    """The sdist could not be fetched (no network and not cached)."""


def peers_dir() -> Path:
    return Path(os.environ.get("REBOOK_PEERS_DIR") or Path(sys.prefix) / "peers")


def peer_source(name: str, ver: str | None = None) -> Path:
    """The unpacked sdist of `name` at `ver` (default: the installed version)."""
    ver = ver or version(name)
    base = peers_dir()
    # sdists are named `name-ver` or, newer ones, with `_` for `-` (PEP 625)
    stems = [f"{name}-{ver}", f"{name.replace('-', '_')}-{ver}"]
    for stem in stems:
        if (base / stem / "PKG-INFO").exists():
            return base / stem
    base.mkdir(parents=True, exist_ok=True)
    archive = next((base / f"{s}.tar.gz" for s in stems if (base / f"{s}.tar.gz").exists()), None)
    if archive is None:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                str(base),
                f"{name}=={ver}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        found = [base / f"{s}.tar.gz" for s in stems if (base / f"{s}.tar.gz").exists()]
        if done.returncode != 0 or not found:
            raise PeerUnavailable(f"pip download {name}=={ver}: {done.stderr.strip()[-500:]}")
        archive = found[0]
    with tarfile.open(archive) as tar:
        tar.extractall(base, filter="data")
    root = base / archive.name.removesuffix(".tar.gz")
    if not (root / "PKG-INFO").exists():
        raise PeerUnavailable(f"{archive.name} did not unpack to {root.name}/")
    return root


def main(names: list[str]) -> int:
    """`python -m tests.peers.sdist NAME...`: fetch now (make install), so tests run offline."""
    for name in names:
        try:
            print(f"peer sources: {peer_source(name)}")
        except PeerUnavailable as exc:
            print(f"peer sources: {name}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
