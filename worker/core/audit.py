"""The ledger audit: the upstream's MadeBookings of each member with recent rebooks, compared
with the records (DESIGN "Ledger audit", README "Ledger audit"). No Celery and no HTTP here.

The upstream does not say which original a new booking was made from, nor (until the performer
field is confirmed) whose performer it is. So bookings are attributed by member, performer and
creation time after the rebook was received, and where the originals of one member and performer
overlap, new bookings are counted against rebooks. Only bookings that look made by a reschedule
(SessionDate a few minutes after CreateDate, both site time) count unless a record owns them:
bookings the member made by hand are never findings.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from worker.core.budget import AUDIT_SHARE
from worker.core.errors import (
    AuthExpired,
    DeploymentFault,
    NotFound,
    ReauthRequired,
    Throttled,
    UpstreamError,
)
from worker.core.flow.bookings import looks_rescheduled
from worker.core.models import WebcamBooking, from_ts, iso_z
from worker.core.settings import Settings
from worker.core.states import ACTIVE_STATES, State
from worker.core.store import Rebook, Store
from worker.core.store.audit import AuditRecord
from worker.core.store.counters import Tally

log = logging.getLogger("rebook.audit")

KINDS = ("double", "orphan", "missing")
AUDIT_MAX_PAGES = 50
"""Pages of MadeBookings one member's audit reads at most (100 bookings each): a list cut
there is not read whole, and the member is reported as not checked."""
SETTLING_REASONS = frozenset(
    {"unclaimed_booking", "unverified_shape", "ambiguous_reschedule", "booking_claimed_elsewhere"}
)
"""Parked reasons that already name a booking nobody here owns: an operator settles it; the
audit does not report the same booking again as an orphan."""
THROTTLE_PAUSE_MAX = 1.0
NOT_REACHED = "not reached within this run"


@dataclass(frozen=True)
class Finding:
    """One finding, in the shape of `rebook audit --json` and of the `{prefix}audit` stream."""

    kind: str
    user_id: str
    booking_id: int
    new_booking_ids: tuple[int, ...]
    rebook_ids: tuple[str, ...]
    found_at: str

    @property
    def fingerprint(self) -> str:
        """Kind, original and sorted new bookings: a finding is new when this was not seen."""
        return f"{self.kind}:{self.booking_id}:{','.join(map(str, sorted(self.new_booking_ids)))}"

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "user_id": self.user_id,
            "booking_id": self.booking_id,
            "new_booking_ids": list(self.new_booking_ids),
            "rebook_ids": list(self.rebook_ids),
            "found_at": self.found_at,
        }

    def stream_fields(self) -> dict[str, str]:
        """The stream entry: the JSON's fields, lists as JSON arrays."""
        return {
            "kind": self.kind,
            "user_id": self.user_id,
            "booking_id": str(self.booking_id),
            "new_booking_ids": json.dumps(list(self.new_booking_ids)),
            "rebook_ids": json.dumps(list(self.rebook_ids)),
            "found_at": self.found_at,
        }

    @classmethod
    def from_stream(cls, fields: Mapping[str, str]) -> Finding:
        return cls(
            kind=fields.get("kind", ""),
            user_id=fields.get("user_id", ""),
            booking_id=int(fields.get("booking_id") or 0),
            new_booking_ids=tuple(json.loads(fields.get("new_booking_ids") or "[]")),
            rebook_ids=tuple(json.loads(fields.get("rebook_ids") or "[]")),
            found_at=fields.get("found_at", ""),
        )


@dataclass(frozen=True)
class Unchecked:
    user_id: str
    why: str


@dataclass
class Report:
    """What one audit saw. An unreadable member is `unchecked`, never clean."""

    checked_members: int = 0
    findings: list[Finding] = field(default_factory=list)
    unchecked: list[Unchecked] = field(default_factory=list)
    calls: int = 0
    deferred: int = 0
    """Members not reached within the run's time budget (among `unchecked`)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "checked_members": self.checked_members,
            "findings": [f.as_json() for f in self.findings],
            "unchecked_members": [{"user_id": u.user_id, "why": u.why} for u in self.unchecked],
        }


# -- attribution (pure) --------------------------------------------------------------------------


def _original(group: Sequence[Rebook]) -> int:
    """The original a group's finding names: the one original when there is one, else the
    smallest (overlapping originals cannot be told apart; `rebook_ids` names every rebook)."""
    return min(r.booking_id for r in group)


def _excess(rebooks: Sequence[Rebook], made: Sequence[float], margin: float) -> bool:
    """Whether bookings made at `made` cannot all be matched to distinct rebooks received
    before them (less `margin`): a greedy match in time order, which fails exactly when no
    match exists."""
    received = [r.created_ts - margin for r in rebooks]
    return any(used >= sum(1 for t in received if t <= at) for used, at in enumerate(sorted(made)))


def _created(b: WebcamBooking) -> float:
    return b.create_date.timestamp() if b.create_date is not None else float("inf")


def _groups(
    records: Sequence[Rebook], bookings: Sequence[WebcamBooking], performer_key: str | None
) -> list[tuple[list[Rebook], list[WebcamBooking]]]:
    """Rebooks and bookings by performer — or the member's all together when the performer
    field is unconfirmed or any rebook or booking does not name its performer."""
    if performer_key is not None and all(r.performer_id is not None for r in records):
        of_booking = {b.booking_id: b.performer_under(performer_key) for b in bookings}
        if all(p is not None for p in of_booking.values()):
            performers = sorted({r.performer_id for r in records if r.performer_id is not None})
            return [
                (
                    [r for r in records if r.performer_id == p],
                    [b for b in bookings if of_booking[b.booking_id] == p],
                )
                for p in performers
            ]
    return [(list(records), list(bookings))]


def attribute(
    user_id: str,
    records: Sequence[Rebook],
    bookings: Sequence[WebcamBooking],
    owners: Mapping[int, str | None],
    *,
    performer_key: str | None,
    margin: float,
    found_at: str,
) -> list[Finding]:
    """`double` and `orphan` findings of one member (`missing` needs the upstream: `Auditor`).

    `records`: the member's rebooks received within the window; `bookings`: the member's list,
    read back to the oldest receipt less `margin`; `owners`: the rebook that claimed each
    listed booking (None: nobody)."""
    originals = {r.booking_id for r in records}
    findings: list[Finding] = []
    for group, listed in _groups(records, bookings, performer_key):
        counting = [r for r in group if r.state != State.DUPLICATE]
        if not counting:
            continue
        ids = {r.rebook_id for r in counting}
        start = min(r.created_ts for r in counting) - margin
        owned: list[WebcamBooking] = []
        free: list[WebcamBooking] = []
        for b in listed:
            owner = owners.get(b.booking_id)
            if owner is not None:
                if owner in ids:
                    owned.append(b)  # a record's own booking counts, whatever it looks like
                continue  # another rebook's (another performer, or before the window)
            if b.booking_id in originals or not looks_rescheduled(b) or _created(b) < start:
                continue  # an original, a booking made by hand, or from before these rebooks
            free.append(b)
        counted = owned + free
        rebook_ids = tuple(sorted(ids))
        # an owned booking fits its owner whatever its CreateDate says (a zone error moves it)
        received = {r.rebook_id: r.created_ts for r in counting}
        made = [_created(b) for b in free] + [
            max(_created(b), received[str(owners.get(b.booking_id))]) for b in owned
        ]
        if len(counted) > 1 and _excess(counting, made, margin):
            findings.append(
                Finding(
                    "double",
                    user_id,
                    _original(counting),
                    tuple(sorted(b.booking_id for b in counted)),
                    rebook_ids,
                    found_at,
                )
            )
            continue  # a booking counted in a double is not also an orphan
        if any(_settling(r) for r in group):
            continue  # a POST unsettled or parked on a booking it names: that record speaks
        findings.extend(
            Finding("orphan", user_id, _original(counting), (b.booking_id,), rebook_ids, found_at)
            for b in sorted(free, key=lambda b: b.booking_id)
        )
    return findings


def _settling(rec: Rebook) -> bool:
    if rec.state == State.NEEDS_ATTENTION:
        return rec.reason in SETTLING_REASONS
    return rec.state in ACTIVE_STATES and rec.unsettled


# -- the run -------------------------------------------------------------------------------------


class AuditUpstream(Protocol):
    def list_made_bookings(
        self,
        token: str,
        *,
        start: datetime | None = None,
        max_pages: int = 10,
        share: float | None = None,
    ) -> tuple[list[WebcamBooking], bool]: ...

    def booking_details(self, token: str, booking_id: int) -> WebcamBooking: ...


class Tokens(Protocol):
    def access_token(self, user_id: str, *, rejected: str | None = None) -> str: ...


class _Skip(Exception):
    """This member cannot be checked now; the message says why."""


@dataclass
class Auditor:
    settings: Settings
    store: Store
    client: AuditUpstream
    tokens: Tokens
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    def members(self, since: float) -> dict[str, list[Rebook]]:
        """Every member with a rebook received since `since`, with those rebooks."""
        ids = AuditRecord(self.store).created_since(since)
        by_member: dict[str, list[Rebook]] = {}
        for chunk in range(0, len(ids), 500):
            for rec in self.store.records.get_many(ids[chunk : chunk + 500]):
                by_member.setdefault(rec.user_id, []).append(rec)
        return by_member

    def run(
        self,
        since: float | None = None,
        *,
        budget_seconds: float | None = None,
        on_member: Callable[[str, list[Finding] | None], None] | None = None,
        done_since: float | None = None,
    ) -> Report:
        """Audits every member with rebooks since `since` (default: the window), the least
        recently audited first; members not reached within `budget_seconds` are unchecked
        (`deferred`). `done_since`: members audited since then are left out (a pass that goes
        on in another run)."""
        now = self.clock()
        if since is None:
            since = now - self.settings.audit_window_seconds
        deadline = None if budget_seconds is None else now + budget_seconds
        members = self.members(since)
        order = self._least_recently_checked(list(members), done_since)
        report = Report()
        for user_id in order:
            if deadline is not None and self.clock() >= deadline:
                report.unchecked.append(Unchecked(user_id, NOT_REACHED))
                report.deferred += 1
                continue
            try:
                findings, calls = self.audit_member(user_id, members[user_id], deadline)
            except _Skip as exc:
                report.unchecked.append(Unchecked(user_id, str(exc)))
                if on_member:
                    on_member(user_id, None)
                continue
            report.checked_members += 1
            report.calls += calls
            report.findings.extend(findings)
            if on_member:
                on_member(user_id, findings)
        return report

    def _least_recently_checked(self, users: list[str], done_since: float | None) -> list[str]:
        if not users:
            return []
        seen = AuditRecord(self.store).checked_at(users)
        return [
            u
            for at, u in sorted(zip(seen, users, strict=True))
            if done_since is None or at < done_since
        ]

    def mark_checked(self, user_id: str) -> None:
        AuditRecord(self.store).mark_checked(user_id, self.clock())

    def audit_member(
        self, user_id: str, records: list[Rebook], deadline: float | None = None
    ) -> tuple[list[Finding], int]:
        """The member's findings and the upstream calls they cost; `_Skip` when the member's
        list cannot be read whole (then nothing is said of them)."""
        s = self.settings
        margin = s.zone_tolerance_seconds
        start = min(r.created_ts for r in records) - margin
        calls = [0]
        bookings, complete = self._call(
            user_id,
            lambda tok: self.client.list_made_bookings(
                tok, start=from_ts(start), max_pages=AUDIT_MAX_PAGES, share=AUDIT_SHARE
            ),
            deadline,
            calls,
        )
        if not complete:
            raise _Skip(f"the list is longer than {AUDIT_MAX_PAGES} pages")
        found_at = iso_z(datetime.fromtimestamp(self.clock(), UTC))
        owners = dict(
            zip(
                [b.booking_id for b in bookings],
                self.store.records.owners_of([b.booking_id for b in bookings]),
                strict=True,
            )
        )
        findings = attribute(
            user_id,
            records,
            bookings,
            owners,
            performer_key=self.store.performer_field.performer_field(),
            margin=margin,
            found_at=found_at,
        )
        listed = {b.booking_id for b in bookings}
        for rec in sorted(records, key=lambda r: r.created_ts):
            nb = rec.new_booking_id
            if nb is None or nb in listed:
                continue
            # not in the list: gone, or dated outside what the list was asked for (zone)
            details: Callable[[str], Any] = partial(self.client.booking_details, booking_id=nb)
            try:
                self._call(user_id, details, deadline, calls)
            except _Gone:
                findings.append(
                    Finding("missing", user_id, rec.booking_id, (nb,), (rec.rebook_id,), found_at)
                )
        return findings, calls[0]

    def _call(
        self,
        user_id: str,
        call: Callable[[str], Any],
        deadline: float | None,
        calls: list[int],
    ) -> Any:
        """A member call with its token (refreshed once on 401), waiting while the shared
        budget is short of the audit's share — up to the run's deadline."""
        while True:
            try:
                token = self.tokens.access_token(user_id)
                calls[0] += 1
                try:
                    return call(token)
                except AuthExpired:
                    calls[0] += 1
                    return call(self.tokens.access_token(user_id, rejected=token))
            except NotFound as exc:
                raise _Gone() from exc
            except Throttled as exc:
                pause = min(THROTTLE_PAUSE_MAX, exc.retry_after or 0.25)
                if deadline is not None and self.clock() + pause >= deadline:
                    raise _Skip("the rate budget had no room for the audit") from None
                self.sleep(pause)
            except ReauthRequired as exc:
                raise _Skip(f"no usable token ({exc})") from None
            except DeploymentFault as exc:  # the site's setting: every member waits for it
                raise _Skip(str(exc)) from None
            except UpstreamError as exc:
                raise _Skip(f"the upstream did not answer: {type(exc).__name__}") from None


class _Gone(Exception):
    """The upstream answered that the booking does not exist (for this member)."""


# -- the record of findings ----------------------------------------------------------------------


def append_new(store: Store, findings: Iterable[Finding]) -> list[Finding]:
    """Appends each finding not appended before to `{prefix}audit`; returns those appended
    (`AuditRecord.append`: once per fingerprint, even on a cluster)."""
    record = AuditRecord(store)
    return [f for f in findings if record.append(f.fingerprint, f.kind, f.stream_fields())]


def recorded(store: Store, count: int = 200) -> list[tuple[str, Finding]]:
    """The stream's findings, newest first, with their entry ids."""
    return [(sid, Finding.from_stream(fields)) for sid, fields in AuditRecord(store).entries(count)]


def counts(store: Store) -> dict[str, int]:
    """Findings appended so far, by kind (zeros included)."""
    raw = Tally.audit_findings(store).read()
    return {k: int(raw.get(k, 0) or 0) for k in KINDS}


def note_run(store: Store, report: Report, at: float) -> None:
    """Keeps the last run's summary for the console (no ids beyond members' counts)."""
    AuditRecord(store).write_last_run(
        json.dumps(
            {
                "at": iso_z(datetime.fromtimestamp(at, UTC)),
                "checked_members": report.checked_members,
                "unchecked_members": len(report.unchecked),
                "findings": len(report.findings),
            }
        ),
    )


def last_run(store: Store) -> dict[str, Any] | None:
    raw = AuditRecord(store).last_run()
    if not raw:
        return None
    value: dict[str, Any] = json.loads(raw)
    return value


def report_to_sentry(finding: Finding) -> None:
    """One Sentry event per new finding (when Sentry is on): ids only, no secrets."""
    try:
        import sentry_sdk
    except ImportError:  # pragma: no cover - a dependency
        return
    if not sentry_sdk.is_initialized():
        return
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("audit_kind", finding.kind)
        scope.set_tag("user_id", finding.user_id)
        scope.set_context("finding", finding.as_json())
        scope.fingerprint = ["rebook-audit", finding.fingerprint]
        sentry_sdk.capture_message(
            f"audit: {finding.kind} on booking {finding.booking_id} "
            f"(new {', '.join(map(str, finding.new_booking_ids))})",
            level="error",
        )
