"""Hostile frames: items on `rebook.events` that are not runnable events, pushed raw (Redis LPUSH,
AMQP basic_publish) beside valid events, against a real worker on each broker.

Each must end as exactly one dead letter with a readable reason and its raw item (scrubbed,
at most 4 KB), be gone from the broker (no redelivery, nothing left in `unacked`), and leave the
worker serving: before the fix one body that is not base64 stopped the worker (exit 1), and
headers nested 20,000 deep (RecursionError in the check) stopped it and vanished. Tasks other than
`rebook.request` pushed to `rebook.events` (a producer's account may push there) are dead-lettered,
never run; so are items over 64 KB as a whole (a 1 MB `argsrepr` header) and an unknown
content-encoding. Afterwards the worker still answers `control.ping`, and the reply (consumed
with no_ack) is not left in `unacked`.
"""

from __future__ import annotations

import base64
import json
import socket
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from kombu import Connection, Producer

from tests.integration.conftest import System, raw_celery_message, running_system, wait_for
from worker.celeryapp.frames import RAW_LIMIT
from worker.core.states import State
from worker.core.store import rebook_id_for

pytestmark = pytest.mark.integration

QUEUE = "rebook.events"
SECRET = "SECRET-frames-7d1c0b"
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass
class Bad:
    """One refused item: `marker` is unique text inside it, `words` what its reason says."""

    name: str
    marker: str
    words: tuple[str, ...]
    task_id: str = ""


@pytest.fixture(scope="module", params=["redis", "amqp"])
def frames_system(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    with running_system(
        redis_url, tmp_path_factory.mktemp(f"frames-{request.param}"), broker=request.param
    ) as sysm:
        yield sysm


def _envelope(marker: str, body: bytes, **changes: Any) -> dict[str, Any]:
    """kombu's Redis envelope around `body`, with the marker in its headers and its tag."""
    env = json.loads(raw_celery_message("rebook.request", {}, QUEUE))
    env["headers"]["marker"] = marker
    env["properties"]["delivery_tag"] = f"tag-{marker}"
    env["body"] = base64.b64encode(body).decode()
    env.update(changes)
    return env


def _event(system: System, marker: str) -> bytes:
    booking = system.sandbox.add_booking(system.member(), system.performer())
    return json.dumps(
        [[], {"event_id": f"ev-{marker}", "booking_id": booking, "user_id": "m-x"}, EMBED]
    ).encode()


INTERNAL = ("rebook.sweep", "rebook.reschedule", "rebook.keep_tokens", "celery.accumulate")
"""Tasks a producer may not run by pushing them to `rebook.events`."""


def _nested(env: dict[str, Any], depth: int) -> str:
    """The envelope with a header nested `depth` lists deep (json.dumps cannot write it)."""
    env["headers"]["nest"] = "@@NEST@@"
    return json.dumps(env).replace('"@@NEST@@"', "[" * depth + "]" * depth)


def _bomb() -> bytes:
    return zlib.compress(b"[[], {}, {}]" + b" " * 10_000_000)


def push_redis_items(system: System) -> tuple[list[Bad], list[str]]:
    """Every kind of broken Redis list item; returns what each must become."""
    m = {
        k: f"mk-{k}-{uuid.uuid4().hex[:8]}"
        for k in (
            "binary",
            "text",
            "array",
            "noprops",
            "notag",
            "headers",
            "padding",
            "encoding",
            "pickle",
            "bomb",
            "shape",
            "args",
            "taskname",
            "noid",
            "deep",
            "deeper",
            "argsrepr",
            "cenc",
            *INTERNAL,
        )
    }
    ids: dict[str, str] = {}
    items: list[tuple[str, bytes | str, tuple[str, ...]]] = [
        ("binary", b"\xff\xfe" + m["binary"].encode() + b"\x00", ("JSON",)),
        ("text", f"not json {m['text']} token={SECRET}", ("JSON",)),
        ("array", json.dumps([m["array"], 1, 2]), ("envelope",)),
    ]
    noprops = _envelope(m["noprops"], b"[[], {}, {}]")
    del noprops["properties"]
    notag = _envelope(m["notag"], b"[[], {}, {}]")
    del notag["properties"]["delivery_tag"]
    headers = _envelope(m["headers"], b"[[], {}, {}]")
    headers["headers"] = [m["headers"]]
    padding = _envelope(m["padding"], b"")
    padding["body"] = "abc"  # 'Incorrect padding': this one stopped the worker
    encoding = _envelope(m["encoding"], b"[[], {}, {}]")
    encoding["properties"]["body_encoding"] = "rot13"
    pickle = _envelope(
        m["pickle"],
        b"\x80\x04" + SECRET.encode(),
        **{"content-type": "application/x-python-serialize", "content-encoding": "binary"},
    )
    bomb = _envelope(m["bomb"], _bomb())
    bomb["headers"]["compression"] = "application/x-gzip"
    shape = _envelope(m["shape"], json.dumps({"access_token": SECRET}).encode())
    args = _envelope(m["args"], json.dumps([{"a": 1}, {}, EMBED]).encode())
    taskname = _envelope(m["taskname"], b"[[], {}, {}]")
    taskname["headers"]["task"] = ["rebook.request"]
    noid = _envelope(m["noid"], b"[[], {}, {}]")
    del noid["headers"]["id"]
    argsrepr = _envelope(m["argsrepr"], b"[[], {}, {}]")
    argsrepr["headers"]["argsrepr"] = "x" * 1_000_000
    cenc = _envelope(m["cenc"], b"[[], {}, {}]", **{"content-encoding": "x-rot47"})
    items += [
        ("noprops", json.dumps(noprops), ("properties",)),
        ("notag", json.dumps(notag), ("delivery_tag",)),
        ("headers", json.dumps(headers), ("headers",)),
        ("padding", json.dumps(padding), ("base64", "padding")),
        ("encoding", json.dumps(encoding), ("rot13",)),
        ("pickle", json.dumps(pickle), ("python-serialize",)),
        ("bomb", json.dumps(bomb), ("inflates past",)),
        ("shape", json.dumps(shape), ("[args, kwargs, embed]",)),
        ("args", json.dumps(args), ("positional",)),
        ("taskname", json.dumps(taskname), ("task",)),
        ("noid", json.dumps(noid), ("id",)),
        # RecursionError in the check (within 64 KB), and a 200 KB one the size limit refuses
        ("deep", _nested(_envelope(m["deep"], b"[[], {}, {}]"), 20_000), ("nested",)),
        ("deeper", _nested(_envelope(m["deeper"], b"[[], {}, {}]"), 100_000), ("limit",)),
        ("argsrepr", json.dumps(argsrepr), ("limit",)),
        ("cenc", json.dumps(cenc), ("content encoding",)),
    ]
    for task in INTERNAL:
        internal = _envelope(m[task], b"[[], {}, {}]")
        internal["headers"]["task"] = task
        # the routing key a producer writes into the envelope is not where the item came from
        internal["properties"]["delivery_info"]["routing_key"] = "rebook.work"
        items.append((task, json.dumps(internal), ("only rebook.request",)))
        ids[task] = internal["headers"]["id"]
    plain = redis.Redis.from_url(system.settings.redis_url)
    key = system.settings.broker_key_prefix + QUEUE
    valid_ids = []
    try:
        for name, item, _ in items:
            plain.lpush(key, item)
            marker = f"ok-{name}-{uuid.uuid4().hex[:6]}"
            valid = _envelope(marker, _event(system, marker))
            valid_ids.append(f"ev-{marker}")
            plain.lpush(key, json.dumps(valid))
    finally:
        plain.close()
    return [Bad(name, m[name], words, ids.get(name, "")) for name, _, words in items], valid_ids


def push_amqp_items(system: System) -> tuple[list[Bad], list[str]]:
    """Every kind of broken AMQP message (the frame itself is always well-formed there)."""
    sent: list[Bad] = []
    valid_ids = []

    def headers(marker: str, **extra: Any) -> dict[str, Any]:
        return {"task": "rebook.request", "id": str(uuid.uuid4()), "marker": marker, **extra}

    cases: list[tuple[str, bytes, str, dict[str, Any], tuple[str, ...]]] = []
    for name, body, ctype, extra, words in (
        ("text", f"not json token={SECRET}".encode(), "application/json", {}, ("JSON",)),
        ("binary", b"\xff\xfe\x00", "application/json", {}, ("JSON",)),
        (
            "pickle",
            b"\x80\x04" + SECRET.encode(),
            "application/x-python-serialize",
            {},
            ("python-serialize",),
        ),
        (
            "bomb",
            _bomb(),
            "application/json",
            {"compression": "application/x-gzip"},
            ("inflates past",),
        ),
        (
            "brokenzip",
            b"not zlib",
            "application/json",
            {"compression": "application/x-gzip"},
            ("zlib", "error"),
        ),
        (
            "shape",
            json.dumps({"access_token": SECRET}).encode(),
            "application/json",
            {},
            ("[args, kwargs, embed]",),
        ),
        ("kwargs", json.dumps([[], [1], EMBED]).encode(), "application/json", {}, ("mapping",)),
        ("taskname", b"[[], {}, {}]", "application/json", {"task": 7}, ("task",)),
        ("noheaders", b"[[], {}, {}]", "application/json", None, ("Celery task message",)),
        (
            "argsrepr",
            b"[[], {}, {}]",
            "application/json",
            {"argsrepr": "x" * 100_000},  # RabbitMQ's frame_max (128 KB) bounds headers
            ("limit",),
        ),
        (
            "cenc",
            b"[[], {}, {}]",
            "application/json",
            {"_encoding": "x-rot47"},
            ("content encoding",),
        ),
        *[
            (task, b"[[], {}, {}]", "application/json", {"task": task}, ("only rebook.request",))
            for task in INTERNAL
        ],
    ):
        marker = f"mk-{name}-{uuid.uuid4().hex[:8]}"
        hdrs = {"marker": marker} if extra is None else headers(marker, **extra)
        cases.append((name, body, ctype, hdrs, words))
    encodings = {name: hdrs.pop("_encoding", "utf-8") for name, _, _, hdrs, _ in cases}
    with Connection(system.settings.broker) as conn:
        producer = Producer(conn.default_channel)
        for name, body, ctype, hdrs, words in cases:
            producer.publish(
                body,
                exchange="",
                routing_key=QUEUE,
                content_type=ctype,
                content_encoding=encodings[name],
                headers=hdrs,
                serializer=None,
            )
            marker = f"ok-{name}-{uuid.uuid4().hex[:6]}"
            producer.publish(
                _event(system, marker),
                exchange="",
                routing_key=QUEUE,
                content_type="application/json",
                content_encoding="utf-8",
                headers=headers(marker),
                serializer=None,
            )
            sent.append(Bad(name, hdrs["marker"], words, str(hdrs.get("id", ""))))
            valid_ids.append(f"ev-{marker}")
    return sent, valid_ids


def letters_with(system: System, marker: str) -> list[dict[str, str]]:
    return [d for d in system.store.outcomes.deadletters(2000) if marker in d.get("raw", "")]


def test_every_kind_of_bad_item_is_dead_lettered_once_and_the_worker_goes_on(
    frames_system: System,
) -> None:
    system = frames_system
    amqp = system.settings.broker.startswith("amqp")
    bad, valid_ids = push_amqp_items(system) if amqp else push_redis_items(system)

    for item in bad:
        rows = wait_for(lambda item=item: letters_with(system, item.marker), 20, item.name)
        reason = rows[0]["reason"]
        assert reason.isprintable() and "\n" not in reason, (item.name, reason)
        assert any(w.lower() in reason.lower() for w in item.words), (item.name, reason)
        assert len(rows[0]["raw"].encode()) <= RAW_LIMIT + 64, item.name
        assert SECRET not in rows[0]["raw"] + rows[0]["payload"], (item.name, rows[0])

    # the valid events beside them were all recorded
    for event_id in valid_ids:
        wait_for(lambda e=event_id: system.get(rebook_id_for(e)), 20, f"record of {event_id}")
    # and a new event still runs all the way: the worker never stopped
    rid, _ = system.rebook(system.member(), system.performer(online=True))
    system.wait_state(rid, State.WATCHING)
    assert system.worker.popen is not None and system.worker.popen.poll() is None
    assert "Unrecoverable error" not in system.worker.text()
    # internal tasks pushed to rebook.events were never received as tasks, let alone run
    internal = [b for b in bad if b.name in INTERNAL]
    assert len(internal) == len(INTERNAL) and all(b.task_id for b in internal)
    ran = [b.name for b in internal if f"[{b.task_id}]" in system.worker.text()]
    assert not ran, ran
    # the worker answers control commands; the reply, consumed with no_ack, is not left unacked
    node = f"{system.node}@{socket.gethostname()}"
    replies = system.producer.control.ping(destination=[node], timeout=10)
    assert replies and node in replies[0], replies

    # gone from the broker: nothing queued, nothing unacked, and no second dead letter
    if not amqp:
        plain = redis.Redis.from_url(system.settings.redis_url, decode_responses=True)
        try:
            prefix = system.settings.broker_key_prefix
            assert plain.llen(prefix + QUEUE) == 0
            unacked = " ".join(plain.hkeys(prefix + "unacked"))
            assert not [b.name for b in bad if b.marker in unacked], unacked
            records = " ".join(plain.hvals(prefix + "unacked"))
            assert "reply.celery.pidbox" not in records, records[:500]
        finally:
            plain.close()
    else:
        with Connection(system.settings.broker) as conn:
            _, count, _ = conn.default_channel.queue_declare(QUEUE, passive=True)
            assert count == 0
    doubled = [b.name for b in bad if len(letters_with(system, b.marker)) != 1]
    assert not doubled, doubled


def test_a_small_compressed_event_runs(frames_system: System) -> None:
    """Compression is bounded, not banned: an event that inflates within 64 KB is recorded."""
    system = frames_system
    event_id = f"zip-{uuid.uuid4().hex}"
    booking = system.sandbox.add_booking(system.member(), system.performer())
    system.producer.send_task(
        "rebook.request",
        kwargs={"event_id": event_id, "booking_id": booking, "user_id": "m-zip"},
        queue=QUEUE,
        compression="zlib",
    )
    rec = wait_for(lambda: system.get(rebook_id_for(event_id)), 20, "the compressed event")
    assert rec.booking_id == booking
