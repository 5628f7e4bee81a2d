"""`rebook.audit` (beat): the ledger audit — the upstream's MadeBookings against the records."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from worker.celeryapp.app import time_limits
from worker.celeryapp.runtime import services
from worker.core.audit import Auditor, append_new, note_run, report_to_sentry


@shared_task(name="rebook.audit", acks_late=False, reject_on_worker_lost=False)
def audit() -> dict[str, Any]:
    """One run: the least recently audited members first, within half the soft time limit
    (the rest go first next run). Each new finding is appended once and sent to Sentry once.
    Acknowledged on receipt: a run lost with its worker is simply the next beat tick's."""
    svc = services()
    s = svc.settings
    if svc.store.claim_window("audit:run", time_limits(s).soft) > 0:
        return {"skipped": 1}  # another run is under way
    auditor = Auditor(s, svc.store, svc.client, svc.tokens)
    appended = 0

    def checked(user_id: str, findings: Any) -> None:
        nonlocal appended
        auditor.mark_checked(user_id)
        for finding in append_new(svc.store, findings or ()):
            appended += 1
            report_to_sentry(finding)

    try:
        report = auditor.run(budget_seconds=time_limits(s).soft / 2, on_member=checked)
        note_run(svc.store, report, auditor.clock())
    finally:
        svc.store.r.delete(svc.store.keys.window("audit:run"))
    return {
        "checked_members": report.checked_members,
        "unchecked_members": len(report.unchecked),
        "findings": len(report.findings),
        "appended": appended,
        "calls": report.calls,
    }
