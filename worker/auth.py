"""Per-member OAuth tokens: encrypted at rest, refreshed single-flight across all workers.

The upstream rotates the refresh token on every refresh (the old one dies at once), so a refresh
runs under a Redis lock per member, re-reads the stored pair after taking the lock (another worker
may have refreshed already), and stores the new pair before the lock is released. The lock
outlives the longest refresh (rate-limit wait, connect and read timeouts, a margin); should it
still expire, a refusal of a pair that another worker has rotated meanwhile is not a reauth.

Keys: `REBOOK_TOKEN_KEYS` (newest first) through `MultiFernet`: the first encrypts, every one
decrypts, so a new key is rolled out while the tokens written with the old one still open.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from worker.errors import ConfigError, ReauthRequired, Rejected, Transient
from worker.models import TokenSet
from worker.upstream import UpstreamClient

log = logging.getLogger(__name__)


class TokenStore:
    """Encrypted token pairs in Redis under `{prefix}tok:{user_id}`."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        key: str | Sequence[str] | None,
        ttl_seconds: float = 0,
    ) -> None:
        """`key`: one Fernet key, or several, the one that encrypts first."""
        self.r = client
        self.p = prefix
        self.ttl = int(ttl_seconds)  # 0: no expiry
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

    def _key(self, user_id: str) -> str:
        return f"{self.p}tok:{user_id}"

    def save(self, user_id: str, tokens: TokenSet) -> None:
        blob = self._f().encrypt(tokens.model_dump_json().encode())
        # every refresh stores the pair again, so the TTL counts from the member's last use:
        # a member gone for REBOOK_TOKEN_TTL_DAYS must `tokens set` again (reauth), nothing more
        self.r.set(self._key(user_id), blob.decode(), ex=self.ttl or None)

    def load(self, user_id: str) -> TokenSet | None:
        blob = self.r.get(self._key(user_id))
        if blob is None:
            return None
        try:
            data = json.loads(self._f().decrypt(blob.encode() if isinstance(blob, str) else blob))
        except InvalidToken:
            raise ConfigError(
                "REBOOK_TOKEN_KEY: stored tokens do not decrypt with this key (was it rotated? "
                "list the old key after the new one in REBOOK_TOKEN_KEYS)"
            ) from None
        return TokenSet.model_validate(data)

    def delete(self, user_id: str) -> bool:
        return bool(self.r.delete(self._key(user_id)))


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
        lock = self.store.r.lock(
            f"{self.store.p}toklock:{user_id}",
            timeout=self.lock_timeout,
            blocking_timeout=self.lock_timeout,
        )
        if not lock.acquire():
            raise Transient("token refresh in progress elsewhere", endpoint="token")
        try:
            current = self.store.load(user_id)
            if current is None:
                raise ReauthRequired(user_id, "no tokens stored")
            if self._usable(current, rejected):
                return current.access_token  # another worker refreshed while we waited
            try:
                body = self.client.refresh_token(
                    self.token_url,
                    client_id=self.client_id,
                    client_secret=self._client_secret,
                    refresh_token=current.refresh_token,
                )
            except Rejected as exc:
                # a pair rotated meanwhile (our lock expired inside a stalled refresh and another
                # worker refreshed): our refresh token was dead, the member's pair is fine
                now_stored = self.store.load(user_id)
                if now_stored is not None and now_stored.refresh_token != current.refresh_token:
                    log.warning(
                        "refresh of member %s raced another worker's; using its pair", user_id
                    )
                    return now_stored.access_token
                log.warning("refresh refused for member %s: %s", user_id, exc.message)
                raise ReauthRequired(user_id, exc.message or "refresh refused") from None
            body.setdefault("refresh_token", current.refresh_token)
            try:
                fresh = TokenSet.from_token_response(body, time.time())
            except ValueError as exc:
                raise Transient(f"unusable token answer: {exc}", endpoint="token") from None
            self.store.save(user_id, fresh)  # before anything else: the old refresh token is dead
            log.info("refreshed tokens of member %s", user_id)
            return fresh.access_token
        finally:
            try:
                lock.release()
            except Exception:  # lock expired: the pair is stored already
                log.warning("token lock of member %s expired before release", user_id)


def refresh_lock_seconds(limiter_max_wait: float, call_bound_seconds: float) -> float:
    """The refresh lock's lifetime: the longest refresh (the shared rate limiter's wait, then
    a request in flight up to connect + read timeout) and a margin for Redis and the store."""
    return limiter_max_wait + call_bound_seconds + 10.0
