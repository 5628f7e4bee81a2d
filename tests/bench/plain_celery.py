"""The naive comparison for `make bench`: plain Celery, one task per rebook, countdown retries.

This is what a first Celery implementation of the same job looks like: `plain.rebook` asks the
upstream whether the performer is online and, while they are not, `self.retry(countdown=P)`; once
they are, it POSTs `RescheduleMadeBooking` and starts `plain.watch`, which reads
`MadeBookingDetails` and retries with `countdown=W` while the booking is Pending and its AcceptBy
has not passed. No durable record (the countdown message *is* the state), no coalescing, no shared
rate limit. Same sandbox, same API key header and Bearer-token conventions, JSON serializer, the
same acks-late / prefetch-1 policy as rebook, so the design is what differs.

Run as a real worker:
`celery -A tests.bench.plain_celery worker -Q plain -c 2 -P prefork`, configured by environment:
`PLAIN_BROKER_URL`, `PLAIN_REDIS_URL` (members' access tokens at `plain:token:{user}`, counters),
`PLAIN_API_BASE_URL`, `PLAIN_API_KEY`, `PLAIN_API_KEY_HEADER`, `PLAIN_API_TIMEZONE`.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis
import requests
from celery import Celery, Task

QUEUE = "plain"
TOKEN_KEY = "plain:token:{user_id}"
STARTED = "plain:started"
"""Counter: rebook tasks that ran at least once (so they now wait in a countdown message)."""
BOOKED = "plain:booked"
WATCH_DONE = "plain:watch_done"

app = Celery("plain", broker=os.environ.get("PLAIN_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,
    result_backend=None,
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 3600},
    timezone="UTC",
    enable_utc=True,
)

_local: dict[int, tuple[requests.Session, Any]] = {}


def _clients() -> tuple[requests.Session, Any]:
    """One HTTP session and one Redis client per process (prefork children must not share)."""
    pid = os.getpid()
    found = _local.get(pid)
    if found is None:
        _local.clear()
        found = _local[pid] = (
            requests.Session(),
            redis.Redis.from_url(
                os.environ.get("PLAIN_REDIS_URL", "redis://127.0.0.1:6379/0"),
                decode_responses=True,
            ),
        )
    return found


def _api(
    method: str,
    path: str,
    *,
    user_id: str | None = None,
    params: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
) -> requests.Response:
    session, r = _clients()
    headers = {
        "Accept": "application/json",
        os.environ.get("PLAIN_API_KEY_HEADER", "apiKey"): os.environ.get(
            "PLAIN_API_KEY", "sandbox-key"
        ),
    }
    if user_id is not None:
        headers["Authorization"] = f"Bearer {r.get(TOKEN_KEY.format(user_id=user_id))}"
    base = os.environ.get("PLAIN_API_BASE_URL", "http://127.0.0.1:8765").rstrip("/")
    return session.request(
        method, base + path, params=params, json=body, headers=headers, timeout=10
    )


def _passed(site_time: str | None) -> bool:
    """Whether an offset-less upstream datetime (site time) is in the past."""
    if not site_time:
        return False
    zone = ZoneInfo(os.environ.get("PLAIN_API_TIMEZONE", "Europe/London"))
    when = datetime.fromisoformat(site_time).replace(tzinfo=zone)
    return when.timestamp() <= time.time()


@app.task(name="plain.rebook", bind=True, max_retries=None)
def rebook(
    self: Task,
    booking_id: int,
    user_id: str,
    performer_id: int,
    interval: float,
    watch_interval: float,
) -> str:
    """Poll presence for this one rebook; when online, reschedule and start watching."""
    return _rebook(self, booking_id, user_id, performer_id, interval, watch_interval)


@app.task(
    name="plain.rebook_limited",
    bind=True,
    max_retries=None,
    rate_limit=os.environ.get("PLAIN_PRESENCE_RATE_LIMIT") or None,
)
def rebook_limited(
    self: Task,
    booking_id: int,
    user_id: str,
    performer_id: int,
    interval: float,
    watch_interval: float,
) -> str:
    """The same under Celery's `rate_limit` (`PLAIN_PRESENCE_RATE_LIMIT`, e.g. "10.5/s"): how a
    plain Celery app keeps to an upstream budget. Celery applies it per worker, not shared."""
    return _rebook(self, booking_id, user_id, performer_id, interval, watch_interval)


def _rebook(
    self: Task,
    booking_id: int,
    user_id: str,
    performer_id: int,
    interval: float,
    watch_interval: float,
) -> str:
    _, r = _clients()
    if self.request.retries == 0:
        r.incr(STARTED)
    summary = _api("GET", "/v1/newsfeed/getUserSummary", params={"UserID": performer_id})
    if summary.status_code != 200 or not summary.json()["User"]["AvailableNowWebcam"]:
        raise self.retry(countdown=interval)
    resp = _api(
        "POST", "/v1/Webcam/RescheduleMadeBooking", user_id=user_id, body={"BookingID": booking_id}
    )
    if resp.status_code != 200:  # e.g. went offline in between: wait again
        raise self.retry(countdown=interval)
    new = resp.json()
    r.incr(BOOKED)
    watch.delay(int(new["WebcamBookingID"]), user_id, watch_interval)
    return "booked"


@app.task(name="plain.watch", bind=True, max_retries=None)
def watch(self: Task, booking_id: int, user_id: str, interval: float) -> str:
    """Poll the new booking until it is decided or its AcceptBy passes."""
    resp = _api(
        "GET", "/v1/Webcam/MadeBookingDetails", user_id=user_id, params={"BookingID": booking_id}
    )
    if resp.status_code != 200:
        raise self.retry(countdown=interval)
    booking = resp.json()
    status = str(booking.get("Status") or "Pending")
    if status == "Pending" and not _passed(booking.get("AcceptBy")):
        raise self.retry(countdown=interval)
    _clients()[1].incr(WATCH_DONE)
    return status
