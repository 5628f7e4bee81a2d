"""The sandbox upstream over real HTTP: the rest of the suite measures against its rules."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from rebook_dev.sandbox import SandboxClient, SandboxServer
from tests.conftest import SANDBOX_DEFAULTS, wait_for
from worker.adapters.upstream import UpstreamClient

API_KEY = "test-key"
KEY_HEADER = "X-Api-Key"
CLIENT = {"client_id": "sandbox-client", "client_secret": "sandbox-secret"}
LONDON = ZoneInfo("Europe/London")
NAIVE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?$")


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(api_key=API_KEY, api_key_header=KEY_HEADER) as srv:
        yield srv


@pytest.fixture
def sb(server: SandboxServer) -> Iterator[SandboxClient]:
    client = SandboxClient(server.url)
    client.reset()
    client.configure(**SANDBOX_DEFAULTS)
    yield client
    client.close()


class Api:
    """A minimal upstream client, deliberately independent of the project's real client."""

    def __init__(self, base: str, token: str | None = None, key: str | None = API_KEY) -> None:
        self.base = base
        self.token = token
        self.key = key

    def headers(self) -> dict[str, str]:
        h = {"Accept": "application/json"}
        if self.key is not None:
            h[KEY_HEADER] = self.key
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def get(self, path: str, timeout: float = 5.0, **params: Any) -> requests.Response:
        return requests.get(
            f"{self.base}/v1/{path}", params=params, headers=self.headers(), timeout=timeout
        )

    def post(self, path: str, body: Any, timeout: float = 5.0) -> requests.Response:
        return requests.post(
            f"{self.base}/v1/{path}", json=body, headers=self.headers(), timeout=timeout
        )

    def reschedule(self, booking_id: int, timeout: float = 5.0) -> requests.Response:
        return self.post("Webcam/RescheduleMadeBooking", {"BookingID": booking_id}, timeout)


def refresh(base: str, refresh_token: str, **override: str) -> requests.Response:
    form = {"grant_type": "refresh_token", **CLIENT, "refresh_token": refresh_token, **override}
    return requests.post(f"{base}/OAuth/token", data=form, timeout=5)


def member(server: SandboxServer, sb: SandboxClient, user_id: str = "u1") -> Api:
    return Api(server.url, sb.add_user(user_id)["access_token"])


def london_now() -> datetime:
    return datetime.now(LONDON).replace(tzinfo=None)


# --- auth ---------------------------------------------------------------------------------------


def test_api_key_required(server: SandboxServer, sb: SandboxClient) -> None:
    token = sb.add_user("u1")["access_token"]
    for key in (None, "wrong"):
        r = Api(server.url, token, key=key).get("Webcam/MadeBookings")
        assert r.status_code == 401
        assert r.json() == {"Message": "Invalid or missing API key."}
    r = Api(server.url, None, key=None).get("newsfeed/getUserSummary", UserID=5)
    assert r.status_code == 401
    assert Api(server.url, token).get("Webcam/MadeBookings").status_code == 200


def test_bearer_required_and_expiry(server: SandboxServer, sb: SandboxClient) -> None:
    denied = {"Message": "Authorization has been denied for this request."}
    for token in (None, "nonsense"):
        r = Api(server.url, token).get("Webcam/MadeBookings")
        assert (r.status_code, r.json()) == (401, denied)

    dead = sb.add_user("u2", expires_in=0)
    assert dead["expires_in"] == 0
    assert Api(server.url, dead["access_token"]).get("Webcam/MadeBookings").status_code == 401

    pair = sb.add_user("u1")
    api = Api(server.url, pair["access_token"])
    assert api.get("Webcam/MadeBookings").status_code == 200
    sb.expire_user("u1")
    assert api.get("Webcam/MadeBookings").status_code == 401
    r = refresh(server.url, pair["refresh_token"])
    assert r.status_code == 200
    assert Api(server.url, r.json()["access_token"]).get("Webcam/MadeBookings").status_code == 200


def test_token_rotation_and_revoke(server: SandboxServer, sb: SandboxClient) -> None:
    first = sb.add_user("u1")
    r = refresh(server.url, first["refresh_token"])
    assert r.status_code == 200
    second = r.json()
    assert second["token_type"] == "bearer"
    assert second["expires_in"] == 3600
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]

    again = refresh(server.url, first["refresh_token"])
    assert (again.status_code, again.json()) == (400, {"error": "invalid_grant"})
    assert Api(server.url, first["access_token"]).get("Webcam/MadeBookings").status_code == 401
    assert Api(server.url, second["access_token"]).get("Webcam/MadeBookings").status_code == 200

    bad_client = refresh(server.url, second["refresh_token"], client_secret="nope")
    assert (bad_client.status_code, bad_client.json()) == (401, {"error": "invalid_client"})
    unknown = refresh(server.url, "never-issued")
    assert (unknown.status_code, unknown.json()) == (400, {"error": "invalid_grant"})

    sb.revoke_user("u1")
    assert Api(server.url, second["access_token"]).get("Webcam/MadeBookings").status_code == 401
    expired = refresh(server.url, second["refresh_token"])
    assert expired.status_code == 401
    assert expired.json() == {"error": "refresh_token_has_expired"}

    sb.configure(token_ttl_seconds=60)
    third = sb.add_user("u1")  # a fresh pair after revocation works again
    r = refresh(server.url, third["refresh_token"])
    assert r.status_code == 200
    assert r.json()["expires_in"] == 60
    assert sb.stats()["refreshes"] == 2
    assert sb.stats()["calls"]["token"] == 6


# --- operations ---------------------------------------------------------------------------------


def test_reschedule_online_creates_pending_copy(server: SandboxServer, sb: SandboxClient) -> None:
    api = member(server, sb)
    orig = sb.add_booking("u1", 77, duration=30, credits=40)
    sb.set_online(77, True)
    before = london_now()
    r = api.reschedule(orig)
    assert r.status_code == 200
    new = r.json()
    assert new["WebcamBookingID"] == orig + 1
    assert new["Status"] == "Pending"
    assert (new["Duration"], new["Credits"]) == (30, 40)
    assert new["Performer"] == {"UserID": 77, "Nickname": "performer77"}
    assert new["SignInNameOrEmail"] == "performer77@example.com"
    assert (new["IsMulitple"], new["AlsoPhoneChat"], new["SoftwareTypeID"]) == (False, False, 3)
    assert new["AcceptedDate"] is None and new["ConfirmedDate"] is None
    session = datetime.fromisoformat(new["SessionDate"])
    assert timedelta(minutes=4) < session - before < timedelta(minutes=6)
    accept_by = datetime.fromisoformat(new["AcceptBy"])
    assert timedelta(seconds=590) < accept_by - before < timedelta(seconds=610)

    shown = sb.booking(new["WebcamBookingID"])
    assert (shown["user_id"], shown["original_id"]) == ("u1", orig)
    assert sb.booking(orig)["original_id"] is None
    assert sb.booking(orig)["Status"] == "Confirmed"
    assert sb.stats()["new_bookings"] == {str(orig): 1}


def test_reschedule_refusals(server: SandboxServer, sb: SandboxClient) -> None:
    api = member(server, sb)
    sb.add_user("u2")
    mine = sb.add_booking("u1", 5)
    theirs = sb.add_booking("u2", 5)
    r = api.reschedule(mine)
    assert (r.status_code, r.json()) == (400, {"Message": "The performer is not online"})
    sb.set_online(5, True)
    sb.set_online(5, False)
    assert api.reschedule(mine).status_code == 400
    sb.set_online(5, True)
    for booking_id in (theirs, 999):
        r = api.reschedule(booking_id)
        assert (r.status_code, r.json()) == (404, {"Message": "Booking not found"})
    for body in ({}, {"BookingID": "x"}, [1]):
        r = api.post("Webcam/RescheduleMadeBooking", body)
        assert r.status_code == 400 and "Message" in r.json()
    assert sb.stats()["new_bookings"] == {}
    assert sb.stats()["calls"]["RescheduleMadeBooking"] == 7


def test_details_and_case_insensitive_paths(server: SandboxServer, sb: SandboxClient) -> None:
    api = member(server, sb)
    sb.add_user("u2")
    mine = sb.add_booking("u1", 5)
    theirs = sb.add_booking("u2", 5)
    r = api.get("Webcam/MadeBookingDetails", BookingID=mine)
    assert r.status_code == 200 and r.json()["WebcamBookingID"] == mine
    r = requests.get(
        f"{server.url}/V1/WEBCAM/madebookingdetails",
        params={"bookingid": mine},
        headers=api.headers(),
        timeout=5,
    )
    assert r.status_code == 200 and r.json()["WebcamBookingID"] == mine
    r = api.get("Webcam/MadeBookingDetails", BookingID=theirs)
    assert (r.status_code, r.json()) == (404, {"Message": "Booking not found"})
    assert sb.stats()["calls"]["MadeBookingDetails"] == 3


def test_made_bookings_paging_order_and_start_date(
    server: SandboxServer, sb: SandboxClient
) -> None:
    api = member(server, sb)
    sb.add_user("u2")
    ids = [sb.add_booking("u1", 9, age_seconds=age) for age in (7200, 3600, 1800, 600, 60)]
    sb.add_booking("u2", 9)

    r = api.get("Webcam/MadeBookings", OrderBy="createddate-desc", BookingsPerPage=2, PageNumber=1)
    page = r.json()
    assert r.status_code == 200
    assert (page["PageCount"], page["PageNumber"], page["BookingsPerPage"]) == (3, 1, 2)
    assert page["TotalBookings"] == 5
    assert [b["WebcamBookingID"] for b in page["WebcamBookings"]] == [ids[4], ids[3]]
    last = api.get("Webcam/MadeBookings", BookingsPerPage=2, PageNumber=3).json()
    assert [b["WebcamBookingID"] for b in last["WebcamBookings"]] == [ids[0]]
    beyond = api.get("Webcam/MadeBookings", BookingsPerPage=2, PageNumber=9).json()
    assert beyond["WebcamBookings"] == [] and beyond["TotalBookings"] == 5

    asc = api.get("Webcam/MadeBookings", orderby="CreatedDate-Asc", bookingsperpage=100).json()
    assert [b["WebcamBookingID"] for b in asc["WebcamBookings"]] == ids

    start = (london_now() - timedelta(minutes=45)).isoformat(timespec="seconds")
    recent = api.get("Webcam/MadeBookings", StartDate=start).json()
    assert [b["WebcamBookingID"] for b in recent["WebcamBookings"]] == [ids[4], ids[3], ids[2]]
    today = (datetime.now(LONDON) - timedelta(hours=3)).date().isoformat()
    assert api.get("Webcam/MadeBookings", StartDate=today).json()["TotalBookings"] == 5

    for bad in ({"BookingsPerPage": 0}, {"BookingsPerPage": 101}, {"PageNumber": 0}):
        assert api.get("Webcam/MadeBookings", **bad).status_code == 400
    assert api.get("Webcam/MadeBookings", StartDate="yesterday").status_code == 400


def test_confirm_and_cancel(server: SandboxServer, sb: SandboxClient) -> None:
    api = member(server, sb)
    orig = sb.add_booking("u1", 3)
    sb.set_online(3, True)
    new = api.reschedule(orig).json()["WebcamBookingID"]

    body = {"BookingID": new}
    assert api.post("Webcam/ConfirmMadeBooking", body).status_code == 400  # still Pending
    sb.set_status(new, "Accepted")
    assert sb.booking(new)["AcceptedDate"] is not None
    r = api.post("Webcam/ConfirmMadeBooking", body)
    assert r.status_code == 200
    assert r.json()["Status"] == "Confirmed" and r.json()["ConfirmedDate"] is not None

    sb.set_status(orig, "Accepted")  # SessionDate in the past: cannot confirm
    assert api.post("Webcam/ConfirmMadeBooking", {"BookingID": orig}).status_code == 400

    r = api.post("Webcam/CancelMadeBooking", {"BookingID": new, "Reason": "changed my mind"})
    assert r.status_code == 200
    got = r.json()
    assert got["Status"] == "Cancelled"
    assert (got["CancelledReason"], got["CancelledBy"]) == ("changed my mind", "memberu1")
    assert got["CancelledDate"] is not None

    sb.set_status(orig, "rejected", reason="busy")
    assert sb.booking(orig)["RejectedReason"] == "busy"
    assert sb.booking(orig)["Status"] == "Rejected"
    with pytest.raises(requests.HTTPError) as exc:
        sb.set_status(orig, "Gone")
    assert exc.value.response.status_code == 400
    with pytest.raises(requests.HTTPError) as exc:
        sb.set_status(999, "Accepted")
    assert exc.value.response.status_code == 404


def test_datetimes_are_offsetless_london_time(server: SandboxServer, sb: SandboxClient) -> None:
    api = member(server, sb)
    orig = sb.add_booking("u1", 1)  # 100001: odd id, fractional seconds
    sb.set_online(1, True)
    new = api.reschedule(orig).json()  # 100002: even id, whole seconds
    odd = api.get("Webcam/MadeBookingDetails", BookingID=orig).json()
    assert orig % 2 == 1 and new["WebcamBookingID"] % 2 == 0
    for booking, frac in ((odd, True), (new, False)):
        for key in ("CreateDate", "SessionDate", "AcceptBy", "LastUpdated"):
            value = booking[key]
            assert NAIVE_RE.match(value), value
            assert ("." in value) is frac
        assert booking["CancelledDate"] is None
    created = datetime.fromisoformat(new["CreateDate"])
    assert abs(created - london_now()) < timedelta(seconds=5)
    created_orig = datetime.fromisoformat(odd["CreateDate"])
    assert abs(created_orig - (london_now() - timedelta(hours=1))) < timedelta(seconds=5)


def test_other_timezone(sb: SandboxClient) -> None:
    with SandboxServer(api_key=API_KEY, api_key_header=KEY_HEADER, timezone="Asia/Tokyo") as tokyo:
        ctl = SandboxClient(tokyo.url)
        ctl.add_booking("u1", 1, age_seconds=0)
        created = datetime.fromisoformat(ctl.booking(100001)["CreateDate"])
        now_tokyo = datetime.now(ZoneInfo("Asia/Tokyo")).replace(tzinfo=None)
        assert abs(created - now_tokyo) < timedelta(seconds=5)


def test_presence(server: SandboxServer, sb: SandboxClient) -> None:
    api = Api(server.url)  # API key only, no bearer
    r = api.get("newsfeed/getUserSummary", UserID=42)
    assert r.status_code == 200
    assert r.json() == {
        "User": {"UserID": 42, "Nickname": "performer42", "AvailableNowWebcam": False}
    }
    sb.set_online(42, True)
    assert api.get("NewsFeed/GetUserSummary", userid=42).json()["User"]["AvailableNowWebcam"]
    api.get("newsfeed/getUserSummary", UserID=7)
    assert api.get("newsfeed/getUserSummary").status_code == 400
    stats = sb.stats()
    assert stats["presence_calls"] == {"42": 2, "7": 1}
    assert stats["calls"]["getUserSummary"] == 4


def test_latency_waits_without_blocking_other_requests(
    server: SandboxServer, sb: SandboxClient
) -> None:
    """A remote upstream: every answer waits, in its own thread; many are in flight at once."""
    sb.configure(latency_ms=300)
    api = Api(server.url)

    def one(pid: int) -> float:
        start = time.monotonic()
        assert api.get("newsfeed/getUserSummary", UserID=pid).status_code == 200
        return time.monotonic() - start

    start = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        each = list(pool.map(one, range(20)))
    wall = time.monotonic() - start
    assert min(each) >= 0.3, each
    assert wall < 1.5, f"20 answers of 0.3 s took {wall:.2f} s: served one at a time?"
    start = time.monotonic()
    sb.stats()  # the sandbox's own control endpoints do not wait
    assert time.monotonic() - start < 0.3
    sb.configure(latency_ms=0)
    start = time.monotonic()
    api.get("newsfeed/getUserSummary", UserID=1)
    assert time.monotonic() - start < 0.3
    with pytest.raises(requests.HTTPError, match="400"):
        sb.configure(latency_ms=-1)


# --- faults -------------------------------------------------------------------------------------


@pytest.fixture
def ready(server: SandboxServer, sb: SandboxClient) -> tuple[Api, int]:
    """A member with a booking whose performer is online: a reschedule would succeed."""
    api = member(server, sb)
    booking = sb.add_booking("u1", 11)
    sb.set_online(11, True)
    return api, booking


@pytest.mark.parametrize(
    ("kind", "status", "body"),
    [
        ("http_500", 500, {"Message": "An error has occurred."}),
        ("http_503", 503, None),
        ("http_429", 429, {"Message": "Too many requests"}),
    ],
)
def test_plain_faults_do_nothing(
    sb: SandboxClient, ready: tuple[Api, int], kind: str, status: int, body: Any
) -> None:
    api, booking = ready
    sb.fault("RescheduleMadeBooking", kind)
    assert sb.stats()["faults_pending"] == 1
    r = api.reschedule(booking)
    assert r.status_code == status
    if body is not None:
        assert r.json() == body
    assert "Retry-After" not in r.headers
    assert sb.stats()["new_bookings"] == {}
    assert sb.stats()["faults_pending"] == 0
    assert api.reschedule(booking).status_code == 200  # consumed once


def test_429_retry_after_rounds_up(sb: SandboxClient, ready: tuple[Api, int]) -> None:
    api, booking = ready
    sb.fault("reschedulemadebooking", "http_429", retry_after=2.5)
    r = api.reschedule(booking)
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"


def test_timeout_fault(sb: SandboxClient, ready: tuple[Api, int]) -> None:
    api, booking = ready
    sb.fault("RescheduleMadeBooking", "timeout", count=2, delay=0.3)
    with pytest.raises(requests.Timeout):
        api.reschedule(booking, timeout=0.1)
    r = api.reschedule(booking, timeout=5)
    assert r.status_code == 504
    assert sb.stats()["new_bookings"] == {}


def test_after_commit_faults_create_the_booking(sb: SandboxClient, ready: tuple[Api, int]) -> None:
    api, booking = ready
    sb.fault("RescheduleMadeBooking", "http_500_after_commit")
    sb.fault("RescheduleMadeBooking", "timeout_after_commit", delay=0.3)
    sb.fault("RescheduleMadeBooking", "bad_json")
    assert sb.stats()["faults_pending"] == 3

    assert api.reschedule(booking).status_code == 500
    assert sb.stats()["new_bookings"] == {str(booking): 1}
    with pytest.raises(requests.Timeout):
        api.reschedule(booking, timeout=0.1)
    assert sb.stats()["new_bookings"] == {str(booking): 2}
    r = api.reschedule(booking)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError):
        r.json()
    assert sb.stats()["new_bookings"] == {str(booking): 3}
    made = api.get("Webcam/MadeBookings").json()
    assert made["TotalBookings"] == 4
    assert sb.stats()["calls"]["RescheduleMadeBooking"] == 3
    # the timed-out call is still sleeping on the server: let it finish here, or its log entry
    # lands in a later test's call log
    wait_for(lambda: len(sb.calls()["calls"]) == 4, 5, "the timed-out call to be logged")


def test_fault_waits_for_auth_and_matches_by_endpoint(
    server: SandboxServer, sb: SandboxClient, ready: tuple[Api, int]
) -> None:
    api, booking = ready
    sb.fault("*", "http_503", count=2)
    r = Api(server.url, "bogus").reschedule(booking)
    assert r.status_code == 401  # auth checked first, fault not consumed
    assert sb.stats()["faults_pending"] == 2
    assert Api(server.url).get("newsfeed/getUserSummary", UserID=1).status_code == 503
    assert api.get("Webcam/MadeBookings").status_code == 503
    assert api.get("Webcam/MadeBookings").status_code == 200

    sb.fault("MadeBookings", "http_500")
    assert api.reschedule(booking).status_code == 200  # other endpoint untouched
    assert sb.stats()["faults_pending"] == 1
    sb.clear_faults()
    assert sb.stats()["faults_pending"] == 0
    calls = sb.stats()["calls"]
    assert (calls["RescheduleMadeBooking"], calls["MadeBookings"]) == (2, 2)

    with pytest.raises(requests.HTTPError):
        sb.fault("RescheduleMadeBooking", "explode")
    with pytest.raises(requests.HTTPError):
        sb.fault("NoSuchOperation", "http_500")


def test_token_fault_after_commit_rotates(server: SandboxServer, sb: SandboxClient) -> None:
    pair = sb.add_user("u1")
    sb.fault("token", "http_500_after_commit")
    assert refresh(server.url, pair["refresh_token"]).status_code == 500
    r = refresh(server.url, pair["refresh_token"])  # the lost answer rotated the pair
    assert (r.status_code, r.json()) == (400, {"error": "invalid_grant"})
    assert sb.stats()["refreshes"] == 1


# --- control plane and robustness ---------------------------------------------------------------


def test_reset_and_config(server: SandboxServer, sb: SandboxClient) -> None:
    api = member(server, sb)
    sb.add_booking("u1", 1)
    sb.fault("*", "http_500")
    got = sb.configure(accept_by_seconds=30)
    assert got["accept_by_seconds"] == 30
    sb.reset()
    stats = sb.stats()
    assert stats["faults_pending"] == 0 and stats["new_bookings"] == {}
    assert all(n == 0 for n in stats["calls"].values())
    assert api.get("Webcam/MadeBookings").status_code == 401  # members gone
    assert sb.add_booking("u1", 1) == 100001
    assert sb.configure()["accept_by_seconds"] == 30  # config survives reset
    with pytest.raises(requests.HTTPError):
        sb.configure(bogus=1)


def test_handler_exception_is_a_500_not_a_dead_server(
    server: SandboxServer, sb: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom() -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(server.state.control, "stats", boom)
    r = requests.get(f"{server.url}/_sandbox/stats", timeout=5)
    assert r.status_code == 500 and "Message" in r.json()
    monkeypatch.undo()
    assert sb.stats()["refreshes"] == 0
    r = requests.get(f"{server.url}/nowhere", timeout=5)
    assert r.status_code == 404
    r = requests.get(f"{server.url}/v1/Webcam/RescheduleMadeBooking", timeout=5)
    assert r.status_code == 405


def test_call_log(server: SandboxServer, sb: SandboxClient) -> None:
    """`GET /_sandbox/calls?since=`: every upstream call with its time, status and ids, in order."""
    assert sb.calls() == {"calls": [], "next": 0, "first": 1, "last": 0}
    api = member(server, sb)
    booking = sb.add_booking("u1", 7)
    sb.set_online(7, True)
    before = datetime.now().timestamp()
    assert Api(server.url).get("newsfeed/getUserSummary", UserID=7).status_code == 200
    new_id = api.reschedule(booking).json()["WebcamBookingID"]
    assert api.get("Webcam/MadeBookingDetails", BookingID=new_id).status_code == 200
    assert api.get("Webcam/MadeBookings").status_code == 200
    assert Api(server.url, key="wrong").get("newsfeed/getUserSummary", UserID=8).status_code == 401
    after = datetime.now().timestamp()

    got = sb.calls()
    rows = got["calls"]
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert (got["next"], got["first"], got["last"]) == (5, 1, 5)
    assert [(r["op"], r["status"]) for r in rows] == [
        ("getUserSummary", 200),
        ("RescheduleMadeBooking", 200),
        ("MadeBookingDetails", 200),
        ("MadeBookings", 200),
        ("getUserSummary", 401),
    ]
    assert rows[0]["performer_id"] == 7 and rows[4]["performer_id"] == 8
    assert (rows[1]["booking_id"], rows[1]["new_booking_id"]) == (booking, new_id)
    assert rows[2]["booking_id"] == new_id and rows[2]["new_booking_id"] is None
    assert rows[3]["booking_id"] is None
    times = [r["t"] for r in rows]
    assert before <= times[0] and times == sorted(times) and times[-1] <= after
    assert sb.stats()["calls"]["getUserSummary"] == 2  # control calls are not logged

    page = sb.calls(since=2, limit=2)
    assert [r["seq"] for r in page["calls"]] == [3, 4] and page["next"] == 4
    assert sb.calls(since=page["next"])["calls"][0]["seq"] == 5
    assert sb.calls(since=5) == {"calls": [], "next": 5, "first": 1, "last": 5}
    with pytest.raises(requests.HTTPError):
        sb.calls(limit=0)
    sb.reset()
    assert sb.calls()["calls"] == []


def test_env_points_a_worker_at_this_sandbox(server: SandboxServer, sb: SandboxClient) -> None:
    """`rebook sandbox` prints these; with them the settings load (the key has no default) and
    the client reaches this sandbox's API and token endpoint."""
    from worker.core.settings import load_settings

    env = server.env()
    settings = load_settings(**{k.removeprefix("REBOOK_").lower(): v for k, v in env.items()})
    assert settings.api_base_url == server.url
    assert settings.token_url == server.token_url
    tokens = sb.add_user("env-user")
    client = UpstreamClient(
        settings.api_base_url,
        settings.api_key.get_secret_value(),
        api_key_header=settings.api_key_header,
    )
    try:
        assert client.is_online(3) is False
        body = client.refresh_token(
            settings.token_url,
            client_id=settings.oauth_client_id,
            client_secret=settings.oauth_client_secret.get_secret_value(),
            refresh_token=tokens["refresh_token"],
        )
    finally:
        client.close()
    assert body["refresh_token"] != tokens["refresh_token"]


# --- the documented behaviours, each an option ---------------------------------------------------


def test_strict_start_date_takes_only_yyyy_mm_dd(server: SandboxServer, sb: SandboxClient) -> None:
    api = member(server, sb)
    sb.add_booking("u1", 1, age_seconds=3 * 86400)
    recent = sb.add_booking("u1", 1, age_seconds=60)
    sb.configure(strict_start_date=True)
    stamp = london_now().replace(microsecond=0).isoformat()
    bad = api.get("Webcam/MadeBookings", StartDate=stamp)
    assert bad.status_code == 400 and "yyyy-mm-dd" in bad.json()["Message"]
    day = (london_now() - timedelta(days=1)).date().isoformat()
    good = api.get("Webcam/MadeBookings", StartDate=day)
    assert good.status_code == 200
    assert [b["WebcamBookingID"] for b in good.json()["WebcamBookings"]] == [recent]
    sb.configure(strict_start_date=False)
    assert api.get("Webcam/MadeBookings", StartDate=stamp).status_code == 200


def test_unset_dates_as_year_one(server: SandboxServer, sb: SandboxClient) -> None:
    api = member(server, sb)
    booking = sb.add_booking("u1", 1)
    assert api.get("Webcam/MadeBookingDetails", BookingID=booking).json()["CancelledDate"] is None
    sb.configure(year_one_unset=True)
    body = api.get("Webcam/MadeBookingDetails", BookingID=booking).json()
    assert body["CancelledDate"] == "0001-01-01T00:00:00"
    assert NAIVE_RE.match(body["CreateDate"]) and not body["CreateDate"].startswith("0001")


def test_list_and_total_names_are_options(server: SandboxServer, sb: SandboxClient) -> None:
    api = member(server, sb)
    sb.add_booking("u1", 1)
    sb.configure(list_name="Bookings", total_name="BookingsTotal")
    body = api.get("Webcam/MadeBookings").json()
    assert "WebcamBookings" not in body and "TotalBookings" not in body
    assert len(body["Bookings"]) == 1 and body["BookingsTotal"] == 1
    for bad in ({"list_name": "has space"}, {"list_name": "BookingsTotal"}):
        with pytest.raises(requests.HTTPError):
            sb.configure(**bad)


@pytest.mark.parametrize(
    ("shape", "performer"),
    [
        ("user_id", {"UserID": 1, "Nickname": "performer1"}),
        ("profile_id", {"ID": 1_000_001, "Nickname": "performer1"}),
        ("no_id", {"Nickname": "performer1"}),
    ],
)
def test_performer_shape_is_an_option(
    server: SandboxServer, sb: SandboxClient, shape: str, performer: dict[str, Any]
) -> None:
    api = member(server, sb)
    booking = sb.add_booking("u1", 1)
    assert sb.configure(performer_shape=shape)["performer_shape"] == shape
    assert api.get("Webcam/MadeBookingDetails", BookingID=booking).json()["Performer"] == performer
    (listed,) = api.get("Webcam/MadeBookings").json()["WebcamBookings"]
    assert listed["Performer"] == performer
    with pytest.raises(requests.HTTPError):
        sb.configure(performer_shape="guess")


def test_site_zone_is_an_option(server: SandboxServer, sb: SandboxClient) -> None:
    api = member(server, sb)
    booking = sb.add_booking("u1", 1, age_seconds=0)
    sb.configure(site_zone="Asia/Tokyo")
    created = api.get("Webcam/MadeBookingDetails", BookingID=booking).json()["CreateDate"]
    tokyo = datetime.fromisoformat(created).replace(tzinfo=ZoneInfo("Asia/Tokyo"))
    assert abs((tokyo - datetime.now(LONDON)).total_seconds()) < 30
    with pytest.raises(requests.HTTPError):
        sb.configure(site_zone="Mars/Olympus")
    assert sb.configure()["site_zone"] == "Asia/Tokyo"


def test_documented_preset(server: SandboxServer, sb: SandboxClient) -> None:
    got = sb.configure(documented=True)
    assert got["documented"] and got["strict_start_date"] and got["year_one_unset"]
    assert not sb.configure(documented=False)["documented"]


def test_lower_case_bearer_is_accepted(server: SandboxServer, sb: SandboxClient) -> None:
    token = sb.add_user("u1")["access_token"]
    for scheme in ("bearer", "Bearer", "BEARER"):
        resp = requests.get(
            f"{server.url}/v1/Webcam/MadeBookings",
            headers={KEY_HEADER: API_KEY, "Authorization": f"{scheme} {token}"},
            timeout=5,
        )
        assert resp.status_code == 200, scheme


def test_oauth_on_its_own_listener() -> None:
    """As documented, OAuth is another host: the API host has no token endpoint, and the
    OAuth host serves nothing else."""
    with SandboxServer(oauth_port=0, documented=True) as split:
        ctl = SandboxClient(split.url)
        try:
            tokens = ctl.add_user("o1")
            assert split.oauth_url != split.url
            assert split.token_url == f"{split.oauth_url}/OAuth/token"
            assert refresh(split.url, tokens["refresh_token"]).status_code == 404
            assert requests.get(f"{split.oauth_url}/_sandbox/stats", timeout=5).status_code == 404
            answer = refresh(split.oauth_url, tokens["refresh_token"])
            assert answer.status_code == 200 and answer.json()["token_type"] == "bearer"
            assert split.env()["REBOOK_OAUTH_TOKEN_URL"] == split.token_url
            assert ctl.configure()["documented"] is True
        finally:
            ctl.close()
