"""One circuit for deployment faults, shared by every worker through Redis.

A refused OAuth client (`invalid_client`, `unauthorized_client`), a refused API key or a missing
scope is the site's setting at fault: no member can cure it, so no member is parked and no
token is rotated. The first call that meets such a refusal opens the circuit (one record,
`{prefix}paused`); from then on the calls it affects are not sent (`gate` raises
`DeploymentFault(paused=True)`), except one probe per `probe_seconds` across all workers, which
is the real call itself. The circuit closes when a probe succeeds, or when a process starts with
a different value of the setting at fault (a salted hash of the value is kept with the record;
`check_setting`). The rebooks and performers that paused are held in two sets and made due at
once by the next sweep after the circuit closed.

Logged once per fault (an ERROR: one Sentry event through the logging integration), not per call.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from worker.core.errors import FAULT_SETTINGS, DeploymentFault
from worker.core.keys import Keys

log = logging.getLogger("rebook.circuit")

#: Which faults pause which calls: a refresh, an API call with the key only, a member call.
TOKEN = ("oauth_client",)
API = ("api_key",)
MEMBER = ("api_key", "scope")


def fingerprint(value: str) -> str:
    """A salted hash of a setting's value: tells a changed value apart, reveals nothing."""
    return hashlib.blake2b(value.encode(), digest_size=8, person=b"rebook-circ").hexdigest()


class Circuit:
    """The shared record of the one deployment fault in force (at most one at a time)."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        *,
        fingerprints: dict[str, str] | None = None,
        probe_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
        cache_seconds: float = 1.0,
    ) -> None:
        """`client`, `keys`: where the record lives (worker/core/store/circuit.py reads and writes
        it); `fingerprints`: reason -> `fingerprint(value)` of this process's setting."""
        # imported here: the store package builds a Circuit, so it imports this module first
        from worker.core.store.circuit import PauseRecord

        self.record = PauseRecord(client, keys)
        self.fingerprints = dict(fingerprints or {})
        self.probe_seconds = probe_seconds
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._cached: tuple[float, dict[str, str] | None] | None = None

    # -- reading -----------------------------------------------------------------------------------

    def state(self, *, fresh: bool = False) -> dict[str, str] | None:
        """The fault in force (`reason`, `since`, `setting`, `message`, ...) or None. Read at
        most once a second per process unless `fresh`: every upstream call asks."""
        now = self.clock()  # the injected clock (the simulation's); a step back re-reads
        if (
            not fresh
            and self._cached is not None
            and 0 <= now - self._cached[0] < self.cache_seconds
        ):
            return self._cached[1]
        raw = self.record.read()
        found = {_s(k): _s(v) for k, v in raw.items()} if raw else None
        if found is not None and not found.get("reason"):
            found = None
        self._cached = (now, found)
        return found

    def public(self) -> dict[str, Any] | None:
        """`stats --json` "paused": `{"reason", "since", "setting", "message"}` or None."""
        st = self.state(fresh=True)
        if st is None:
            return None
        since = float(st.get("since") or 0)
        from worker.core.models import from_ts, iso_z

        return {
            "reason": st["reason"],
            "since": iso_z(from_ts(since)) if since else None,
            "setting": st.get("setting") or FAULT_SETTINGS.get(st["reason"], st["reason"]),
            "message": st.get("message", ""),
        }

    # -- the calls ---------------------------------------------------------------------------------

    def gate(self, reasons: Iterable[str]) -> None:
        """Before a call that `reasons` would refuse: raises DeploymentFault(paused=True) while
        one of them is in force — unless this call is the probe (one per `probe_seconds`)."""
        st = self.state()
        if st is None or st["reason"] not in tuple(reasons):
            return
        if self.record.claim_probe(self.probe_seconds):
            log.info("circuit open (%s): this call is the probe", st["reason"])
            return
        raise DeploymentFault(st["reason"], st.get("message", ""), paused=True)

    def check(self, reasons: Iterable[str]) -> None:
        """Like `gate`, but claims nothing: raises while a fault of `reasons` is in force and
        this interval's probe is taken (what runs before a call, so that a paused step does not
        even refresh a token); lets the call go on to its own `gate` otherwise."""
        st = self.state()
        if st is None or st["reason"] not in tuple(reasons):
            return
        if self.record.probe_taken():
            raise DeploymentFault(st["reason"], st.get("message", ""), paused=True)

    def passed(self, reasons: Iterable[str]) -> None:
        """A call that `reasons` would have refused went through: that fault is gone."""
        st = self.state()
        if st is not None and st["reason"] in tuple(reasons):
            self.close(f"a {st['reason']} probe succeeded")

    def open(self, fault: DeploymentFault) -> bool:
        """Records the fault (the first one wins while it lasts); True if newly opened."""
        fields = {
            "since": repr(self.clock()),
            "setting": fault.setting,
            "message": fault.message[:200],
            "fingerprint": self.fingerprints.get(fault.reason, ""),
        }
        # the refused call was a probe of sorts: the next one waits its interval
        opened = self.record.open(fault.reason, fields, self.probe_seconds)
        self._cached = None
        if not opened:
            return False
        log.error(
            "deployment fault: %s refused (%s%s); calls it affects are paused, no member is "
            "parked; fix the setting and restart the workers and beat (see `rebook doctor`)",
            fault.setting,
            fault.reason,
            f": {fault.message}" if fault.message else "",
        )
        return True

    def close(self, why: str) -> bool:
        """The fault is gone; the next sweep resumes what it held."""
        gone = self.record.clear()
        self._cached = None
        if gone:
            log.warning("deployment fault cleared (%s): paused calls resume", why)
        return gone

    def check_setting(self) -> bool:
        """At a process's start: a fault recorded under another value of this process's setting
        is cleared (the operator fixed it). True if cleared."""
        st = self.state(fresh=True)
        if st is None:
            return False
        mine = self.fingerprints.get(st["reason"])
        stored = st.get("fingerprint", "")
        if mine and stored and mine != stored:
            return self.close(f"{st.get('setting', st['reason'])} changed")
        return False

    # -- what waits on it -------------------------------------------------------------------------

    def hold(self, rebook_id: str) -> None:
        self.record.hold(rebook_id)

    def hold_performer(self, performer_id: int) -> None:
        self.record.hold_performer(performer_id)

    def take_held(self, limit: int = 1000, *, checked: bool = False) -> tuple[list[str], list[int]]:
        """Up to `limit` held rebooks and performers, removed from the sets (the sweep makes
        them due). Empty while the circuit is open (`checked`: the caller just read it closed).
        One round trip."""
        if not checked and self.state(fresh=True) is not None:
            return [], []
        ids, pids = self.record.take_held(limit)
        return [_s(i) for i in ids or []], [int(_s(p)) for p in pids or []]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
