"""`rebook list` filters and bulk `retry`/`cancel` (with `--dry-run`) as an operator runs them,
against a real worker, Redis and the sandbox: each action through the flow, refusals reported."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import PUBLIC_FIELDS
from tests.integration.conftest import System
from worker.core.states import State

pytestmark = pytest.mark.integration


def _json(system: System, *args: str) -> object:
    proc = system.cli(*args, "--json")
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def test_list_filters(system: System) -> None:
    user, other = system.member(), system.member()
    performer = system.performer(online=False)
    mine = [system.rebook(user, performer) for _ in range(2)]
    theirs, theirs_booking = system.rebook(other, system.performer(online=False))
    for rid, _ in [*mine, (theirs, 0)]:
        system.wait_state(rid, State.WAITING)
    newest_first = [mine[1][0], mine[0][0]]
    by_user = _json(system, "list", "--user", user)
    assert isinstance(by_user, list)
    assert [r["rebook_id"] for r in by_user] == newest_first
    assert all(key in by_user[0] for key in PUBLIC_FIELDS)
    by_perf = _json(system, "list", "--performer", str(performer), "--state", "waiting")
    assert [r["rebook_id"] for r in by_perf] == newest_first  # type: ignore[union-attr]
    by_booking = _json(system, "list", "--booking", str(theirs_booking))
    assert [r["rebook_id"] for r in by_booking] == [theirs]  # type: ignore[union-attr]
    assert _json(system, "list", "--user", user, "--since", "2099-01-01") == []
    assert _json(system, "list", "--user", user, "--reason", "received", "--limit", "1") == [
        by_user[0]
    ]
    bad = system.cli("list", "--state", "SLEEPING")
    assert bad.returncode == 2 and "state" in bad.stderr


def test_bulk_cancel_and_retry(system: System) -> None:
    user = system.member()
    performer = system.performer(online=False)
    rids = sorted(system.rebook(user, performer)[0] for _ in range(3))
    for rid in rids:
        system.wait_state(rid, State.WAITING)

    dry = system.cli("cancel", "--user", user, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "matched 3 (dry run: nothing done)" in dry.stdout and "would cancel 3" in dry.stdout
    assert dry.stdout.splitlines()[-1] == "would cancel 3, refused 0 (dry run)"
    assert all(system.get(r).state == State.WAITING for r in rids)  # type: ignore[union-attr]

    done = _json(system, "cancel", "--user", user)
    assert sorted(done["matched"]) == rids  # type: ignore[index]
    assert {d["state"] for d in done["done"]} == {"ABORTED"}  # type: ignore[index]
    again = system.cli("cancel", "--user", user)
    assert again.returncode == 1
    assert "refused 3" in again.stdout and "already ABORTED; nothing to cancel" in again.stdout
    assert again.stdout.splitlines()[-1] == "done 0, refused 3, failed 0"  # the counts last

    retried = _json(system, "retry", "--user", user, "--state", "ABORTED")
    assert sorted(d["rebook_id"] for d in retried["done"]) == rids  # type: ignore[index]
    for rid in rids:
        system.wait_state(rid, State.WAITING)
    refused = _json(system, "retry", "--performer", str(performer), "--dry-run")
    assert refused["would_do"] == [] and len(refused["refused"]) == 3  # type: ignore[index]
    assert "in progress; nothing to retry" in refused["refused"][0]["why"]  # type: ignore[index]

    both = system.cli("retry", rids[0], "--user", user)
    assert both.returncode == 2 and "not both" in both.stderr
    neither = system.cli("retry")
    assert neither.returncode == 2
    one = system.cli("cancel", rids[0])
    assert one.returncode == 0 and "ABORTED" in one.stdout


def test_reindex_counts_what_it_indexed(system: System) -> None:
    user = system.member()
    rid, _ = system.rebook(user, system.performer(online=False))
    system.wait_state(rid, State.WAITING)
    proc = system.cli("reindex")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()  # a pipe: no bar, the count at the end
    assert re.fullmatch(r"indexed [1-9]\d* rebook\(s\)", line), line
