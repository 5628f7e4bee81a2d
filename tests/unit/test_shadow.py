"""Shadow mode at its lowest level: a client built with `shadow=True` never sends Reschedule,
Confirm or Cancel, whatever calls it; it still sends the reads. Plus the pieces of its figures."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from worker.adapters.upstream import SHADOW_REFUSED, UpstreamClient
from worker.core.errors import NotSent, Shadowed
from worker.core.states import TERMINAL_STATES, State
from worker.core.store.sweep import _percentile
from worker.operations.console import pages


class RecordingSession(requests.Session):
    """Answers every request with `{}` (200) and remembers which paths were asked."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(str(url))
        response = requests.Response()
        response.status_code = 200
        response._content = b'{"UserID": 7, "Username": "x", "IsOnline": true}'
        response.headers["Content-Type"] = "application/json"
        return response


class CountingLimiter:
    def __init__(self) -> None:
        self.shares: list[float] = []

    def acquire(self, share: float = 1.0) -> None:
        self.shares.append(share)


def client(shadow: bool) -> tuple[UpstreamClient, RecordingSession, CountingLimiter]:
    session, limiter = RecordingSession(), CountingLimiter()
    c = UpstreamClient(
        "http://upstream.invalid", "k" * 16, session=session, limiter=limiter, shadow=shadow
    )
    return c, session, limiter


def test_the_three_calls_that_book_are_refused_in_shadow_mode() -> None:
    c, session, limiter = client(shadow=True)
    permit = c.reserve("RescheduleMadeBooking", member=True)
    with pytest.raises(Shadowed) as caught:
        c.reschedule("tok", 11, permit=permit)
    assert caught.value.endpoint == "RescheduleMadeBooking"
    assert isinstance(caught.value, NotSent)  # whoever catches it knows nothing went out
    # it stopped where the request would have gone: after the rate limiter (its permit)
    assert permit.spent and len(limiter.shares) == 1
    with pytest.raises(Shadowed):
        c.confirm("tok", 12)
    # no method books a cancel; the plumbing refuses it all the same
    with pytest.raises(Shadowed):
        c._call("CancelMadeBooking", token="tok", body={"BookingID": 13}, idempotent=False)
    assert session.sent == []
    assert {"RescheduleMadeBooking", "ConfirmMadeBooking", "CancelMadeBooking"} == SHADOW_REFUSED


def test_a_permit_is_spent_once_and_only_by_its_endpoint() -> None:
    c, session, limiter = client(shadow=False)
    permit = c.reserve("MadeBookings", member=True)
    with pytest.raises(ValueError):
        c.reschedule("tok", 11, permit=permit)
    assert session.sent == [] and limiter.shares == [0.8]  # no second turn of the limiter


def test_reads_go_out_in_shadow_mode_and_posts_go_out_without_it() -> None:
    c, session, _ = client(shadow=True)
    c.user_summary(7)
    assert len(session.sent) == 1 and session.sent[0].endswith("/v1/newsfeed/getUserSummary")
    real, real_session, _ = client(shadow=False)
    with pytest.raises(Exception) as caught:  # the `{}`-ish answer is no booking: unreadable
        real.reschedule("tok", 11)
    assert not isinstance(caught.value, Shadowed)
    assert real_session.sent and real_session.sent[0].endswith("/RescheduleMadeBooking")


def test_shadowed_is_terminal() -> None:
    assert State.SHADOWED in TERMINAL_STATES and State.SHADOWED.terminal


def test_percentile_nearest_rank() -> None:
    assert _percentile([], 0.5) is None
    values = [float(v) for v in range(1, 101)]
    assert _percentile(values, 0.5) == 50.0
    assert _percentile(values, 0.99) == 99.0
    assert _percentile([0.1234], 0.99) == 0.123


def test_rebooks_page_shows_what_shadow_mode_would_have_done() -> None:
    figures = {
        "enabled": True,
        "would_book": 3,
        "online_to_post_seconds": {"p50": 0.4, "p99": 1.2, "count": 3},
        "gave_up": 1,
    }
    html = pages._shadow_figures("", figures)
    assert 'id="shadow-would-book"' in html and ">3</a>" in html
    assert '<span id="shadow-p50">0.4</span>' in html and '<span id="shadow-p99">1.2</span>' in html
    assert 'id="shadow-gave-up"' in html and ">1</a>" in html
    off = {**figures, "enabled": False, "would_book": 0}
    assert pages._shadow_figures("", off) == ""  # real mode, nothing left from a shadow run
    assert "shadow mode: nothing is booked" in pages.SHADOW_BANNER
