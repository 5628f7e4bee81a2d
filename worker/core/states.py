"""The states of a rebook and the sets they fall into, defined once for Python and Lua.

The Lua scripts do not spell the sets a second time: `lua_prelude()` is prepended to every
script the store loads (`worker.core.store.connection.script`), so `ACTIVE[state]` in Lua is
this module.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Life cycle of one rebook (README "States")."""

    WAITING = "WAITING"
    RESCHEDULING = "RESCHEDULING"
    WATCHING = "WATCHING"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    GAVE_UP = "GAVE_UP"
    FAILED = "FAILED"
    ABORTED = "ABORTED"
    DUPLICATE = "DUPLICATE"
    SHADOWED = "SHADOWED"
    """Shadow mode (`REBOOK_SHADOW`): the rebook would have been POSTed now; nothing was sent."""

    @property
    def terminal(self) -> bool:
        return self not in ACTIVE_STATES


#: States with a step still to run (a due time in the index, a task that may be in flight).
STEP_STATES = frozenset({State.WAITING, State.RESCHEDULING, State.WATCHING})
#: Not finished: the step states plus parked. An active rebook holds its booking (`active:`).
ACTIVE_STATES = STEP_STATES | {State.NEEDS_ATTENTION}
TERMINAL_STATES = frozenset(s for s in State if s not in ACTIVE_STATES)


def lua_prelude() -> str:
    """`ACTIVE` and `STEP` as Lua sets (`ACTIVE[s] == true`), for the top of every script."""

    def table(states: frozenset[State]) -> str:
        return "{" + ", ".join(f"{s.value} = true" for s in sorted(states)) + "}"

    return f"local ACTIVE = {table(ACTIVE_STATES)}\nlocal STEP = {table(STEP_STATES)}\n"


class Step(StrEnum):
    """What a step did, as its task returns it (worker logs, Flower): one name per outcome, so
    callers and tests compare against a member, not a spelling."""

    ACCEPTED = "accepted"
    AMBIGUOUS = "ambiguous"
    BOOKED = "booked"
    BUSY = "busy"
    CANCELLED = "cancelled"
    COALESCED = "coalesced"
    CONFIRMED = "confirmed"
    CONFIRM_PENDING = "confirm-pending"
    CONFIRM_PROVING = "confirm-proving"
    CONFIRM_RETRY = "confirm-retry"
    CREATED = "created"
    DEFERRED = "deferred"
    DUPLICATE = "duplicate"
    ERROR = "error"
    EXISTS = "exists"
    EXPIRED = "expired"
    FAILED = "failed"
    FENCED = "fenced"
    GATED = "gated"
    GRACE = "grace"
    IDLE = "idle"
    INVALID = "invalid"
    LEARNED = "learned"
    LEASE_LOST = "lease-lost"
    NOOP = "noop"
    OFFLINE = "offline"
    ONLINE = "online"
    PARKED = "parked"
    PAUSED = "paused"
    PENDING = "pending"
    PROVING = "proving"
    REAUTH = "reauth"
    REAUTH_RETRY = "reauth-retry"
    REJECTED = "rejected"
    RESOLVED = "resolved"
    RETRY = "retry"
    SHADOWED = "shadowed"
    THROTTLED = "throttled"
    WAITING = "waiting"

    def __repr__(self) -> str:  # Celery logs `repr(result)`: show 'parked', not <Step.PARKED>
        return repr(self.value)
