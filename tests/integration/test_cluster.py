"""The store on a local 3-node Redis Cluster: keys spread over the nodes, every script stays in
one slot (a cross-slot script would fail), and the sweep walks all shards.

The whole end-to-end suite also runs on a cluster: `test_pipeline.py`'s "cluster" parameter.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.integration.conftest import System, running_system
from worker.core.states import State

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(redis_url, tmp_path_factory.mktemp("cluster"), broker="cluster") as sysm:
        yield sysm


def test_rebooks_of_many_members_spread_over_the_nodes_and_all_finish(
    cluster_system: System,
) -> None:
    system = cluster_system
    assert system.store.cluster and len(system.store.shard_prefixes) == 8
    performer = system.performer(online=False)
    rids = [system.rebook(system.member(), performer)[0] for _ in range(24)]
    for rid in rids:
        system.wait_state(rid, State.WAITING)
    nodes = system.store.r.get_primaries()
    per_node = []
    for node in nodes:
        client = redis.Redis(host=node.host, port=node.port, decode_responses=True)
        per_node.append(sum(1 for key in client.scan_iter(match="*}:r:*")))
        client.close()
    assert sum(per_node) == 24 and sum(1 for n in per_node if n) >= 2, per_node
    # one presence check serves the performer's rebooks in every shard
    system.sandbox.set_online(performer, True)
    for rid in rids:
        rec = system.wait_state(rid, State.WATCHING, timeout=30)
        system.sandbox.set_status(rec.new_booking_id, "Accepted")  # type: ignore[arg-type]
    for rid in rids:
        system.wait_state(rid, State.ACCEPTED)
    stats = system.store.sweep.stats()
    assert stats["states"]["ACCEPTED"] == 24
    assert len([o for o in system.store.outcomes.outcomes(1000) if o["state"] == "ACCEPTED"]) == 24
