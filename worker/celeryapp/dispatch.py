"""How the flow's next steps reach the queue: by task name, routed by the app's configuration."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from celery import Celery, current_app
from kombu import Producer

from worker.celeryapp.app import APP_NAME, STEP_PRIORITY, URGENT_PRIORITY, WATCH_PRIORITY
from worker.celeryapp.fanout import Fanout
from worker.celeryapp.runtime import services
from worker.core.flow import Flow, Listing
from worker.core.preread import SharedReads


class CeleryDispatcher:
    """Sends the next step by task name; routing comes from the app's configuration."""

    def __init__(self, celery_app: Celery) -> None:
        self.app = celery_app
        self._producer: Producer | None = None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """kombu's publish batch: on Redis one pipeline for everything sent inside (a sweep of
        1,000 due steps is one round trip, not 1,000); on RabbitMQ a publish needs no round
        trip, so each goes at once. A failure loses only nudges: the sweep sends them again."""
        if self._producer is not None:  # already inside a batch
            yield
            return
        with self.app.producer_or_acquire() as producer, producer.batch():
            self._producer = producer
            try:
                yield
            finally:
                self._producer = None

    def _send(self, name: str, kwargs: dict[str, Any], **options: Any) -> None:
        self.app.send_task(name, kwargs=kwargs, producer=self._producer, **options)

    def check_presence(
        self, performer_id: int | None, rebook_id: str | None = None, at: float | None = None
    ) -> None:
        kwargs: dict[str, Any] = {"performer_id": performer_id}
        if rebook_id is not None:
            kwargs["rebook_id"] = rebook_id
        # `at` is less than one sweep interval ahead: the worker holds the message that long on
        # its timer (no pool process); the record's lease still covers a lost one
        eta = datetime.fromtimestamp(at, UTC) if at is not None else None
        self._send("rebook.check_presence", kwargs, priority=URGENT_PRIORITY, eta=eta)

    def reschedule(self, rebook_id: str, urgent: bool = False) -> None:
        self._send(
            "rebook.reschedule",
            {"rebook_id": rebook_id},
            priority=URGENT_PRIORITY if urgent else STEP_PRIORITY,
        )

    def watch(self, rebook_id: str, booking: dict[str, Any]) -> None:
        self._send(
            "rebook.watch", {"rebook_id": rebook_id, "booking": booking}, priority=WATCH_PRIORITY
        )


def rebook_app() -> Celery:
    """The rebook app of this process: the worker's, or the one `worker.app` built. Never
    Celery's default app, which would send to a broker nobody configured."""
    app = current_app._get_current_object()
    if app.main != APP_NAME:
        raise RuntimeError("no rebook Celery app in this process: import worker.app first")
    return app


_reads_lock = threading.Lock()
_reads: dict[int, SharedReads[Listing]] = {}


def _process_reads() -> SharedReads[Listing]:
    """The reads before a POST that this process's steps share (a prefork child its own)."""
    pid = os.getpid()
    with _reads_lock:
        if pid not in _reads:
            _reads.clear()
            _reads[pid] = SharedReads()
        return _reads[pid]


def flow() -> Flow:
    """The flow of this process, sending its next steps through its app."""
    svc = services()
    return Flow(
        svc.settings,
        svc.store,
        svc.client,
        svc.tokens,
        CeleryDispatcher(rebook_app()),
        reads=_process_reads(),
    )


def fanout() -> Fanout:
    """Outcome fan-out of this process (REBOOK_OUTCOME_TASK and the webhook)."""
    svc = services()
    app = rebook_app()
    return Fanout(
        svc.store,
        svc.settings,
        lambda name, kwargs, queue: app.send_task(name, kwargs=kwargs, queue=queue),
    )
