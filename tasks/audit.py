"""`rebook.audit` (beat): the ledger audit — the upstream's MadeBookings against the records."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from worker.celeryapp.app import WATCH_PRIORITY, WORK_QUEUE, time_limits
from worker.celeryapp.runtime import services
from worker.core.audit import Auditor, append_new, note_run, report_to_sentry
from worker.core.store.audit import AuditRecord

RUN_WINDOW = "audit:run"


@shared_task(name="rebook.audit", acks_late=False, reject_on_worker_lost=False)
def audit(pass_started: float | None = None) -> dict[str, Any]:
    """One run: the least recently audited members first, within half the soft time limit.
    Members not reached go on in a follow-up run at once (the same pass: those audited since
    `pass_started` are left out), so a pass over many members is not held to one beat tick.
    Each new finding is appended once and sent to Sentry once. Acknowledged on receipt: a run
    lost with its worker is the next beat tick's to do."""
    svc = services()
    s = svc.settings
    limits = time_limits(s)
    if svc.store.claim_window(RUN_WINDOW, limits.soft) > 0:
        return {"skipped": 1}  # another run is under way
    auditor = Auditor(s, svc.store, svc.client, svc.tokens)
    started = pass_started if pass_started is not None else auditor.clock()
    appended = 0

    def checked(user_id: str, findings: Any) -> None:
        nonlocal appended
        if findings is None:
            return  # not checked: first again next run
        auditor.mark_checked(user_id)
        for finding in append_new(svc.store, findings):
            appended += 1
            report_to_sentry(finding)

    try:
        report = auditor.run(
            budget_seconds=limits.soft / 2, on_member=checked, done_since=pass_started
        )
        note_run(svc.store, report, auditor.clock())
    finally:
        AuditRecord(svc.store).release_window(RUN_WINDOW)
    if report.deferred:
        audit.apply_async(
            kwargs={"pass_started": started}, queue=WORK_QUEUE, priority=WATCH_PRIORITY
        )
    return {
        "checked_members": report.checked_members,
        "unchecked_members": len(report.unchecked),
        "deferred": report.deferred,
        "findings": len(report.findings),
        "appended": appended,
        "calls": report.calls,
    }
