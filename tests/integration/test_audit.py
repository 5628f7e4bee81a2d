"""The ledger audit through a real worker and beat (audit every second) and the sandbox: quiet
on a clean run; a double made behind rebook's back, an orphan and a missing booking are found
within two audit intervals, in the stream, the metric and `rebook audit`, each appended once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests
from jsonschema import Draft202012Validator

from tests.integration.conftest import System, running_system, wait_for
from tests.integration.console_helpers import AUTH, flower_for
from tests.integration.test_console_browser import CHROMIUM, SHOTS, _browser_or_skip
from tests.integration.test_ops import SentryCollector
from worker.core.audit import recorded
from worker.core.states import State
from worker.operations import exporter
from worker.operations.console.openapi import document

pytestmark = pytest.mark.integration

AUDIT_INTERVAL = 1.0
WITHIN = 2 * AUDIT_INTERVAL + 6.0
"""Two audit intervals, and a margin for the run itself and beat's tick on a busy machine."""


@pytest.fixture(scope="module")
def sentry() -> Iterator[SentryCollector]:
    collector = SentryCollector()
    yield collector
    collector.close()


@pytest.fixture(scope="module")
def system(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, sentry: SentryCollector
) -> Iterator[System]:
    with running_system(
        redis_url,
        tmp_path_factory.mktemp("audit"),
        audit_interval_seconds=AUDIT_INTERVAL,
        sentry_dsn=f"http://abcdef0123456789@127.0.0.1:{sentry.port}/24",
    ) as sysm:
        yield sysm


def sentry_events(sentry: SentryCollector, kind: str, new_id: int) -> list[dict]:
    """The Sentry events of audit findings of `kind` naming `new_id`."""
    return [
        e
        for e in sentry.items("event")
        if e.get("tags", {}).get("audit_kind") == kind
        and new_id in e.get("contexts", {}).get("finding", {}).get("new_booking_ids", [])
    ]


def audit_json(system: System, *args: str) -> tuple[int, dict]:
    done = system.cli("audit", "--json", *args)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def metric(system: System, kind: str) -> float:
    for family in exporter.collector(system.store).collect():
        if family.name == "rebook_audit_findings":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["kind"] == kind:
                    return sample.value
    raise AssertionError("rebook_audit_findings_total is not exported")


def in_stream(system: System, kind: str, new_id: int) -> list[dict]:
    return [
        f.as_json()
        for _, f in recorded(system.store, 1000)
        if f.kind == kind and new_id in f.new_booking_ids
    ]


def test_a_clean_run_has_no_findings(system: System) -> None:
    user = system.member()
    rid, _ = system.rebook(user, system.performer(online=True))
    system.wait_state(rid, State.WATCHING)
    # an audit run after the booking: the beat's and ours see nothing
    wait_for(lambda: system.store.r.hget(system.store.keys.audit_checked, user), WITHIN, "audit")
    code, report = audit_json(system)
    assert (code, report["findings"]) == (0, [])
    assert report["checked_members"] >= 1
    assert list(recorded(system.store)) == []
    assert metric(system, "double") == 0


def test_a_double_made_behind_rebooks_back_is_found(
    system: System, sentry: SentryCollector
) -> None:
    user = system.member()
    rid, orig = system.rebook(user, system.performer(online=True))
    rec = system.wait_state(rid, State.WATCHING)
    assert rec.new_booking_id is not None
    other = system.sandbox.reschedule_elsewhere(orig)
    assert system.sandbox.stats()["new_bookings"][str(orig)] == 2
    made = time.monotonic()
    (entry,) = wait_for(lambda: in_stream(system, "double", other), WITHIN, "double in stream")
    assert time.monotonic() - made <= WITHIN
    assert entry["booking_id"] == orig
    assert entry["new_booking_ids"] == sorted([rec.new_booking_id, other])
    assert entry["rebook_ids"] == [rid]
    assert metric(system, "double") >= 1
    code, report = audit_json(system)
    assert code == 1
    assert any(
        f["kind"] == "double" and f["booking_id"] == orig and f["user_id"] == user
        for f in report["findings"]
    )
    text = system.cli("audit")
    assert text.returncode == 1 and "double" in text.stdout
    (event,) = wait_for(lambda: sentry_events(sentry, "double", other), WITHIN, "Sentry event")
    assert str(orig) in json.dumps(event)


def test_an_orphan_and_a_missing_booking_are_found_once(
    system: System, sentry: SentryCollector
) -> None:
    user = system.member()
    waiting_rid, waiting_orig = system.rebook(user, system.performer(online=False))
    system.wait_state(waiting_rid, State.WAITING)
    rid, orig = system.rebook(user, system.performer(online=True))
    new = system.wait_state(rid, State.WATCHING).new_booking_id
    assert new is not None
    stray = system.sandbox.reschedule_elsewhere(waiting_orig)
    system.sandbox.remove_booking(new)
    (orphan,) = wait_for(lambda: in_stream(system, "orphan", stray), WITHIN, "orphan")
    if system.store.performer_field.performer_field() is not None:  # by performer
        assert (orphan["booking_id"], orphan["rebook_ids"]) == (waiting_orig, [waiting_rid])
    else:  # the member's rebooks together: the smallest original is named
        assert (orphan["booking_id"], orphan["rebook_ids"]) == (
            waiting_orig,
            sorted([rid, waiting_rid]),
        )
    (missing,) = wait_for(lambda: in_stream(system, "missing", new), WITHIN, "missing")
    assert (missing["booking_id"], missing["rebook_ids"]) == (orig, [rid])
    # later runs find them again and append nothing
    last = float(system.store.r.hget(system.store.keys.audit_checked, user) or 0)
    wait_for(
        lambda: (
            float(system.store.r.hget(system.store.keys.audit_checked, user) or 0)
            > last + AUDIT_INTERVAL
        ),
        WITHIN,
        "two more audit runs",
    )
    assert len(in_stream(system, "orphan", stray)) == 1
    assert len(in_stream(system, "missing", new)) == 1
    fingerprints = [
        (f.kind, f.booking_id, f.new_booking_ids) for _, f in recorded(system.store, 1000)
    ]
    assert len(fingerprints) == len(set(fingerprints))
    assert metric(system, "orphan") == 1 and metric(system, "missing") == 1
    for kind, new_id in (("orphan", stray), ("missing", new)):  # one event each, not one a run
        wait_for(lambda k=kind, n=new_id: sentry_events(sentry, k, n), WITHIN, f"{kind} event")
        assert len(sentry_events(sentry, kind, new_id)) == 1


def test_the_console_lists_findings_newest_first(system: System) -> None:
    """`/rebooks/audit` and `GET /api/audit` (checked against the OpenAPI document), and the
    README's screenshot of the page in a real browser (REBOOK_SCREENSHOTS=docs)."""
    user = system.member()
    rid, orig = system.rebook(user, system.performer(online=True))
    system.wait_state(rid, State.WATCHING)
    other = system.sandbox.reschedule_elsewhere(orig)
    wait_for(lambda: in_stream(system, "double", other), WITHIN, "double in stream")
    doc = document()
    with flower_for(system) as base:
        assert requests.get(base + "/api/audit", timeout=10).status_code == 401
        api = requests.get(base + "/api/audit", auth=AUTH, timeout=10)
        assert api.status_code == 200
        schema = {
            **doc["paths"]["/api/audit"]["get"]["responses"]["200"]["content"]["application/json"][
                "schema"
            ],
            "components": doc["components"],
        }
        assert not [e.message for e in Draft202012Validator(schema).iter_errors(api.json())]
        found = api.json()["findings"]
        assert found[0]["new_booking_ids"] == sorted([system.get(rid).new_booking_id, other])
        stamps = [f["found_at"] for f in found]
        assert stamps == sorted(stamps, reverse=True)  # newest first
        assert api.json()["counts"]["double"] >= 1
        page = requests.get(base + "/rebooks/audit", auth=AUTH, timeout=10)
        assert page.status_code == 200
        assert f'href="/rebooks/{rid}"' in page.text
        assert f'href="/rebooks?user_id={user}"' in page.text
        home = requests.get(base + "/rebooks", auth=AUTH, timeout=10)
        assert 'id="nav-audit"' in home.text
        _screenshot(base)


def _screenshot(base: str) -> None:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            context = chromium.new_context(
                http_credentials={"username": AUTH[0], "password": AUTH[1]},
                viewport={"width": 1400, "height": 700},
            )
            tab = context.new_page()
            tab.goto(base + "/rebooks")
            tab.click("#nav-audit")  # from the nav, as an operator gets there
            tab.wait_for_selector("#findings tr.finding")
            assert "double" in tab.inner_text("#findings")
            SHOTS.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(SHOTS / "console-audit.png"), full_page=True)
            context.close()
        finally:
            chromium.close()
