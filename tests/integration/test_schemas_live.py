"""The schemas against the real thing: the console's answers (served by the Flower launcher over a
real worker, Redis and the sandbox) validated with `jsonschema` against the OpenAPI document it
serves, and the outcome stream's real entries against docs/schemas/outcome*.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from tests.integration.conftest import System
from tests.integration.console_helpers import AUTH, flower_for
from worker.celeryapp.fanout import outcome_payload
from worker.core.states import State
from worker.operations.console.openapi import document

pytestmark = pytest.mark.integration
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


@pytest.fixture(scope="module")
def console(system: System) -> Iterator[str]:
    with flower_for(system) as base:
        yield base


class Api:
    """Calls the console and checks each answer against the document's schema for its path,
    method and status (an undocumented status fails too)."""

    def __init__(self, base: str, doc: dict[str, Any]) -> None:
        self.base, self.doc = base, doc
        self.checked: list[tuple[str, str, int]] = []

    def schema_for(self, path: str, method: str, status: int) -> dict[str, Any] | None:
        responses = self.doc["paths"][path][method]["responses"]
        assert str(status) in responses, f"{method.upper()} {path} answered undocumented {status}"
        content = responses[str(status)].get("content")
        if content is None:
            return None
        return {**content["application/json"]["schema"], "components": self.doc["components"]}

    def call(self, method: str, path: str, url_path: str, **kw: Any) -> requests.Response:
        if method == "post":
            body = kw.get("json")
            request_schema = self.doc["paths"][path]["post"]["requestBody"]["content"]
            schema = {
                **request_schema["application/json"]["schema"],
                "components": self.doc["components"],
            }
            valid = not list(Draft202012Validator(schema).iter_errors(body))
        resp = requests.request(method, self.base + url_path, auth=AUTH, timeout=30, **kw)
        schema = self.schema_for(path, method, resp.status_code)
        if schema is not None:
            errors = [e.message for e in Draft202012Validator(schema).iter_errors(resp.json())]
            assert not errors, f"{method.upper()} {url_path} -> {resp.status_code}: {errors}"
        if method == "post" and resp.status_code == 200:
            assert valid, f"the console accepted a body its schema refuses: {body}"
        self.checked.append((method, path, resp.status_code))
        return resp


def test_openapi_is_served_behind_auth_and_valid(console: str) -> None:
    assert requests.get(console + "/api/openapi.json", timeout=10).status_code == 401
    served = requests.get(console + "/api/openapi.json", auth=AUTH, timeout=10)
    assert served.status_code == 200
    assert served.headers["Content-Type"].startswith("application/json")
    doc = served.json()
    validate_openapi(doc)
    assert doc == document(doc["info"]["version"])
    assert doc == json.loads((SCHEMAS / "openapi.json").read_text()) | {"info": doc["info"]}


def test_every_answer_of_the_console_matches_the_document(console: str, system: System) -> None:
    api = Api(console, requests.get(console + "/api/openapi.json", auth=AUTH, timeout=10).json())
    user = system.member()
    online, offline = system.performer(online=True), system.performer(online=False)
    booked, _ = system.rebook(user, online)
    waiting = [system.rebook(user, offline)[0] for _ in range(2)]
    system.wait_state(booked, [State.WATCHING, State.ACCEPTED, State.CONFIRMED], timeout=30)
    for rid in waiting:
        system.wait_state(rid, State.WAITING)

    page = api.call("get", "/api/rebooks", "/api/rebooks", params={"user_id": user, "limit": 2})
    assert page.status_code == 200 and len(page.json()["items"]) == 2 and page.json()["next"]
    rest = api.call(
        "get",
        "/api/rebooks",
        "/api/rebooks",
        params={"user_id": user, "cursor": page.json()["next"]},
    )
    assert rest.status_code == 200 and rest.json()["next"] is None
    for state in ("WAITING", "WATCHING"):
        api.call("get", "/api/rebooks", "/api/rebooks", params={"state": state})
    assert api.call("get", "/api/rebooks", "/api/rebooks", params={"limit": 0}).status_code == 400
    one = "/api/rebooks/{rebook_id}"
    for rid in (booked, *waiting):
        detail = api.call("get", one, f"/api/rebooks/{rid}")
        assert detail.status_code == 200 and detail.json()["history"]
    assert api.call("get", one, "/api/rebooks/rb-0000000000000000").status_code == 404

    act = "/api/rebooks/actions"
    dry = api.call(
        "post",
        act,
        act,
        json={"action": "cancel", "filter": {"user_id": user, "state": "WAITING"}, "dry_run": True},
    )
    assert dry.status_code == 200 and sorted(dry.json()["would_do"]) == sorted(waiting)
    done = api.call("post", act, act, json={"action": "cancel", "ids": [*waiting, "rb-none"]})
    assert done.status_code == 200
    assert {d["state"] for d in done.json()["done"]} == {"ABORTED"}
    assert [r["rebook_id"] for r in done.json()["refused"]] == ["rb-none"]
    retry = api.call("post", act, act, json={"action": "retry", "ids": [booked]})
    assert retry.status_code == 200 and retry.json()["refused"]
    assert api.call("post", act, act, json={"action": "cancel", "filter": {}}).status_code == 400
    assert api.call("post", act, act, json={"action": "nope", "ids": []}).status_code == 400
    statuses = {(path, status) for _, path, status in api.checked}
    assert {("/api/rebooks", 200), ("/api/rebooks", 400), (one, 200), (one, 404)} <= statuses
    assert {(act, 200), (act, 400)} <= statuses

    # the same run's outcome stream, raw and as the fan-out delivers it
    entry = Draft202012Validator(json.loads((SCHEMAS / "outcome.json").read_text()))
    message = Draft202012Validator(json.loads((SCHEMAS / "outcome-message.json").read_text()))
    mine = [o for o in system.store.outcomes(1000) if o["rebook_id"] in (booked, *waiting)]
    assert {o["state"] for o in mine} >= {"BOOKED", "ABORTED"}
    for row in mine:
        fields = {k: v for k, v in row.items() if k != "id"}
        assert not [e.message for e in entry.iter_errors(fields)], fields
        json.loads(fields["detail"])  # contentMediaType: JSON text of an object
        delivered = outcome_payload(row["id"], fields)
        assert not [e.message for e in message.iter_errors(delivered)], delivered
