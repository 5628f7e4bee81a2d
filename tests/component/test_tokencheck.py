"""The pair checker against the sandbox over HTTP: whose pair it is (verifyCredentials), what it
may do (GetPermissions), and an expired access token refreshed first (issue 21, item 4)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from rebook_dev.sandbox import SandboxClient, SandboxServer
from worker.adapters.tokencheck import REQUIRED_SCOPE, PairChecker
from worker.adapters.upstream import UpstreamClient
from worker.core.models import TokenSet
from worker.core.settings import Settings


@pytest.fixture
def checker(settings: Settings) -> Iterator[PairChecker]:
    client = UpstreamClient(settings.api_base_url, settings.api_key.get_secret_value())
    yield PairChecker(
        client,
        token_url=settings.token_url,
        client_id=settings.oauth_client_id,
        client_secret=settings.oauth_client_secret.get_secret_value(),
        patience=2.0,
    )
    client.close()


def pair(answer: dict[str, object]) -> TokenSet:
    return TokenSet.from_token_response(answer, time.time())


def test_the_sandbox_names_the_tokens_member_and_its_scopes(
    sandbox_server: SandboxServer, sandbox: SandboxClient, settings: Settings
) -> None:
    numeric = sandbox.add_user("812")
    scoped = sandbox.add_user("m-scoped", scopes=["userid"])
    headers = {"apiKey": settings.api_key.get_secret_value(), "Accept": "application/json"}

    def get(path: str, token: object) -> requests.Response:
        return requests.get(
            sandbox_server.url + path,
            headers={**headers, "Authorization": f"bearer {token}"},
            timeout=5,
        )

    who = get("/v1/account/verifyCredentials", numeric["access_token"])
    assert who.status_code == 200 and who.json()["UserID"] == 812  # a number, as upstream's
    perms = get("/v1/Account/GetPermissions", numeric["access_token"]).json()["Permissions"]
    assert {"Permission": REQUIRED_SCOPE, "Status": "granted"} in perms
    perms = get("/v1/Account/GetPermissions", scoped["access_token"]).json()["Permissions"]
    assert perms == [{"Permission": "userid", "Status": "granted"}]
    assert get("/v1/account/verifyCredentials", "not-a-token").status_code == 401


def test_the_sandbox_answers_the_credit_balance_only_with_its_scope(
    sandbox_server: SandboxServer, sandbox: SandboxClient, settings: Settings
) -> None:
    """GetCurrentCreditBalance (`/Site/API/GetCurrentCreditBalance`): a bare decimal, behind the
    extra scope `account_credits_history` that a site may not have asked for."""
    plain = sandbox.add_user("m-plain")
    rich = sandbox.add_user("m-rich", scopes=["userid", "account_credits_history"])
    sandbox.set_credits("m-rich", 299)

    def balance(token: object) -> requests.Response:
        return requests.get(
            sandbox_server.url + "/v1/CreditHistory/GetCurrentCreditBalance",
            headers={
                "apiKey": settings.api_key.get_secret_value(),
                "Accept": "application/json",
                "Authorization": f"bearer {token}",
            },
            timeout=5,
        )

    assert balance(rich["access_token"]).json() == 299
    refused = balance(plain["access_token"])
    assert refused.status_code == 403 and "account_credits_history" in refused.text


def test_a_good_pair_passes_and_is_stored_as_given(
    checker: PairChecker, sandbox: SandboxClient
) -> None:
    given = pair(sandbox.add_user("m-good"))
    verdict = checker.check("m-good", given)
    assert verdict.ok and verdict.tokens == given and not verdict.refreshed


def test_another_members_pair_and_a_pair_without_the_scope_are_refused(
    checker: PairChecker, sandbox: SandboxClient
) -> None:
    theirs = pair(sandbox.add_user("m-other"))
    verdict = checker.check("m-mine", theirs)
    assert not verdict.ok and verdict.why == "the pair belongs to UserID m-other, not m-mine"
    scopeless = pair(sandbox.add_user("m-noscope", scopes=["userid"]))
    verdict = checker.check("m-noscope", scopeless)
    assert not verdict.ok
    assert verdict.why == f"{REQUIRED_SCOPE} not granted (not listed by GetPermissions)"
    for text in (verdict.why,):
        assert scopeless.access_token not in text and scopeless.refresh_token not in text


def test_an_expired_access_token_is_refreshed_first_and_a_dead_refresh_token_is_refused(
    checker: PairChecker, sandbox: SandboxClient
) -> None:
    expired = pair(sandbox.add_user("m-expired", expires_in=0))
    verdict = checker.check("m-expired", expired)
    assert verdict.ok and verdict.refreshed and verdict.tokens is not None
    assert verdict.tokens.refresh_token != expired.refresh_token
    # the handed-over pair is dead now: checking it again is refused, naming the refresh
    again = checker.check("m-expired", expired)
    assert not again.ok and "refresh was refused" in again.why
    assert expired.refresh_token not in again.why


def test_an_upstream_that_does_not_answer_is_could_not_verify(
    checker: PairChecker, sandbox: SandboxClient
) -> None:
    given = pair(sandbox.add_user("m-down"))
    sandbox.fault("verifyCredentials", "http_503", count=100)
    verdict = checker.check("m-down", given)
    assert not verdict.ok and verdict.why.startswith("could not verify (verifyCredentials:")


def test_a_check_that_fails_after_the_refresh_says_the_pair_was_rotated(
    checker: PairChecker, sandbox: SandboxClient
) -> None:
    """The handed-over pair died with the refresh: the refusal must say the site has to hand
    over a new one, or an operator would retry with a dead pair."""
    expired = pair(sandbox.add_user("m-rotated", expires_in=0))
    sandbox.fault("GetPermissions", "http_503", count=100)
    verdict = checker.check("m-rotated", expired)
    assert not verdict.ok and verdict.refreshed
    assert verdict.why.startswith("could not verify (GetPermissions:")
    assert "refreshed while checking it" in verdict.why
