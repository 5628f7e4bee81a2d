"""What every task module shares: the Celery dispatcher and the flow of this process."""

from __future__ import annotations

from typing import Any

from worker.app import app
from worker.flow import Flow
from worker.runtime import services


class CeleryDispatcher:
    """Sends steps by task name (no imports between task modules); routes come from the app."""

    def check_presence(self, performer_id: int | None, rebook_id: str | None = None) -> None:
        kwargs: dict[str, Any] = {"performer_id": performer_id}
        if rebook_id is not None:
            kwargs["rebook_id"] = rebook_id
        app.send_task("rebook.check_presence", kwargs=kwargs)

    def reschedule(self, rebook_id: str) -> None:
        app.send_task("rebook.reschedule", kwargs={"rebook_id": rebook_id})

    def watch(self, rebook_id: str, booking: dict[str, Any]) -> None:
        app.send_task("rebook.watch", kwargs={"rebook_id": rebook_id, "booking": booking})


_dispatcher = CeleryDispatcher()


def flow() -> Flow:
    svc = services()
    return Flow(svc.settings, svc.store, svc.client, svc.tokens, _dispatcher)
