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

from celery.exceptions import SoftTimeLimitExceeded

from worker.adapters.webhook import WebhookSender
from worker.core.backoff import backoff
from worker.core.settings import Settings
from worker.core.store import Store
from worker.core.store.fanout import FanoutRecord

log = logging.getLogger("rebook.fanout")
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
        self.record = FanoutRecord(store)
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
            self.record.ensure_group(shard)

    def run(self, batch: int = 100) -> dict[str, int]:
        """One pass: retries that are due, reclaimed pending entries, then new entries.
        Single-flight across workers."""
        counts = {"delivered": 0, "failed": 0, "gave_up": 0}
        if not self.settings.fanout_enabled:
            return counts
        lock = self.record.lock()
        if not lock.acquire():
            return counts
        try:
            self.ensure_group()
            for shard in self.store.shards:
                self._run_shard(shard, batch, counts)
        finally:
            lock.release()
        return counts

    def _run_shard(self, shard: int, batch: int, counts: dict[str, int]) -> None:
        rec = self.record
        down: set[str] = set()  # receivers that failed in this pass: not called again in it
        for name in self.receivers:
            for rebook_id in rec.due(shard, name, self.clock(), batch):
                if name in down:
                    break
                self._drain(shard, name, rebook_id, counts, down)
        entries = self._reclaim(shard, batch)
        entries.extend(
            (entry_id, fields) for entry_id, fields in rec.read_new(shard, batch) if fields
        )
        if not entries:
            return
        done = rec.done_by(shard, [entry_id for entry_id, _ in entries])
        for name in self.receivers:  # one receiver after the other: a slow one delays no other
            for entry_id, fields in entries:
                if name in done[entry_id]:
                    continue
                rebook_id = fields.get("rebook_id", "")
                if name in down or rec.queued(shard, name, rebook_id):
                    # an earlier outcome of this rebook is undelivered (or the receiver is down
                    # in this pass): keep the order, try at the retry time
                    if not rec.holds(shard, name, rebook_id, entry_id):
                        rec.enqueue(shard, name, rebook_id, entry_id)
                    if name in down:
                        self._schedule(shard, name, rebook_id, 0)
                    continue
                if not self._deliver(shard, name, entry_id, fields, counts):
                    down.add(name)
                    rec.enqueue(shard, name, rebook_id, entry_id)

    def _reclaim(self, shard: int, batch: int) -> list[tuple[str, dict[str, str]]]:
        """Pending entries of earlier passes (a pass cut short, or queued for a receiver). They
        are older than any new entry, so they go first; the cursor walks the pending list, up
        to `RECLAIM_BATCHES` batches a pass (a long list is walked over several passes)."""
        start = self.record.cursor(shard)
        out: list[tuple[str, dict[str, str]]] = []
        for _ in range(RECLAIM_BATCHES):
            start, claimed, gone = self.record.reclaim(shard, start, batch)
            for entry_id in gone:
                self.record.ack(shard, entry_id)  # trimmed by retention: nothing to deliver
            out.extend((entry_id, fields) for entry_id, fields in claimed if fields)
            if start in ("0-0", "0"):
                break
        self.record.set_cursor(shard, start)
        return out

    def _drain(
        self, shard: int, name: str, rebook_id: str, counts: dict[str, int], down: set[str]
    ) -> None:
        """Delivers a rebook's queued outcomes to one receiver in order until one fails again."""
        rec = self.record
        while (entry_id := rec.head(shard, name, rebook_id)) is not None:
            fields = rec.entry(shard, entry_id)
            if fields is not None and name not in rec.done_by(shard, [entry_id])[entry_id]:
                if not self._deliver(shard, name, entry_id, fields, counts):
                    down.add(name)
                    return  # rescheduled with backoff, still at the head
            elif fields is None:
                rec.ack(shard, entry_id)
            rec.pop(shard, name, rebook_id)
        rec.unschedule(shard, name, rebook_id)

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
        attempts = self.record.count_attempt(shard, name, entry_id)
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
        # a receiver down in this pass (attempts 0): keep a retry already set
        self.record.schedule(shard, name, rebook_id, self.clock() + wait, keep=attempts == 0)
        return wait

    def _mark(self, shard: int, name: str, entry_id: str) -> None:
        """`name` has the entry; once every receiver has it, it is acknowledged."""
        self.record.mark(shard, name, entry_id, set(self.receivers))


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
