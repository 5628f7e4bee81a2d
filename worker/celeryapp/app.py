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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from celery import Celery, Task, signals
from celery.exceptions import Reject
from kombu import Exchange, Queue

from worker.celeryapp import broker, compat, failures, frames
from worker.celeryapp.runtime import services
from worker.celeryapp.sentry import init_sentry
from worker.core.keys import Keys
from worker.core.observability import bind_task, configure_logging
from worker.core.settings import Settings, get_settings, mask_url, settings_or_exit
from worker.core.store.client import is_store_fault

log = logging.getLogger(__name__)
T = TypeVar("T")

APP_NAME = "rebook"
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
    "tasks.audit",
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
    # task events show only an event's documented fields
    Request = "worker.celeryapp.consumer:SafeRequest"
    typing = False  # arguments are validated by the flow; bad ones go to the dead-letter stream

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """An intake that failed is dead-lettered: an event must end where a person sees it.
        Other steps need nothing here: the sweep runs them again."""
        if self.name == "rebook.request":
            _deadletter_failed(self.name, task_id, exc, args, kwargs)


def requeue_when_store_is_down(step: Callable[[], T], hold: float | None = None) -> T:
    """For intake: a store fault (`is_store_fault`: down, OOM, read-only, ...) is waited out for
    up to `hold` seconds (half the soft time limit), so a Redis restart costs seconds; a longer
    one hands the message back to the broker
    (reject + requeue) instead of failing it, since a failed message is acknowledged, i.e. gone.
    If the broker is down too, the message stays in its unacknowledged set and comes back after
    the visibility timeout. Intake is idempotent, so a retry after a half-done attempt is safe."""
    if hold is None:
        hold = time_limits(services().settings).soft / 2
    deadline = time.monotonic() + hold
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
    services().store.outcomes.deadletter(
        f"{name} failed: {type(exc).__name__}: {exc}"[:500],
        {"args": args, "kwargs": kwargs},
        task_id=task_id or "",
        task=name,
    )


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
    # two upstream calls, each within its deadline (default 2 x the timeout), and a margin
    soft = max(5.0, settings.step_lease_seconds, settings.call_bound_seconds * 2 + 5)
    hard = soft * 1.25 + 5
    return Limits(soft=soft, hard=hard, visibility=hard * 2)


def transport_options(settings: Settings, limits: Limits) -> dict[str, Any]:
    """The Redis transport: a visibility timeout just past the hard time limit, restores every
    few seconds (not every 100 s), the broker's own prefix, the Sentinel master."""
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
    return transport


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """What beat sends: the sweep (the engine of every wait), housekeeping, the token
    keep-alive, and the outcome fan-out when it is on. Options expire unsent nudges: the next
    beat tick sends a fresh one."""
    schedule: dict[str, Any] = {
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
    }
    schedule["rebook-audit"] = {
        "task": "rebook.audit",
        "schedule": settings.audit_interval_seconds,
        "options": {
            "queue": WORK_QUEUE,
            "priority": WATCH_PRIORITY,  # minutes of slack: after every step
            "expires": max(5.0, settings.audit_interval_seconds),
        },
    }
    if settings.fanout_enabled:
        schedule["rebook-fanout"] = {
            "task": "rebook.fanout",
            "schedule": settings.sweep_interval_seconds,
            "options": {
                "queue": WORK_QUEUE,
                "expires": max(5.0, settings.sweep_interval_seconds * 5),
            },
        }
    return schedule


def make_app(settings: Settings) -> Celery:
    """The app's configuration from the settings, with no process-wide effect (`create_app`
    adds those); tests and the bench build client apps with it."""
    app = Celery(APP_NAME, task_cls=RebookTask, include=TASK_MODULES)
    limits = time_limits(settings)
    app.conf.update(
        broker_url=settings.broker,
        broker_use_ssl=settings.broker_ssl_options(),
        redis_backend_use_ssl=settings.broker_ssl_options(),
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options(settings, limits),
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
        worker_consumer="worker.celeryapp.consumer:RebookConsumer",
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        # Flower sees a task from the moment a worker receives it; a "sent" event would cost
        # every dispatch a second broker write (1.7 ms instead of 1.1 ms per send, measured)
        task_send_sent_event=False,
        task_soft_time_limit=limits.soft,
        task_time_limit=limits.hard,
        timezone="UTC",
        enable_utc=True,
        beat_schedule=beat_schedule(settings),
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
            redbeat_key_prefix=Keys(settings.key_prefix).redbeat_prefix,
            redbeat_lock_timeout=int(loop * 5),
        )
    return app


def create_app(settings: Settings | None = None) -> Celery:
    """The app of a rebook process. Everything process-wide happens here, and not at import:
    the settings are read (a bad one exits with one line naming it), kombu and Celery are
    patched where they would drop or leak (`compat`, `frames`), rebook's Redis transport is
    installed, and the signal handlers that bind logs and start Sentry are connected. Calling it
    twice is harmless."""
    settings = settings or settings_or_exit()
    compat.patch_kombu_closed_channel()
    compat.patch_celery_dump_body()  # task events and Flower show only an event's fields
    frames.install_bounded_decompression()  # a compressed frame cannot inflate past the limit
    broker.install()
    _connect_signals()
    return make_app(settings)


def _connect_signals() -> None:
    """Celery's signals are process-wide: `dispatch_uid` keeps a second app from connecting
    them twice."""
    signals.setup_logging.connect(_setup_logging, weak=False, dispatch_uid="rebook.logging")
    signals.task_prerun.connect(_bind_task, weak=False, dispatch_uid="rebook.bind")
    signals.task_postrun.connect(_unbind_task, weak=False, dispatch_uid="rebook.unbind")
    signals.task_internal_error.connect(
        _internal_error, weak=False, dispatch_uid="rebook.internal_error"
    )
    signals.celeryd_init.connect(_worker_init, weak=False, dispatch_uid="rebook.worker_init")
    signals.beat_init.connect(_beat_init, weak=False, dispatch_uid="rebook.beat_init")
    signals.task_failure.connect(
        failures.on_task_failure, weak=False, dispatch_uid="rebook.scrub_failure"
    )
    signals.task_retry.connect(
        failures.on_task_retry, weak=False, dispatch_uid="rebook.scrub_retry"
    )


def _setup_logging(**_: Any) -> None:
    configure_logging(get_settings())


def _bind_task(
    task_id: str | None = None, sender: Any = None, kwargs: Any = None, **_: Any
) -> None:
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


def _unbind_task(**_: Any) -> None:
    bind_task(None)


def _clear_fixed_fault() -> None:
    """A deployment fault recorded under another value of its setting is gone: the operator
    fixed the setting and restarted (worker/core/circuit.py)."""
    try:
        services().store.circuit.check_setting()
    except Exception as exc:  # Redis down at start: the sweep's probes clear it later
        log.warning("deployment fault check at start skipped: %s", type(exc).__name__)


def _worker_init(**_: Any) -> None:
    init_sentry(get_settings())
    _clear_fixed_fault()
    from worker.celeryapp.dispatch import fanout  # dispatch imports this module

    fanout().ensure_group()
    log.info(
        "rebook worker: redis %s, upstream %s",
        mask_url(get_settings().redis_url),
        get_settings().api_base_url,
    )


def _beat_init(**_: Any) -> None:
    init_sentry(get_settings())
    _clear_fixed_fault()
