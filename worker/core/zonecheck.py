"""Is `REBOOK_API_TIMEZONE` the upstream's site zone? Checked on every booking it makes.

The upstream writes datetimes without an offset, in its site time; the HTTP `Date` header of the
same answer is GMT. A booking made by RescheduleMadeBooking has a `CreateDate` of a moment ago,
so `CreateDate` (as written) minus `Date` is the site's UTC offset. A wrong zone setting does not
make a second booking (matching never trusts times alone) but shifts every time we publish
(`AcceptBy`): this makes it visible — an error in the log at most once an hour, the last
observation in one small Redis key (`{prefix}zone`), read by `stats --json`, the exporter and
`doctor`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from worker.core.store.zone import ZoneRecord

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 3600.0
#: zones named first when one matches the observed offset (then any other that does)
COMMON_ZONES = (
    "Europe/London",
    "UTC",
    "Europe/Paris",
    "Europe/Athens",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Australia/Sydney",
)


def offset_minutes(zone: ZoneInfo, at: datetime) -> int:
    off = at.astimezone(zone).utcoffset() or timedelta(0)
    return round(off.total_seconds() / 60)


def zone_for_offset(minutes: int, at: datetime) -> str:
    """A zone at this UTC offset at `at`: a common one if any, else a fixed `Etc/GMT±N`, else
    the offset itself (`UTC+05:45`)."""
    for name in COMMON_ZONES:
        if offset_minutes(ZoneInfo(name), at) == minutes:
            return name
    if minutes % 60 == 0 and -14 <= minutes // 60 <= 12:
        hours = minutes // 60
        return "Etc/GMT" if hours == 0 else f"Etc/GMT{-hours:+d}"  # POSIX: the sign is inverted
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def parse_http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def observe(
    zone: ZoneInfo, create_date: datetime, date_header: datetime, tolerance_seconds: float
) -> dict[str, Any]:
    """The observation of one made booking. `create_date` is as parsed (the configured zone
    applied), so `create_date - Date` is how far off that zone is."""
    skew = (create_date - date_header).total_seconds()
    configured = offset_minutes(zone, date_header)
    observed = configured + round(skew / 60)
    agrees = abs(skew) <= tolerance_seconds
    return {
        "configured": zone.key,
        "configured_offset_minutes": configured,
        "observed_offset_minutes": observed,
        "skew_seconds": round(skew, 1),
        "agrees": agrees,
        # to the quarter hour: the Date header has whole seconds, CreateDate a moment before it
        "appears": zone.key if agrees else zone_for_offset(round(observed / 15) * 15, date_header),
        "at": date_header.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


class ZoneWatch:
    """Records each observation (`ZoneRecord`) and logs a disagreement at most once an hour over
    all workers. Never raises: it runs right after a POST that made a
    booking, and nothing may stand between that answer and its record."""

    def __init__(
        self,
        record: ZoneRecord,
        zone: ZoneInfo,
        tolerance_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.record, self.zone = record, zone
        self.tolerance = tolerance_seconds
        self.clock = clock

    def __call__(self, create_date: datetime | None, date_header: str | None) -> None:
        try:
            when = parse_http_date(date_header)
            if create_date is None or when is None:
                return
            seen = observe(self.zone, create_date, when, self.tolerance)
            self.record.write(json.dumps(seen))
            if not seen["agrees"] and self.record.claim_log(LOG_EVERY_SECONDS):
                log.error(
                    "REBOOK_API_TIMEZONE=%s disagrees with the upstream: a booking it just made "
                    "has CreateDate %+.0f min from its Date header (GMT); the upstream appears "
                    "to use %s (UTC%+d min). Published times (AcceptBy) are off by that much.",
                    seen["configured"],
                    seen["skew_seconds"] / 60,
                    seen["appears"],
                    seen["observed_offset_minutes"],
                )
        except Exception as exc:  # an observation must never break a reschedule
            log.warning("zone check skipped: %s", type(exc).__name__)


def read(client: Any, key: str) -> dict[str, Any] | None:
    """The last observation, or None (no booking made yet, or unreadable)."""
    # imported here: the store package imports this module first
    from worker.core.store.zone import ZoneRecord

    try:
        raw = ZoneRecord(client, key).read()
        data = json.loads(raw) if raw else None
    except (ValueError, TypeError):
        return None
    return data if isinstance(data, dict) else None
