"""A member's token pair checked before it is stored (`rebook tokens set` / `tokens import`).

A pair handed over by the site may belong to another member (a mix-up in the site's export) or
lack the webcam-bookings scope; stored unchecked, it is found out only when a rebook fails, or
books as the wrong member. Two documented reads settle it: `verifyCredentials` names the member
who owns the access token, `GetPermissions` lists the scopes granted to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from worker.adapters.upstream import UpstreamClient
from worker.core.errors import (
    AuthExpired,
    RateLimited,
    Rejected,
    Transient,
    UpstreamError,
)
from worker.core.models import TokenSet
from worker.core.observability import register_token, scrub

REQUIRED_SCOPE = "account_webcam_bookings"
"""Every webcam booking operation needs it (the upstream's GetPermissions page)."""
VERIFY_SHARE = 0.5
"""Of the shared rate window: an import goes only while the window is less than half full, so the
workers' calls (a member waiting now) keep their budget."""
EXPIRY_MARGIN = 30.0
"""An access token that expires sooner than this is refreshed before it is checked."""
T = TypeVar("T")


@dataclass(frozen=True)
class Verdict:
    """What to store for a member, or why not. `tokens` is the pair to store (a new one when it
    was refreshed: the old refresh token is dead then); `why` a refusal that names no token."""

    user_id: str
    tokens: TokenSet | None
    why: str = ""
    refreshed: bool = False

    @property
    def ok(self) -> bool:
        return self.tokens is not None


class PairChecker:
    """Checks pairs through the process's upstream client (its API key and shared rate budget)."""

    def __init__(
        self,
        client: UpstreamClient,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        share: float = VERIFY_SHARE,
        patience: float = 120.0,
    ) -> None:
        """`patience`: how long one call may wait for the rate budget or ride out transient
        failures before the pair is refused as "could not verify"."""
        self.client = client
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.share = share
        self.patience = patience

    def check(self, user_id: str, tokens: TokenSet) -> Verdict:
        register_token(tokens.access_token, tokens.refresh_token)
        refreshed = False
        try:
            if tokens.expires_at - EXPIRY_MARGIN <= time.time():
                fresh = self._refresh(tokens)
                if isinstance(fresh, str):
                    return Verdict(user_id, None, fresh)
                tokens, refreshed = fresh, True
            return self._check(user_id, tokens, refreshed)
        except UpstreamError as exc:
            where = exc.endpoint or "upstream"
            why = f"could not verify ({where}: {exc.message})"
            return self._refused(user_id, refreshed, why)

    def _check(self, user_id: str, tokens: TokenSet, refreshed: bool) -> Verdict:
        try:
            who = self._patient(
                lambda: self.client.verify_credentials(tokens.access_token, share=self.share)
            )
        except AuthExpired as exc:
            return self._refused(user_id, refreshed, f"access token refused ({exc.message})")
        owner = who.get("UserID")
        if owner is None or str(owner).strip() == "":
            return self._refused(user_id, refreshed, "verifyCredentials names no UserID")
        if str(owner).strip() != user_id:
            return self._refused(
                user_id, refreshed, f"the pair belongs to UserID {owner}, not {user_id}"
            )
        try:
            granted = self._patient(
                lambda: self.client.permissions(tokens.access_token, share=self.share)
            )
        except AuthExpired as exc:
            return self._refused(user_id, refreshed, f"access token refused ({exc.message})")
        status = granted.get(REQUIRED_SCOPE)
        if status != "granted":
            detail = f"status {status!r}" if status else "not listed by GetPermissions"
            return self._refused(user_id, refreshed, f"{REQUIRED_SCOPE} not granted ({detail})")
        return Verdict(user_id, tokens, refreshed=refreshed)

    @staticmethod
    def _refused(user_id: str, refreshed: bool, why: str) -> Verdict:
        """A refusal; after a refresh the pair handed over is dead (rotated): say so."""
        if refreshed:
            why += "; the pair was refreshed while checking it: the site must hand over a new one"
        return Verdict(user_id, None, scrub(why), refreshed=refreshed)

    def _refresh(self, tokens: TokenSet) -> TokenSet | str:
        """The rotated pair, or why the token endpoint refused it."""
        try:
            body = self._patient(
                lambda: self.client.refresh_token(
                    self.token_url,
                    client_id=self.client_id,
                    client_secret=self._client_secret,
                    refresh_token=tokens.refresh_token,
                    share=self.share,
                ),
                resend=False,
            )
        except Rejected as exc:
            why = f"the access token has expired and its refresh was refused ({exc.message})"
            return scrub(why)
        body.setdefault("refresh_token", tokens.refresh_token)
        try:
            fresh = TokenSet.from_token_response(body, time.time())
        except ValueError as exc:
            raise Transient(f"unusable token answer: {exc}", endpoint="token") from None
        register_token(fresh.access_token, fresh.refresh_token)
        return fresh

    def _patient(self, call: Callable[[], T], *, resend: bool = True) -> T:
        """`call`, waited for while the shared budget says "not now" (429 or our own limiter)
        and, with `resend`, tried again after a transient failure, until `patience` runs out. A
        refresh is not resent: one that timed out may have rotated the pair already."""
        deadline = time.monotonic() + self.patience
        delay = 0.5
        while True:
            try:
                return call()
            except (RateLimited, Transient) as exc:
                if not resend and not isinstance(exc, RateLimited):
                    raise
                wait = exc.retry_after if exc.retry_after is not None else delay
                if not isinstance(exc, RateLimited):
                    delay = min(delay * 2, 10.0)
                if time.monotonic() + wait > deadline:
                    raise
                time.sleep(max(0.01, wait))


def check_many(
    checker: PairChecker,
    pairs: list[tuple[str, TokenSet]],
    *,
    threads: int,
    on_done: Callable[[Verdict], Any],
) -> list[Verdict]:
    """Every pair checked on a small thread pool (the calls wait on the network, not the CPU);
    `on_done` runs in the caller's thread as each finishes (progress, storing)."""
    from concurrent.futures import Future, ThreadPoolExecutor, as_completed

    verdicts: list[Verdict] = []
    pool = ThreadPoolExecutor(max_workers=max(1, threads))
    futures: list[Future[Verdict]] = []
    handled: set[int] = set()
    try:
        futures = [pool.submit(checker.check, user, tokens) for user, tokens in pairs]
        for future in as_completed(futures):
            handled.add(id(future))
            verdicts.append(future.result())
            on_done(verdicts[-1])
    finally:
        # Ctrl-C: the pairs not started are not checked; those in flight finish and are handed
        # on (a refreshed pair exists only here: the one given is dead)
        pool.shutdown(wait=True, cancel_futures=True)
        for future in futures:
            if id(future) not in handled and future.done() and not future.cancelled():
                handled.add(id(future))
                verdicts.append(future.result())
                on_done(verdicts[-1])
    return verdicts
