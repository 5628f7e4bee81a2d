"""The schemas against the real thing, on one system (real worker, Redis, sandbox): the console's
answers (served by the Flower launcher) validated with `jsonschema` against the OpenAPI document
it serves, the outcome stream's real entries against docs/schemas/outcome*.json, and the README's
Node.js producer example: its event fits docs/schemas/event.json (always) and, where node and npm
are installed, the block itself runs with celery-node (pinned by tests/node/package-lock.json,
installed once into `<venv>/node`) against the worker."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
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
from worker.core.store import rebook_id_for
from worker.operations.console.openapi import document

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schemas"


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
    mine = [o for o in system.store.outcomes.outcomes(1000) if o["rebook_id"] in (booked, *waiting)]
    assert {o["state"] for o in mine} >= {"BOOKED", "ABORTED"}
    for row in mine:
        fields = {k: v for k, v in row.items() if k != "id"}
        assert not [e.message for e in entry.iter_errors(fields)], fields
        json.loads(fields["detail"])  # contentMediaType: JSON text of an object
        delivered = outcome_payload(row["id"], fields)
        assert not [e.message for e in message.iter_errors(delivered)], delivered


# -- the README's Node.js producer --------------------------------------------------------------

MARKER = "<!-- producer-example: node -->"
NODE_PACKAGE = ROOT / "tests" / "node"


def example() -> str:
    """The javascript block right after the marker in README.md."""
    text = (ROOT / "README.md").read_text()
    assert text.count(MARKER) == 1, "README: the Node.js example's marker is missing"
    block = re.search(r"```javascript\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block is not None
    return block.group(1)


def example_event(code: str) -> dict[str, object]:
    """The object literal passed to sendRebook, read as JSON (keys quoted)."""
    literal = re.search(r"sendRebook\((\{.*?\})\)", code, re.S)
    assert literal is not None, "README: the example no longer calls sendRebook({...})"
    quoted = re.sub(r"^(\s*)([A-Za-z_]\w*):", r'\1"\2":', literal.group(1), flags=re.M)
    return json.loads(re.sub(r",(\s*)\}", r"\1}", quoted))  # type: ignore[no-any-return]


def test_the_examples_event_fits_the_schema() -> None:
    event = example_event(example())
    schema = json.loads((ROOT / "docs" / "schemas" / "event.json").read_text())
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(event)]
    assert not errors, errors
    assert {"event_id", "booking_id", "user_id"} <= set(event)


def node_modules() -> Path:
    """celery-node as the lock pins it, installed once per venv (npm's cache after that)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed: the example's event was checked against the schema")
    lock = (NODE_PACKAGE / "package-lock.json").read_bytes()
    target = Path(sys.prefix) / "node"
    stamp = target / ".lock-sha256"
    digest = hashlib.sha256(lock).hexdigest()
    if not (stamp.exists() and stamp.read_text() == digest):
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(NODE_PACKAGE / name, target / name)
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=target,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            if os.environ.get("CI") == "true":
                pytest.fail(f"npm ci: {done.stderr[-2000:]}")
            pytest.skip(f"npm ci failed (offline?): {done.stderr[-300:]}")
        stamp.write_text(digest)
    return target / "node_modules"


def test_the_readme_example_runs_with_node_against_a_real_worker(
    system: System, tmp_path: Path
) -> None:
    modules = node_modules()
    user = system.member()
    performer = system.performer(online=True)
    booking = system.sandbox.add_booking(user, performer)
    event_id = f"node-{uuid.uuid4().hex[:12]}"
    code = example()
    shown = example_event(code)
    # the example's own values, swapped for this system's (each exactly once, or the README
    # changed shape and this test must be looked at)
    swaps = {
        '"rebook.events"': json.dumps(system.settings.broker_key_prefix + "rebook.events"),
        json.dumps(shown["event_id"]): json.dumps(event_id),
        f"booking_id: {shown['booking_id']}": f"booking_id: {booking}",
        json.dumps(shown["user_id"]): json.dumps(user),
        f"performer_id: {shown['performer_id']}": f"performer_id: {performer}",
    }
    for old, new in swaps.items():
        assert code.count(old) == 1, f"README example: {old} appears {code.count(old)} times"
        code = code.replace(old, new)
    script = tmp_path / "producer.js"
    script.write_text(code)
    done = subprocess.run(
        ["node", str(script)],
        env={**os.environ, "NODE_PATH": str(modules), "REBOOK_BROKER_URL": system.settings.broker},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rec = system.wait_state(rebook_id_for(event_id), [State.WATCHING, State.ACCEPTED])
    assert (rec.booking_id, rec.user_id, rec.performer_id) == (booking, user, performer)
    assert not [
        d for d in system.store.outcomes.deadletters(50) if event_id in d.get("payload", "")
    ]
