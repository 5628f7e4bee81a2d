"""How long to wait before trying again: the one backoff formula and the one jitter of rebook.

Every retry (flow steps, presence, the rate budget, outcome fan-out) waits through here, so a
change of policy is made once. The module `random` is used on purpose: the simulation seeds it
(`tests/sim/world.py`), which keeps a run replayable from its seed.
"""

from __future__ import annotations

import random

MAX_DOUBLINGS = 20


def backoff(attempts: int, base: float, ceiling: float, retry_after: float | None = None) -> float:
    """Seconds to wait after `attempts` failures: `base x 2^attempts` capped at `ceiling`, drawn
    from its upper half (equal jitter: never zero, never in lockstep with other workers). When
    the other side said when (Retry-After), that, capped, plus up to 0.25 s of spread."""
    if retry_after is not None:
        return min(ceiling, retry_after) + random.uniform(0, 0.25)
    top = min(ceiling, base * 2 ** min(attempts, MAX_DOUBLINGS))
    return random.uniform(top / 2, top)


def jittered(seconds: float, spread: float = 0.25) -> float:
    """`seconds` stretched by up to `spread` (a fraction): waits that must not be shorter than
    asked (a rate window, a presence interval) but should not all end at once."""
    return seconds * random.uniform(1.0, 1.0 + spread)
