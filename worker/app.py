"""The Celery app `worker.app:app`. Every cross-cutting policy is set here, once.

- JSON only, explicit task names, two queues: `rebook.events` (intake) and `rebook.work` (steps).
- acks late + reject on worker lost: a message is acknowledged only after its step is recorded, so
  a killed worker hands its message back. Steps are idempotent (compare-and-set on the record).
- prefetch 1: a worker never sits on messages another worker could run.
- No countdown/ETA for waiting: the beat sweep re-dispatches from the due index in Redis.
- An intake that the store cannot take (down, OOM, read-only, loading, busy) is handed back to
  the broker (reject + requeue), never acknowledged: an accepted event must never be dropped.
  Other steps just fail; the sweep reruns them from the record.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
from celery import Celery, Task, signals
from celery.exceptions import Reject
from kombu import Exchange, Producer, Queue

from worker import broker, compat
from worker.errors import StoreUnavailable
from worker.fanout import Fanout
from worker.flow import Flow
from worker.runtime import services
from worker.settings import Settings, get_settings, mask_url, settings_or_exit

log = logging.getLogger(__name__)
T = TypeVar("T")

EVENTS_QUEUE = "rebook.events"
WORK_QUEUE = "rebook.work"
TASK_MODULES = [
    "tasks.intake",
    "tasks.presence",
    "tasks.reschedule",
    "tasks.watch",
    "tasks.sweep",
    "tasks.fanout",
    "tasks.tokens",
]
HOUSEKEEPING_SECONDS = 60.0
# Redis broker: a lower number is served first. Events, the sweep, presence checks and the first
# reschedule of a performer who came online are small and time-critical (performer online ->
# POST); the other reschedules come next; watch reads, which have minutes of slack (AcceptBy),
# come last, so a burst of new bookings never delays the POSTs still to go out. RabbitMQ ignores
# priorities on these queues (no x-max-priority).
URGENT_PRIORITY = 0
STEP_PRIORITY = 6
WATCH_PRIORITY = 9


class RebookTask(Task):
    """Base of every rebook task: the retry policy lives here, not at call sites."""

    acks_late = True
    reject_on_worker_lost = True
    Request = "worker.consumer:SafeRequest"  # task events show only an event's documented fields
    typing = False  # arguments are validated by the flow; bad ones go to the dead-letter stream

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """An intake that failed is dead-lettered: an event must end where a person sees it.
        Other steps need nothing here: the sweep runs them again."""
        if self.name == "rebook.request":
            _deadletter_failed(self.name, task_id, exc, args, kwargs)


STORE_ERRORS = (
    redis.ConnectionError,  # also LOADING (BusyLoadingError), auth, max clients
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # OOM: noeviction at maxmemory
    redis.exceptions.ReadOnlyError,  # READONLY: a replica, e.g. after a failover
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    StoreUnavailable,
)
_STORE_FAULT_CODES = re.compile(
    r"(?<![A-Z])-?(OOM|READONLY|MISCONF|LOADING|BUSY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|NOREPLICAS)\b"
)
"""Error codes of a Redis that cannot take the write right now, wherever they stand in the reply
(a script's error wraps them: `ERR Error running script ...: -READONLY You can't write ...`)."""


def is_store_fault(exc: BaseException) -> bool:
    """The store refused or could not answer for reasons of its own, not the event's: OOM,
    READONLY, MISCONF, LOADING, BUSY, a lost connection, a timeout. Such an event is handed
    back, never failed (a failed intake is acknowledged: gone)."""
    if isinstance(exc, STORE_ERRORS):
        return True
    if isinstance(exc, redis.ResponseError):
        code = str(getattr(exc, "status_code", "") or "")
        return bool(_STORE_FAULT_CODES.search(f"{code} {exc}"))
    return False


def requeue_when_store_is_down(step: Callable[[], T], hold: float | None = None) -> T:
    """For intake: a store fault (`is_store_fault`: down, OOM, read-only, ...) is waited out for
    up to `hold` seconds (half the soft time limit), so a Redis restart costs seconds; a longer
    one hands the message back to the broker
    (reject + requeue) instead of failing it, since a failed message is acknowledged, i.e. gone.
    If the broker is down too, the message stays in its unacknowledged set and comes back after
    the visibility timeout. Intake is idempotent, so a retry after a half-done attempt is safe."""
    deadline = time.monotonic() + (time_limits(settings).soft / 2 if hold is None else hold)
    pause = 0.1
    while True:
        try:
            return step()
        except Exception as exc:
            if not is_store_fault(exc):
                raise
            if time.monotonic() + pause > deadline:
                log.warning("store cannot take the event (%s): handed back to the broker", exc)
                raise Reject(exc, requeue=True) from None
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _deadletter_failed(name: str, task_id: str, exc: BaseException, args: Any, kwargs: Any) -> None:
    from worker.runtime import services

    services().store.deadletter(
        f"{name} failed: {type(exc).__name__}: {exc}"[:500],
        {"args": args, "kwargs": kwargs},
        task_id=task_id or "",
        task=name,
    )


@signals.task_internal_error.connect
def _internal_error(
    sender: Any = None,
    task_id: str = "",
    args: Any = None,
    kwargs: Any = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    """Errors outside the task body (e.g. kwargs that are not a mapping) never reach
    `on_failure`; the message was still meant for us, so it is dead-lettered."""
    _deadletter_failed(
        getattr(sender, "name", "?"), task_id, exception or Exception("?"), args, kwargs
    )


@dataclass(frozen=True)
class Limits:
    soft: float
    hard: float
    visibility: float


def time_limits(settings: Settings) -> Limits:
    """Time limits that fit the slowest step (a token refresh, the call, a presence re-check, a
    rate-limit wait), and a Redis visibility timeout just above them: every step is idempotent,
    so a message held by a worker that was killed -9 comes back after seconds, not an hour."""
    soft = max(5.0, settings.step_lease_seconds, settings.http_timeout_seconds * 4 + 5)
    hard = soft * 1.25 + 5
    return Limits(soft=soft, hard=hard, visibility=hard * 2)


def make_app(settings: Settings) -> Celery:
    app = Celery("rebook", task_cls=RebookTask, include=TASK_MODULES)
    limits = time_limits(settings)
    transport: dict[str, Any] = {
        "visibility_timeout": limits.visibility,
        # look for unacknowledged messages to restore every few seconds, not every 100 s
        "unacked_restore_interval": max(1, int(limits.visibility / 4)),
        "unacked_restore_throttle": 1,
    }
    if settings.broker_key_prefix:
        transport["global_keyprefix"] = settings.broker_key_prefix
    if settings.broker.startswith("sentinel://"):
        transport["master_name"] = settings.redis_sentinel_master
    app.conf.update(
        broker_url=settings.broker,
        broker_use_ssl=settings.broker_ssl_options(),
        redis_backend_use_ssl=settings.broker_ssl_options(),
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=WORK_QUEUE,
        task_default_exchange=WORK_QUEUE,
        task_default_routing_key=WORK_QUEUE,
        task_queues=[
            Queue(EVENTS_QUEUE, Exchange(EVENTS_QUEUE, type="direct"), routing_key=EVENTS_QUEUE),
            Queue(WORK_QUEUE, Exchange(WORK_QUEUE, type="direct"), routing_key=WORK_QUEUE),
        ],
        task_routes={"rebook.request": {"queue": EVENTS_QUEUE, "routing_key": EVENTS_QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_consumer="worker.consumer:RebookConsumer",
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        # Flower sees a task from the moment a worker receives it; a "sent" event would cost
        # every dispatch a second broker write (1.7 ms instead of 1.1 ms per send, measured)
        task_send_sent_event=False,
        task_soft_time_limit=limits.soft,
        task_time_limit=limits.hard,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "rebook-sweep": {
                "task": "rebook.sweep",
                "schedule": settings.sweep_interval_seconds,
                "options": {
                    "queue": WORK_QUEUE,
                    "priority": URGENT_PRIORITY,
                    "expires": max(5.0, settings.sweep_interval_seconds * 5),
                },
            },
            "rebook-housekeeping": {
                "task": "rebook.housekeeping",
                "schedule": HOUSEKEEPING_SECONDS,
                "options": {"queue": WORK_QUEUE, "expires": HOUSEKEEPING_SECONDS},
            },
            "rebook-keep-tokens": {
                "task": "rebook.keep_tokens",
                "schedule": settings.token_keepalive_interval_seconds,
                "options": {
                    "queue": WORK_QUEUE,
                    "priority": WATCH_PRIORITY,  # days of slack: after every step
                    "expires": max(5.0, settings.token_keepalive_interval_seconds),
                },
            },
        },
    )
    if settings.beat_scheduler == "redbeat":
        # celery-redbeat: the schedule lives in Redis and a lock lets exactly one of several
        # beats run it, so beat can run redundantly (HA) without doubling the sweeps.
        # A standby beat retries the lock every loop interval; failover takes at most the lock
        # timeout plus one loop.
        loop = max(1.0, min(5.0, settings.sweep_interval_seconds * 5))
        app.conf.update(
            beat_scheduler="redbeat.RedBeatScheduler",
            beat_max_loop_interval=loop,
            redbeat_redis_url=settings.redis_url,
            redbeat_key_prefix=f"{settings.key_prefix}redbeat:",
            redbeat_lock_timeout=int(loop * 5),
        )
    if settings.fanout_enabled:
        app.conf.beat_schedule["rebook-fanout"] = {
            "task": "rebook.fanout",
            "schedule": settings.sweep_interval_seconds,
            "options": {
                "queue": WORK_QUEUE,
                "expires": max(5.0, settings.sweep_interval_seconds * 5),
            },
        }
    return app


settings = settings_or_exit()
compat.patch_kombu_closed_channel()
broker.install()
app = make_app(settings)


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


def flow() -> Flow:
    """The flow of this process, sending its next steps through this app."""
    svc = services()
    return Flow(svc.settings, svc.store, svc.client, svc.tokens, CeleryDispatcher(app))


def fanout() -> Fanout:
    """Outcome fan-out of this process (REBOOK_OUTCOME_TASK and the webhook)."""
    svc = services()
    return Fanout(
        svc.store,
        svc.settings,
        lambda name, kwargs, queue: app.send_task(name, kwargs=kwargs, queue=queue),
    )


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    from worker.observability import configure_logging

    configure_logging(get_settings())


@signals.task_prerun.connect
def _bind_task(
    task_id: str | None = None, sender: Any = None, kwargs: Any = None, **_: Any
) -> None:
    from worker.observability import bind_task

    bind_task(task_id)
    # Celery calls tasks as `task(self, *args, **kwargs)`: an event field named "self" would
    # collide with that. Unknown fields are ignored anyway, so it is dropped here.
    if (
        getattr(sender, "name", "") == "rebook.request"
        and isinstance(kwargs, dict)
        and "self" in kwargs
    ):
        kwargs.pop("self")
        log.info("event field 'self' ignored")


@signals.task_postrun.connect
def _unbind_task(**_: Any) -> None:
    from worker.observability import bind_task

    bind_task(None)


@signals.celeryd_init.connect
def _worker_init(**_: Any) -> None:
    from worker.observability import init_sentry

    init_sentry(get_settings())
    fanout().ensure_group()
    log.info(
        "rebook worker: redis %s, upstream %s",
        mask_url(get_settings().redis_url),
        get_settings().api_base_url,
    )


@signals.beat_init.connect
def _beat_init(**_: Any) -> None:
    from worker.observability import init_sentry

    init_sentry(get_settings())
