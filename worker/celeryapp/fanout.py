"""Outcome fan-out: every outcome to `REBOOK_OUTCOME_TASK` and/or a signed webhook.

It reads the outcome stream through a consumer group, so the pipeline never waits for a receiver.
Each receiver (`task`, `webhook`) keeps its own progress: an entry is acknowledged once every
receiver has it (`fanout:done` says which ones have), so a receiver that is down or slow never
holds back the other. A failed delivery waits in that receiver's queue of its rebook
(`fanout:{receiver}:q:{id}`) and the rebook is retried with backoff (`fanout:{receiver}:retry`);
later outcomes of that rebook queue behind it, so a receiver always sees one rebook's outcomes in
order (BOOKED before ACCEPTED), while other rebooks' outcomes go on. A receiver that fails is not
called again in the same pass (a dead webhook costs one timeout per pass, not one per entry).
After `REBOOK_FANOUT_MAX_ATTEMPTS` an outcome is dead-lettered for that receiver with the reason.

Every pass first reclaims the group's own pending entries (`XAUTOCLAIM`, a cursor kept in
`fanout:cursor` walks the whole pending list over the passes) that no receiver queue holds: a pass
cut by a time limit or a kill resumes where it stopped, and a receiver that already had an entry
does not get it again. Delivery is at least once; receivers dedupe on the stream id
(`X-Rebook-Delivery`). Celery's soft time limit is never swallowed: the pass stops, its lock goes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded

from worker.adapters.webhook import WebhookSender
from worker.core.backoff import backoff
from worker.core.settings import Settings
from worker.core.store import Store

log = logging.getLogger("rebook.fanout")
GROUP = "fanout"
CONSUMER = "rebook"
RECLAIM_BATCHES = 10
SendTask = Callable[[str, dict[str, Any], str], None]
Deliver = Callable[[str, dict[str, Any]], None]


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
        self.receivers: dict[str, Deliver] = {}
        if settings.outcome_task:
            self.receivers["task"] = self._to_task
        if webhook is not None:
            self.receivers["webhook"] = webhook.send

    def _to_task(self, entry_id: str, outcome: dict[str, Any]) -> None:
        assert self.settings.outcome_task
        self.send_task(
            self.settings.outcome_task, {"outcome": outcome}, self.settings.outcome_queue
        )

    def ensure_group(self) -> None:
        """The consumer group starts at the stream's end. Workers create it when they start,
        before they run a step, so no outcome a worker writes is ever before it."""
        if not self.settings.fanout_enabled:
            return
        for shard in self.store.shards:
            try:
                self.store.r.xgroup_create(
                    self.store.keys.outcomes(shard), GROUP, id="$", mkstream=True
                )
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def run(self, batch: int = 100) -> dict[str, int]:
        """One pass: retries that are due, reclaimed pending entries, then new entries.
        Single-flight across workers."""
        counts = {"delivered": 0, "failed": 0, "gave_up": 0}
        if not self.settings.fanout_enabled:
            return counts
        lock = self.store.r.lock(self.store.keys.fanout_lock, timeout=120, blocking=False)
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
        stream = self.store.keys.outcomes(shard)
        down: set[str] = set()  # receivers that failed in this pass: not called again in it
        for name in self.receivers:
            due = r.zrangebyscore(
                self.store.keys.fanout(shard, name, "retry"),
                "-inf",
                self.clock(),
                start=0,
                num=batch,
            )
            for rebook_id in due:
                if name in down:
                    break
                self._drain(shard, name, rebook_id, counts, down)
        entries = self._reclaim(shard, stream, batch)
        fresh = r.xreadgroup(GROUP, CONSUMER, {stream: ">"}, count=batch)
        for _stream, rows in fresh or []:
            entries.extend((entry_id, fields) for entry_id, fields in rows if fields)
        if not entries:
            return
        done = self._done_map(shard, [entry_id for entry_id, _ in entries])
        for name in self.receivers:  # one receiver after the other: a slow one delays no other
            for entry_id, fields in entries:
                if name in done[entry_id]:
                    continue
                queue = self.store.keys.fanout(shard, name, "q", fields.get("rebook_id", ""))
                if name in down or r.llen(queue):
                    # an earlier outcome of this rebook is undelivered (or the receiver is down
                    # in this pass): keep the order, try at the retry time
                    if r.lpos(queue, entry_id) is None:
                        r.rpush(queue, entry_id)
                    if name in down:
                        self._schedule(shard, name, fields.get("rebook_id", ""), 0)
                    continue
                if not self._deliver(shard, name, entry_id, fields, counts):
                    down.add(name)
                    r.rpush(queue, entry_id)

    def _reclaim(self, shard: int, stream: str, batch: int) -> list[tuple[str, dict[str, str]]]:
        """Pending entries of earlier passes (a pass cut short, or queued for a receiver). They
        are older than any new entry, so they go first; the cursor walks the pending list, up
        to `RECLAIM_BATCHES` batches a pass (a long list is walked over several passes)."""
        r = self.store.r
        cursor_key = self.store.keys.fanout(shard, "cursor")
        start = r.get(cursor_key) or "0-0"
        out: list[tuple[str, dict[str, str]]] = []
        for _ in range(RECLAIM_BATCHES):
            reply = r.xautoclaim(
                stream, GROUP, CONSUMER, min_idle_time=0, start_id=start, count=batch
            )
            start = reply[0]
            for entry_id in reply[2] if len(reply) > 2 else []:
                self._ack(shard, entry_id)  # trimmed by retention: nothing left to deliver
            out.extend((entry_id, fields) for entry_id, fields in reply[1] if fields)
            if start in ("0-0", "0"):
                break
        r.set(cursor_key, start)
        return out

    def _done_map(self, shard: int, entry_ids: list[str]) -> dict[str, set[str]]:
        values = self.store.r.hmget(self.store.keys.fanout(shard, "done"), entry_ids)
        return {
            eid: set((v or "").split(",")) - {""} for eid, v in zip(entry_ids, values, strict=True)
        }

    def _drain(
        self, shard: int, name: str, rebook_id: str, counts: dict[str, int], down: set[str]
    ) -> None:
        """Delivers a rebook's queued outcomes to one receiver in order until one fails again."""
        r = self.store.r
        queue = self.store.keys.fanout(shard, name, "q", rebook_id)
        while (entry_id := r.lindex(queue, 0)) is not None:
            rows = r.xrange(self.store.keys.outcomes(shard), min=entry_id, max=entry_id)
            if rows and name not in self._done_map(shard, [entry_id])[entry_id]:
                if not self._deliver(shard, name, entry_id, rows[0][1], counts):
                    down.add(name)
                    return  # rescheduled with backoff, still at the head
            elif not rows:
                self._ack(shard, entry_id)
            r.lpop(queue)
        r.zrem(self.store.keys.fanout(shard, name, "retry"), rebook_id)

    def _deliver(
        self, shard: int, name: str, entry_id: str, fields: dict[str, str], counts: dict[str, int]
    ) -> bool:
        """True when delivered (or given up and dead-lettered): the entry is done for `name`."""
        outcome = outcome_payload(entry_id, fields)
        try:
            self.receivers[name](entry_id, outcome)
        except SoftTimeLimitExceeded:
            raise  # the pass stops here; the entry is pending and reclaimed by the next pass
        except Exception as exc:  # any receiver failure (WebhookError, broker) is retried later
            reason = str(exc) or type(exc).__name__
            return self._failed(shard, name, entry_id, outcome, reason, counts)
        self._mark(shard, name, entry_id)
        counts["delivered"] += 1
        return True

    def _failed(
        self,
        shard: int,
        name: str,
        entry_id: str,
        outcome: dict[str, Any],
        reason: str,
        counts: dict[str, int],
    ) -> bool:
        attempts = int(
            self.store.r.hincrby(self.store.keys.fanout(shard, name, "attempts"), entry_id, 1)
        )
        if attempts >= self.settings.fanout_max_attempts:
            self.store.outcomes.deadletter(
                f"outcome fan-out gave up after {attempts} attempts: {name}: {reason}",
                outcome,
                task="rebook.fanout",
            )
            self._mark(shard, name, entry_id)
            counts["gave_up"] += 1
            log.error("outcome %s: fan-out to %s gave up (%s)", entry_id, name, reason)
            return True
        wait = self._schedule(shard, name, outcome["rebook_id"], attempts)
        counts["failed"] += 1
        log.warning(
            "outcome %s: fan-out to %s failed (%s); again in %.1fs", entry_id, name, reason, wait
        )
        return False

    def _schedule(self, shard: int, name: str, rebook_id: str, attempts: int) -> float:
        s = self.settings
        wait = backoff(max(1, attempts), s.retry_base_seconds, s.retry_max_seconds)
        self.store.r.zadd(
            self.store.keys.fanout(shard, name, "retry"),
            {rebook_id: self.clock() + wait},
            nx=attempts == 0,  # a receiver down in this pass: keep a retry already set
        )
        return wait

    def _mark(self, shard: int, name: str, entry_id: str) -> None:
        """`name` has the entry; once every receiver has it, it is acknowledged."""
        r = self.store.r
        done_key = self.store.keys.fanout(shard, "done")
        have = set((r.hget(done_key, entry_id) or "").split(",")) - {""}
        have.add(name)
        pipe = r.pipeline(transaction=not self.store.cluster)
        pipe.hdel(self.store.keys.fanout(shard, name, "attempts"), entry_id)
        if have >= set(self.receivers):
            pipe.xack(self.store.keys.outcomes(shard), GROUP, entry_id)
            pipe.hdel(done_key, entry_id)
        else:
            pipe.hset(done_key, entry_id, ",".join(sorted(have)))
        pipe.execute()

    def _ack(self, shard: int, entry_id: str) -> None:
        pipe = self.store.r.pipeline(transaction=not self.store.cluster)
        pipe.xack(self.store.keys.outcomes(shard), GROUP, entry_id)
        pipe.hdel(self.store.keys.fanout(shard, "done"), entry_id)
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
