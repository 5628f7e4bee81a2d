"""Token keep-alive: refresh every stored pair before its refresh token lapses unused.

Refresh tokens live about 14 days and rotate on every refresh. A member with no rebook for two
weeks would otherwise have to sign in again at their next one. Each run reads only the members
due (the `{prefix}tokkeep` index, soonest first), at most `batch` of them and within `budget`
seconds, through the TokenManager: its per-member lock (single-flight with the steps), the shared
rate limiter at a low share, and the rotated pair stored before anything else.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from worker.adapters.auth import TokenManager
from worker.core.errors import DeploymentFault, ReauthRequired, UpstreamError

log = logging.getLogger(__name__)

ParkMember = Callable[[str, str], int]
"""Flow.park_member: a refused refresh parks the member's rebooks as `reauth`."""


def keep_tokens(
    tokens: TokenManager,
    park: ParkMember,
    *,
    before_seconds: float,
    batch: int,
    budget_seconds: float,
    clock: Callable[[], float] = time.time,
) -> dict[str, int]:
    """One run; counts by outcome. An upstream or rate-limit failure ends the run (the rest stay
    due for the next one): the budget is short or the upstream is down, and pushing on helps
    neither."""
    store = tokens.store
    counts: Counter[str] = Counter()
    counts["indexed"] = store.backfill()
    started = time.monotonic()
    now = clock()
    due_before = now + before_seconds
    for user_id in store.due(due_before, batch):
        if time.monotonic() - started > budget_seconds:
            counts["deferred"] += 1
            continue
        try:
            counts[tokens.keep_alive(user_id, before=due_before)] += 1
        except ReauthRequired as exc:
            counts["refused"] += 1
            parked = park(user_id, exc.detail)
            log.warning(
                "keep-alive: refresh refused for member %s (%d rebook(s) parked)", user_id, parked
            )
            # the pair is dead until `rebook tokens set`, which re-indexes it; until then look
            # again now and then (a refusal may have been the OAuth server's passing mistake)
            store.reschedule(user_id, due_before + before_seconds / 2)
        except DeploymentFault as exc:  # the site's setting: no member is at fault
            counts["paused"] += 1
            log.info("keep-alive: paused (%s)", exc)
            break
        except UpstreamError as exc:
            counts["failed"] += 1
            log.info("keep-alive: stopped for now (%s: %s)", type(exc).__name__, exc)
            break
    result = {k: v for k, v in counts.items() if v}
    if any(k != "indexed" for k in result):
        log.info("keep-alive: %s", result)
    return result
