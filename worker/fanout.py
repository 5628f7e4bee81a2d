"""Outcome fan-out: every outcome to `REBOOK_OUTCOME_TASK` and/or a signed webhook.

It reads the outcome stream through a consumer group, so the pipeline never waits for a receiver.
An entry is acknowledged once delivered. A failed one waits in its rebook's queue (`fanout:q:{id}`)
and the rebook is retried with backoff (`fanout:retry`); later outcomes of that rebook queue behind
it, so a receiver always sees one rebook's outcomes in order (BOOKED before ACCEPTED), while other
rebooks' outcomes go on. After `REBOOK_FANOUT_MAX_ATTEMPTS` an outcome is dead-lettered with the
reason. Delivery is at least once; receivers dedupe on the stream id (`X-Rebook-Delivery`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import redis

from worker.settings import Settings
from worker.store import Store
from worker.webhook import WebhookSender

log = logging.getLogger("rebook.fanout")
GROUP = "fanout"
SendTask = Callable[[str, dict[str, Any], str], None]


class Fanout:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        send_task: SendTask,
        webhook: WebhookSender | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.send_task = send_task
        self.clock = clock
        if webhook is None and settings.webhook_url and settings.webhook_secret:
            webhook = WebhookSender(
                settings.webhook_url,
                settings.webhook_secret.get_secret_value(),
                timeout=settings.http_timeout_seconds,
            )
        self.webhook = webhook

    def _key(self, shard: int, *parts: str) -> str:
        """Fan-out bookkeeping beside the shard's outcome stream (same slot)."""
        return self.store.skey(shard, *parts)

    def ensure_group(self) -> None:
        """The consumer group starts at the stream's end. Workers create it when they start,
        before they run a step, so no outcome a worker writes is ever before it."""
        if not self.settings.fanout_enabled:
            return
        for shard in self.store.shards:
            try:
                self.store.r.xgroup_create(
                    self._key(shard, "outcomes"), GROUP, id="$", mkstream=True
                )
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def run(self, batch: int = 100) -> dict[str, int]:
        """One pass: retries that are due, then new entries. Single-flight across workers."""
        counts = {"delivered": 0, "failed": 0, "gave_up": 0}
        if not self.settings.fanout_enabled:
            return counts
        lock = self.store.r.lock(self.store.key("fanout", "lock"), timeout=120, blocking=False)
        if not lock.acquire():
            return counts
        try:
            self.ensure_group()
            for shard in self.store.shards:
                self._run_shard(shard, batch, counts)
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                log.warning("fan-out outlived its lock")
        return counts

    def _run_shard(self, shard: int, batch: int, counts: dict[str, int]) -> None:
        r = self.store.r
        stream = self._key(shard, "outcomes")
        due = r.zrangebyscore(
            self._key(shard, "fanout", "retry"), "-inf", self.clock(), start=0, num=batch
        )
        for rebook_id in due:
            self._drain(shard, rebook_id, counts)
        fresh = r.xreadgroup(GROUP, "rebook", {stream: ">"}, count=batch)
        for _stream, rows in fresh or []:
            for entry_id, fields in rows:
                queue = self._key(shard, "fanout", "q", fields.get("rebook_id", ""))
                if r.llen(queue):  # an earlier outcome of this rebook is still undelivered
                    r.rpush(queue, entry_id)
                    continue
                if not self._deliver(shard, entry_id, fields, counts):
                    r.rpush(queue, entry_id)

    def _drain(self, shard: int, rebook_id: str, counts: dict[str, int]) -> None:
        """Delivers a rebook's queued outcomes in order until one fails again."""
        r = self.store.r
        queue = self._key(shard, "fanout", "q", rebook_id)
        while (entry_id := r.lindex(queue, 0)) is not None:
            rows = r.xrange(self._key(shard, "outcomes"), min=entry_id, max=entry_id)
            if rows and not self._deliver(shard, entry_id, rows[0][1], counts):
                return  # rescheduled with backoff, still at the head
            r.lpop(queue)
        r.zrem(self._key(shard, "fanout", "retry"), rebook_id)

    def _deliver(
        self, shard: int, entry_id: str, fields: dict[str, str], counts: dict[str, int]
    ) -> bool:
        """True when delivered (or given up and dead-lettered): the entry is done."""
        outcome = outcome_payload(entry_id, fields)
        try:
            if self.settings.outcome_task:
                self.send_task(
                    self.settings.outcome_task, {"outcome": outcome}, self.settings.outcome_queue
                )
            if self.webhook is not None:
                self.webhook.send(entry_id, outcome)
        except Exception as exc:  # any receiver failure (WebhookError, broker) is retried later
            return self._failed(shard, entry_id, outcome, str(exc) or type(exc).__name__, counts)
        self._done(shard, entry_id)
        counts["delivered"] += 1
        return True

    def _failed(
        self,
        shard: int,
        entry_id: str,
        outcome: dict[str, Any],
        reason: str,
        counts: dict[str, int],
    ) -> bool:
        attempts = int(self.store.r.hincrby(self._key(shard, "fanout", "attempts"), entry_id, 1))
        if attempts >= self.settings.fanout_max_attempts:
            self.store.deadletter(
                f"outcome fan-out gave up after {attempts} attempts: {reason}",
                outcome,
                task="rebook.fanout",
            )
            self._done(shard, entry_id)
            counts["gave_up"] += 1
            log.error("outcome %s: fan-out gave up (%s)", entry_id, reason)
            return True
        ceiling = min(
            self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2**attempts
        )
        wait = random.uniform(ceiling / 2, ceiling)
        self.store.r.zadd(
            self._key(shard, "fanout", "retry"), {outcome["rebook_id"]: self.clock() + wait}
        )
        counts["failed"] += 1
        log.warning("outcome %s: fan-out failed (%s); again in %.1fs", entry_id, reason, wait)
        return False

    def _done(self, shard: int, entry_id: str) -> None:
        pipe = self.store.r.pipeline(transaction=not self.store.cluster)
        pipe.xack(self._key(shard, "outcomes"), GROUP, entry_id)
        pipe.hdel(self._key(shard, "fanout", "attempts"), entry_id)
        pipe.execute()


def outcome_payload(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """The stream entry as JSON for receivers: ids as numbers, `detail` decoded."""
    out: dict[str, Any] = {"id": entry_id, **fields}
    for key in ("booking_id", "new_booking_id"):
        value = out.get(key)
        out[key] = int(value) if value and value.isdigit() else None
    try:
        out["detail"] = json.loads(fields.get("detail") or "{}")
    except ValueError:
        out["detail"] = {}
    for key in ("accept_by", "status", "reason"):
        out[key] = out.get(key) or None
    return out
