"""`rebook doctor`: each thing a running deployment needs, checked one by one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from worker.core.errors import ConfigError, UpstreamError
from worker.core.settings import Settings, load_settings, mask_url

MEMORY_WARN_RATIO = 0.8
"""`doctor` fails the Redis check above this share of maxmemory: a margin to act before OOM."""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    warn: bool = False
    """Works, but not as configured (a short budget): printed WARN, does not fail doctor."""


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as exc:  # a check must report, never crash the report
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def run_checks() -> Iterator[Check]:
    try:
        settings = load_settings()
    except ConfigError as exc:
        yield Check("settings", False, str(exc), "fix the variable named above")
        return
    yield Check("settings", True, "valid")
    if settings.shadow:  # a WARN: shadow mode left on by mistake books nobody
        yield Check(
            "mode",
            True,
            "shadow mode (REBOOK_SHADOW=true): nothing is booked",
            'unset REBOOK_SHADOW to book for real (README "Shadow mode")',
            warn=True,
        )
    yield _guard("redis", lambda: _redis(settings))
    yield _guard("broker", lambda: _broker(settings))
    yield _guard("upstream", lambda: _upstream(settings))
    yield _guard("oauth client", lambda: _oauth_client(settings))
    yield _guard("paused", lambda: _paused(settings))
    yield _guard("token key", lambda: _token_key(settings))
    yield _guard("beat", lambda: _beat(settings))
    yield _guard("workers", lambda: _workers(settings))
    yield _guard("presence", lambda: _presence(settings))
    yield _guard("time zone", lambda: _zone(settings))
    yield _guard("performer field", lambda: _performer_field(settings))


def _redis(settings: Settings) -> Check:
    from worker.core.store.client import RedisError, Server

    url = mask_url(settings.redis_url)
    server = Server.probe(settings, timeout=2)
    try:
        server.ping()
    except RedisError as exc:
        return Check(
            "redis", False, f"cannot reach {url}: {exc}", "start Redis or fix REBOOK_REDIS_URL"
        )
    persistence = server.info("persistence")
    memory = server.info("memory")
    problems = []
    if not int(persistence.get("aof_enabled", 0)):
        problems.append("AOF is off")
    policy = memory.get("maxmemory_policy", "")
    if policy != "noeviction":
        problems.append(f"maxmemory-policy is {policy}")
    if problems:
        return Check(
            "redis",
            False,
            f"{url}: " + ", ".join(problems),
            "use ops/redis.conf (appendonly yes, maxmemory-policy noeviction)",
        )
    used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    if limit and used > MEMORY_WARN_RATIO * limit:
        # at maxmemory every write is refused (OOM): events wait in the broker until it clears
        return Check(
            "redis",
            False,
            f"{url}: memory {used / limit:.0%} of maxmemory ({used} of {limit} bytes)",
            "raise maxmemory, or find the key family that grows (ops/RUNBOOK.md, Redis keys)",
        )
    share = f", memory {used / limit:.0%} of maxmemory" if limit else ", no maxmemory set"
    return Check("redis", True, f"{url}: AOF on, noeviction{share}")


def _broker(settings: Settings) -> Check:
    from kombu import Connection

    url = mask_url(settings.broker)
    with Connection(settings.broker, connect_timeout=2, ssl=settings.broker_ssl_options()) as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return Check("broker", True, f"{url} reachable")


def _upstream(settings: Settings) -> Check:
    from worker.adapters.upstream import UpstreamClient
    from worker.core.errors import AuthExpired, DeploymentFault, Rejected

    client = UpstreamClient(
        settings.api_base_url,
        settings.api_key.get_secret_value(),
        api_key_header=settings.api_key_header,
        api_key_in=settings.api_key_in,
        timeout=min(5.0, settings.http_timeout_seconds),
        zone=settings.zone,
        shadow=settings.shadow,
    )
    try:
        client.user_summary(1)
    except DeploymentFault as exc:
        return Check(
            "upstream",
            False,
            f"{settings.api_base_url}: API key refused ({exc.message})",
            "check REBOOK_API_KEY and REBOOK_API_KEY_HEADER",
        )
    except (AuthExpired, Rejected) as exc:
        if exc.status in (401, 403):
            return Check(
                "upstream",
                False,
                f"{settings.api_base_url}: API key refused ({exc})",
                "check REBOOK_API_KEY and REBOOK_API_KEY_HEADER",
            )
        return Check("upstream", True, f"{settings.api_base_url}: reachable, key accepted")
    except UpstreamError as exc:
        return Check(
            "upstream",
            False,
            f"{settings.api_base_url}: {exc}",
            "check REBOOK_API_BASE_URL and the network",
        )
    finally:
        client.close()
    return Check("upstream", True, f"{settings.api_base_url}: reachable, API key accepted")


def _oauth_client(settings: Settings) -> Check:
    """The OAuth client, checked without spending a member's token (a made-up refresh token:
    `invalid_grant` says the client passed; README "Wrong setting")."""
    from worker.adapters.auth import check_client
    from worker.adapters.upstream import UpstreamClient

    client = UpstreamClient(
        settings.api_base_url,
        settings.api_key.get_secret_value(),
        timeout=min(5.0, settings.http_timeout_seconds),
    )
    try:
        verdict, detail = check_client(
            client,
            settings.token_url,
            client_id=settings.oauth_client_id,
            client_secret=settings.oauth_client_secret.get_secret_value(),
        )
    finally:
        client.close()
    if verdict == "refused":
        return Check(
            "oauth client",
            False,
            f"{settings.token_url} refuses the client ({detail})",
            "check REBOOK_OAUTH_CLIENT_ID and REBOOK_OAUTH_CLIENT_SECRET; then restart the "
            "workers and beat",
        )
    if verdict == "unknown":
        return Check(
            "oauth client",
            True,
            f"{settings.token_url}: not judged ({detail})",
            "the check assumes the endpoint answers an OAuth error code; see README",
            warn=True,
        )
    return Check("oauth client", True, f"{settings.token_url}: {detail}")


def _paused(settings: Settings) -> Check:
    """The circuit of deployment faults (worker/core/circuit.py): FAIL while calls pause."""
    from worker.core.store import Store

    paused = Store.from_settings(settings).circuit.public()
    if paused is None:
        return Check("paused", True, "no deployment fault in force")
    return Check(
        "paused",
        False,
        f"calls paused since {paused['since']}: {paused['setting']} refused "
        f"({paused['reason']}{': ' + paused['message'] if paused['message'] else ''})",
        f"fix {paused['setting']}, then restart the workers and beat (README, Wrong setting)",
    )


def _token_key(settings: Settings) -> Check:
    """The key is set and opens the tokens stored with it (a sample of them)."""
    if not settings.token_key_list:
        return Check(
            "token key",
            False,
            "REBOOK_TOKEN_KEY is not set (nor REBOOK_TOKEN_KEYS)",
            "make one with `rebook tokens keygen`",
        )
    from worker.adapters.auth import TokenStore
    from worker.core.store import Store
    from worker.core.store.tokens import TokenRecords

    store = Store.from_settings(settings)
    tokens = TokenStore(TokenRecords.of(store, settings.key_prefix), settings.token_key_list)
    sampled = tokens.some_members(20)
    for user_id in sampled:
        try:
            tokens.load(user_id)
        except ConfigError:
            return Check(
                "token key",
                False,
                "stored tokens do not decrypt with REBOOK_TOKEN_KEY(S)",
                "restore the previous key, or re-encrypt with ops/rotate-token-key.py",
            )
    return Check("token key", True, f"set; opens {len(sampled)} sampled stored token(s)")


def _beat(settings: Settings) -> Check:
    from worker.core.store import Store

    store = Store.from_settings(settings)
    last = store.sweep.last_sweep()
    limit = max(10.0, settings.sweep_interval_seconds * 5)
    if last is None:
        return Check(
            "beat",
            False,
            "no sweep has ever run",
            "start `celery -A worker beat` (a worker runs the sweeps it sends)",
        )
    age = time.time() - last
    if age > limit:
        return Check(
            "beat",
            False,
            f"last sweep {age:.0f}s ago (limit {limit:.0f}s)",
            "start `celery -A worker beat` and a worker",
        )
    return Check("beat", True, f"last sweep {age:.1f}s ago")


def _workers(settings: Settings) -> Check:
    from worker.celeryapp.app import create_app

    app = create_app(settings)
    replies = app.control.ping(timeout=1.5)
    if not replies:
        return Check(
            "workers",
            False,
            "no worker answered",
            "start `celery -A worker worker -Q rebook.events,rebook.work -E`",
        )
    names = sorted(name for reply in replies for name in reply)
    return Check("workers", True, f"{len(names)} answering: {', '.join(names)[:120]}")


def _presence(settings: Settings) -> Check:
    """Warns when presence needs more calls than its share of the rate gives (a WARN, not a
    FAIL: every performer is still polled in turn, only less often)."""
    from worker.core.capacity import shortfall
    from worker.core.store import Store

    store = Store.from_settings(settings)
    figures = store.sweep.stats()["presence"]
    last = store.presence.last_presence_unreadable()
    if last is not None:
        return Check(
            "presence",
            True,
            f"{figures['unreadable']} unreadable answer(s); the last, {last['at']}, performer "
            f"{last['performer_id']}: {last['why']}: {last['answer']}",
            "getUserSummary did not say whether the performer is online: such checks are "
            "retried, not read as offline; check the API's answer (README)",
            warn=True,
        )
    line = shortfall(figures)
    if line is not None:
        return Check(
            "presence",
            True,
            line,
            "raise REBOOK_UPSTREAM_RATE_PER_SECOND (if the upstream allows) or "
            "REBOOK_PRESENCE_INTERVAL_SECONDS; `rebook capacity` plans it",
            warn=True,
        )
    budget = figures["budget_calls_per_second"]
    achieved = figures["achieved_interval_seconds"]
    return Check(
        "presence",
        True,
        f"{figures['performers']} performers need {figures['needed_calls_per_second']:.2f} "
        f"calls/s of a budget of {'unlimited' if budget is None else f'{budget:.2f}'}/s"
        + ("" if achieved is None else f"; each polled every {achieved:.1f}s"),
    )


def _zone(settings: Settings) -> Check:
    """REBOOK_API_TIMEZONE against the last booking the upstream made: its CreateDate (site
    time) beside the Date header (GMT) of that answer (worker.core.zonecheck)."""
    from worker.core.store import Store

    seen = Store.from_settings(settings).sweep.zone_observation()
    if seen is None:
        return Check(
            "time zone",
            True,
            f"{settings.api_timezone}: not compared yet (no booking made since the check began)",
        )
    if seen.get("configured") != settings.api_timezone:
        return Check(
            "time zone",
            True,
            f"{settings.api_timezone}: last compared under {seen.get('configured')} "
            f"({seen.get('at')}), when the upstream appeared to use {seen.get('appears')}",
        )
    if not seen.get("agrees"):
        return Check(
            "time zone",
            False,
            f"REBOOK_API_TIMEZONE={settings.api_timezone} (UTC"
            f"{seen['configured_offset_minutes']:+d} min) but the upstream appears to use "
            f"{seen['appears']} (UTC{seen['observed_offset_minutes']:+d} min) at {seen['at']}",
            f"set REBOOK_API_TIMEZONE={seen['appears']} if that is the site's zone",
        )
    return Check(
        "time zone", True, f"{settings.api_timezone} agrees with the upstream ({seen['at']})"
    )


def performer_field_line(figures: dict[str, Any]) -> str:
    """One line on which key of a booking's `Performer` is confirmed as the performer's user id
    (`stats --json`'s `performer_field`), and on what evidence."""
    counts = (
        f"{figures['answers']} answer(s) over {figures['performers']} performer(s), "
        f"{figures['contradictions']} contradiction(s) seen"
    )
    if figures.get("field"):
        return f"Performer.{figures['field']} names the performer ({counts})"
    lead = figures.get("candidate")
    lead_text = f"leading: Performer.{lead}, " if lead else "no key agrees yet; "
    return f"unconfirmed ({lead_text}{counts})"


def _performer_field(settings: Settings) -> Check:
    """Which field of a booking names its performer, as learned (worker/core/flow/performer.py).
    Not a FAIL while unconfirmed: rebook works, only fails safe (member-wide gate,
    `unverified_shape` parks) until answers confirm one."""
    from worker.core.store import Store

    figures = Store.from_settings(settings).performer_field.performer_field_stats()
    line = performer_field_line(figures)
    if figures.get("field"):
        return Check("performer field", True, line)
    last = figures.get("last_contradiction")
    hint = (
        "learned from the first bookings made (3 answers over 2 performers); until then "
        "events without performer_id park `unverified_shape` and an unsettled POST blocks the "
        "member's others"
    )
    if last:
        hint += (
            f"; last contradiction: Performer.{last.get('key')} was {last.get('got')!r}, "
            f"not {last.get('expected')} (booking {last.get('booking_id')})"
        )
    return Check("performer field", True, line, hint, warn=True)
