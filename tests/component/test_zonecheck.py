"""The zone check: a booking the real sandbox makes, its CreateDate (site time) beside the answer's
Date header (GMT), recorded in a real Redis and read by stats, the exporter and doctor."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rebook_dev.sandbox import SandboxClient, SandboxServer
from tests.component.test_exporter import scrape, value
from worker.adapters.upstream import UpstreamClient
from worker.core.models import TokenSet
from worker.core.settings import Settings
from worker.core.store import Store
from worker.core.store.zone import ZoneRecord
from worker.core.zonecheck import ZoneWatch, observe, zone_for_offset
from worker.operations import doctor

SUMMER = datetime(2024, 7, 1, 12, 0, tzinfo=UTC)
WINTER = datetime(2024, 1, 15, 12, 0, tzinfo=UTC)
LONDON = ZoneInfo("Europe/London")


def made_booking(
    sandbox: SandboxClient, server: SandboxServer, store: Store, zone: str = "Europe/London"
) -> None:
    """One RescheduleMadeBooking through a client whose zone is `zone`, watched as in a worker."""
    answer = sandbox.add_user("zone-u")
    token = TokenSet.from_token_response(answer, 0).access_token
    client = UpstreamClient(
        server.url,
        "sandbox-key",
        zone=ZoneInfo(zone),
        on_made=ZoneWatch(ZoneRecord.of(store), ZoneInfo(zone), 300.0),
    )
    sandbox.set_online(7, True)
    try:
        client.reschedule(token, sandbox.add_booking("zone-u", 7))
    finally:
        client.close()


def test_offsets_name_a_zone() -> None:
    assert zone_for_offset(60, SUMMER) == "Europe/London"
    assert zone_for_offset(60, WINTER) == "Europe/Paris"
    assert zone_for_offset(0, WINTER) == "Europe/London"
    assert zone_for_offset(-180, WINTER) == "Etc/GMT+3"  # POSIX sign
    assert zone_for_offset(345, WINTER) == "UTC+05:45"


def test_observe_compares_create_date_with_the_date_header() -> None:
    # Paris site time read as London (summer): CreateDate 1 h ahead of the Date header
    seen = observe(LONDON, SUMMER.replace(hour=13, second=0), SUMMER.replace(second=2), 300)
    assert seen["agrees"] is False
    assert seen["observed_offset_minutes"] == 120 and seen["configured_offset_minutes"] == 60
    assert seen["appears"] == "Europe/Paris"
    # a few seconds apart (the booking made just before the answer): agrees
    ok = observe(LONDON, SUMMER, SUMMER.replace(second=4), 300)
    assert ok["agrees"] is True and ok["appears"] == "Europe/London"


def test_a_site_in_another_zone_is_seen_logged_once_and_exposed(
    sandbox: SandboxClient,
    sandbox_server: SandboxServer,
    store: Store,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert store.sweep.stats()["zone"] is None
    sandbox.configure(site_zone="Asia/Tokyo")
    with caplog.at_level(logging.ERROR, logger="worker.core.zonecheck"):
        made_booking(sandbox, sandbox_server, store)
        made_booking(sandbox, sandbox_server, store)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors  # at most once an hour, over all workers
    assert "Asia/Tokyo" in errors[0].getMessage()
    zone = store.sweep.stats()["zone"]
    assert zone["configured"] == "Europe/London" and zone["agrees"] is False
    assert zone["observed_offset_minutes"] == 540 and zone["appears"] == "Asia/Tokyo"
    assert zone["at"].endswith("Z")
    samples = scrape(store)
    assert value(samples, "rebook_zone_agrees", configured="Europe/London") == 0
    assert value(samples, "rebook_zone_observed_offset_minutes") == 540
    check = doctor._zone(settings.model_copy(update={"key_prefix": store.keys.prefix}))
    assert not check.ok and "Asia/Tokyo" in check.detail and "Asia/Tokyo" in check.hint
    # the setting fixed: the next booking agrees, and so does doctor
    made_booking(sandbox, sandbox_server, store, zone="Asia/Tokyo")
    assert store.sweep.stats()["zone"]["agrees"] is True
    fixed = settings.model_copy(
        update={"key_prefix": store.keys.prefix, "api_timezone": "Asia/Tokyo"}
    )
    assert doctor._zone(fixed).ok


def test_the_right_zone_agrees(
    sandbox: SandboxClient, sandbox_server: SandboxServer, store: Store, settings: Settings
) -> None:
    made_booking(sandbox, sandbox_server, store)
    zone = json.loads(store.r.get(store.keys.zone))
    assert zone["agrees"] is True and abs(zone["skew_seconds"]) < 60
    assert value(scrape(store), "rebook_zone_agrees", configured="Europe/London") == 1
    check = doctor._zone(settings.model_copy(update={"key_prefix": store.keys.prefix}))
    assert check.ok and "agrees" in check.detail


def test_a_failing_observer_never_loses_the_booking(
    sandbox: SandboxClient, sandbox_server: SandboxServer
) -> None:
    def broken(_created: datetime | None, _date: str | None) -> None:
        raise RuntimeError("observer down")

    answer = sandbox.add_user("zone-b")
    sandbox.set_online(7, True)
    client = UpstreamClient(sandbox_server.url, "sandbox-key", on_made=broken)
    try:
        booking = client.reschedule(answer["access_token"], sandbox.add_booking("zone-b", 7))
    finally:
        client.close()
    assert booking.booking_id > 0
    # and a Redis that cannot take the observation is no reason either
    dead = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    ZoneWatch(ZoneRecord(dead, "x"), LONDON, 300)(SUMMER, "Mon, 01 Jul 2024 12:00:00 GMT")
