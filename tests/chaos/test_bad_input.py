"""Bad input: whatever a producer sends to `rebook.request` ends either as a record (the model
accepts it) or as exactly one dead letter with a readable one-line reason; the worker keeps
serving; `rebook deadletter` lists them and `rebook deadletter replay ID` re-submits a fixed one.

Hypothesis generates the payloads (wrong types, missing and extra fields, huge and unicode values,
secrets, positional arguments, kwargs that are not an object); `RebookEvent.parse` is the oracle.
`REBOOK_CHAOS_SCALE=full` runs many more examples.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.integration.conftest import ROOT, System, raw_celery_message, running_system, wait_for
from worker.core.errors import InvalidEvent
from worker.core.models import MAX_EVENT_BYTES, RebookEvent
from worker.core.states import State
from worker.core.store import rebook_id_for

pytestmark = pytest.mark.integration

FULL = os.environ.get("REBOOK_CHAOS_SCALE", "").lower() == "full"
EXAMPLES = 300 if FULL else 40

FIELDS = ("event_id", "booking_id", "user_id", "performer_id", "max_wait_seconds")
INT_FIELDS = ("booking_id", "performer_id", "max_wait_seconds")
STR_FIELDS = ("event_id", "user_id")
SECRET_KEYS = ("access_token", "refresh_token", "password", "client_secret", "api_key")
PLACEHOLDER = "<event-id>"
"""Replaced by a fresh event id at send time, so re-runs of one example never collide."""
PERFORMERS = (424_242_001, 424_242_002, 424_242_003)
"""Valid generated events wait on these (always offline): few performers, little polling."""
QUEUE = "rebook.events"


# --- strategies ---------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=6,
)
weird_text = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\x1b[31mred",
            "a\nb",
            "tab\there",
            "\u202eevil",
            "zero\u200bwidth",
            "😀🎉👩‍👩‍👧",
            "ünïcödé-✓",
            "x" * 65,
            "y" * 129,
            "ok:id.1-_",
        ]
    ),
)


def wrong_values(field: str) -> st.SearchStrategy[Any]:
    """Wrong types and out-of-range values for one field."""
    if field in INT_FIELDS:
        limit = 7 * 86400 if field == "max_wait_seconds" else 2**63 - 1
        return st.one_of(
            st.integers(min_value=1, max_value=10**9).map(str),  # "12"
            st.floats(),
            st.booleans(),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
            st.integers(max_value=0),
            st.integers(min_value=limit + 1),
            weird_text,
        )
    return st.one_of(
        st.integers(),
        st.floats(),
        st.booleans(),
        st.none(),
        st.lists(st.text(max_size=4), max_size=2),
        st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
        weird_text,
    )


extra_names = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ["args", "kwargs", "id", "task", "retries", "eventId", "Booking_ID", "__class__"]
    ),
).filter(lambda name: name not in FIELDS and name != "self")


@dataclass
class Case:
    form: str  # "kwargs" | "positional" | "non_dict"
    args: list[Any]
    kwargs: Any
    secrets: dict[str, str]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    kwargs: dict[str, Any] = {
        "event_id": PLACEHOLDER,
        "booking_id": draw(st.integers(min_value=10**9, max_value=2**62)),
        "user_id": draw(st.sampled_from(["m-chaos", "member 7", "ünïcode-✓"])),
        "performer_id": draw(st.sampled_from(PERFORMERS)),
    }
    secrets: dict[str, str] = {}
    kinds = draw(
        st.lists(
            st.sampled_from(["wrong", "missing", "extra", "secret", "huge", "unicode", "none"]),
            min_size=1,
            max_size=3,
        )
    )
    for kind in kinds:
        if kind == "wrong":
            field = draw(st.sampled_from(FIELDS))
            kwargs[field] = draw(wrong_values(field))
        elif kind == "missing":
            for field in draw(st.lists(st.sampled_from(FIELDS), min_size=1, unique=True)):
                kwargs.pop(field, None)
        elif kind == "extra":
            kwargs.update(draw(st.dictionaries(extra_names, json_values, min_size=1, max_size=4)))
        elif kind == "secret":
            key = draw(st.sampled_from(SECRET_KEYS))
            secrets[key] = "SECRET-" + uuid.UUID(int=draw(st.integers(0, 2**128 - 1))).hex
            kwargs[key] = secrets[key]
        elif kind == "huge":
            field = draw(st.sampled_from((*FIELDS, "note")))
            unit = draw(st.text(st.characters(codec="utf-8"), min_size=1, max_size=3))
            size = draw(st.sampled_from([40_000, 70_000, 150_000]))
            kwargs[field] = unit * (size // len(unit) + 1)
        elif kind == "unicode":
            kwargs[draw(st.sampled_from((*STR_FIELDS, "comment")))] = draw(weird_text)
        elif kind == "none":
            kwargs[draw(st.sampled_from(FIELDS))] = None
    form = draw(st.sampled_from(["kwargs"] * 6 + ["positional", "non_dict"]))
    if form == "positional":
        args = draw(
            st.one_of(st.lists(json_values, min_size=1, max_size=3), st.just([dict(kwargs)]))
        )
        return Case("positional", args, draw(st.sampled_from([kwargs, {}])), secrets)
    if form == "non_dict":  # what only a hand-made message can carry: Celery's client refuses
        args = draw(
            st.one_of(
                st.just([]),
                st.none(),
                st.integers(),
                st.text(min_size=1, max_size=5),
                st.dictionaries(st.text(max_size=4), scalars, min_size=1, max_size=2),
            )
        )
        if args == [] or draw(st.booleans()):
            kwargs = draw(
                st.one_of(
                    st.lists(json_values, max_size=3),
                    st.just([dict(kwargs)]),
                    st.text(max_size=20),
                    st.integers(),
                    st.floats(),
                    st.booleans(),
                    st.none(),
                )
            )
        return Case("non_dict", args, kwargs, secrets)
    return Case("kwargs", [], kwargs, secrets)


# --- helpers ------------------------------------------------------------------------------------


def fill(value: Any, event_id: str) -> Any:
    """`value` with every PLACEHOLDER replaced by `event_id`."""
    if value == PLACEHOLDER:
        return event_id
    if isinstance(value, dict):
        return {k: fill(v, event_id) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, event_id) for v in value]
    return value


def oracle(args: Any, kwargs: Any) -> tuple[RebookEvent | None, str]:
    """What the model says of the message as the worker decodes it (JSON round trip)."""
    args, kwargs = json.loads(json.dumps([args, kwargs]))
    try:
        event, _ = RebookEvent.parse(args, kwargs)
    except InvalidEvent as exc:
        return None, exc.reason
    return event, ""


FRAME_HEADROOM = 8 * 1024
"""What kombu's envelope and Celery's headers (`argsrepr`/`kwargsrepr` at most 1 KB each) add to
the base64 of a body: the whole raw item is between that base64 and it plus this."""
FRAME_REASON = re.compile(
    rf"^item is (\d+) bytes; the limit is {MAX_EVENT_BYTES} \(the whole item\)$"
)


def whole_item(args: Any, kwargs: Any) -> str:
    """Where the raw item stands against the 64 KB limit of a whole item (frames): "over",
    "under", or "either" when the envelope's few KB decide."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = len(json.dumps([args, kwargs, embed]).encode())
    encoded = 4 * ((body + 2) // 3)
    if encoded > MAX_EVENT_BYTES:
        return "over"
    return "under" if encoded + FRAME_HEADROOM <= MAX_EVENT_BYTES else "either"


def refused_fields(kwargs: dict[str, Any]) -> set[str]:
    """The fields pydantic itself refuses (the first five errors, as the reason lists them)."""
    try:
        RebookEvent.model_validate(json.loads(json.dumps(kwargs)))
    except ValidationError as exc:
        return {str(err["loc"][0]) for err in exc.errors()[:5] if err.get("loc")}
    return set()


def dead_letters_of(system: System, task_id: str, count: int = 200) -> list[dict[str, str]]:
    return [d for d in system.store.outcomes.deadletters(count) if d.get("task_id") == task_id]


def wait_dead_letter(system: System, task_id: str, what: str = "") -> dict[str, str]:
    rows = wait_for(lambda: dead_letters_of(system, task_id), 10, f"dead letter of {what}")
    return rows[0]


def all_dead_letters(system: System) -> list[dict[str, str]]:
    rows = system.store.r.xrange(system.store.keys.deadletter)
    return [{"id": sid, **fields} for sid, fields in rows]


def assert_readable(reason: str) -> None:
    assert reason, "empty reason"
    assert "\n" not in reason and "\r" not in reason, f"reason is not one line: {reason!r}"
    assert reason.isprintable(), f"reason has control characters: {reason!r}"
    assert len(reason) <= 1000, f"reason is {len(reason)} characters"
    assert "Traceback" not in reason, reason


def push_raw(system: System, args: Any, kwargs: Any, **extra: Any) -> str:
    """Pushes a message as a non-Python producer would; returns its task id."""
    envelope = json.loads(raw_celery_message("rebook.request", {}, QUEUE, **extra))
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps([args, kwargs, embed]).encode()  # args as given, even if not a list
    envelope["body"] = base64.b64encode(body).decode()
    message = json.dumps(envelope)
    plain = redis.Redis.from_url(system.settings.redis_url)
    try:
        plain.lpush(system.settings.broker_key_prefix + QUEUE, message)
    finally:
        plain.close()
    return str(json.loads(message)["headers"]["id"])


def cli(system: System, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.operations.cli", *argv],
        env=system.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_still_serving(system: System) -> None:
    assert system.worker.popen is not None and system.worker.popen.poll() is None, "worker died"
    rid, _ = system.rebook(system.member(), system.performer(online=True))
    system.wait_state(rid, State.WATCHING)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_system(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(redis_url, tmp_path_factory.mktemp("chaos-bad-input")) as sysm:
        for performer in PERFORMERS:
            sysm.sandbox.set_online(performer, False)
        yield sysm


# --- tests --------------------------------------------------------------------------------------


def test_generated_payloads_end_as_a_record_or_one_readable_dead_letter(
    bad_system: System,
) -> None:
    system = bad_system
    sent: list[tuple[str, bool | None]] = []  # (task id, valid; None: either)
    valid_event_ids: set[str] = set()

    @hsettings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(case=cases())
    def check(case: Case) -> None:
        event_id = f"bad-{uuid.uuid4().hex}"
        args, kwargs = fill(case.args, event_id), fill(case.kwargs, event_id)
        # non_dict: args that are not a list or kwargs that are not an object never reach the
        # model (Celery's own `fun(*args, **kwargs)` refuses them), so the model is no oracle
        event, expected = (None, "") if case.form == "non_dict" else oracle(args, kwargs)
        frame = whole_item(args, kwargs)
        if case.form == "non_dict":
            task_id = push_raw(system, args, kwargs)
        else:
            task_id = system.producer.send_task(
                "rebook.request", args=args, kwargs=kwargs, queue=QUEUE
            ).id
        if frame == "either":  # a record or a dead letter (at most one), as the envelope decides
            sent.append((task_id, None))
            return
        sent.append((task_id, event is not None and frame == "under"))
        if frame == "over":  # refused as a frame before any model sees it
            letter = wait_dead_letter(system, task_id, f"{case.form} over 64 KB as a whole")
            assert_readable(letter["reason"])
            found = FRAME_REASON.match(letter["reason"])
            assert found and int(found.group(1)) > MAX_EVENT_BYTES, letter["reason"]
            assert letter["task"] == "rebook.request", letter
            for key, secret in case.secrets.items():
                assert secret not in letter["payload"] + letter.get("raw", ""), key
            return
        if event is not None:
            valid_event_ids.add(event.event_id)
            rid = rebook_id_for(event.event_id)
            rec = wait_for(lambda: system.get(rid), 10, f"a record for valid {kwargs!r:.300}")
            if event.event_id == event_id:  # fresh id: this very event made the record
                assert (rec.booking_id, rec.user_id) == (event.booking_id, event.user_id)
            return
        letter = wait_dead_letter(system, task_id, f"{case.form} {args!r:.200} {kwargs!r:.300}")
        reason = letter["reason"]
        assert_readable(reason)
        assert letter["task"] == "rebook.request", letter
        if case.form == "non_dict":
            assert any(word in reason for word in ("mapping", "positional", "iterable")), reason
        else:
            assert reason == expected, (reason, expected)
            if args:
                assert "positional" in reason
            elif "bytes" in expected:
                assert str(MAX_EVENT_BYTES) in reason
            else:  # every field the model refused is named
                for field in refused_fields(kwargs):
                    assert field in reason, (field, reason)
        payload = letter["payload"]
        for key, secret in case.secrets.items():
            assert secret not in payload, f"{key} leaked into the dead letter"
        claimed = kwargs.get("event_id") if isinstance(kwargs, dict) else None
        if isinstance(claimed, str) and claimed not in valid_event_ids:
            assert system.get(rebook_id_for(claimed)) is None, "a record for an invalid event"

    check()
    assert len(sent) >= EXAMPLES // 2, f"only {len(sent)} examples ran"
    assert_still_serving(system)
    counts = Counter(d.get("task_id") for d in all_dead_letters(system))
    doubled = [t for t, valid in sent if valid is False and counts[t] != 1]
    doubled += [t for t, valid in sent if valid is None and counts[t] > 1]
    assert not doubled, f"{len(doubled)} invalid messages without exactly one dead letter"
    wrongly = [t for t, valid in sent if valid is True and counts[t]]
    assert not wrongly, f"{len(wrongly)} valid events were dead-lettered"


def test_secrets_in_an_invalid_event_are_redacted(bad_system: System) -> None:
    system = bad_system
    secret = f"SECRET-{uuid.uuid4().hex}"
    result = system.producer.send_task(
        "rebook.request",
        kwargs={
            "event_id": f"sec-{uuid.uuid4().hex}",
            "booking_id": "12",
            "user_id": "m-1",
            "access_token": secret,
            "password": secret,
            "nested": {"refresh_token": secret, "Authorization": f"Bearer {secret}"},
        },
        queue=QUEUE,
    )
    letter = wait_dead_letter(system, result.id, "an event carrying secrets")
    assert secret not in letter["payload"]
    kwargs = json.loads(letter["payload"])["kwargs"]
    assert kwargs["access_token"] == "[redacted]"
    assert kwargs["password"] == "[redacted]"
    assert kwargs["nested"] == {"refresh_token": "[redacted]", "Authorization": "[redacted]"}
    assert "booking_id" in letter["reason"]


def test_a_message_in_another_serializer_is_dead_lettered(bad_system: System) -> None:
    system = bad_system
    event_id = f"pickle-{uuid.uuid4().hex}"
    result = system.producer.send_task(
        "rebook.request",
        kwargs={"event_id": event_id, "booking_id": 5, "user_id": "m-1", "performer_id": 7},
        queue=QUEUE,
        serializer="pickle",
    )
    letter = wait_dead_letter(system, result.id, "a pickled message")
    assert_readable(letter["reason"])
    assert "pickle" in letter["reason"], letter["reason"]
    assert system.get(rebook_id_for(event_id)) is None
    yaml_id = push_raw(
        system, [], {"event_id": "y"}, content_type="application/x-yaml"
    )  # declared yaml: not accepted either
    letter = wait_dead_letter(system, yaml_id, "a message declared as yaml")
    assert_readable(letter["reason"])
    assert_still_serving(system)


def test_secrets_in_a_message_in_another_serializer_are_not_dead_lettered(
    bad_system: System,
) -> None:
    system = bad_system
    secret = f"SECRET{uuid.uuid4().hex}"
    result = system.producer.send_task(
        "rebook.request",
        kwargs={"event_id": f"pk-{uuid.uuid4().hex}", "booking_id": 5, "access_token": secret},
        queue=QUEUE,
        serializer="pickle",
    )
    letter = wait_dead_letter(system, result.id, "a pickled message with a token")
    assert secret not in letter["payload"]


def test_an_extra_field_named_self_is_ignored(bad_system: System) -> None:
    system = bad_system
    user = system.member()
    performer = system.performer(online=True)
    booking = system.sandbox.add_booking(user, performer)
    event_id = f"self-{uuid.uuid4().hex}"
    kwargs = {"event_id": event_id, "booking_id": booking, "user_id": user, "self": "x"}
    assert oracle([], {**kwargs, "performer_id": performer})[0] is not None
    result = system.producer.send_task(
        "rebook.request", kwargs={**kwargs, "performer_id": performer}, queue=QUEUE
    )
    rid = rebook_id_for(event_id)
    wait_for(
        lambda: system.get(rid) or dead_letters_of(system, result.id), 20, "record or dead letter"
    )
    assert not dead_letters_of(system, result.id), dead_letters_of(system, result.id)[0]["reason"]
    system.wait_state(rid, State.WATCHING, timeout=10)


def test_cli_lists_dead_letters_and_replays_a_fixed_one(bad_system: System) -> None:
    system = bad_system
    user = system.member()
    performer = system.performer(online=True)
    booking = system.sandbox.add_booking(user, performer)
    event_id = f"replay-{uuid.uuid4().hex}"
    result = system.producer.send_task(
        "rebook.request",
        kwargs={
            "event_id": event_id,
            "booking_id": "12",
            "user_id": user,
            "performer_id": performer,
        },
        queue=QUEUE,
    )
    other = system.producer.send_task(
        "rebook.request", kwargs={"event_id": "no spaces allowed"}, queue=QUEUE
    )
    letter = wait_dead_letter(system, result.id, "booking_id '12'")
    wait_dead_letter(system, other.id, "a bad event id")
    assert "booking_id" in letter["reason"]
    assert system.get(rebook_id_for(event_id)) is None

    listed = cli(system, "deadletter", "--json", "--count", "1000")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert isinstance(rows, list)
    by_task = {row.get("task_id"): row for row in rows}
    assert {result.id, other.id} <= set(by_task)
    assert by_task[result.id]["id"] == letter["id"]
    assert by_task[result.id]["reason"] == letter["reason"]
    assert {"id", "reason", "payload", "at"} <= set(by_task[other.id])
    assert len(rows) == system.store.sweep.stats()["deadletter"]

    table = cli(system, "deadletter")
    assert table.returncode == 0, table.stderr
    assert letter["id"] in table.stdout

    # still invalid: exit 2, one line on stderr, nothing sent
    before = system.store.sweep.stats()["deadletter"]
    bad = cli(system, "deadletter", "replay", letter["id"], "--set", "booking_id=-3")
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "booking_id" in bad.stderr and "Traceback" not in bad.stderr
    unfixed = cli(system, "deadletter", "replay", letter["id"])
    assert unfixed.returncode == 2, (unfixed.stdout, unfixed.stderr)
    assert len(unfixed.stderr.strip().splitlines()) == 1, unfixed.stderr
    missing = cli(system, "deadletter", "replay", "1-1")
    assert missing.returncode == 1, (missing.stdout, missing.stderr)
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr

    fixed = cli(system, "deadletter", "replay", letter["id"], "--set", f"booking_id={booking}")
    assert fixed.returncode == 0, fixed.stderr
    assert event_id in fixed.stdout
    rid = rebook_id_for(event_id)
    rec = system.wait_state(rid, State.WATCHING)
    assert rec.booking_id == booking and rec.new_booking_id is not None
    assert system.sandbox.stats()["new_bookings"][str(booking)] == 1
    assert system.store.sweep.stats()["deadletter"] == before, "a replay was dead-lettered again"

    # replaying the same dead letter again is a no-op: same event id, same record
    history = system.history_states(rid)
    again = cli(system, "deadletter", "replay", letter["id"], "--set", f"booking_id={booking}")
    assert again.returncode == 0, again.stderr
    assert_still_serving(system)  # an event sent after the replay has gone all the way
    assert system.history_states(rid) == history
    assert system.sandbox.stats()["new_bookings"][str(booking)] == 1
    assert system.store.sweep.stats()["deadletter"] == before

    # several at once: each replayed or refused with why, then the counts
    other_letter = next(r for r in rows if r.get("task_id") == other.id)
    many = cli(
        system, "deadletter", "replay", letter["id"], other_letter["id"], "1-1",
        "--set", f"booking_id={booking}",
    )  # fmt: skip
    assert many.returncode == 1, (many.stdout, many.stderr)
    assert many.stdout.splitlines()[-1] == "replayed 1, refused 2, failed 0", many.stdout
    assert f"refused {other_letter['id']}: still invalid" in many.stderr
    assert "refused 1-1: no dead letter '1-1'" in many.stderr and "Traceback" not in many.stderr
    assert_still_serving(system)  # so the replayed event has been through the worker
    assert system.history_states(rid) == history  # the same event again: the same rebook
    assert system.sandbox.stats()["new_bookings"][str(booking)] == 1
