"""Work-arounds for known faults of the libraries we depend on, each with its reason."""

from __future__ import annotations

from typing import Any


def patch_kombu_closed_channel() -> None:
    """kombu's Redis channel, once its connection dropped and was replaced, still receives the
    acks and restores of messages it delivered. It then builds a Redis client from a connection
    that is already `None` and raises AttributeError ('NoneType' object has no attribute
    'client'/'hostname'), which Celery treats as unrecoverable: the worker exits. Raising the
    transport's own connection error instead lets kombu log it and go on; those messages are
    still in Redis's unacked hash and come back after the visibility timeout.
    """
    # kombu transport code, not our store: exempt from "Redis only in worker.core.store"
    import redis
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "_rebook_patched", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError(
                "this broker channel was closed when the connection dropped"
            )
        return original(self, asynchronous=asynchronous)

    _connparams._rebook_patched = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]


def patch_celery_dump_body() -> None:
    """Celery's consumer logs the body of every message it cannot run (another serializer, an
    unknown task). Such a body may carry anything a producer put in it, tokens included, in a
    form no log scrubber can parse (pickle). Log its size and type instead."""
    from celery.worker.consumer import consumer as celery_consumer

    def dump_body(message: Any, body: Any) -> str:
        size = len(getattr(message, "body", b"") or b"")
        return f"<body not logged: {size} bytes of {getattr(message, 'content_type', '?')}>"

    celery_consumer.dump_body = dump_body
