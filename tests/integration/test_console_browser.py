"""The console in a real browser (Playwright driving Debian's Chromium) against the real Flower
launcher, worker, Redis and sandbox: log in, filter, read a timeline, retry a parked rebook from
its page, run a bulk dry run, see a 401 without credentials, and no request to another host.
Saves the README's screenshots into docs/."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.integration.conftest import ROOT, System
from tests.integration.console_helpers import AUTH, flower_for
from worker.core.models import TokenSet
from worker.core.states import State

pytestmark = pytest.mark.integration
CHROMIUM = Path("/usr/bin/chromium")


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


def test_operator_finds_understands_and_acts(browser: tuple[Any, str], system: System) -> None:
    chromium, base = browser
    host = urlparse(base).netloc
    user = system.member(expires_in=0)
    performer = system.performer(online=True)
    system.sandbox.revoke_user(user)
    rid, _ = system.rebook(user, performer)
    assert system.wait_state(rid, State.NEEDS_ATTENTION).reason == "reauth"
    waiting, _ = system.rebook(system.member(), system.performer(online=False))
    system.wait_state(waiting, State.WAITING)
    # the member re-authorised, but nobody ran `tokens set` (which would resume it)
    fresh = system.sandbox.add_user(user)
    system.svc.token_store.save(user, TokenSet.from_token_response(fresh, time.time()))

    context = chromium.new_context(http_credentials={"username": AUTH[0], "password": AUTH[1]})
    requested: list[str] = []
    page = context.new_page()
    page.on("request", lambda request: requested.append(request.url))
    page.set_viewport_size({"width": 1400, "height": 900})

    page.goto(f"{base}/")  # Flower, with the link to the console in its navbar
    page.click("#rebook-console-link")
    page.wait_for_selector("#rebooks")
    page.select_option("#f-state", "NEEDS_ATTENTION")
    page.fill("#f-user_id", user)
    page.click("#f-apply")
    page.wait_for_selector(f"text={rid}")
    assert "state=NEEDS_ATTENTION" in page.url and waiting not in page.content()
    page.fill("#f-user_id", "")
    page.click("#f-apply")
    page.wait_for_selector(f"text={rid}")
    page.screenshot(path=str(ROOT / "docs" / "console-list.png"), full_page=True)

    page.click(f"a:has-text('{rid}')")
    page.wait_for_selector("#timeline")
    timeline = page.inner_text("#timeline")
    assert "received" in timeline and "reauth" in timeline
    assert page.is_visible("#do-retry") and page.is_visible("#do-cancel")
    page.screenshot(path=str(ROOT / "docs" / "console-timeline.png"), full_page=True)
    page.click("#do-retry")
    page.wait_for_selector("#message")
    assert "retry: now" in page.inner_text("#message")
    system.wait_state(rid, State.WATCHING)
    page.reload()
    assert page.is_visible("#no-retry")  # in progress: the CLI's refusal text, no button
    assert "in progress; nothing to retry" in page.inner_text("#no-retry")

    page.goto(f"{base}/rebooks?user_id={user}")
    page.click("#bulk-retry")  # the dry-run box is ticked by default
    page.wait_for_selector("#result")
    assert "Dry run" in page.inner_text("#result")
    assert page.inner_text("#n-matched") == "1" and page.inner_text("#n-refused") == "1"
    assert system.get(rid).state == State.WATCHING  # type: ignore[union-attr]

    anonymous = chromium.new_context()
    # a page navigation without credentials ends in the browser's auth prompt (an error in
    # headless mode); the same browser's request context shows the answer itself
    assert anonymous.request.get(f"{base}/rebooks").status == 401
    assert anonymous.request.get(f"{base}/api/rebooks").status == 401
    anonymous.close()
    context.close()
    assert requested
    assert {urlparse(u).netloc for u in requested if not u.startswith("data:")} == {host}
