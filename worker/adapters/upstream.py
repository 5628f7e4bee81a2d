"""HTTP client of the AdultWork.com developer API. Knows requests, never Celery.

Every call goes through `_call`, which applies the API key, the shared rate limit (`reserve`,
which a caller may take first, to act between the rate limiter's wait and the request), the
deadline (`send_within`) and the one status→exception mapping (`error_for_response`). Whether
a failure may be retried depends on the call: `idempotent=False` (RescheduleMadeBooking) turns
anything that may have reached the upstream into :class:`Ambiguous`, so that nobody re-sends it
blindly.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.client import HTTPException
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

import requests
from pydantic import BaseModel, ValidationError
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError

from worker import __version__
from worker.adapters.deadline import WATCHDOG, DeadlineAdapter
from worker.adapters.presence import PresenceSource, UserSummaryPresence
from worker.core.budget import RATE_SHARE, RESTAMP_AFTER, Permit, Slot
from worker.core.circuit import API, MEMBER, TOKEN, Circuit
from worker.core.errors import (
    Ambiguous,
    AuthExpired,
    Challenged,
    DeploymentFault,
    NotFound,
    RateLimited,
    Rejected,
    Shadowed,
    TokenRefused,
    Transient,
    UpstreamError,
)
from worker.core.models import (
    DEFAULT_ZONE,
    MadeBookingsPage,
    Unreadable,
    UserSummary,
    WebcamBooking,
    site_date,
)

log = logging.getLogger(__name__)

#: One table of paths: the upstream's docs are inconsistent in case (`Webcam`, `newsfeed`).
PATHS: dict[str, tuple[str, str]] = {
    "RescheduleMadeBooking": ("POST", "/v1/Webcam/RescheduleMadeBooking"),
    "MadeBookingDetails": ("GET", "/v1/Webcam/MadeBookingDetails"),
    "MadeBookings": ("GET", "/v1/Webcam/MadeBookings"),
    "ConfirmMadeBooking": ("POST", "/v1/Webcam/ConfirmMadeBooking"),
    "CancelMadeBooking": ("POST", "/v1/Webcam/CancelMadeBooking"),
    "getUserSummary": ("GET", "/v1/newsfeed/getUserSummary"),
    # whose token it is, and what it may do: checked before a pair is stored (`tokens set`)
    "verifyCredentials": ("GET", "/v1/account/verifyCredentials"),
    "GetPermissions": ("GET", "/v1/Account/GetPermissions"),
}
#: What shadow mode never sends (README "Shadow mode"): the calls that spend or move credits.
SHADOW_REFUSED = frozenset({"RescheduleMadeBooking", "ConfirmMadeBooking", "CancelMadeBooking"})
MAX_PAGE = 100
USER_AGENT = f"rebook/{__version__}"
M = TypeVar("M", bound=BaseModel)


class Limiter(Protocol):
    def acquire(self, share: float = 1.0) -> Slot | None: ...


MadeHook = Callable[[datetime | None, str | None], None]
"""Called after every booking RescheduleMadeBooking made, with its CreateDate (as parsed) and the
answer's HTTP `Date` header: the zone check (`worker.core.zonecheck.ZoneWatch`). Errors are
dropped."""

CallHook = Callable[[str, str], None]
"""Called after every upstream call with (endpoint, outcome) — outcome "ok" or the error class."""


def environment_session(url: str) -> requests.Session:
    """A session that reads proxy and CA-bundle settings from the environment once, here.

    By default requests re-reads them (and ~/.netrc) on every request: a sixth of the CPU of a
    reschedule step. Proxies are those for `url` (`HTTPS_PROXY`, `NO_PROXY`, ...); the token
    endpoint uses the same.
    """
    session = requests.Session()
    session.proxies.update(requests.utils.get_environ_proxies(url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False
    # connections the total deadline can end (worker.adapters.deadline)
    session.mount("http://", DeadlineAdapter())
    session.mount("https://", DeadlineAdapter())
    return session


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _message(response: requests.Response) -> str:
    """The upstream's own reason, short and single-line (bodies are untrusted)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    text = ""
    if isinstance(body, dict):
        for key in ("Message", "message", "error_description", "error", "Error"):
            if isinstance(body.get(key), str):
                text = body[key]
                break
    if not text:
        text = response.text or response.reason or ""
    text = " ".join(text.split())
    return text[:200] or f"HTTP {response.status_code}"


_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


#: Statuses a CDN or proxy answers in front of the API (challenge, rate limit, overload).
_FRONT_STATUSES = frozenset({403, 429, 503})


def is_api_answer(response: requests.Response) -> bool:
    """False for what the API never writes: HTML (a CDN bot challenge, a proxy's error page), or
    with a 403/429/503 a body that is neither JSON nor the API's own XML (the API may answer
    plain text for other errors). An empty body says nothing either way."""
    ctype = response.headers.get("Content-Type", "").lower()
    if "html" in ctype:
        return False
    body = response.content.strip()
    if not body or "xml" in ctype or body.startswith(b"<?xml"):
        return True
    if body[:1] == b"<":
        return False  # markup without a content type: a page, not the API's JSON
    if response.status_code not in _FRONT_STATUSES:
        return True
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


#: Titles of CDN bot-challenge pages (Cloudflare's interstitial and its block page).
_CHALLENGE_TITLES = frozenset({b"just a moment...", b"attention required! | cloudflare"})


def is_cdn_challenge(response: requests.Response) -> bool:
    """A CDN's bot challenge that stopped the request in front of the API (nothing forwarded).

    Strict on purpose: a gateway's 503 to a POST is ambiguous unless it is this. A 403 or 503
    that the CDN marks as a challenge (Cloudflare's `cf-mitigated: challenge`), or a markup
    page whose title is a known challenge page's."""
    if response.status_code not in (403, 503):
        return False
    if response.headers.get("cf-mitigated", "").strip().lower() == "challenge":
        return True
    body = response.content.lstrip()
    if body[:1] != b"<":
        return False
    found = _TITLE.search(body[:4096])
    return found is not None and b" ".join(found.group(1).split()).lower() in _CHALLENGE_TITLES


def _page_message(response: requests.Response) -> str:
    found = _TITLE.search(response.content[:4096])
    title = " ".join(found.group(1).decode("utf-8", "replace").split())[:80] if found else ""
    ctype = response.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
    return f"not the API's answer ({ctype}{': ' + title if title else ''})"


def error_for_response(
    endpoint: str, response: requests.Response, *, idempotent: bool
) -> UpstreamError:
    """The one status→exception mapping: the class carries the retry decision.

    A page that is not the API's answer (HTML, or not JSON at all) is never a refusal: it is
    :class:`Challenged` (transient, "not sent") — except, for a non-idempotent POST, any 5xx
    (a gateway's 502/503/504 included, HTML or not): a gateway may answer after it forwarded
    the request, so that is :class:`Ambiguous` (reconciled, never re-sent blindly). The one
    5xx exception is a CDN challenge page (`is_cdn_challenge`), which never reached the API.
    A 403/429 page is a CDN or WAF in front of the API: nothing was sent on.
    """
    status = response.status_code
    kw: dict[str, Any] = {"endpoint": endpoint, "status": status}
    if not is_api_answer(response):
        msg = _page_message(response)
        if not idempotent and status >= 500 and not is_cdn_challenge(response):
            return Ambiguous(msg, **kw)
        return Challenged(
            msg, retry_after=parse_retry_after(response.headers.get("Retry-After")), **kw
        )
    msg = _message(response)
    if status == 401:
        return AuthExpired(msg, **kw)
    if status == 429:
        return RateLimited(
            msg, retry_after=parse_retry_after(response.headers.get("Retry-After")), **kw
        )
    if status == 404:
        return NotFound(msg, **kw)
    if status in (408,) or status >= 500:
        if idempotent:
            return Transient(
                msg, retry_after=parse_retry_after(response.headers.get("Retry-After")), **kw
            )
        return Ambiguous(msg, **kw)
    return Rejected(msg, **kw)


_API_KEY_TEXT = re.compile(r"api[\s_-]?key", re.IGNORECASE)
_SCOPE_TEXT = re.compile(r"scope|account_webcam_bookings", re.IGNORECASE)
CLIENT_REFUSALS = frozenset({"invalid_client", "unauthorized_client"})
"""OAuth2 (RFC 6749 §5.2) refusals of the site's client: never the member's fault."""


def deployment_fault(
    endpoint: str, response: requests.Response, *, member: bool
) -> DeploymentFault | None:
    """The site's setting refused, read from the API's own answer: a 401 on a call that carries
    no member token, or one whose text names the API key ("Invalid or missing API key."); a
    403 whose text names a scope (`account_webcam_bookings`). None otherwise (a 401 that does
    not say is the access token's, until a key-only call says otherwise)."""
    if not is_api_answer(response):
        return None
    status = response.status_code
    if status == 401:
        text = _message(response)
        if not member or _API_KEY_TEXT.search(text) or _API_KEY_TEXT.search(response.text[:500]):
            return DeploymentFault("api_key", f"{endpoint} HTTP 401: {text}")
    if status == 403:
        text = _message(response)
        if _SCOPE_TEXT.search(text) or _SCOPE_TEXT.search(response.text[:500]):
            return DeploymentFault("scope", f"{endpoint} HTTP 403: {text}")
    return None


def oauth_error(response: requests.Response) -> str:
    """The `error` code of an OAuth answer ("" if none)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    code = body.get("error") if isinstance(body, dict) else None
    return code.strip().lower() if isinstance(code, str) else ""


def error_for_exception(
    endpoint: str, exc: BaseException, *, idempotent: bool, deadline: float | None = None
) -> UpstreamError:
    """Transport failures: only a connection that never opened proves nothing was sent.
    `deadline`: the request was cut at its total deadline (worker.adapters.deadline)."""
    not_sent = isinstance(exc, requests.ConnectTimeout) or (
        isinstance(exc, requests.ConnectionError) and _refused(exc)
    )
    kind = type(exc).__name__
    if deadline is not None and not not_sent:
        kind = f"no complete answer within the {deadline:g} s deadline"
        if idempotent:
            return Transient(kind, endpoint=endpoint)
        return Ambiguous(f"{kind} (the request was sent)", endpoint=endpoint)
    if not_sent or idempotent:
        return Transient(f"{kind} (not answered)", endpoint=endpoint)
    return Ambiguous(f"{kind} after the request was sent", endpoint=endpoint)


def _refused(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (NewConnectionError, ConnectionRefusedError)):
            return True
        reason = getattr(cur, "reason", None)
        if isinstance(reason, BaseException) and id(reason) not in seen:
            cur = reason
            continue
        nxt = cur.args[0] if cur.args and isinstance(cur.args[0], BaseException) else None
        cur = nxt or cur.__cause__ or cur.__context__
    return False


def send_within(
    session: requests.Session,
    endpoint: str,
    method: str,
    url: str,
    *,
    timeout: float,
    deadline: float,
    idempotent: bool,
    **kwargs: Any,
) -> requests.Response:
    """The request and its whole body within `deadline` (connect, headers, body), or
    the failure classified: past the deadline, a sent POST is Ambiguous, a read Transient.
    The socket timeouts still bound each step; the deadline bounds their sum, however
    slowly the server writes (worker.adapters.deadline)."""
    with WATCHDOG.guard(deadline) as guard:
        try:
            response = session.request(
                method,
                url,
                timeout=(min(timeout, deadline), timeout),
                allow_redirects=False,
                stream=True,  # the body is read here, under the guard
                **kwargs,
            )
            try:
                _ = response.content
            except BaseException:
                response.close()
                raise
        except (requests.RequestException, Urllib3Error, HTTPException, OSError) as exc:
            if guard.connected and not guard.sent:  # failed while connecting: not sent
                cause = (
                    f"no connection within the {deadline:g} s deadline"
                    if guard.cut
                    else f"{type(exc).__name__} while connecting"
                )
                raise Transient(f"{cause} (not sent)", endpoint=endpoint) from None
            raise error_for_exception(
                endpoint, exc, idempotent=idempotent, deadline=deadline if guard.cut else None
            ) from None
        if guard.cut:  # a body read "to the end" may have ended at the shutdown
            response.close()
            raise error_for_exception(
                endpoint, TimeoutError(), idempotent=idempotent, deadline=deadline
            )
    return response


def parse_model(
    model: type[M], payload: Any, endpoint: str, zone: ZoneInfo, *, idempotent: bool = True
) -> M:
    """The typed answer, or a readable error naming the field: Transient for a read,
    Ambiguous for a POST (it was answered, so it may have taken effect)."""
    cls = Transient if idempotent else Ambiguous
    try:
        return model.model_validate(payload, context={"tz": zone})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", "")).removeprefix("Value error, ")
        raise cls(f"unexpected body shape ({where}: {msg})", endpoint=endpoint) from None
    except Exception as exc:  # whatever a body can make a validator raise: never a crash
        raise cls(f"unreadable body ({type(exc).__name__})", endpoint=endpoint) from None


def json_body(endpoint: str, response: requests.Response, *, idempotent: bool) -> Any:
    """A 2xx answer's JSON, or why not: a page in front of the API is Challenged on a read; a
    POST answered 2xx may have been acted on, whatever its body (Ambiguous)."""
    try:
        return response.json()
    except ValueError:
        if idempotent and not is_api_answer(response):
            raise Challenged(
                _page_message(response), endpoint=endpoint, status=response.status_code
            ) from None
        cls = Transient if idempotent else Ambiguous
        raise cls(
            "unreadable body (not JSON)", endpoint=endpoint, status=response.status_code
        ) from None


def scrubbed(exc: UpstreamError, key: str) -> UpstreamError:
    """A proxy's error page may echo the request URL, and with it `?apiKey=`."""
    if key in exc.message:
        exc.message = scrub_key(exc.message, key)
        exc.args = (exc.message,)
    return exc


def scrub_key(text: str, key: str) -> str:
    """`text` without the API key (a proxy's error page may echo the URL, with `?apiKey=`)."""
    # (a key of a few characters would mangle every message: real keys are long)
    return text.replace(key, "***") if len(key) >= 6 else text


def token_body(response: requests.Response, circuit: Circuit | None) -> dict[str, Any]:
    """The token endpoint's answer: the new pair, or the refusal it says (a refused client is a
    deployment fault and opens the circuit; another refusal is the member's refresh token)."""
    if response.status_code in (400, 401) and is_api_answer(response):
        # only the OAuth server's own answer is a refusal (-> reauth): an HTML page in
        # front of it (a CDN challenge) is Challenged, tried again later. A refused
        # client is the site's setting, not the member's refresh token: no reauth.
        code = oauth_error(response)
        if code in CLIENT_REFUSALS:
            fault = DeploymentFault("oauth_client", code)
            if circuit is not None:
                circuit.open(fault)
            raise fault
        if circuit is not None and code:  # the client accepted, the grant judged
            circuit.passed(TOKEN)
        refused = TokenRefused(_message(response), endpoint="token", status=response.status_code)
        refused.code = code
        raise refused
    if not 200 <= response.status_code < 300:
        raise error_for_response("token", response, idempotent=True)
    try:
        body = response.json()
    except ValueError:
        if not is_api_answer(response):
            raise Challenged(
                _page_message(response), endpoint="token", status=response.status_code
            ) from None
        raise Transient("unreadable token body", endpoint="token") from None
    if not isinstance(body, dict):
        raise Transient("token body is not an object", endpoint="token")
    if circuit is not None:
        circuit.passed(TOKEN)
    return body


def permissions_granted(payload: Any) -> dict[str, str]:
    """GetPermissions' answer: permission name (lower-cased) -> status (lower-cased)."""
    items = payload.get("Permissions") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        raise Transient("answer has no Permissions list", endpoint="GetPermissions")
    found: dict[str, str] = {}
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("Permission"), str):
            found[item["Permission"].lower()] = str(item.get("Status", "")).lower()
    return found


class UpstreamClient:
    """Typed calls of the upstream. Member calls take the access token as an argument only."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        api_key_header: str = "apiKey",
        api_key_in: str = "header",
        timeout: float = 10.0,
        deadline: float | None = None,
        zone: ZoneInfo = DEFAULT_ZONE,
        limiter: Limiter | None = None,
        on_call: CallHook | None = None,
        session: requests.Session | None = None,
        list_names: tuple[str, ...] = ("WebcamBookings",),
        on_made: MadeHook | None = None,
        shadow: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._api_key_header = api_key_header
        if api_key_in not in ("header", "query"):
            raise ValueError("api_key_in must be 'header' or 'query'")
        self._key_in_query = api_key_in == "query"
        self.timeout = timeout
        self.deadline = 2 * timeout if deadline is None else deadline
        """Seconds of one request, connect, headers and body (REBOOK_HTTP_DEADLINE_SECONDS)."""
        self.zone = zone
        self._limiter = limiter
        self._on_call = on_call
        self._session = session or environment_session(self.base_url)
        self.list_names = list_names
        self._on_made = on_made
        self.shadow = shadow
        """REBOOK_SHADOW: `SHADOW_REFUSED` calls stop where they would go out (`Shadowed`)."""
        self.presence: PresenceSource = UserSummaryPresence(self)
        self.circuit: Circuit | None = None
        """Deployment faults (worker/core/circuit.py): set by the runtime; None (tests, doctor):
        faults are raised, nothing pauses."""

    def close(self) -> None:
        self._session.close()

    def _call(
        self,
        endpoint: str,
        *,
        token: str | None = None,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        idempotent: bool = True,
        permit: Permit | None = None,
        share: float | None = None,
        headers_out: dict[str, str] | None = None,
    ) -> Any:
        """`permit`: from `reserve`, when the caller had something to do between the rate
        limiter and the request; else one is taken here (`share`). `headers_out`, if given,
        receives the headers of a 2xx answer."""
        method, path = PATHS[endpoint]
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self._key_in_query:
            # the documented form (`?apiKey=`); mask_url hides it wherever a URL is shown
            params = {**(params or {}), "apiKey": self._api_key}
        else:
            headers[self._api_key_header] = self._api_key
        if token is not None:
            headers["Authorization"] = f"bearer {token}"  # lower-case, as the docs' samples
        reasons = MEMBER if token is not None else API
        if permit is None:
            permit = self.reserve(endpoint, member=token is not None, share=share)
        permit.spend(endpoint)
        if self.shadow and endpoint in SHADOW_REFUSED:
            # the last point before the request: whatever path got here, nothing goes out
            raise Shadowed("shadow mode: not sent", endpoint=endpoint)
        self._restamp(permit)
        started = time.monotonic()
        outcome = "ok"
        try:
            response = send_within(
                self._session,
                endpoint,
                method,
                self.base_url + path,
                timeout=self.timeout,
                deadline=self.deadline,
                idempotent=idempotent,
                params=params,
                json=body,
                headers=headers,
            )
            if not 200 <= response.status_code < 300:
                fault = deployment_fault(endpoint, response, member=token is not None)
                if fault is not None:
                    fault.message = scrub_key(fault.message, self._api_key)
                    if self.circuit is not None:
                        self.circuit.open(fault)
                    raise fault
                raise scrubbed(
                    error_for_response(endpoint, response, idempotent=idempotent), self._api_key
                )
            if self.circuit is not None:
                self.circuit.passed(reasons)
            if headers_out is not None:
                headers_out.update(response.headers)
            return json_body(endpoint, response, idempotent=idempotent)
        except (UpstreamError, DeploymentFault) as exc:
            outcome = type(exc).__name__
            raise
        finally:
            elapsed = (time.monotonic() - started) * 1000
            log.debug("upstream %s %s %.0fms", endpoint, outcome, elapsed)
            if self._on_call is not None:
                self._on_call(endpoint, outcome)

    @staticmethod
    def _restamp(permit: Permit) -> None:
        """A call that goes out later than the limiter let it by (a POST's mark came between)
        is logged at its sending time: the rate the upstream counts is of sends. A failure to
        log it again is logged, not raised: the call itself is sound, its entry only early."""
        slot = permit.slot
        if slot is None or time.monotonic() - slot.taken <= RESTAMP_AFTER:
            return
        try:
            slot.move()
        except Exception as exc:  # a Redis error: the limiter's next take will see it too
            log.warning(
                "rate log: a %s call's entry not moved to its sending time: %s: %s",
                permit.endpoint,
                type(exc).__name__,
                exc,
            )

    def reserve(self, endpoint: str, *, member: bool, share: float | None = None) -> Permit:
        """The phase before a call: the circuit's gate (a wrong key or scope: not sent, bar one
        probe), then the shared rate limiter, which may wait or raise `Throttled`. `member`: the
        call carries a member's token. Spent by the call it was taken for (`permit=`)."""
        if self.circuit is not None:
            self.circuit.gate(MEMBER if member else API)
        slot = None
        if self._limiter is not None:
            slot = self._limiter.acquire(RATE_SHARE.get(endpoint, 1.0) if share is None else share)
        return Permit(endpoint, slot=slot)

    def api_key_refused(self, probe_user_id: int = 1) -> bool:
        """One call that needs no member token (getUserSummary, the API key only): True when
        it is refused with a 401 too, so a member call's bare 401 was the key's, not the access
        token's. Anything else (an answer, a 404, a failure) is False: refresh as usual. Opens
        the circuit itself when the key is refused (through `_call`)."""
        try:
            self._call("getUserSummary", params={"UserID": probe_user_id})
        except DeploymentFault as exc:
            return exc.reason == "api_key"
        except Rejected:  # the API's own refusal of the call (a 404 for an unknown user): the
            if self.circuit is not None:  # key itself passed
                self.circuit.passed(API)
            return False
        except UpstreamError:
            return False
        return False

    def reschedule(
        self, token: str, booking_id: int, *, permit: Permit | None = None
    ) -> WebcamBooking:
        """Creates a new booking. NOT idempotent: failures that may have committed are Ambiguous.
        The answer's `Date` header goes to `on_made` with the booking's CreateDate. `permit`:
        see `reserve` (the flow writes its mark between the two)."""
        headers: dict[str, str] = {}
        payload = self._call(
            "RescheduleMadeBooking",
            token=token,
            body={"BookingID": booking_id},
            idempotent=False,
            permit=permit,
            headers_out=headers,
        )
        booking = parse_model(
            WebcamBooking, payload, "RescheduleMadeBooking", self.zone, idempotent=False
        )
        if self._on_made is not None:
            try:
                self._on_made(booking.create_date, headers.get("Date"))
            except Exception as exc:  # the booking is made: nothing may lose its answer
                log.warning("on_made hook failed: %s", type(exc).__name__)
        return booking

    def booking_details(self, token: str, booking_id: int) -> WebcamBooking:
        payload = self._call("MadeBookingDetails", token=token, params={"BookingID": booking_id})
        return parse_model(WebcamBooking, payload, "MadeBookingDetails", self.zone)

    def made_bookings(
        self,
        token: str,
        *,
        start: datetime | None = None,
        page: int = 1,
        per_page: int = MAX_PAGE,
        newest_first: bool = True,
        permit: Permit | None = None,
        share: float | None = None,
    ) -> MadeBookingsPage:
        params: dict[str, Any] = {
            "OrderBy": "createddate-desc" if newest_first else "createddate-asc",
            "BookingsPerPage": per_page,
            "PageNumber": page,
        }
        if start is not None:
            # documented as `yyyy-mm-dd` (a date, on CreateDate): the page is a superset of what
            # was created since `start`; iter_made_bookings filters by the exact time
            params["StartDate"] = site_date(start, self.zone)
        payload = self._call("MadeBookings", token=token, params=params, permit=permit, share=share)
        try:
            return MadeBookingsPage.parse(payload, list_names=self.list_names, zone=self.zone)
        except Unreadable as exc:
            log.warning("MadeBookings answer unreadable: %s", exc)
            raise Transient(f"unreadable answer: {exc}", endpoint="MadeBookings") from None

    def iter_made_bookings(
        self, token: str, *, start: datetime | None = None, max_pages: int = 10
    ) -> Iterator[WebcamBooking]:
        """Newest first, across pages, at most `max_pages` calls; with `start`, only bookings
        created at or after it (or whose CreateDate is unset), as the day-early StartDate lets
        older ones through, and no page is read past the first booking older than `start`."""
        for number in range(1, max_pages + 1):
            page = self.made_bookings(token, start=start, page=number)
            for booking in page.bookings:
                created = booking.create_date
                if start is not None and created is not None and created < start:
                    return  # newest first: everything after this one is older still
                yield booking
            if number >= page.page_count or not page.bookings:
                return

    def list_made_bookings(
        self,
        token: str,
        *,
        start: datetime | None = None,
        max_pages: int = 10,
        share: float | None = None,
    ) -> tuple[list[WebcamBooking], bool]:
        """Every booking since `start` and whether the list was read to its end: a list cut
        at `max_pages` proves nothing about what lies beyond it. `share`: the rate share, if
        not that of a read (the read before a POST has the POST's)."""
        found: list[WebcamBooking] = []
        for number in range(1, max_pages + 1):
            page = self.made_bookings(token, start=start, page=number, share=share)
            found.extend(page.bookings)
            if number >= page.page_count or not page.bookings:
                return found, True
        return found, False

    def confirm(self, token: str, booking_id: int) -> WebcamBooking:
        payload = self._call(
            "ConfirmMadeBooking", token=token, body={"BookingID": booking_id}, idempotent=False
        )
        return parse_model(
            WebcamBooking, payload, "ConfirmMadeBooking", self.zone, idempotent=False
        )

    def user_summary(self, user_id: int) -> UserSummary:
        """Presence of a performer (API key only, no member token)."""
        payload = self._call("getUserSummary", params={"UserID": user_id})
        return parse_model(UserSummary, UserSummary.unwrap(payload), "getUserSummary", self.zone)

    def verify_credentials(self, token: str, *, share: float | None = None) -> dict[str, Any]:
        """The member who owns `token` (`{"UserID", ...}`): no scope needed."""
        payload = self._call("verifyCredentials", token=token, share=share)
        if not isinstance(payload, dict):
            raise Transient("answer is not an object", endpoint="verifyCredentials")
        return payload

    def permissions(self, token: str, *, share: float | None = None) -> dict[str, str]:
        """The scopes granted to `token`: permission name (lower-cased) -> status (lower-cased).
        An answer without a readable `Permissions` list is unreadable, never "no scope"."""
        payload = self._call("GetPermissions", token=token, share=share)
        return permissions_granted(payload)

    def is_online(self, performer_id: int) -> bool:
        """Through `self.presence` (worker.adapters.presence): getUserSummary unless another source
        was put there."""
        return self.presence.is_online(performer_id)

    def refresh_token(
        self,
        token_url: str,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        share: float | None = None,
    ) -> dict[str, Any]:
        """`grant_type=refresh_token`; the upstream rotates the refresh token on every success.
        `share`: of the rate window (the keep-alive's refreshes can wait, a step's cannot)."""
        if self.circuit is not None:
            self.circuit.gate(TOKEN)  # a refused client: no refresh goes out, bar one probe
        if self._limiter is not None:
            self._limiter.acquire(RATE_SHARE["token"] if share is None else share)
        outcome = "ok"
        try:
            response = send_within(
                self._session,
                "token",
                "POST",
                token_url,
                timeout=self.timeout,
                deadline=self.deadline,
                idempotent=True,
                data={
                    "grant_type": "refresh_token",
                    "client_id": client_id,
                    "client_secret": client_secret,
                    "refresh_token": refresh_token,
                },
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            )
            return token_body(response, self.circuit)
        except (UpstreamError, DeploymentFault) as exc:
            outcome = type(exc).__name__
            raise
        finally:
            if self._on_call is not None:
                self._on_call("token", outcome)
