"""Per-member OAuth tokens: encrypted at rest, refreshed single-flight across all workers.

The upstream rotates the refresh token on every refresh (the old one dies at once), so a refresh
runs under a Redis lock per member, re-reads the stored pair after taking the lock (another worker
may have refreshed already), and stores the new pair before the lock is released. The lock
outlives the longest refresh (rate-limit wait, connect and read timeouts, a margin); should it
still expire, a refusal of a pair that another worker has rotated meanwhile is not a reauth.

Keys: `REBOOK_TOKEN_KEYS` (newest first) through `MultiFernet`: the first encrypts, every one
decrypts, so a new key is rolled out while the tokens written with the old one still open.

Refresh tokens lapse (about 14 days) unless used: every saved pair is also indexed by when its
refresh token lapses (`{prefix}tokkeep`, a sorted set of member ids, no secrets), so the
keep-alive (`rebook.keep_tokens`) refreshes the idle ones in time, reading only those due.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from worker.adapters.upstream import UpstreamClient
from worker.core.errors import (
    ConfigError,
    DeploymentFault,
    ReauthRequired,
    Rejected,
    TokenRefused,
    Transient,
    UpstreamError,
)
from worker.core.models import TokenSet
from worker.core.observability import register_token
from worker.core.store.tokens import TokenRecords

log = logging.getLogger(__name__)


REFRESH_TOKEN_LIFETIME = 14 * 86400.0
KEEPALIVE_SHARE = 0.5
"""The keep-alive's share of the rate window (see RedisRateLimiter): its refreshes have days of
slack, so they go only while the window is less than half full."""


class TokenStore:
    """Members' token pairs, encrypted (Fernet), in `TokenRecords` (worker/core/store/tokens.py:
    `{prefix}tok:{user_id}`, indexed by the lapse of their refresh token in `{prefix}tokkeep`)."""

    def __init__(
        self,
        records: TokenRecords,
        key: str | Sequence[str] | None,
        ttl_seconds: float = 0,
        refresh_lifetime: float = REFRESH_TOKEN_LIFETIME,
    ) -> None:
        """`key`: one Fernet key, or several, the one that encrypts first."""
        self.records = records
        self.ttl = int(ttl_seconds)  # 0: no expiry
        self.refresh_lifetime = refresh_lifetime
        keys = [key] if isinstance(key, str) else list(key or [])
        keys = [k for k in keys if k]
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys]) if keys else None

    def _f(self) -> MultiFernet:
        if self._fernet is None:
            raise ConfigError(
                "REBOOK_TOKEN_KEY: not set (nor REBOOK_TOKEN_KEYS); tokens are stored encrypted "
                "(make a key with `rebook tokens keygen`)"
            )
        return self._fernet

    def save(self, user_id: str, tokens: TokenSet) -> None:
        register_token(tokens.access_token, tokens.refresh_token)  # scrubbed wherever echoed
        blob = self._f().encrypt(tokens.model_dump_json().encode())
        # every refresh stores the pair again, so the TTL counts from the member's last use:
        # a member gone for REBOOK_TOKEN_TTL_DAYS must `tokens set` again (reauth), nothing more
        self.records.put(user_id, blob.decode(), self.ttl, self.refresh_lapses_at(tokens))

    def refresh_lapses_at(self, tokens: TokenSet) -> float:
        """When the pair's refresh token dies unused; 0 (due at once) when its issue is unknown
        (a pair stored before this was recorded)."""
        if tokens.refresh_issued_at <= 0:
            return 0.0
        return tokens.refresh_issued_at + self.refresh_lifetime

    def due(self, before: float, limit: int) -> list[str]:
        """Members whose refresh token lapses before `before`, soonest first, at most `limit`."""
        return self.records.due(before, limit)

    def reschedule(self, user_id: str, at: float) -> None:
        """Look at this member's pair again at `at` (never re-adds a deleted pair)."""
        self.records.reschedule(user_id, at)

    def unindex(self, user_id: str) -> None:
        self.records.unindex(user_id)

    def some_members(self, limit: int) -> list[str]:
        """Up to `limit` members with a stored pair, in no order (a SCAN: for checks, not work)."""
        return self.records.some_members(limit)

    def backfill(self) -> int:
        """Once per deployment: pairs saved before the index existed join it, due at once."""
        return self.records.backfill()

    def load(self, user_id: str) -> TokenSet | None:
        blob = self.records.get(user_id)
        if blob is None:
            return None
        try:
            data = json.loads(self._f().decrypt(blob.encode() if isinstance(blob, str) else blob))
        except InvalidToken:
            raise ConfigError(
                "REBOOK_TOKEN_KEY: stored tokens do not decrypt with this key (was it rotated? "
                "list the old key after the new one in REBOOK_TOKEN_KEYS)"
            ) from None
        tokens = TokenSet.model_validate(data)
        register_token(tokens.access_token, tokens.refresh_token)  # scrubbed wherever echoed
        return tokens

    def delete(self, user_id: str) -> bool:
        return self.records.delete(user_id)


class TokenManager:
    """Hands out a valid access token for a member, refreshing when needed."""

    def __init__(
        self,
        store: TokenStore,
        client: UpstreamClient,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        margin_seconds: float = 60.0,
        lock_timeout: float = 30.0,
    ) -> None:
        """`lock_timeout` must outlive the longest refresh (see `refresh_lock_seconds`)."""
        self.store = store
        self.client = client
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.margin = margin_seconds
        self.lock_timeout = lock_timeout

    def access_token(self, user_id: str, *, rejected: str | None = None) -> str:
        """A usable access token; `rejected` is one the upstream just answered 401 to."""
        current = self.store.load(user_id)
        if current is None:
            raise ReauthRequired(user_id, "no tokens stored")
        if self._usable(current, rejected):
            return current.access_token
        return self._refresh(user_id, rejected)

    def margin_for(self, tokens: TokenSet) -> float:
        """How long before expiry to refresh: the setting, but at most a quarter of the token's
        lifetime, so a token that lives less than the setting is still used for most of its
        life (else every call would refresh). Unknown lifetime (stored by an older version):
        the setting."""
        if tokens.lifetime > 0:
            return min(self.margin, tokens.lifetime / 4)
        return self.margin

    def _usable(self, tokens: TokenSet, rejected: str | None) -> bool:
        if rejected is not None and tokens.access_token == rejected:
            return False
        return tokens.expires_at - self.margin_for(tokens) > time.time()

    def _refresh(self, user_id: str, rejected: str | None) -> str:
        lock = self.store.records.lock(
            user_id, timeout=self.lock_timeout, blocking_timeout=self.lock_timeout
        )
        if not lock.acquire():
            raise Transient("token refresh in progress elsewhere", endpoint="token")
        try:
            current = self.store.load(user_id)
            if current is None:
                raise ReauthRequired(user_id, "no tokens stored")
            if self._usable(current, rejected):
                return current.access_token  # another worker refreshed while we waited
            return self._refresh_locked(user_id, current).access_token
        finally:
            try:
                lock.release()
            except Exception:  # lock expired: the pair is stored already
                log.warning("token lock of member %s expired before release", user_id)

    def _refresh_locked(
        self, user_id: str, current: TokenSet, share: float | None = None
    ) -> TokenSet:
        """The refresh itself; the caller holds the member's lock."""
        try:
            body = self.client.refresh_token(
                self.token_url,
                client_id=self.client_id,
                client_secret=self._client_secret,
                refresh_token=current.refresh_token,
                share=share,
            )
        except Rejected as exc:
            # a pair rotated meanwhile (our lock expired inside a stalled refresh and another
            # worker refreshed): our refresh token was dead, the member's pair is fine
            now_stored = self.store.load(user_id)
            if now_stored is not None and now_stored.refresh_token != current.refresh_token:
                log.warning("refresh of member %s raced another worker's; using its pair", user_id)
                return now_stored
            log.warning("refresh refused for member %s: %s", user_id, exc.message)
            raise ReauthRequired(user_id, exc.message or "refresh refused") from None
        rotated = bool(body.get("refresh_token"))
        body.setdefault("refresh_token", current.refresh_token)
        try:
            fresh = TokenSet.from_token_response(body, time.time())
        except ValueError as exc:
            raise Transient(f"unusable token answer: {exc}", endpoint="token") from None
        if not rotated:  # the same refresh token: its lapse still counts from its issue
            fresh = fresh.model_copy(update={"refresh_issued_at": current.refresh_issued_at})
        self.store.save(user_id, fresh)  # before anything else: the old refresh token is dead
        log.info("refreshed tokens of member %s", user_id)
        return fresh

    def check_client(self) -> tuple[str, str]:
        """`check_client` with this manager's client (the sweep's probe of a refused client)."""
        return check_client(
            self.client, self.token_url, client_id=self.client_id, client_secret=self._client_secret
        )

    def keep_alive(self, user_id: str, *, before: float) -> str:
        """Refreshes the pair if its refresh token lapses before `before`: "refreshed", "fresh"
        (another holder refreshed it meanwhile), "gone" (no pair), "busy" (a refresh runs
        elsewhere: it stores a fresh pair anyway). Never waits for the member's lock. A refused
        refresh raises ReauthRequired; rate-limit and upstream failures raise as they come."""
        lock = self.store.records.lock(user_id, timeout=self.lock_timeout)
        if not lock.acquire(blocking=False):
            return "busy"
        try:
            current = self.store.load(user_id)
            if current is None:
                self.store.unindex(user_id)
                return "gone"
            lapses = self.store.refresh_lapses_at(current)
            if lapses > before:
                self.store.reschedule(user_id, lapses)
                return "fresh"
            self._refresh_locked(user_id, current, share=KEEPALIVE_SHARE)
            return "refreshed"
        finally:
            try:
                lock.release()
            except Exception:  # lock expired: the pair is stored already
                log.warning("token lock of member %s expired before release", user_id)


def refresh_lock_seconds(limiter_max_wait: float, call_bound_seconds: float) -> float:
    """The refresh lock's lifetime: the longest refresh (the shared rate limiter's wait, then
    a request in flight up to connect + read timeout) and a margin for Redis and the store."""
    return limiter_max_wait + call_bound_seconds + 10.0


def check_client(
    client: UpstreamClient, token_url: str, *, client_id: str, client_secret: str
) -> tuple[str, str]:
    """Whether the token endpoint accepts the OAuth client, without spending any member's
    token: a refresh with a refresh token that cannot exist. `("ok", ...)`: the grant was judged
    (an OAuth error code other than a client refusal, `invalid_grant` as a rule), so the client
    passed; `("refused", code)`: `invalid_client`/`unauthorized_client`; `("unknown", what)`:
    anything else (a network failure, a page in front of the endpoint, a 400/401 without an
    OAuth error code, or a made-up token accepted)."""
    try:
        client.refresh_token(
            token_url,
            client_id=client_id,
            client_secret=client_secret,
            refresh_token="rebook-client-check-" + secrets.token_urlsafe(24),
        )
    except DeploymentFault as exc:
        return "refused", exc.message or exc.reason
    except TokenRefused as exc:
        if exc.code:
            return "ok", f"client accepted (a made-up refresh token: {exc.code})"
        return "unknown", f"HTTP {exc.status} without an OAuth error code: {exc.message}"
    except UpstreamError as exc:
        return "unknown", str(exc)
    return "unknown", "a refresh token that cannot exist was accepted"
