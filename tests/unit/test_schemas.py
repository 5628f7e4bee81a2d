"""The committed schemas (docs/schemas/) are what the models generate, and they are valid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from typer.testing import CliRunner

from worker.core.schemas import MODELS, OutcomeState, json_schema
from worker.core.states import TERMINAL_STATES, State
from worker.core.store import Rebook
from worker.operations import exporter
from worker.operations.cli import cli
from worker.operations.console.openapi import RebookSummary, document

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
KINDS = [*MODELS, "openapi"]


def committed(kind: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{kind}.json").read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_committed_file_is_what_rebook_schema_prints(kind: str) -> None:
    """Fails when a model changed without `rebook schema KIND > docs/schemas/KIND.json`."""
    result = CliRunner().invoke(cli, ["schema", kind])
    assert result.exit_code == 0, result.output
    assert result.output == (SCHEMAS / f"{kind}.json").read_text(), (
        f"docs/schemas/{kind}.json is stale: run `rebook schema {kind} > docs/schemas/{kind}.json`"
    )
    expected = document() if kind == "openapi" else json_schema(kind)
    assert json.loads(result.output) == expected


@pytest.mark.parametrize("kind", list(MODELS))
def test_json_schemas_are_valid_draft_2020_12(kind: str) -> None:
    Draft202012Validator.check_schema(committed(kind))


def test_openapi_document_is_valid_openapi_3_1() -> None:
    doc = committed("openapi")
    assert doc["openapi"].startswith("3.1")
    validate_openapi(doc)
    assert set(doc["paths"]) >= {"/api/rebooks", "/api/rebooks/{rebook_id}", "/api/rebooks/actions"}


def test_event_schema_accepts_what_the_model_accepts() -> None:
    schema = Draft202012Validator(committed("event"))
    good = {"event_id": "missed-2024-05-01-4242", "booking_id": 4242, "user_id": "member-17"}
    full = {**good, "performer_id": 99, "max_wait_seconds": 3600, "source": "crm"}
    for event in (good, full):
        assert not list(schema.iter_errors(event))
        MODELS["event"].model_validate(event)
    bad = [
        {**good, "booking_id": "4242"},  # strict: a string is not an id
        {**good, "event_id": "has space"},
        {**good, "booking_id": 0},
        {**good, "max_wait_seconds": 7 * 86400 + 1},
        {"event_id": "e", "booking_id": 1},  # no user
    ]
    for event in bad:
        assert list(schema.iter_errors(event)), event


def test_outcome_states_are_the_states_that_publish() -> None:
    published = {"BOOKED", State.NEEDS_ATTENTION.value} | {s.value for s in TERMINAL_STATES}
    assert set(get_args(OutcomeState)) == published == set(exporter.OUTCOME_STATES)


def test_api_summary_has_exactly_the_public_fields() -> None:
    rec = Rebook(
        rebook_id="rb-0123456789abcdef",
        event_id="e-1",
        booking_id=1,
        user_id="m",
        state=State.WAITING,
        created_ts=1.0,
        deadline_ts=2.0,
    )
    assert set(rec.public()) == set(RebookSummary.model_fields)
    RebookSummary.model_validate(rec.public())


def test_every_console_api_route_and_method_is_documented() -> None:
    """A new `/api/...` handler (or a new method on one) fails here until openapi.py has it."""
    import re

    from worker.operations.console.handlers import routes

    doc = document()
    templates = {
        path: re.compile(re.sub(r"\{[^}]+\}", "[^/]+", path) + "$") for path in doc["paths"]
    }
    seen = 0
    for route in routes():
        pattern = route.regex.pattern.rstrip("$")
        if not pattern.startswith("/api/"):
            continue
        sample = re.sub(r"\([^)]*\)", "rb-0123456789abcdef", pattern)
        # a literal path wins over a template (`/api/rebooks/actions` over `.../{rebook_id}`)
        matching = sorted(
            (p for p, rx in templates.items() if rx.match(sample)), key=lambda p: p.count("{")
        )
        assert matching, f"{pattern} is not in the OpenAPI document"
        methods = {m for m in ("get", "post", "put", "patch", "delete") if m in vars(route.target)}
        documented = set(doc["paths"][matching[0]])
        assert methods == documented, f"{pattern}: handler {methods}, document {documented}"
        seen += 1
    assert seen >= 4  # rebooks, one rebook, actions, this document
