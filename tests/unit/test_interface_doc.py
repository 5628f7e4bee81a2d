"""docs/interface.md names exactly what the code has: tasks and their kwargs, queues, states,
reasons, settings and their defaults, CLI commands and their options, API paths, stream fields.

The page is what a user of a clone reads for the public interface; a name added to the code and
not to the page (or left on the page after it went) fails here, with the names it is about.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import PydanticUndefined
from typer.main import get_command

from worker.celeryapp.app import EVENTS_QUEUE, WORK_QUEUE
from worker.core.audit import KINDS, Finding
from worker.core.models import RebookEvent
from worker.core.settings import ENV_PREFIX, Settings
from worker.core.states import State
from worker.operations.cli import cli
from worker.operations.console.why import REASON_HELP

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "interface.md"
TICKED = re.compile(r"`([^`]+)`")


def sections() -> dict[str, str]:
    """The page's `## ` sections by title."""
    parts = re.split(r"^## (.+)$", DOC.read_text(encoding="utf-8"), flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def rows(section: str) -> list[list[str]]:
    """The cells of every table row of a section (header and rule rows left out)."""
    found = []
    for line in sections()[section].splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if TICKED.search(cells[0]):
            found.append(cells)
    return found


def first_cells(section: str) -> set[str]:
    return {name for cells in rows(section) for name in TICKED.findall(cells[0])}


def compare(
    what: str, in_code: set[str], on_page: set[str], page: str = "docs/interface.md"
) -> None:
    missing, stale = sorted(in_code - on_page), sorted(on_page - in_code)
    assert not missing and not stale, (
        f"{page} and the code differ on {what}: "
        f"in the code, not on the page: {missing}; on the page, not in the code: {stale}"
    )


# -- tasks ---------------------------------------------------------------------------------------


@cache
def code_tasks() -> dict[str, list[str]]:
    """Every `@shared_task(name=...)` under tasks/ with its parameters (`*args`, `**kwargs` and
    `self` left out: the intake's fields are the event model's)."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tasks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "shared_task":
                    name = next(k.value for k in deco.keywords if k.arg == "name")
                    assert isinstance(name, ast.Constant)
                    params = [a.arg for a in node.args.args + node.args.kwonlyargs]
                    found[str(name.value)] = [p for p in params if p != "self"]
    return found


def test_every_task_is_on_the_page_and_no_other() -> None:
    tasks = code_tasks()
    assert "rebook.request" in tasks and "rebook.sweep" in tasks, "the task scan found nothing"
    text = sections()["Tasks"]
    headings = "\n".join(re.findall(r"^### .*$", text, flags=re.M))
    named = first_cells("Tasks") | set(TICKED.findall(headings))
    on_page = {n for n in named if re.fullmatch(r"rebook\.[a-z_]+", n)} - {EVENTS_QUEUE, WORK_QUEUE}
    compare("task names", set(tasks), on_page)


def test_each_tasks_kwargs_are_on_its_row() -> None:
    for cells in rows("Tasks"):
        names = TICKED.findall(cells[0])
        if len(cells) < 3 or not names or names[0] not in code_tasks():
            continue
        documented = {n for n in TICKED.findall(cells[1]) if re.fullmatch(r"[a-z_]+", n)}
        compare(f"the kwargs of {names[0]}", set(code_tasks()[names[0]]), documented)


def test_the_intake_fields_and_the_queues() -> None:
    fields = {c[0].strip("`") for c in rows("Tasks") if c[1] in ("str", "int")}
    compare("the fields of rebook.request", set(RebookEvent.model_fields), fields)
    assert {EVENTS_QUEUE, WORK_QUEUE} <= first_cells("Tasks")


# -- states, reasons -----------------------------------------------------------------------------


def test_states() -> None:
    compare("states", {s.value for s in State}, first_cells("States"))


def test_reasons() -> None:
    compare("NEEDS_ATTENTION reasons", set(REASON_HELP), first_cells("Reasons"))


def test_the_readme_and_the_runbook_name_the_same_states_and_reasons() -> None:
    """The README's tables (how it works) and the RUNBOOK's section per reason (what to do) are
    read beside this page: they must not drift from it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    part = readme[readme.index("### States") : readme.index("## Sending events")]
    tables = [TICKED.findall(line.split("|")[1]) for line in part.splitlines() if line[:3] == "| `"]
    named = {name for names in tables for name in names}
    states = {s.value for s in State}
    compare("states", states, named & states, "README.md")
    compare("NEEDS_ATTENTION reasons", set(REASON_HELP), named - states, "README.md")
    runbook = (ROOT / "ops" / "RUNBOOK.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^### `([a-z_]+)`", runbook, flags=re.M))
    compare("its sections per reason", set(REASON_HELP), sections, "ops/RUNBOOK.md")


def parked_reasons() -> dict[str, str]:
    """Reason codes the worker parks with: a `snake_case` string given to a call whose name has
    `park` in it (`self._park(rec, "no_credits", ...)`), each with where."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "worker").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if "park" not in name.lower():
                continue
            given = [*node.args[:3], *(k.value for k in node.keywords if k.arg == "reason")]
            for arg in given:
                value = arg.value if isinstance(arg, ast.Constant) else None
                if isinstance(value, str) and re.fullmatch(r"[a-z]+(_[a-z]+)*", value):
                    found[value] = f"{path.relative_to(ROOT)}:{node.lineno}"
    return found


def test_every_reason_the_worker_parks_with_is_explained() -> None:
    parked = parked_reasons()
    assert len(parked) >= 5, f"the scan for park(...) calls found only {parked}: update it"
    unexplained = {r: where for r, where in parked.items() if r not in REASON_HELP}
    assert not unexplained, (
        f"parked with reasons that REASON_HELP and docs/interface.md do not know: {unexplained}"
    )


# -- settings ------------------------------------------------------------------------------------


def env_names() -> dict[str, Any]:
    return {f"{ENV_PREFIX}{name.upper()}": f for name, f in Settings.model_fields.items()}


def written(default: Any) -> str:
    """A default as the page writes it at the start of its cell."""
    if default is PydanticUndefined:
        return "**required**"
    if default is None:
        return "none"
    if default == "":
        return "empty"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return f"`{default}`"


def test_every_setting_is_on_the_page_and_no_other() -> None:
    fields = env_names()
    rows_to_add = "\n".join(
        f"| `{name}` | {written(fields[name].default)} | (what it does) |"
        for name in sorted(set(fields) - first_cells("Settings"))
    )
    assert not rows_to_add, f"add to the Settings table of docs/interface.md:\n{rows_to_add}"
    compare("settings", set(fields), first_cells("Settings"))


def test_each_settings_default_is_the_codes() -> None:
    fields = env_names()
    wrong = {
        cells[0]: f"page {cells[1]!r}, code {written(fields[cells[0].strip('`')].default)!r}"
        for cells in rows("Settings")
        if cells[0].strip("`") in fields
        and not cells[1].startswith(written(fields[cells[0].strip("`")].default))
    }
    assert not wrong, f"defaults on docs/interface.md differ from Settings: {wrong}"


# -- CLI -----------------------------------------------------------------------------------------


@cache
def commands() -> dict[str, set[str]]:
    """Every command path (`tokens set`) with its long options; a group counts as a command
    when it takes options itself (`deadletter --json`)."""
    found: dict[str, set[str]] = {}

    def walk(cmd: Any, path: list[str]) -> None:
        options = {
            opt
            for p in cmd.params
            if p.param_type_name == "option"
            for opt in p.opts
            if opt.startswith("--")
        }
        if path and (options or not hasattr(cmd, "commands")):
            found[" ".join(path)] = options
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(get_command(cli), [])
    return found


def test_every_cli_command_is_on_the_page_and_no_other() -> None:
    on_page = {n.removeprefix("rebook ") for n in first_cells("CLI")}
    compare("CLI commands", set(commands()), on_page)


def test_each_commands_options_are_on_its_row() -> None:
    for cells in rows("CLI"):
        command = cells[0].strip("`").removeprefix("rebook ")
        if command not in commands():
            continue
        documented = set(re.findall(r"--[a-z][a-z-]*", cells[1]))
        compare(f"the options of `rebook {command}`", commands()[command], documented)


# -- console, streams ----------------------------------------------------------------------------


def test_every_api_path_of_the_openapi_document_is_on_the_page() -> None:
    document = json.loads((ROOT / "docs" / "schemas" / "openapi.json").read_text())
    in_code = {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
    }
    on_page = {n for n in first_cells("Console") if re.match(r"(GET|POST) /", n)}
    compare("the console's JSON API", in_code, on_page)


def test_the_procfiles_processes() -> None:
    procfile = (ROOT / "Procfile").read_text(encoding="utf-8")
    processes = set(re.findall(r"^([a-z]+):", procfile, flags=re.M))
    compare("the Procfile's processes", processes, first_cells("Processes"))


def test_every_console_page_is_on_the_page_and_no_other() -> None:
    from worker.operations.console.handlers import routes

    pages: set[str] = set()
    for spec in routes():
        path = re.sub(r"\(\[[^)]*\)", "{rebook_id}", spec.regex.pattern.rstrip("$"))
        choice = re.search(r"\(([a-z|]+)\)", path)
        options = choice.group(1).split("|") if choice else [""]
        pages |= {path.replace(choice.group(0), o) if choice else path for o in options}
    assert "/rebooks/{rebook_id}/retry" in pages, f"the route scan misread the routes: {pages}"
    on_page = {n for n in first_cells("Console") if n.startswith("/")}
    compare("the console's pages", {p for p in pages if not p.startswith("/api/")}, on_page)
    api = {n.split(" ", 1)[1] for n in first_cells("Console") if re.match(r"(GET|POST) /api/", n)}
    compare("the console's JSON API paths", {p for p in pages if p.startswith("/api/")}, api)


def test_the_fields_of_a_rebook_as_status_json_prints_it() -> None:
    from worker.core.store import Rebook

    rebook = Rebook(
        rebook_id="rb-1",
        event_id="e-1",
        booking_id=1,
        user_id="m",
        state=State.WAITING,
        created_ts=0.0,
        deadline_ts=0.0,
    )
    listed = re.search(r"has the fields\s([^;]+);", sections()["Console"])
    assert listed, "no 'has the fields ...;' in the Console section"
    compare("the fields of status --json", set(rebook.public()), set(TICKED.findall(listed[1])))


def exposed_metrics() -> dict[str, tuple[str, set[str]]]:
    """The exporter's metrics as Prometheus sees them (a counter's name ends in `_total`), with
    their type and labels."""
    from worker.operations.exporter import _families, _up

    return {
        f.name + ("_total" if f.type == "counter" else ""): (f.type, set(f._labelnames))
        for f in [_up(), *_families().values()]
    }


def test_every_metric_is_on_the_page_with_its_type_and_labels() -> None:
    metrics = exposed_metrics()
    on_page = {c[0].strip("`"): (c[1], set(TICKED.findall(c[2]))) for c in rows("Metrics")}
    compare("the exporter's metrics", set(metrics), set(on_page))
    differ = {
        m: (on_page[m], metrics[m]) for m in metrics if on_page.get(m, metrics[m]) != metrics[m]
    }
    assert not differ, f"type or labels on the page (left) differ from the exporter's: {differ}"


def test_the_alerts_and_the_dashboard_use_metrics_the_exporter_has() -> None:
    metrics = exposed_metrics()
    for name in ("ops/prometheus/rebook-alerts.yaml", "ops/grafana/rebook.json"):
        used = set(re.findall(r"\brebook_[a-z_]+", (ROOT / name).read_text(encoding="utf-8")))
        assert used, f"{name}: no rebook_ metric found"
        unknown = sorted(u for u in used if u not in metrics)
        assert not unknown, f"{name} uses metrics the exporter does not have: {unknown}"


def test_the_sandboxs_operations_and_fault_kinds() -> None:
    from rebook_dev.sandbox import FAULT_KINDS, OPERATIONS

    on_page = {n for n in first_cells("Sandbox") if re.fullmatch(r"[A-Za-z]+", n)}
    compare("the sandbox's operations", set(OPERATIONS), on_page)
    kinds = re.search(r"^Fault kinds: ([^.]+)\.", sections()["Sandbox"], flags=re.M)
    assert kinds, "no 'Fault kinds: ...' line in the Sandbox section"
    compare("the sandbox's fault kinds", set(FAULT_KINDS), set(TICKED.findall(kinds.group(1))))


def _fields(paragraph_start: str) -> set[str]:
    """The names after "Fields " up to the `;` in the paragraph that starts so."""
    text = sections()["Streams"]
    paragraph = text[text.index(paragraph_start) :].split("\n\n", 1)[0]
    listed = re.search(r"Fields\s([^;]+);", paragraph)
    assert listed, f"no 'Fields ...;' in the paragraph {paragraph_start!r}"
    return set(TICKED.findall(listed.group(1)))


@pytest.mark.parametrize(
    ("stream", "in_code"),
    [
        (
            "**`{prefix}outcomes`**",
            lambda: set(json.loads((ROOT / "docs/schemas/outcome.json").read_text())["properties"]),
        ),
        ("**`{prefix}audit`**", lambda: {f.name for f in dataclasses.fields(Finding)}),
    ],
)
def test_stream_fields(stream: str, in_code: Any) -> None:
    compare(f"the fields of {stream}", in_code(), _fields(stream))


def test_audit_kinds() -> None:
    paragraph = sections()["Streams"].split("**`{prefix}audit`**", 1)[1].split("\n\n", 1)[0]
    kinds = re.search(r"`kind` is one of ([^.]+)\.", paragraph)
    assert kinds
    compare("audit finding kinds", set(KINDS), set(TICKED.findall(kinds.group(1))))
