"""The console over HTTP, served by the real Flower launcher against a real worker, Redis and the
sandbox: Flower's auth on every page and API, filters, cursors, actions through the flow,
cross-site POSTs refused, untrusted text escaped, no secret on any page."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import PUBLIC_FIELDS
from tests.integration.conftest import System
from tests.integration.console_helpers import AUTH, flower_for
from worker.core.states import State
from worker.core.store import rebook_id_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def console(system: System) -> Iterator[str]:
    with flower_for(system) as base:
        yield base


def get(url: str, **kw: object) -> requests.Response:
    return requests.get(url, auth=AUTH, timeout=30, **kw)  # type: ignore[arg-type]


def test_every_console_url_needs_flowers_auth(console: str, system: System) -> None:
    for path in ("/rebooks", "/rebooks/rb-x", "/api/rebooks", "/api/rebooks/rb-x"):
        assert requests.get(console + path, timeout=10).status_code == 401, path
        assert requests.get(console + path, auth=("ops", "no"), timeout=10).status_code == 401
    posted = requests.post(
        console + "/api/rebooks/actions", json={"action": "retry", "ids": []}, timeout=10
    )
    assert posted.status_code == 401
    page = get(console + "/rebooks")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    flower_page = get(console + "/")
    assert 'id="rebook-console-link"' in flower_page.text  # the link in Flower's navbar


def test_api_filters_cursor_and_detail(console: str, system: System) -> None:
    user = system.member()
    performer = system.performer(online=False)
    rids = [system.rebook(user, performer)[0] for _ in range(3)]
    for rid in rids:
        system.wait_state(rid, State.WAITING)
    # Newest first by the time intake recorded each one (score desc, then id desc): two
    # worker processes may take the three events in any order, so send order proves nothing.
    created = {rid: system.store.records.get(rid).created_ts for rid in rids}  # type: ignore[union-attr]
    newest = sorted(rids, key=lambda rid: (created[rid], rid), reverse=True)
    first = get(console + "/api/rebooks", params={"user_id": user, "limit": 2}).json()
    assert [i["rebook_id"] for i in first["items"]] == newest[:2]
    assert all(k in first["items"][0] for k in PUBLIC_FIELDS)
    rest = get(
        console + "/api/rebooks", params={"user_id": user, "limit": 2, "cursor": first["next"]}
    ).json()
    assert [i["rebook_id"] for i in rest["items"]] == newest[2:] and rest["next"] is None
    by_perf = get(console + "/api/rebooks", params={"performer_id": performer}).json()
    assert len(by_perf["items"]) == 3
    detail = get(console + f"/api/rebooks/{rids[0]}").json()
    assert detail["rebook_id"] == rids[0] and detail["history"][0]["reason"] == "received"
    assert get(console + "/api/rebooks/rb-none").status_code == 404
    assert get(console + "/api/rebooks", params={"state": "NOPE"}).status_code == 400
    page = get(console + "/rebooks", params={"user_id": user})
    assert all(rid in page.text for rid in rids)


def test_actions_api_goes_through_the_flow(console: str, system: System) -> None:
    user = system.member()
    performer = system.performer(online=False)
    rids = sorted(system.rebook(user, performer)[0] for _ in range(2))
    for rid in rids:
        system.wait_state(rid, State.WAITING)
    url = console + "/api/rebooks/actions"
    dry = requests.post(
        url,
        json={"action": "cancel", "filter": {"user_id": user}, "dry_run": True},
        auth=AUTH,
        timeout=30,
    ).json()
    assert sorted(dry["matched"]) == rids and dry["done"] == [] and dry["refused"] == []
    assert all(system.get(r).state == State.WAITING for r in rids)  # type: ignore[union-attr]
    done = requests.post(url, json={"action": "cancel", "ids": rids}, auth=AUTH, timeout=30).json()
    assert {d["state"] for d in done["done"]} == {"ABORTED"}
    again = requests.post(
        url, json={"action": "cancel", "ids": [*rids, "rb-none"]}, auth=AUTH, timeout=30
    ).json()
    assert len(again["refused"]) == 3 and "already ABORTED" in again["refused"][-1]["why"]
    # cross-site: refused before anything is done
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        refused = requests.post(
            url, json={"action": "retry", "ids": rids}, auth=AUTH, headers=headers, timeout=30
        )
        assert refused.status_code == 403
    form = requests.post(url, data={"action": "retry"}, auth=AUTH, timeout=30)
    assert form.status_code == 415  # a form cannot post to the JSON API
    no_token = requests.post(console + f"/rebooks/{rids[0]}/retry", auth=AUTH, data={}, timeout=30)
    assert no_token.status_code == 403  # the HTML forms carry the _xsrf token
    assert all(system.get(r).state == State.ABORTED for r in rids)  # type: ignore[union-attr]
    unfiltered = requests.post(url, json={"action": "cancel", "filter": {}}, auth=AUTH, timeout=30)
    assert unfiltered.status_code == 400


def test_untrusted_text_is_escaped_and_no_secret_shows(console: str, system: System) -> None:
    hostile = '<img src=x onerror="alert(1)">'
    event = "ev-hostile-1"
    rid = rebook_id_for(event)
    system.store.records.create(
        rebook_id=rid,
        event_id=event,
        booking_id=991,
        user_id=hostile,
        performer_id=None,
        deadline=system.store.clock() + 3600,
        now=system.store.clock(),
    )
    system.store.transitions.transition(
        rid, State.NEEDS_ATTENTION, reason=f"why {hostile}", outcome="NEEDS_ATTENTION"
    )
    pages = [
        get(console + "/rebooks").text,
        get(console + "/rebooks", params={"user_id": hostile}).text,
        get(console + f"/rebooks/{rid}").text,
    ]
    for text in pages:
        assert hostile not in text
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
        assert "<script" not in text
    secrets = [
        system.settings.api_key.get_secret_value(),
        system.settings.token_key.get_secret_value(),  # type: ignore[union-attr]
        "s3cret",
    ]
    tokens = system.svc.token_store.load(system.member("m-visible"))
    assert tokens is not None
    secrets += [tokens.access_token, tokens.refresh_token]
    api = get(console + "/api/rebooks", params={"limit": 500}).text
    for text in [*pages, api]:
        for secret in secrets:
            assert secret not in text
    assert re.search(r"NEEDS_ATTENTION \d+", pages[0])


def test_bulk_form_previews_then_confirms_and_refuses_cross_site(
    console: str, system: System
) -> None:
    """The HTML bulk form: a POST without the confirm only previews; the confirm acts on the
    previewed ids; both need Flower's auth, the form's CSRF token and a same-site request."""
    user = system.member()
    rids = sorted(system.rebook(user, system.performer(online=False))[0] for _ in range(2))
    for rid in rids:
        system.wait_state(rid, State.WAITING)
    session = requests.Session()
    session.auth = AUTH
    page = session.get(console + "/rebooks", params={"user_id": user}, timeout=30)
    token = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
    assert token is not None
    form = {"_xsrf": token.group(1), "action": "cancel", "f_user_id": user}
    url = console + "/rebooks/actions"
    preview = session.post(url, data=form, timeout=30)
    assert preview.status_code == 200 and "Nothing has been done yet" in preview.text
    assert all(f'name="ids" value="{rid}"' in preview.text for rid in rids)
    assert all(system.get(r).state == State.WAITING for r in rids)  # type: ignore[union-attr]
    confirm = {**form, "confirm": "1", "ids": rids[:1]}
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        assert session.post(url, data=confirm, headers=headers, timeout=30).status_code == 403
    no_token = {k: v for k, v in confirm.items() if k != "_xsrf"}
    assert session.post(url, data=no_token, timeout=30).status_code == 403
    assert requests.post(url, data=confirm, timeout=30).status_code == 401  # no credentials
    assert all(system.get(r).state == State.WAITING for r in rids)  # type: ignore[union-attr]
    done = session.post(url, data=confirm, timeout=30)
    assert done.status_code == 200 and "Cancel: 1 done, 0 refused" in done.text
    assert system.get(rids[0]).state == State.ABORTED  # type: ignore[union-attr]
    assert system.get(rids[1]).state == State.WAITING  # type: ignore[union-attr]
