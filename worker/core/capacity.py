"""What the shared upstream budget allows: one model for `stats`, `doctor`, `rebook capacity`
and the bench, so the figures an operator reads are the ones the bench checks.

The budget of a kind of call is what the shared rate limiter lets it have
(`worker/adapters/ratelimit.py`): calls of share s go while the sliding window holds fewer than
ceil(limit x s) calls, and the window is counted `JITTER_MARGIN` longer than the second the rate is
stated for. The sweep paces presence polls to `PRESENCE_SHARE` of the window; reads (share 0.8) get
what presence leaves below their own share; POSTs (share 1) come first and are rare next to polls.

When presence needs more than its budget (performers / interval), the sweep hands out the budget
to the least recently polled performers first, so each one is polled every
performers / budget seconds instead of every interval. A performer coming online at a random
moment is then seen after a delay spread evenly over that period: median half of it, p99 99 %,
plus the time a check takes to run (`DISPATCH_LATENCY`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from worker.core.budget import JITTER_MARGIN, RATE_SHARE

READ_SHARE = RATE_SHARE["MadeBookings"]
PRESENCE_SHARE = 0.7
"""The share of the window the sweep paces presence polls to. Below the reads' share (0.8), so
that polls alone never fill the window past the point where reads stop: the reschedule's own
pre-POST read and watch reads keep about a tenth of the rate, POSTs about a third. (A poll may
still go up to its limiter share, 0.9, e.g. the first check of a new performer.)"""
DISPATCH_LATENCY = 0.05
"""Seconds from a check's due time to the POST of a performer found online (task pickup, one
presence call and one POST on a local network); measured by the bench."""


def share_budget(rate: float, share: float) -> float:
    """Calls per second a caller of `share` can make when it calls alone (inf: no limit)."""
    if rate <= 0:
        return math.inf
    window = 1.0 if rate >= 1 else 1.0 / rate
    limit = max(1, math.floor(rate * window + 1e-9))
    allowed = max(1, math.ceil(limit * share - 1e-9))
    return allowed / (window + JITTER_MARGIN)


def presence_budget(rate: float) -> float:
    """The presence share of `REBOOK_UPSTREAM_RATE_PER_SECOND`, calls per second."""
    return share_budget(rate, PRESENCE_SHARE)


def rate_needed(calls_per_second: float, share: float = PRESENCE_SHARE) -> float:
    """The smallest `REBOOK_UPSTREAM_RATE_PER_SECOND` whose `share` covers that many calls."""
    if calls_per_second <= 0:
        return 0.0
    rate = max(1.0, math.ceil(calls_per_second * (1 + JITTER_MARGIN) / share))
    while share_budget(rate, share) < calls_per_second:
        rate += 1
    while rate > 1 and share_budget(rate - 1, share) >= calls_per_second:
        rate -= 1
    return rate


@dataclass(frozen=True)
class Plan:
    """What one deployment's budget gives, for `performers` with waiting rebooks and `members`
    with watched bookings."""

    performers: int
    members: int
    interval_seconds: float
    rate_per_second: float
    watch_interval_seconds: float
    needed_calls_per_second: float
    budget_calls_per_second: float
    covered: float
    """Share of the presence demand the budget covers (1: all of it)."""
    achieved_interval_seconds: float
    reaction_p50_seconds: float
    reaction_p99_seconds: float
    watch_reads_per_second: float
    watch_interval_achieved_seconds: float | None
    rate_needed_per_second: float
    """The rate at which presence would run at its configured interval."""

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isinf(v) else v)
            for k, v in asdict(self).items()
        }


def plan(
    performers: int,
    *,
    interval: float = 30.0,
    rate: float = 20.0,
    members: int = 0,
    watch_interval: float = 30.0,
) -> Plan:
    """The model: presence first (its share), watch reads in what is left below their share."""
    needed = performers / interval if interval > 0 else 0.0
    budget = presence_budget(rate)
    presence_rate = min(needed, budget)
    covered = 1.0 if needed <= budget else budget / needed
    achieved = interval / covered if performers else interval
    reads_needed = members / watch_interval if watch_interval > 0 else 0.0
    reads_room = max(0.0, share_budget(rate, READ_SHARE) - presence_rate)
    reads = min(reads_needed, reads_room)
    return Plan(
        performers=performers,
        members=members,
        interval_seconds=interval,
        rate_per_second=rate,
        watch_interval_seconds=watch_interval,
        needed_calls_per_second=needed,
        budget_calls_per_second=budget,
        covered=covered,
        achieved_interval_seconds=achieved,
        reaction_p50_seconds=0.5 * achieved + DISPATCH_LATENCY,
        reaction_p99_seconds=0.99 * achieved + DISPATCH_LATENCY,
        watch_reads_per_second=reads,
        watch_interval_achieved_seconds=(members / reads if reads > 0 else None)
        if members
        else None,
        rate_needed_per_second=rate_needed(needed),
    )


def presence_figures(
    performers: int, interval: float, rate: float, achieved: float | None
) -> dict[str, Any]:
    """`stats --json` `"presence"`: what is needed, what the budget gives, what was made."""
    budget = presence_budget(rate)
    return {
        "performers": performers,
        "interval_seconds": interval,
        "needed_calls_per_second": round(performers / interval, 3) if interval > 0 else 0.0,
        "budget_calls_per_second": None if math.isinf(budget) else round(budget, 3),
        "achieved_interval_seconds": None if achieved is None else round(achieved, 3),
    }


def shortfall(figures: dict[str, Any]) -> str | None:
    """A warning line when presence needs more than its budget, else None."""
    budget = figures["budget_calls_per_second"]
    needed = figures["needed_calls_per_second"]
    if budget is None or needed <= budget:
        return None
    every = figures["performers"] / budget
    achieved = figures["achieved_interval_seconds"]
    made = f", measured every {achieved:.1f}s" if achieved is not None else ""
    return (
        f"{figures['performers']} performers need {needed:.2f} presence calls/s at "
        f"{figures['interval_seconds']:g}s, the budget gives {budget:.2f}/s: each is polled about "
        f"every {every:.1f}s{made}; REBOOK_UPSTREAM_RATE_PER_SECOND={rate_needed(needed):g} "
        f"would cover it"
    )
