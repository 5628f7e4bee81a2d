"""The presence seam: the client's `is_online` goes through a PresenceSource, getUserSummary by
default; another source plugs in without the flow changing (the flow itself runs here)."""

from __future__ import annotations

import time

from rebook_dev.sandbox import SandboxClient
from tests.component.test_flow import Recorder
from worker.adapters.presence import PresenceSource, UserSummaryPresence
from worker.adapters.upstream import UpstreamClient
from worker.celeryapp.runtime import build_services
from worker.core.flow import Flow
from worker.core.models import TokenSet
from worker.core.settings import Settings


class Bulk:
    """A stand-in for a bulk source: answers from a set, counts its calls."""

    def __init__(self, online: set[int]) -> None:
        self.online, self.asked = online, 0

    def is_online(self, performer_id: int) -> bool:
        self.asked += 1
        return performer_id in self.online


def test_the_default_source_is_get_user_summary(sandbox: SandboxClient, settings: Settings) -> None:
    client = UpstreamClient(settings.api_base_url, "sandbox-key")
    try:
        assert isinstance(client.presence, UserSummaryPresence)
        assert isinstance(client.presence, PresenceSource)
        sandbox.set_online(41, True)
        assert client.is_online(41) is True and client.is_online(42) is False
        assert sandbox.stats()["calls"]["getUserSummary"] == 2
    finally:
        client.close()


def test_another_source_replaces_it_under_an_unchanged_flow(
    sandbox: SandboxClient, settings: Settings
) -> None:
    svc = build_services(settings)
    try:
        bulk = Bulk({7})
        assert isinstance(bulk, PresenceSource)
        svc.client.presence = bulk
        rec = Recorder()
        flow = Flow(settings, svc.store, svc.client, svc.tokens, rec)
        answer = sandbox.add_user("p-u")
        svc.token_store.save("p-u", TokenSet.from_token_response(answer, time.time()))
        booking = sandbox.add_booking("p-u", 7)
        event = {"event_id": "e-p", "booking_id": booking, "user_id": "p-u", "performer_id": 7}
        assert flow.intake((), event) == "created"
        flow.check_presence(7)
        assert bulk.asked == 1
        assert rec.of("reschedule"), rec.calls  # online by the bulk source's word
        assert sandbox.stats()["calls"]["getUserSummary"] == 0
    finally:
        svc.client.close()
        keys = list(svc.store.r.scan_iter(match=settings.key_prefix + "*", count=1000))
        if keys:
            svc.store.r.delete(*keys)
        svc.store.r.close()
