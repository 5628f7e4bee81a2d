"""The console in a real browser (Playwright driving Debian's Chromium) against the real Flower
launcher, worker, Redis and sandbox, used as a new operator would: from Flower's home page,
only clicking and typing, answer

(a) "why is rebook X still waiting",
(b) "what happened to member M's rebooks today",
(c) "retry every reauth of member M" (a dry-run preview, then a confirm that reports what it
    did and what it refused, and why),

plus a retry from a rebook's own page, a 401 without credentials, and no request to another
host. Takes the README's screenshots (into docs/ with REBOOK_SCREENSHOTS=docs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.conftest import wait_for
from tests.integration.conftest import ROOT, System
from tests.integration.console_helpers import AUTH, flower_for
from worker.core.models import TokenSet
from worker.core.states import State

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(os.environ.get("REBOOK_SCREENSHOTS", "") or ROOT / ".rebook" / "screenshots")
"""Where the screenshots go: `.rebook/screenshots` (ignored by git), or the README's own with
`REBOOK_SCREENSHOTS=docs` (a test run leaves the tracked files alone)."""


def _browser_or_skip() -> Any:
    """Skips with a visible reason locally; in CI (CI=true) Chromium and Playwright must be
    there (`.ci/run` installs them)."""
    ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if ci:
            pytest.fail("playwright is not installed and CI requires the browser tests")
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        if ci:
            pytest.fail(f"{CHROMIUM} is missing and CI requires the browser tests")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium chromium-driver)")
    return sync_playwright


@pytest.fixture(scope="module")
def browser(system: System) -> Iterator[tuple[Any, str]]:
    sync_playwright = _browser_or_skip()
    with flower_for(system) as base, sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium, base
        finally:
            chromium.close()


class Operator:
    """One browser tab with Flower's credentials; every request it makes is recorded."""

    def __init__(self, chromium: Any, base: str) -> None:
        self.base = base
        self.context = chromium.new_context(
            http_credentials={"username": AUTH[0], "password": AUTH[1]},
            viewport={"width": 1400, "height": 900},
        )
        self.requested: list[str] = []
        self.page = self.context.new_page()
        self.page.on("request", lambda request: self.requested.append(request.url))

    def flower_home(self) -> Any:
        """Flower's address is the only URL an operator types; the rest is clicks."""
        self.page.goto(f"{self.base}/")
        self.page.click("#rebook-console-link")
        self.page.wait_for_selector("#rebooks")
        return self.page

    def text(self, selector: str) -> str:
        return str(self.page.inner_text(selector))

    def reload_until(self, selector: str, needle: str, timeout: float = 20.0) -> str:
        """A page without script shows what was true when it was served: reload until it
        shows `needle` (a GET page only)."""

        def shown() -> str:
            self.page.reload()
            text = self.text(selector) if self.page.query_selector(selector) else ""
            return text if needle in text else ""

        return str(wait_for(shown, timeout, f"{needle!r} in {selector} of {self.page.url}"))

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / name), full_page=True)

    def close(self) -> set[str]:
        self.context.close()
        return {urlparse(u).netloc for u in self.requested if not u.startswith("data:")}


def _clear_of_midnight() -> None:
    """ "today" is since 00:00 UTC: a test started a minute before midnight would count its
    own rebooks as yesterday's. Start past it instead (at most 90 s, polled)."""

    def clear() -> bool:
        now = datetime.now(UTC)
        return (86400 - (now.hour * 3600 + now.minute * 60 + now.second)) > 90

    wait_for(clear, 100, "a time more than 90 s before midnight UTC", interval=1.0)


# Long on purpose: one operator's session, click by click, as the README tells it.
def test_operator_answers_the_three_questions(browser: tuple[Any, str], system: System) -> None:
    chromium, base = browser
    _clear_of_midnight()
    # -- the state an operator finds ----------------------------------------------------------
    # member M: one rebook accepted earlier today, then M's consent lapsed upstream: two
    # rebooks parked `reauth`; one more waits on a performer who is offline
    member = system.member()
    accepted, _ = system.rebook(member, system.performer(online=True))
    booked = system.wait_state(accepted, State.WATCHING)
    system.sandbox.set_status(booked.new_booking_id, "Accepted")  # type: ignore[arg-type]
    system.wait_state(accepted, State.ACCEPTED)
    system.sandbox.expire_user(member)
    system.sandbox.revoke_user(member)
    parked = [system.rebook(member, system.performer(online=True))[0] for _ in range(2)]
    for rid in parked:
        assert system.wait_state(rid, State.NEEDS_ATTENTION).reason == "reauth"
    offline = system.performer(online=False)
    m_waiting, _ = system.rebook(member, offline)
    system.wait_state(m_waiting, State.WAITING)
    # another member's rebook X waits on an offline performer: question (a)
    other = system.member()
    x_performer = system.performer(online=False)
    rebook_x, _ = system.rebook(other, x_performer)
    system.wait_state(rebook_x, State.WAITING)
    # M signed in again; the site stored the new pair without `rebook tokens set` (which would
    # have resumed them by itself), so they are still parked
    fresh = system.sandbox.add_user(member)
    system.svc.token_store.save(member, TokenSet.from_token_response(fresh, time.time()))

    op = Operator(chromium, base)
    page = op.flower_home()

    # -- (a) why is rebook X still waiting? ---------------------------------------------------
    page.fill("#f-q", rebook_x)
    page.click("#f-apply")
    page.click(f"#rebooks a:has-text('{rebook_x}')")
    page.wait_for_selector("#why")
    # the first presence check may still be on its way when the page is served
    presence = op.reload_until("#why-presence", "is offline")
    assert f"Performer {x_performer} is offline" in presence
    assert "the last presence check" in presence and "ago), said offline" in presence
    assert "as has every check since" in presence
    assert op.text("#why-headline") == f"Waiting for performer {x_performer} to come online"
    nxt = op.text("#why-next")
    assert nxt.startswith("Next presence check: ") and "checked once every 0.3s" in nxt
    record = system.get(rebook_x)
    assert record is not None
    deadline = datetime.fromtimestamp(record.deadline_ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    assert f"not online by {deadline} (in 11h" in op.text("#why-deadline")
    assert "GAVE_UP" in op.text("#why-deadline")
    assert "goes on by itself when the performer comes online" in op.text("#why-todo")
    assert "received" in op.text("#timeline")
    op.shot("console-timeline.png")

    # -- (b) what happened to member M's rebooks today? ---------------------------------------
    page = op.flower_home()
    page.fill("#f-user_id", member)
    page.click("#f-apply")
    page.click("#since-today")
    page.wait_for_selector("#summary")
    assert "since=today" in page.url and f"user_id={member}" in page.url
    assert op.text("#sum-total") == "4 rebooks"
    assert "match member " + member + " · since today" in op.text("#summary")
    for state, n in (("ACCEPTED", 1), ("NEEDS_ATTENTION", 2), ("WAITING", 1)):
        assert op.text(f"#sum-{state}").split()[-1] == str(n), state
    table = op.text("#rebooks")
    assert all(rid in table for rid in [accepted, *parked, m_waiting])
    assert rebook_x not in table  # another member's
    op.shot("console-list.png")
    page.click("#sum-ACCEPTED")  # each count is a narrower link
    page.click(f"#rebooks a:has-text('{accepted}')")
    assert op.text("#why-headline") == "Finished: ACCEPTED"
    assert "WATCHING → ACCEPTED" in op.text("#timeline").replace("\n", " ")
    page.go_back()
    page.go_back()

    # -- (c) retry every reauth of member M ---------------------------------------------------
    page.select_option("#f-state", label="NEEDS_ATTENTION (parked)")
    page.fill("#f-reason", "reauth")
    page.click("#f-apply")
    assert op.text("#sum-total") == "2 rebooks"
    page.click("#bulk-retry")
    page.wait_for_selector("#bulk-confirm")
    assert op.text("#result").startswith("Dry run: retry")
    assert (op.text("#n-matched"), op.text("#n-done"), op.text("#n-refused")) == ("2", "2", "0")
    preview = op.text("#would-do")
    assert all(rid in preview for rid in parked)
    assert preview.count("new token pair stored") == 2  # the operator sees it should work now
    assert {system.get(r).state for r in parked} == {State.NEEDS_ATTENTION}  # type: ignore[union-attr]
    op.shot("console-bulk-preview.png")
    # meanwhile a colleague retries one of them from the command line
    assert system.cli("retry", parked[0]).returncode == 0
    page.click("#bulk-confirm")
    page.wait_for_selector("#done")
    assert op.text("#result") == "Retry: 1 done, 1 refused"
    assert parked[1] in op.text("#done") and parked[0] in op.text("#refused")
    assert "no longer matches the filter: now " in op.text("#refused")
    for rid in parked:
        system.wait_state(rid, {State.WATCHING, State.ACCEPTED}, timeout=30)
    news = system.sandbox.stats()["new_bookings"]
    assert all(n == 1 for n in news.values())  # never a second booking
    page.click("#bulk-now")  # where they are now: member M, since today
    op.reload_until(f"#rebooks tr:has-text('{parked[1]}')", "WATCHING")
    assert system.get(rebook_x).state == State.WAITING  # type: ignore[union-attr]

    assert op.close() == {urlparse(base).netloc}  # nothing from another host


def test_retry_from_a_rebooks_page_and_auth(browser: tuple[Any, str], system: System) -> None:
    chromium, base = browser
    user = system.member(expires_in=0)
    performer = system.performer(online=True)
    system.sandbox.revoke_user(user)
    rid, _ = system.rebook(user, performer)
    assert system.wait_state(rid, State.NEEDS_ATTENTION).reason == "reauth"
    fresh = system.sandbox.add_user(user)
    system.svc.token_store.save(user, TokenSet.from_token_response(fresh, time.time()))

    op = Operator(chromium, base)
    page = op.flower_home()
    page.select_option("#f-state", "NEEDS_ATTENTION")
    page.fill("#f-user_id", user)
    page.click("#f-apply")
    page.click(f"#rebooks a:has-text('{rid}')")
    page.wait_for_selector("#timeline")
    timeline = op.text("#timeline")
    assert "received" in timeline and "reauth" in timeline
    assert "after this rebook parked: retry should now go through" in op.text("#why-token")
    assert page.is_visible("#do-retry") and page.is_visible("#do-cancel")
    page.click("#do-retry")
    page.wait_for_selector("#message")
    assert "retry: now" in op.text("#message")
    system.wait_state(rid, {State.WATCHING, State.ACCEPTED})
    no_retry = op.reload_until("#no-retry", "nothing to retry")  # the CLI's refusal, no button
    assert "and in progress; nothing to retry" in no_retry or "was made and decided" in no_retry
    page.click("header a:has-text('Rebooks')")
    page.fill("#f-since", "yesterday")
    page.click("#f-apply")
    assert "since: expected today" in op.text("#filter-error")  # and the form is there again
    page.click("#since-today")
    page.wait_for_selector("#rebooks")

    anonymous = chromium.new_context()
    # a page navigation without credentials ends in the browser's auth prompt (an error in
    # headless mode); the same browser's request context shows the answer itself
    for path in ("/rebooks", "/api/rebooks", f"/rebooks/{rid}"):
        assert anonymous.request.get(f"{base}{path}").status == 401, path
    anonymous.close()
    assert op.close() == {urlparse(base).netloc}
