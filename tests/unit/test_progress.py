"""The one progress helper of the long CLI commands (`tokens import`, bulk `retry`/`cancel`,
`deadletter replay`, `reindex`): counts on a pipe, how far a stopped walk got."""

from __future__ import annotations

import io

import pytest
import typer
from rich.console import Console

from worker.operations.cli import _Progress


def _pipe() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200), buf


def test_a_pipe_gets_count_lines_not_a_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    console, buf = _pipe()
    assert not console.is_terminal
    monkeypatch.setattr(_Progress, "PLAIN_EVERY", 0.0)
    with _Progress("retry", 3, console=console) as progress:
        progress.step("done")
        progress.step("refused")
        progress.step("done")
    assert buf.getvalue().splitlines() == [
        "1/3: done 1",
        "2/3: done 1, refused 1",
        "3/3: done 2, refused 1",
    ]
    assert progress.seen == 3 and progress.count("done") == 2 and progress.count("failed") == 0


def test_a_pipe_is_not_flooded() -> None:
    """10,000 steps within `PLAIN_EVERY`: no line at all (the command prints its counts)."""
    console, buf = _pipe()
    with _Progress("cancel", 10_000, console=console) as progress:
        for _ in range(10_000):
            progress.step("done")
    assert buf.getvalue() == "" and progress.count("done") == 10_000


def test_a_terminal_gets_a_bar_that_goes_away() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with _Progress("indexing", 2, console=console) as progress:
        progress.step("indexed", 2)
    assert progress.count("indexed") == 2
    assert "indexed 2" in buf.getvalue()  # drawn, then cleared (transient)


def test_an_error_mid_way_says_how_far_it_got(capsys: pytest.CaptureFixture[str]) -> None:
    console, _ = _pipe()
    with pytest.raises(ConnectionError), _Progress("retry", 5, console=console) as progress:
        progress.step("done", 2)
        raise ConnectionError("Redis went away")
    assert capsys.readouterr().err.strip() == (
        "rebook: retry stopped after 3 of 5: done 2, failed 1; 2 not attempted: run it again"
    )


def test_ctrl_c_mid_way_exits_1_with_the_counts(capsys: pytest.CaptureFixture[str]) -> None:
    console, _ = _pipe()
    with pytest.raises(typer.Exit) as stopped, _Progress("replaying", 4, console=console) as p:
        p.step("replayed")
        raise KeyboardInterrupt
    assert stopped.value.exit_code == 1
    assert capsys.readouterr().err.strip() == (
        "rebook: replaying stopped after 1 of 4: replayed 1; 3 not attempted: run it again"
    )


def test_a_refusal_exit_is_not_a_stop(capsys: pytest.CaptureFixture[str]) -> None:
    console, _ = _pipe()
    with pytest.raises(typer.Exit), _Progress("retry", 2, console=console):
        raise typer.Exit(2)
    assert capsys.readouterr().err == ""


def test_replay_stopped_by_the_broker_says_what_it_did(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker gone after the first of three: one line naming it, the counts so far and
    the refusals so far, exit 1 (mocked store and broker: the real ones are in tests/chaos)."""
    import json
    from types import SimpleNamespace

    from kombu.exceptions import OperationalError
    from typer.testing import CliRunner

    from worker.app import app
    from worker.operations import cli as cli_module

    def payload(event_id: str) -> dict[str, str]:
        kwargs = {"event_id": event_id, "booking_id": 5, "user_id": "m-1"}
        return {"payload": json.dumps({"kwargs": kwargs})}

    letters = {"1-1": payload("ev-1"), "1-2": payload("ev-2"), "1-3": {"payload": "{trunc"}}
    store = SimpleNamespace(outcomes=SimpleNamespace(deadletter_entry=letters.get))
    monkeypatch.setattr(cli_module, "_services", lambda: SimpleNamespace(store=store))
    sent: list[str] = []

    def send_task(name: str, kwargs: dict[str, object], queue: str) -> None:
        if sent:
            raise OperationalError("connection refused")
        sent.append(str(kwargs["event_id"]))

    monkeypatch.setattr(app, "send_task", send_task)
    result = CliRunner().invoke(cli_module.cli, ["deadletter", "replay", "1-3", "1-1", "1-2"])
    assert result.exit_code == 1, result.output
    assert sent == ["ev-1"]
    err = result.stderr.splitlines()
    assert err[0] == ("rebook: replaying stopped after 3 of 3: refused 1, replayed 1, failed 1"), (
        err
    )
    assert err[1].startswith("rebook: cannot reach the broker at ")
    assert err[2].startswith("rebook: refused 1-3: dead letter 1-3 was truncated")
