"""Intake: an event recorded durably, once, and its first step sent."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from worker.core.errors import (
    InvalidEvent,
    StoreUnavailable,
)
from worker.core.flow.context import (
    Kit,
)
from worker.core.flow.performer import Performer
from worker.core.models import RebookEvent
from worker.core.observability import bound
from worker.core.states import Step
from worker.core.store import rebook_id_for

log = logging.getLogger("rebook.flow")


@dataclass
class Intake(Kit):
    """`intake`: the `rebook.request` task's work."""

    performer: Performer

    def intake(self, args: Any, kwargs: Any, *, task_id: str = "") -> Step:
        """Records an event durably: `Step.CREATED`, `EXISTS`, `DUPLICATE` or `INVALID`."""
        try:
            event, extra = RebookEvent.parse(args, kwargs)
        except InvalidEvent as exc:
            self.store.outcomes.deadletter(
                exc.reason, {"args": args, "kwargs": kwargs}, task_id=task_id, task="rebook.request"
            )
            log.warning("invalid rebook event (task %s): %s", task_id, exc.reason)
            return Step.INVALID
        with bound(
            event_id=event.event_id,
            booking_id=event.booking_id,
            rebook_id=rebook_id_for(event.event_id),
            performer_id=event.performer_id,
        ):
            return self._intake(event, extra)

    def _intake(self, event: RebookEvent, extra: list[str]) -> Step:
        if extra:
            log.info("event %s: ignored unknown fields %s", event.event_id, ", ".join(extra[:10]))
        now = self.clock()
        max_wait = event.max_wait_seconds or self.settings.max_wait_seconds
        result = self.store.records.create(
            rebook_id=rebook_id_for(event.event_id),
            event_id=event.event_id,
            booking_id=event.booking_id,
            user_id=event.user_id,
            performer_id=event.performer_id,
            deadline=now + max_wait,
            now=now,
            # acknowledged means kept: a failover to a replica without the record would lose an
            # event its producer was told was taken (found by the simulation's failovers)
            replicas=self.settings.redis_wait_replicas,
            replica_timeout_ms=self.settings.redis_wait_timeout_ms,
        )
        n = self.settings.redis_wait_replicas
        if n and result.replicas < n:
            raise StoreUnavailable(f"{result.replicas} of {n} replicas have the event")
        if result.kind == "created":
            log.info(
                "rebook %s: received event %s for booking %s (performer %s)",
                result.rebook_id,
                event.event_id,
                event.booking_id,
                event.performer_id,
            )
            if event.performer_id is None:
                self.dispatch.check_presence(None, result.rebook_id)
            else:
                if result.dispatch_presence:
                    self.dispatch.check_presence(event.performer_id)
                if self.performer.field_for_intake() is None and self.performer.learning_slot(now):
                    # read its original: an answer to learn the performer field from
                    self.dispatch.check_presence(None, result.rebook_id)
        elif result.kind == "duplicate":
            log.info(
                "event %s: booking %s already has rebook %s: DUPLICATE",
                event.event_id,
                event.booking_id,
                result.other,
            )
        else:
            log.info(
                "event %s: already recorded as %s, nothing to do", event.event_id, result.rebook_id
            )
        return Step(result.kind)
