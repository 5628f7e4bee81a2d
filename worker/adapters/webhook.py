"""Signed outcome webhooks (requests only). Receivers verify and dedupe; see README § Outcomes.

Signature: `X-Rebook-Signature: sha256=<hex>` = HMAC-SHA256(secret, f"{timestamp}.{body}"), with
`X-Rebook-Timestamp` (unix seconds) so a receiver can refuse replays, and `X-Rebook-Delivery`
(the outcome's stream id) so it can drop a delivery it has already seen.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import requests

from worker.adapters.upstream import environment_session


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, tolerance: float = 300
) -> bool:
    """What a receiver does (also used by our tests)."""
    if abs(time.time() - float(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookError(Exception):
    """The receiver did not take the delivery; it will be retried with backoff."""


class WebhookSender:
    def __init__(self, url: str, secret: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self._secret = secret
        self.timeout = timeout
        self._session = environment_session(url)

    def send(self, delivery_id: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "rebook-webhook/1",
            "X-Rebook-Delivery": delivery_id,
            "X-Rebook-Timestamp": ts,
            "X-Rebook-Signature": sign(self._secret, ts, body),
        }
        try:
            response = self._session.post(
                self.url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise WebhookError(f"{type(exc).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise WebhookError(f"HTTP {response.status_code}")
