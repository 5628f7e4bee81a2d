"""The upstream client against the real sandbox over HTTP, and the shared Redis rate limit."""

from __future__ import annotations

import email.utils
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis

from rebook_dev.sandbox import SandboxClient, SandboxServer
from worker import __version__
from worker.adapters.ratelimit import RedisRateLimiter
from worker.adapters.upstream import (
    RATE_SHARE,
    UpstreamClient,
    environment_session,
    parse_retry_after,
)
from worker.core.budget import RESTAMP_AFTER
from worker.core.errors import (
    Ambiguous,
    AuthExpired,
    Challenged,
    DeploymentFault,
    NotFound,
    RateLimited,
    Rejected,
    TokenRefused,
    Transient,
    UpstreamError,
)
from worker.core.store.ratelimit import RateLog

KEY = "sandbox-key"
CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"


@pytest.fixture
def client(sandbox_server: SandboxServer) -> Iterator[UpstreamClient]:
    c = UpstreamClient(sandbox_server.url, KEY, timeout=5.0)
    yield c
    c.close()


@pytest.fixture
def member(sandbox: SandboxClient) -> dict[str, Any]:
    tokens = sandbox.add_user("alice")
    booking = sandbox.add_booking("alice", 7)
    return {"token": tokens["access_token"], "refresh": tokens["refresh_token"], "booking": booking}


def near(a: datetime | None, b: datetime, seconds: float = 30.0) -> bool:
    assert a is not None
    return abs((a - b).total_seconds()) < seconds


# --- operations -----------------------------------------------------------------------------------


def test_booking_details(client: UpstreamClient, member: dict[str, Any]) -> None:
    b = client.booking_details(member["token"], member["booking"])
    assert b.booking_id == member["booking"]
    assert b.performer_id == 7
    assert b.status == "Confirmed"
    assert b.final_state is not None
    # the sandbox writes London site time without an offset; the client must give true UTC
    assert near(b.create_date, datetime.now(UTC) - timedelta(hours=1))
    assert b.create_date is not None and b.create_date.utcoffset() == timedelta(0)


def test_reschedule_creates_one_booking(
    client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    sandbox.set_online(7, True)
    new = client.reschedule(member["token"], member["booking"])
    now = datetime.now(UTC)
    assert new.booking_id != member["booking"]
    assert new.status == "Pending" and new.final_state is None
    assert new.performer_id == 7
    assert near(new.session_date, now + timedelta(minutes=5))
    assert near(new.accept_by, now + timedelta(seconds=600))
    assert near(new.create_date, now)
    assert sandbox.stats()["new_bookings"] == {str(member["booking"]): 1}


def test_made_bookings_newest_first_and_start(
    client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    sandbox.set_online(7, True)
    new = client.reschedule(member["token"], member["booking"])
    page = client.made_bookings(member["token"])
    assert [b.booking_id for b in page.bookings] == [new.booking_id, member["booking"]]
    assert page.total == 2 and page.page_count == 1
    since = datetime.now(UTC) - timedelta(minutes=5)
    # StartDate is a date (a day early): the page has both, the iterator only what is recent
    day = client.made_bookings(member["token"], start=since)
    assert [b.booking_id for b in day.bookings] == [new.booking_id, member["booking"]]
    recent = list(client.iter_made_bookings(member["token"], start=since))
    assert [b.booking_id for b in recent] == [new.booking_id]
    oldest = client.made_bookings(member["token"], newest_first=False)
    assert [b.booking_id for b in oldest.bookings] == [member["booking"], new.booking_id]


def test_confirm(client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any]) -> None:
    sandbox.set_online(7, True)
    first = client.reschedule(member["token"], member["booking"])
    sandbox.set_status(first.booking_id, "Accepted")
    confirmed = client.confirm(member["token"], first.booking_id)
    assert confirmed.status == "Confirmed"
    assert sandbox.booking(first.booking_id)["Status"] == "Confirmed"


def test_confirm_of_a_pending_booking_is_rejected(
    client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    sandbox.set_online(7, True)
    new = client.reschedule(member["token"], member["booking"])
    with pytest.raises(Rejected) as info:
        client.confirm(member["token"], new.booking_id)
    assert info.value.status == 400
    assert "Accepted" in info.value.message


def test_presence(client: UpstreamClient, sandbox: SandboxClient) -> None:
    assert client.is_online(7) is False
    sandbox.set_online(7, True)
    summary = client.user_summary(7)
    assert summary.user_id == 7 and summary.available_now_webcam is True
    assert client.is_online(7) is True
    assert sandbox.stats()["presence_calls"] == {"7": 3}


def test_on_call_hook_and_limiter(sandbox_server: SandboxServer, member: dict[str, Any]) -> None:
    seen: list[tuple[str, str]] = []

    class Counting:
        shares: list[float] = []

        def acquire(self, share: float = 1.0) -> None:
            Counting.shares.append(share)

    c = UpstreamClient(
        sandbox_server.url, KEY, limiter=Counting(), on_call=lambda e, o: seen.append((e, o))
    )
    try:
        c.is_online(7)
        with pytest.raises(NotFound):
            c.booking_details(member["token"], 999_999)
    finally:
        c.close()
    assert seen == [("getUserSummary", "ok"), ("MadeBookingDetails", "NotFound")]
    assert Counting.shares == [RATE_SHARE["getUserSummary"], RATE_SHARE["MadeBookingDetails"]]


# --- headers, seen by a real HTTP server ----------------------------------------------------------


class Echo:
    """A tiny real HTTP server that records requests and answers what a test asks it to."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.body: bytes = b"{}"
        self.headers: dict[str, str] = {}
        echo = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                echo.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                self.send_response(echo.status)
                for k, v in echo.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(echo.body)))
                self.end_headers()
                self.wfile.write(echo.body)

            do_GET = do_POST = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.close()


BOOKING = {"WebcamBookingID": 5, "Status": "Pending", "Performer": {"UserID": 7}}


def test_member_call_headers(echo: Echo) -> None:
    echo.body = json.dumps(BOOKING).encode()
    c = UpstreamClient(echo.url, "the-key", api_key_header="X-Dev-Key")
    try:
        c.booking_details("tok-1", 5)
        c.reschedule("tok-2", 5)
    finally:
        c.close()
    get, post = echo.requests
    assert get["method"] == "GET"
    assert get["path"].startswith("/v1/Webcam/MadeBookingDetails?")
    assert "BookingID=5" in get["path"]
    assert get["headers"]["accept"] == "application/json"
    assert get["headers"]["x-dev-key"] == "the-key"
    assert get["headers"]["authorization"] == "bearer tok-1"  # as the docs' samples write it
    assert get["headers"]["user-agent"] == f"rebook/{__version__}"
    assert "apikey" not in get["headers"]
    assert "the-key" not in get["path"]  # the key never goes in the query string
    assert post["method"] == "POST"
    assert post["path"] == "/v1/Webcam/RescheduleMadeBooking"
    assert post["headers"]["authorization"] == "bearer tok-2"
    assert post["headers"]["user-agent"] == f"rebook/{__version__}"
    assert post["headers"]["x-dev-key"] == "the-key"
    assert post["headers"]["accept"] == "application/json"
    assert json.loads(post["body"]) == {"BookingID": 5}


def test_api_key_in_query_is_the_documented_apikey_parameter(echo: Echo) -> None:
    echo.body = json.dumps({"User": {"UserID": 7, "AvailableNowWebcam": True}}).encode()
    c = UpstreamClient(echo.url, "the-key", api_key_in="query")
    try:
        assert c.is_online(7) is True
        c.refresh_token(echo.url + "/t", client_id="c", client_secret="s", refresh_token="r")
    finally:
        c.close()
    presence, token = echo.requests
    assert "apiKey=the-key" in presence["path"] and "UserID=7" in presence["path"]
    assert "apikey" not in presence["headers"]
    assert "the-key" not in token["path"]  # the OAuth host gets no API key at all
    assert token["headers"]["user-agent"] == f"rebook/{__version__}"


def test_a_page_that_echoes_the_url_never_puts_the_key_in_an_error(echo: Echo) -> None:
    """A proxy's error page often quotes the URL it was asked for, `?apiKey=` included."""
    c = UpstreamClient(echo.url, "the-secret-key", api_key_in="query")
    echo.status = 502
    echo.body = b"<html>Bad gateway for /v1/x?apiKey=the-secret-key</html>"
    echo.headers = {"Content-Type": "text/html"}
    try:
        with pytest.raises(UpstreamError) as info:
            c.user_summary(7)
    finally:
        c.close()
    assert "the-secret-key" not in str(info.value)
    assert "the-secret-key" not in repr(info.value.args)


def test_the_sandbox_takes_the_key_in_the_query(sandbox_server: SandboxServer) -> None:
    c = UpstreamClient(sandbox_server.url, KEY, api_key_in="query")
    wrong = UpstreamClient(sandbox_server.url, "wrong", api_key_in="query")
    try:
        assert c.is_online(7) is False
        with pytest.raises(DeploymentFault) as refused:  # a key-only call: the key's fault
            wrong.is_online(7)
        assert refused.value.reason == "api_key"
    finally:
        c.close()
        wrong.close()


def test_presence_call_has_api_key_but_no_bearer(echo: Echo) -> None:
    echo.body = json.dumps({"User": {"UserID": 7, "AvailableNowWebcam": True}}).encode()
    c = UpstreamClient(echo.url, "the-key")
    try:
        assert c.is_online(7) is True
    finally:
        c.close()
    (req,) = echo.requests
    assert req["path"].startswith("/v1/newsfeed/getUserSummary?")
    assert req["headers"]["apikey"] == "the-key"
    assert "authorization" not in req["headers"]


def test_made_bookings_query_uses_site_time(echo: Echo) -> None:
    echo.body = json.dumps({"PageCount": 1, "WebcamBookings": []}).encode()
    c = UpstreamClient(echo.url, "k", zone=ZoneInfo("Europe/London"))
    try:
        c.made_bookings("t", start=datetime(2024, 7, 1, 11, 0, 0, tzinfo=UTC), page=2)
    finally:
        c.close()
    path = echo.requests[0]["path"]
    assert re.search(r"StartDate=2024-06-30(&|$)", path)  # yyyy-mm-dd, the site day before
    assert "OrderBy=createddate-desc" in path
    assert "PageNumber=2" in path
    assert "BookingsPerPage=100" in path


@pytest.mark.parametrize(
    ("zone", "instant", "sent"),
    [
        ("Europe/London", datetime(2024, 7, 1, 23, 30, tzinfo=UTC), "2024-07-01"),  # 00:30 BST 2nd
        ("Europe/London", datetime(2024, 1, 1, 23, 30, tzinfo=UTC), "2023-12-31"),  # GMT
        ("Asia/Tokyo", datetime(2024, 7, 1, 16, 0, tzinfo=UTC), "2024-07-01"),  # 01:00 on the 2nd
        ("America/New_York", datetime(2024, 7, 2, 3, 0, tzinfo=UTC), "2024-06-30"),  # 23:00 1st
    ],
)
def test_start_date_is_the_site_day_before(
    echo: Echo, zone: str, instant: datetime, sent: str
) -> None:
    echo.body = json.dumps({"PageCount": 1, "WebcamBookings": []}).encode()
    c = UpstreamClient(echo.url, "k", zone=ZoneInfo(zone))
    try:
        c.made_bookings("t", start=instant)
    finally:
        c.close()
    assert re.search(f"StartDate={sent}(&|$)", echo.requests[0]["path"])


def test_iter_made_bookings_filters_by_the_exact_time_and_stops_early(echo: Echo) -> None:
    """What the day-early StartDate lets through is dropped here; the page after the first older
    booking is never read (newest first)."""
    start = datetime(2024, 7, 1, 12, 0, tzinfo=UTC)  # 13:00 BST
    rows = [
        {"WebcamBookingID": 3, "CreateDate": "2024-07-01T13:30:00"},
        {"WebcamBookingID": 2, "CreateDate": "0001-01-01T00:00:00"},  # unset: kept
        {"WebcamBookingID": 1, "CreateDate": "2024-07-01T12:59:59"},  # a second too old
    ]
    echo.body = json.dumps({"PageCount": 5, "WebcamBookings": rows}).encode()
    c = UpstreamClient(echo.url, "k", zone=ZoneInfo("Europe/London"))
    try:
        got = [b.booking_id for b in c.iter_made_bookings("t", start=start)]
        assert [b.booking_id for b in c.iter_made_bookings("t")] == [3, 2, 1] * 5
    finally:
        c.close()
    assert got == [3, 2]
    assert len(echo.requests) == 1 + 5


@pytest.mark.parametrize("zone", ["Europe/Paris", "Asia/Tokyo", "America/New_York", "UTC"])
def test_year_one_is_unset_on_every_datetime_field(echo: Echo, zone: str) -> None:
    """`0001-01-01T00:00:00` is .NET's "no date": with a zone east of UTC it used to overflow."""
    fields = [
        "CreateDate",
        "SessionDate",
        "AcceptBy",
        "AcceptedDate",
        "ConfirmedDate",
        "CancelledDate",
        "LastUpdated",
    ]
    echo.body = json.dumps(
        {"WebcamBookingID": 5, "Status": "Pending", **dict.fromkeys(fields, "0001-01-01T00:00:00")}
    ).encode()
    c = UpstreamClient(echo.url, "k", zone=ZoneInfo(zone))
    try:
        details = c.booking_details("t", 5)
        made = c.reschedule("t", 5)
    finally:
        c.close()
    for booking in (details, made):
        assert booking.create_date is None and booking.accept_by is None
        assert booking.last_updated is None and booking.session_date is None


@pytest.mark.parametrize(
    ("value", "zone"),
    [
        ("9999-12-31T23:59:59", "America/New_York"),  # past the end of the calendar in UTC
        ("0001-01-01T00:00:00", "Europe/Paris"),  # unset, not an error (see above)
        ("2024-02-30T10:00:00", "Europe/Paris"),
        ("yesterday", "Europe/Paris"),
    ],
)
def test_an_unreadable_datetime_is_a_readable_error_never_a_crash(
    echo: Echo, value: str, zone: str
) -> None:
    echo.body = json.dumps({"WebcamBookingID": 5, "Status": "Pending", "AcceptBy": value}).encode()
    c = UpstreamClient(echo.url, "k", zone=ZoneInfo(zone))
    try:
        if value.startswith("0001"):
            assert c.booking_details("t", 5).accept_by is None
            return
        with pytest.raises(Transient) as read:
            c.booking_details("t", 5)
        with pytest.raises(Ambiguous) as posted:
            c.reschedule("t", 5)
    finally:
        c.close()
    for info in (read, posted):
        assert "AcceptBy" in str(info.value)
        assert "\n" not in str(info.value)


CHALLENGE = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body/></html>"


def _answer(echo: Echo, status: int, body: bytes, ctype: str | None) -> None:
    echo.status, echo.body = status, body
    echo.headers = {"Content-Type": ctype} if ctype else {}


def _calls(c: UpstreamClient) -> dict[str, Any]:
    return {
        "read": lambda: c.booking_details("t", 5),
        "presence": lambda: c.user_summary(5),
        "reschedule": lambda: c.reschedule("t", 5),
        "confirm": lambda: c.confirm("t", 5),
    }


@pytest.mark.parametrize("status", [403, 429, 503])
@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (CHALLENGE, "text/html; charset=UTF-8"),
        (CHALLENGE, None),  # markup with no content type
        (b"Access denied by policy", "text/plain"),  # not JSON at all
    ],
)
def test_a_challenge_page_never_reached_the_api(
    echo: Echo, status: int, body: bytes, ctype: str | None
) -> None:
    """403/429/503 pages in front of the API: Challenged (transient, "not sent") for every
    call, the non-idempotent POSTs included; never Rejected, never AuthExpired. A 503 that is
    not a challenge page may come from a gateway that forwarded the POST: Ambiguous."""
    _answer(echo, status, body, ctype)
    seen: list[tuple[str, str]] = []
    c = UpstreamClient(echo.url, "k", on_call=lambda e, o: seen.append((e, o)))
    gateway = status == 503 and body != CHALLENGE
    try:
        for name, call in _calls(c).items():
            post = name in ("reschedule", "confirm")
            with pytest.raises(Ambiguous if gateway and post else Challenged) as info:
                call()
            assert isinstance(info.value, Ambiguous if gateway and post else Transient), name
            assert info.value.status == status
            assert "not the API's answer" in str(info.value)
    finally:
        c.close()
    expected = {"Challenged", "Ambiguous"} if gateway else {"Challenged"}
    assert {o for _, o in seen} == expected  # a distinct outcome for the exporter


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_gateway_page_after_a_post_stays_ambiguous(echo: Echo, status: int) -> None:
    """A proxy's 500/502/504 page may come after it forwarded the POST: reconcile, never
    re-send blindly. For a read it is just transient."""
    _answer(echo, status, b"<html><title>502 Bad Gateway</title></html>", "text/html")
    c = UpstreamClient(echo.url, "k")
    try:
        for name, call in _calls(c).items():
            expected = Ambiguous if name in ("reschedule", "confirm") else Challenged
            with pytest.raises(expected):
                call()
    finally:
        c.close()


NGINX_503 = b"<html><head><title>503 Service Temporarily Unavailable</title></head></html>"


@pytest.mark.parametrize("status", [502, 503, 504])
@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (NGINX_503, "text/html"),  # a gateway's own page
        (NGINX_503, None),  # markup with no content type
        (b"upstream connect error or disconnect/reset before headers", "text/plain"),
        (b"", None),  # nothing at all
        (b'{"Message": "The service is unavailable."}', "application/json"),
    ],
)
def test_a_gateway_5xx_to_a_post_is_ambiguous(
    echo: Echo, status: int, body: bytes, ctype: str | None
) -> None:
    """502/503/504 to a POST, HTML or not, may come after the gateway forwarded it: reconcile,
    never "not sent". A read is transient either way."""
    _answer(echo, status, body, ctype)
    c = UpstreamClient(echo.url, "k")
    try:
        for name, call in _calls(c).items():
            with pytest.raises(UpstreamError) as info:
                call()
            if name in ("reschedule", "confirm"):
                assert isinstance(info.value, Ambiguous), (name, info.value)
            else:
                assert isinstance(info.value, Transient), (name, info.value)
            assert info.value.status == status
    finally:
        c.close()


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (503, CHALLENGE, {"Content-Type": "text/html"}),
        (403, CHALLENGE, {"Content-Type": "text/html"}),
        (503, b"<html><title>Attention Required! | Cloudflare</title></html>", {}),
        # Cloudflare marks its challenges whatever the page says
        (503, NGINX_503, {"Content-Type": "text/html", "cf-mitigated": "challenge"}),
    ],
)
def test_a_cdn_challenge_to_a_post_never_reached_the_api(
    echo: Echo, status: int, body: bytes, headers: dict[str, str]
) -> None:
    echo.status, echo.body, echo.headers = status, body, headers
    c = UpstreamClient(echo.url, "k")
    try:
        with pytest.raises(Challenged):
            c.reschedule("t", 5)
    finally:
        c.close()


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (502, CHALLENGE, {"Content-Type": "text/html"}),  # a challenge is a 403 or a 503
        (503, b"<p>Just a moment...</p>", {"Content-Type": "text/html"}),  # not its title
        (503, NGINX_503, {"Content-Type": "text/html", "cf-mitigated": "block"}),
    ],
)
def test_the_challenge_exception_is_strict(
    echo: Echo, status: int, body: bytes, headers: dict[str, str]
) -> None:
    echo.status, echo.body, echo.headers = status, body, headers
    c = UpstreamClient(echo.url, "k")
    try:
        with pytest.raises(Ambiguous):
            c.reschedule("t", 5)
    finally:
        c.close()


def test_the_api_s_own_answers_keep_their_meaning(echo: Echo) -> None:
    """JSON and the API's XML are the API's: a 403 with a Message is still a refusal."""
    c = UpstreamClient(echo.url, "k")
    try:
        _answer(echo, 403, b'{"Message": "Not your booking"}', "application/json")
        with pytest.raises(Rejected, match="Not your booking"):
            c.reschedule("t", 5)
        _answer(echo, 400, b'<?xml version="1.0"?><Error><Message>no</Message></Error>', None)
        with pytest.raises(Rejected):
            c.reschedule("t", 5)
        _answer(echo, 401, b"", None)  # an empty body says nothing either way
        with pytest.raises(AuthExpired):
            c.booking_details("t", 5)
    finally:
        c.close()


def test_an_html_200_is_challenged_on_a_read_and_ambiguous_on_a_post(echo: Echo) -> None:
    _answer(echo, 200, CHALLENGE, "text/html")
    c = UpstreamClient(echo.url, "k")
    try:
        with pytest.raises(Challenged):
            c.booking_details("t", 5)
        with pytest.raises(Ambiguous):
            c.reschedule("t", 5)
    finally:
        c.close()


@pytest.mark.parametrize("status", [400, 401, 403, 503])
def test_a_page_in_front_of_the_token_endpoint_is_not_a_refusal(echo: Echo, status: int) -> None:
    """Only the OAuth server's own 400/401 means "sign in again" (-> reauth)."""
    _answer(echo, status, CHALLENGE, "text/html")
    c = UpstreamClient(echo.url, "k")
    try:
        with pytest.raises(Challenged):
            c.refresh_token(echo.url + "/t", client_id="c", client_secret="s", refresh_token="r")
        _answer(echo, 401, b'{"error": "refresh_token_has_expired"}', "application/json")
        with pytest.raises(Rejected):
            c.refresh_token(echo.url + "/t", client_id="c", client_secret="s", refresh_token="r")
    finally:
        c.close()


@pytest.mark.parametrize("status", [403, 503])
def test_sandbox_html_challenge_fault(
    client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any], status: int
) -> None:
    sandbox.set_online(7, True)
    sandbox.fault("RescheduleMadeBooking", "html_challenge", status=status)
    with pytest.raises(Challenged):
        client.reschedule(member["token"], member["booking"])
    assert sandbox.stats()["new_bookings"] == {}  # it never reached the API
    assert client.reschedule(member["token"], member["booking"]).booking_id > 0


def test_refresh_is_form_encoded(echo: Echo) -> None:
    echo.body = json.dumps({"access_token": "a", "refresh_token": "r", "expires_in": 5}).encode()
    c = UpstreamClient(echo.url, "k")
    try:
        body = c.refresh_token(
            echo.url + "/OAuth/token", client_id="cid", client_secret="cs", refresh_token="rt"
        )
    finally:
        c.close()
    assert body["access_token"] == "a"
    (req,) = echo.requests
    assert req["headers"]["content-type"] == "application/x-www-form-urlencoded"
    form = dict(pair.split("=") for pair in req["body"].decode().split("&"))
    assert form == {
        "grant_type": "refresh_token",
        "client_id": "cid",
        "client_secret": "cs",
        "refresh_token": "rt",
    }


def test_429_with_http_date_retry_after(echo: Echo) -> None:
    echo.status = 429
    when = datetime.now(UTC) + timedelta(seconds=120)
    echo.headers = {"Retry-After": email.utils.format_datetime(when, usegmt=True)}
    c = UpstreamClient(echo.url, "k")
    try:
        with pytest.raises(RateLimited) as info:
            c.booking_details("t", 1)
    finally:
        c.close()
    assert info.value.retry_after is not None
    assert 110 < info.value.retry_after <= 121


def test_error_message_is_short_and_single_line(echo: Echo) -> None:
    echo.status = 400
    echo.body = ("line one\nline two\t" + "x" * 1000).encode()
    echo.headers = {"Content-Type": "text/plain"}
    c = UpstreamClient(echo.url, "k")
    try:
        with pytest.raises(Rejected) as info:
            c.reschedule("t", 1)
    finally:
        c.close()
    assert "\n" not in info.value.message
    assert info.value.message.startswith("line one line two")
    assert len(info.value.message) <= 200


def test_unexpected_body_shape(echo: Echo) -> None:
    echo.body = json.dumps({"Status": "Pending"}).encode()  # no WebcamBookingID
    c = UpstreamClient(echo.url, "k")
    try:
        with pytest.raises(Transient):
            c.booking_details("t", 1)
        with pytest.raises(Ambiguous):
            c.reschedule("t", 1)
    finally:
        c.close()


# --- error mapping through sandbox faults ---------------------------------------------------------


def test_http_500_is_transient_on_get_but_ambiguous_on_reschedule(
    client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    sandbox.set_online(7, True)
    sandbox.fault("MadeBookingDetails", "http_500")
    with pytest.raises(Transient) as get_err:
        client.booking_details(member["token"], member["booking"])
    assert not isinstance(get_err.value, Ambiguous)
    assert get_err.value.status == 500
    sandbox.fault("RescheduleMadeBooking", "http_500")
    with pytest.raises(Ambiguous) as post_err:
        client.reschedule(member["token"], member["booking"])
    assert post_err.value.status == 500 and not isinstance(post_err.value, Transient)
    assert sandbox.stats()["new_bookings"] == {}


def test_http_503(client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any]) -> None:
    sandbox.set_online(7, True)
    sandbox.fault("getUserSummary", "http_503")
    with pytest.raises(Transient) as info:
        client.is_online(7)
    assert info.value.status == 503
    sandbox.fault("RescheduleMadeBooking", "http_503")
    with pytest.raises(Ambiguous):
        client.reschedule(member["token"], member["booking"])
    # the fault was used up: the next call works
    assert client.is_online(7) is True


@pytest.mark.parametrize(("retry_after", "expected"), [(3, 3.0), (None, None)])
def test_http_429(
    client: UpstreamClient,
    sandbox: SandboxClient,
    member: dict[str, Any],
    retry_after: float | None,
    expected: float | None,
) -> None:
    extra = {} if retry_after is None else {"retry_after": retry_after}
    sandbox.fault("MadeBookingDetails", "http_429", **extra)
    with pytest.raises(RateLimited) as info:
        client.booking_details(member["token"], member["booking"])
    assert info.value.retry_after == expected
    assert info.value.status == 429
    # a 429 means "not done": it is not ambiguous even for the POST
    sandbox.fault("RescheduleMadeBooking", "http_429", **extra)
    with pytest.raises(RateLimited):
        client.reschedule(member["token"], member["booking"])


def test_timeout_is_transient_on_get_and_ambiguous_on_post(
    sandbox_server: SandboxServer, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    sandbox.set_online(7, True)
    c = UpstreamClient(sandbox_server.url, KEY, timeout=0.2)
    try:
        sandbox.fault("MadeBookingDetails", "timeout", delay=0.5)
        with pytest.raises(Transient) as get_err:
            c.booking_details(member["token"], member["booking"])
        assert not isinstance(get_err.value, Ambiguous)
        sandbox.fault("RescheduleMadeBooking", "timeout", delay=0.5)
        with pytest.raises(Ambiguous):
            c.reschedule(member["token"], member["booking"])
    finally:
        c.close()


def test_after_commit_faults_are_ambiguous_and_did_commit(
    sandbox_server: SandboxServer, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    sandbox.set_online(7, True)
    c = UpstreamClient(sandbox_server.url, KEY, timeout=0.2)
    try:
        sandbox.fault("RescheduleMadeBooking", "http_500_after_commit")
        with pytest.raises(Ambiguous):
            c.reschedule(member["token"], member["booking"])
        sandbox.fault("RescheduleMadeBooking", "timeout_after_commit", delay=0.5)
        with pytest.raises(Ambiguous):
            c.reschedule(member["token"], member["booking"])
        sandbox.fault("RescheduleMadeBooking", "bad_json")
        with pytest.raises(Ambiguous):
            c.reschedule(member["token"], member["booking"])
    finally:
        c.close()
    assert sandbox.stats()["new_bookings"] == {str(member["booking"]): 3}


def test_bad_json_is_transient_on_get(
    client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    sandbox.fault("MadeBookings", "bad_json")
    with pytest.raises(Transient) as info:
        client.made_bookings(member["token"])
    assert not isinstance(info.value, Ambiguous)


def test_401_is_auth_expired(
    client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    with pytest.raises(AuthExpired) as info:
        client.booking_details("not-a-token", member["booking"])
    assert info.value.status == 401
    sandbox.expire_user("alice")
    with pytest.raises(AuthExpired):
        client.reschedule(member["token"], member["booking"])


def test_404_is_not_found(
    client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    with pytest.raises(NotFound) as info:
        client.booking_details(member["token"], 999_999)
    assert isinstance(info.value, Rejected) and not isinstance(info.value, Transient)
    assert info.value.status == 404
    # another member's booking is not found either
    other = sandbox.add_booking("bob", 7)
    with pytest.raises(NotFound):
        client.reschedule(member["token"], other)


def test_offline_performer_is_rejected_with_the_upstream_message(
    client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    with pytest.raises(Rejected) as info:
        client.reschedule(member["token"], member["booking"])
    assert not isinstance(info.value, NotFound)
    assert info.value.status == 400
    assert info.value.message == "The performer is not online"
    assert "The performer is not online" in str(info.value)
    assert "RescheduleMadeBooking" in str(info.value)
    assert sandbox.stats()["new_bookings"] == {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_is_transient_even_for_reschedule() -> None:
    c = UpstreamClient(f"http://127.0.0.1:{free_port()}", KEY, timeout=1.0)
    try:
        with pytest.raises(Transient) as post_err:
            c.reschedule("t", 1)
        assert not isinstance(post_err.value, Ambiguous)
        with pytest.raises(Transient):
            c.booking_details("t", 1)
        with pytest.raises(Transient):
            c.refresh_token(
                f"http://127.0.0.1:{free_port()}/OAuth/token",
                client_id="c",
                client_secret="s",
                refresh_token="r",
            )
    finally:
        c.close()


def test_errors_never_contain_the_token(
    client: UpstreamClient, sandbox: SandboxClient, member: dict[str, Any]
) -> None:
    sandbox.fault("RescheduleMadeBooking", "http_500")
    with pytest.raises(UpstreamError) as info:
        client.reschedule(member["token"], member["booking"])
    assert member["token"] not in str(info.value)
    assert KEY not in str(info.value)


# --- Retry-After ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", 5.0), (" 12 ", 12.0), ("0", 0.0), ("2.5", 2.5), ("-3", 0.0), (None, None), ("", None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    future = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    got = parse_retry_after(future)
    assert got is not None and 80 < got <= 91
    past = email.utils.format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize("value", ["soon", "Tomorrow-ish", "12 seconds"])
def test_parse_retry_after_garbage(value: str) -> None:
    assert parse_retry_after(value) is None


# --- OAuth refresh --------------------------------------------------------------------------------


def test_refresh_rotates_and_the_old_refresh_token_dies(
    client: UpstreamClient,
    sandbox: SandboxClient,
    sandbox_server: SandboxServer,
    member: dict[str, Any],
) -> None:
    url = sandbox_server.url + "/OAuth/token"
    body = client.refresh_token(
        url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=member["refresh"]
    )
    assert body["access_token"] != member["token"]
    assert body["refresh_token"] != member["refresh"]
    assert body["expires_in"] > 0
    assert sandbox.stats()["refreshes"] == 1
    # the new access token works, the old one does not
    assert client.booking_details(body["access_token"], member["booking"]).booking_id
    with pytest.raises(AuthExpired):
        client.booking_details(member["token"], member["booking"])
    # the old refresh token is refused now (rotation)
    with pytest.raises(Rejected):
        client.refresh_token(
            url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=member["refresh"]
        )
    again = client.refresh_token(
        url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=body["refresh_token"]
    )
    assert again["refresh_token"] != body["refresh_token"]


def test_refresh_refusals_are_rejected(
    client: UpstreamClient,
    sandbox: SandboxClient,
    sandbox_server: SandboxServer,
    member: dict[str, Any],
) -> None:
    url = sandbox_server.url + "/OAuth/token"
    with pytest.raises(DeploymentFault) as client_refused:  # the site's client, not the member
        client.refresh_token(
            url, client_id=CLIENT_ID, client_secret="wrong", refresh_token=member["refresh"]
        )
    assert client_refused.value.reason == "oauth_client"
    with pytest.raises(Rejected) as grant:
        client.refresh_token(
            url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token="made-up"
        )
    assert isinstance(grant.value, TokenRefused) and grant.value.code == "invalid_grant"
    sandbox.revoke_user("alice")
    with pytest.raises(Rejected) as info:
        client.refresh_token(
            url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token=member["refresh"]
        )
    assert info.value.status == 401
    assert "refresh_token_has_expired" in info.value.message
    assert sandbox.stats()["refreshes"] == 0


def test_refresh_5xx_is_transient(
    client: UpstreamClient,
    sandbox: SandboxClient,
    sandbox_server: SandboxServer,
    member: dict[str, Any],
) -> None:
    sandbox.fault("token", "http_503")
    with pytest.raises(Transient):
        client.refresh_token(
            sandbox_server.url + "/OAuth/token",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            refresh_token=member["refresh"],
        )


# --- paging ---------------------------------------------------------------------------------------


def test_iter_made_bookings_pages_newest_first(
    client: UpstreamClient, sandbox: SandboxClient
) -> None:
    token = sandbox.add_user("pager")["access_token"]
    # booking i is i seconds older than booking i-1: newest first == ascending ids
    ids = [sandbox.add_booking("pager", 7, age_seconds=1000 + i) for i in range(205)]
    before = sandbox.stats()["calls"]["MadeBookings"]
    got = [b.booking_id for b in client.iter_made_bookings(token)]
    assert got == ids
    assert sandbox.stats()["calls"]["MadeBookings"] - before == 3
    capped = [b.booking_id for b in client.iter_made_bookings(token, max_pages=2)]
    assert capped == ids[:200]
    assert sandbox.stats()["calls"]["MadeBookings"] - before == 5


def test_iter_made_bookings_empty_and_start(client: UpstreamClient, sandbox: SandboxClient) -> None:
    token = sandbox.add_user("empty")["access_token"]
    assert list(client.iter_made_bookings(token)) == []
    sandbox.add_booking("empty", 7, age_seconds=7200)
    fresh = sandbox.add_booking("empty", 7, age_seconds=10)
    since = datetime.now(UTC) - timedelta(minutes=10)
    assert [b.booking_id for b in client.iter_made_bookings(token, start=since)] == [fresh]


def test_site_zone_other_than_london() -> None:
    """A client in the upstream's zone finds what it made; StartDate is sent in site time."""
    with SandboxServer(timezone="Asia/Tokyo") as server:
        ctl = SandboxClient(server.url)
        try:
            token = ctl.add_user("t")["access_token"]
            old = ctl.add_booking("t", 7, age_seconds=3 * 3600)
            new = ctl.add_booking("t", 7, age_seconds=60)
            c = UpstreamClient(server.url, KEY, zone=ZoneInfo("Asia/Tokyo"))
            try:
                b = c.booking_details(token, new)
                assert near(b.create_date, datetime.now(UTC) - timedelta(seconds=60))
                since = datetime.now(UTC) - timedelta(hours=1)
                assert [x.booking_id for x in c.iter_made_bookings(token, start=since)] == [new]
                assert old != new
            finally:
                c.close()
        finally:
            ctl.close()


# --- shared rate limit ----------------------------------------------------------------------------


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def count_immediate(limiter: RedisRateLimiter, tries: int) -> int:
    passed = 0
    for _ in range(tries):
        try:
            limiter.acquire()
        except RateLimited:
            break
        passed += 1
    return passed


def test_rate_limit_lets_a_second_s_worth_through_then_refuses_a_long_wait(
    rclient: redis.Redis, prefix: str
) -> None:
    # 3/s: three calls at once, then the next one would wait until the first leaves the window
    limiter = RedisRateLimiter(RateLog(rclient, prefix + "rl"), 3, max_wait=0.05)
    assert count_immediate(limiter, 10) == 3
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    assert info.value.retry_after is not None and 0.5 < info.value.retry_after <= 1.05


def test_rate_limit_is_shared_between_limiters(rclient: redis.Redis, prefix: str) -> None:
    a = RedisRateLimiter(RateLog(rclient, prefix + "rl"), 2, max_wait=0.05)
    b = RedisRateLimiter(RateLog(rclient, prefix + "rl"), 2, max_wait=0.05)
    a.acquire()
    b.acquire()
    with pytest.raises(RateLimited):
        a.acquire()
    with pytest.raises(RateLimited):
        b.acquire()
    # another key is another budget
    c = RedisRateLimiter(RateLog(rclient, prefix + "other"), 2, max_wait=0.05)
    c.acquire()


def test_no_one_second_window_holds_more_than_the_rate(rclient: redis.Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(RateLog(rclient, prefix + "rl"), 20, max_wait=5)
    times = []
    for _ in range(45):
        limiter.acquire()
        times.append(time.monotonic())
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest == 20
    assert times[-1] - times[0] >= 2.0  # 20 at once, 20 a second later, 5 a second after that


def test_a_rate_under_one_per_second_spaces_single_calls(rclient: redis.Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(RateLog(rclient, prefix + "rl"), 0.5, max_wait=0.05)
    limiter.acquire()
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    assert info.value.retry_after is not None and 1.5 < info.value.retry_after <= 2.05


def test_rate_zero_never_blocks(rclient: redis.Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(RateLog(rclient, prefix + "rl"), 0, max_wait=0)
    assert count_immediate(limiter, 1000) == 1000
    assert rclient.exists(prefix + "rl") == 0


def test_the_limiter_is_used_by_the_client(
    rclient: redis.Redis, prefix: str, sandbox_server: SandboxServer, sandbox: SandboxClient
) -> None:
    # 2/s: the window's two calls, then a presence poll gives up (Throttled) instead of waiting
    limiter = RedisRateLimiter(RateLog(rclient, prefix + "rl"), 2, max_wait=0.05)
    c = UpstreamClient(sandbox_server.url, KEY, limiter=limiter)
    try:
        c.is_online(7)
        c.is_online(7)
        with pytest.raises(RateLimited):
            c.is_online(7)
    finally:
        c.close()
    assert sandbox.stats()["presence_calls"] == {"7": 2}


def test_a_call_sent_late_is_logged_at_its_sending_time(
    rclient: redis.Redis,
    prefix: str,
    sandbox_server: SandboxServer,
    sandbox: SandboxClient,
    member: dict[str, Any],
) -> None:
    """A POST's permit is taken before its mark is written (with WAIT, maybe tens of ms): sent
    later than `RESTAMP_AFTER` after the limiter let it by, its entry moves to when it went out,
    so the log counts sends, as the upstream does. One sent at once keeps its entry."""
    key = prefix + "rl"
    limiter = RedisRateLimiter(RateLog(rclient, key), 5, max_wait=0.05)
    c = UpstreamClient(sandbox_server.url, KEY, limiter=limiter)
    try:
        prompt = c.reserve("MadeBookings", member=True)
        [(entry, at)] = rclient.zrange(key, 0, -1, withscores=True)
        c.made_bookings(member["token"], permit=prompt)
        assert rclient.zrange(key, 0, 0, withscores=True) == [(entry, at)]

        late = c.reserve("RescheduleMadeBooking", member=True)
        assert late.slot is not None
        [(late_entry, taken_at)] = [
            x for x in rclient.zrange(key, 0, -1, withscores=True) if x[0] != entry
        ]
        late.slot.taken -= 2 * RESTAMP_AFTER  # as if its mark had taken that long
        sandbox.set_online(7, True)
        c.reschedule(member["token"], member["booking"], permit=late)
        moved = rclient.zscore(key, late_entry)
        assert moved is not None and moved > taken_at
        assert rclient.zcard(key) == 2  # moved, not added: still one entry a call
    finally:
        c.close()


def test_an_entry_that_left_the_window_counts_again_when_the_call_goes(
    rclient: redis.Redis, prefix: str
) -> None:
    key = prefix + "rl"
    limiter = RedisRateLimiter(RateLog(rclient, key), 1, max_wait=0.05)
    slot = limiter.acquire()
    assert slot is not None
    [(entry, _)] = rclient.zrange(key, 0, -1, withscores=True)
    rclient.delete(key)  # pruned by others' takes: it was let by more than a window ago
    slot.move()
    assert rclient.zrange(key, 0, -1) == [entry]
    assert 0 < rclient.pttl(key) <= 2050
    with pytest.raises(RateLimited):  # the window is full again: the call is going out now
        limiter.acquire()


def test_a_short_budget_goes_to_the_higher_share_first(rclient: redis.Redis, prefix: str) -> None:
    """With the window 80 % full, watch reads wait; at 90 % presence polls wait too; a
    reschedule POST (share 1) goes until the window is full, and nothing goes past that."""
    limiter = RedisRateLimiter(RateLog(rclient, prefix + "rl"), 10, max_wait=0.05)
    shares = {
        name: RATE_SHARE[endpoint]
        for name, endpoint in [
            ("post", "RescheduleMadeBooking"),
            ("presence", "getUserSummary"),
            ("watch", "MadeBookings"),
        ]
    }

    def goes(share: float) -> bool:
        try:
            limiter.acquire(share)
        except RateLimited:
            return False
        return True

    assert [goes(shares["watch"]) for _ in range(9)] == [True] * 8 + [False]
    assert [goes(shares["presence"]) for _ in range(2)] == [True, False]
    assert [goes(shares["post"]) for _ in range(2)] == [True, False]


def test_the_session_reads_proxies_and_ca_bundle_from_the_environment_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "bypass.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/custom.pem")
    proxied = environment_session("https://api.example")
    assert proxied.proxies.get("https") == "http://proxy.example:3128"
    assert proxied.verify == "/etc/ssl/certs/custom.pem"
    assert proxied.trust_env is False  # not read again on every request
    assert not environment_session("https://bypass.example").proxies
