"""The OpenAPI 3.1 document of the console's JSON API (`GET /api/openapi.json`).

The shapes are pydantic models, rendered into `components.schemas` by pydantic's own JSON Schema
generator (OpenAPI 3.1 schemas are JSON Schema 2020-12); the paths around them are written here.
Tests check the document with `openapi-spec-validator` and every answer of the real console
against it with `jsonschema`, so the two cannot drift apart unnoticed. No Flower or Tornado
import: `rebook schema openapi` prints it where Flower is not installed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from worker.core.actions import MAX_BULK
from worker.core.models import EVENT_ID_PATTERN
from worker.core.schemas import ISO_Z, REBOOK_ID
from worker.core.states import State

PAGE_DEFAULT = 50
PAGE_MAX = 500
_REF = "#/components/schemas/{model}"
_ISO_Z_OR_NULL = {"anyOf": [{"type": "string", "pattern": ISO_Z}, {"type": "null"}]}


class Error(BaseModel):
    """A refused request: what to change, in one line."""

    error: str


class RebookSummary(BaseModel):
    """A rebook as `rebook list --json` prints it (`Rebook.public()`)."""

    model_config = ConfigDict(extra="allow")

    rebook_id: str = Field(pattern=REBOOK_ID)
    event_id: str = Field(pattern=EVENT_ID_PATTERN)
    booking_id: int
    user_id: str
    performer_id: int | None
    state: State
    reason: str
    new_booking_id: int | None
    accept_by: str | None = Field(json_schema_extra=_ISO_Z_OR_NULL)  # type: ignore[arg-type]
    status: str | None
    duplicate_of: str | None
    action: str | None
    created_at: str = Field(pattern=ISO_Z)
    updated_at: str = Field(pattern=ISO_Z)
    deadline: str = Field(pattern=ISO_Z)


class HistoryEntry(BaseModel):
    """One transition: the state left (`from`, "" for the first), the state entered, why."""

    model_config = ConfigDict(extra="allow")

    at: str = Field(pattern=ISO_Z)
    from_: State | Literal[""] = Field(alias="from")
    to: State
    reason: str


class RebookDetail(RebookSummary):
    """A rebook with its history, oldest first (`rebook status ID --json`)."""

    history: list[HistoryEntry]


class RebookPage(BaseModel):
    """One page, newest first; `next` is the cursor of the next page (null: the last)."""

    items: list[RebookSummary]
    next: str | None


class ActionFilter(BaseModel):
    """The filters of `GET /api/rebooks` (at least one; never every rebook)."""

    model_config = ConfigDict(extra="forbid")

    state: str | None = None
    reason: str | None = Field(None, description="exact, or a prefix ending in `*`")
    user_id: str | None = None
    performer_id: int | str | None = None
    booking_id: int | str | None = None
    q: str | None = Field(None, description="an event id, or the start of a rebook id")
    since: str | int | None = Field(None, description="ISO 8601, a date, unix seconds, 6h, today")


class ActionRequest(BaseModel):
    """Retry or cancel the rebooks named by `ids` or matching `filter` (one of the two), each
    through the flow's own checks; `dry_run` says what would be done and refused."""

    action: Literal["retry", "cancel"]
    ids: list[str] | None = Field(None, max_length=MAX_BULK)
    filter: ActionFilter | None = None
    dry_run: bool = False


class ActionDone(BaseModel):
    rebook_id: str
    state: State
    reason: str


class ActionRefused(BaseModel):
    rebook_id: str
    why: str


class ActionResult(BaseModel):
    """What was matched, done and refused (`would_do` on a dry run only)."""

    action: Literal["retry", "cancel"]
    dry_run: bool
    matched: list[str]
    done: list[ActionDone]
    refused: list[ActionRefused]
    would_do: list[str] | None = None
    truncated: bool | None = None


class AuditFinding(BaseModel):
    """One ledger-audit finding, as `rebook audit --json` prints it and `{prefix}audit` holds it
    (README "Ledger audit")."""

    kind: Literal["double", "orphan", "missing"]
    user_id: str
    booking_id: int = Field(description="the original (the smallest, when originals overlap)")
    new_booking_ids: list[int]
    rebook_ids: list[str]
    found_at: str = Field(pattern=ISO_Z)


class AuditRun(BaseModel):
    """The last run of the beat task `rebook.audit`."""

    at: str = Field(pattern=ISO_Z)
    checked_members: int
    unchecked_members: int
    findings: int


class AuditFindings(BaseModel):
    """The findings appended so far, newest first; counts by kind; the last run (null: none)."""

    findings: list[AuditFinding]
    counts: dict[str, int]
    last_run: AuditRun | None


MODELS: list[type[BaseModel]] = [
    Error,
    RebookSummary,
    HistoryEntry,
    RebookDetail,
    RebookPage,
    ActionFilter,
    ActionRequest,
    ActionDone,
    ActionRefused,
    ActionResult,
    AuditFinding,
    AuditRun,
    AuditFindings,
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _components() -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in MODELS], ref_template=_REF)
    schemas: dict[str, Any] = top.get("$defs", {})
    # one of `ids` and `filter`, never both, never neither
    schemas["ActionRequest"]["oneOf"] = [{"required": ["ids"]}, {"required": ["filter"]}]
    schemas["ActionRequest"]["not"] = {"required": ["ids", "filter"]}
    return schemas


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def document(version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document; paths are relative to Flower's root (and its `--url_prefix`)."""
    unauthorized = {"description": "no or wrong basic-auth credentials (Flower's own check)"}
    bad = _json("Error", "a filter, a limit or the body is wrong")
    filters = [
        _query("state", "a state, e.g. WAITING", {"type": "string"}),
        _query("reason", "exact, or a prefix ending in *", {"type": "string"}),
        _query("user_id", "the member", {"type": "string"}),
        _query("performer_id", "the performer", {"type": "integer", "minimum": 1}),
        _query("booking_id", "the original booking", {"type": "integer", "minimum": 1}),
        _query("q", "an event id, or the start of a rebook id", {"type": "string"}),
        _query(
            "since", "created since: ISO 8601, a date, unix seconds, 6h, today", {"type": "string"}
        ),
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rebook console API",
            "version": version,
            "description": (
                "The rebook console's JSON API, served by Flower (`python -m "
                "worker.operations.flower`) behind Flower's basic auth. POSTs take "
                "`application/json` only and are refused cross-site (403)."
            ),
        },
        "servers": [{"url": "/", "description": "Flower's root (prefix it with --url_prefix)"}],
        "security": [{"basicAuth": []}],
        "paths": {
            "/api/rebooks": {
                "get": {
                    "operationId": "listRebooks",
                    "summary": "Rebooks matching the filters, newest first, a page at a time",
                    "parameters": [
                        *filters,
                        _query(
                            "limit",
                            "rebooks per page",
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": PAGE_MAX,
                                "default": PAGE_DEFAULT,
                            },
                        ),
                        _query("cursor", "`next` of the previous page", {"type": "string"}),
                    ],
                    "responses": {
                        "200": _json("RebookPage", "a page of rebooks"),
                        "400": bad,
                        "401": unauthorized,
                    },
                }
            },
            "/api/rebooks/{rebook_id}": {
                "get": {
                    "operationId": "getRebook",
                    "summary": "One rebook and its history (by rebook id or event id)",
                    "parameters": [
                        {
                            "name": "rebook_id",
                            "in": "path",
                            "required": True,
                            "description": "a rebook id (rb-...) or the event id it came from",
                            "schema": {"type": "string", "pattern": r"^[A-Za-z0-9._:%-]{1,200}$"},
                        }
                    ],
                    "responses": {
                        "200": _json("RebookDetail", "the rebook"),
                        "401": unauthorized,
                        "404": _json("Error", "no such rebook"),
                    },
                }
            },
            "/api/rebooks/actions": {
                "post": {
                    "operationId": "actOnRebooks",
                    "summary": "Retry or cancel rebooks by id or by filter (dry run first)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ActionRequest")}},
                    },
                    "responses": {
                        "200": _json("ActionResult", "what was done and refused, and why"),
                        "400": bad,
                        "401": unauthorized,
                        "403": {"description": "a cross-site request (Sec-Fetch-Site, Origin)"},
                        "415": {"description": "the body is not application/json"},
                    },
                }
            },
            "/api/audit": {
                "get": {
                    "operationId": "listAuditFindings",
                    "summary": "The ledger audit's findings, newest first, each appended once",
                    "parameters": [
                        _query(
                            "limit",
                            "findings",
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": PAGE_MAX,
                                "default": PAGE_DEFAULT,
                            },
                        )
                    ],
                    "responses": {
                        "200": _json("AuditFindings", "findings, counts by kind, the last run"),
                        "400": bad,
                        "401": unauthorized,
                    },
                }
            },
            "/rebooks/audit": {
                "get": {
                    "operationId": "auditPage",
                    "summary": "The console's audit page (HTML): findings newest first, each "
                    "linking to its rebooks and the member's filtered list",
                    "responses": {
                        "200": {
                            "description": "an HTML page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        "401": unauthorized,
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "401": unauthorized,
                    },
                }
            },
        },
        "components": {
            "schemas": _components(),
            "securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic"}},
        },
    }
