"""`rebook` refuses a bad combination of options before it touches anything (exit 2)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from worker.operations.cli import cli


@pytest.mark.parametrize(
    "args",
    [
        ["retry", "--not-ours", "5", "--user", "m"],  # vouching is for one rebook, not a filter
        ["retry", "rb-x", "--not-ours", "5", "--dry-run"],
        ["retry", "rb-x", "--not-ours", "5", "--json"],
        ["retry", "rb-x", "--user", "m"],
        ["cancel"],
    ],
)
def test_bad_combinations_exit_2_with_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
