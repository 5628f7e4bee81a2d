"""Redis as a broker without the lost-message window (celery/kombu#305).

kombu's Redis transport takes a message with `BRPOP` and records it as unacknowledged in a second
command. A message popped in the moment Redis stops (a restart, a failover, an OOM kill) is in
neither the queue nor `unacked`: gone, although its producer was told it was queued. For rebook
that would be a lost rebook event.

This transport takes messages with one Lua script that pops *and* records (`lua/broker_pop.lua`),
so a reply lost on the way back leaves the message in `unacked`, from where kombu restores it
after the visibility timeout. Waiting for work cannot use a script (scripts cannot block), so an
idle consumer waits with `BLMOVE q q RIGHT RIGHT` on its first queue: it blocks until that list
has a message (or `idle_poll_seconds` pass) and takes nothing from it. That queue
(`rebook.events` for the Procfile's worker) wakes the consumer at once; others are seen within
`idle_poll_seconds` (a transport option; 0.005 s right after work, doubling to 0.1 s while
idle). Everything else (acks, restores, priorities, fair rotation, the visibility timeout) is
kombu's own. An item kombu cannot build a message from (not JSON, no `properties`, a body that
is not base64, ...) would stop the consumer: it is dead-lettered and dropped instead (`frames`).

Where kombu's own behaviour is the contract, this one keeps it: a queue consumed with `no_ack`
(pidbox replies to `control.ping`, Flower's inspect) is not recorded in `unacked` (nobody would
ack it; it came back after the visibility timeout), and a broker account that may not run `INFO`
(which the BLMOVE probe needs) or `BLMOVE` gets the plain timed wait instead of an error Celery
treats as unrecoverable (one log line says so). kombu's own `t/unit/transport/test_redis.py`
runs against these classes (`tests/peers/test_kombu_redis_suite.py`).

`install()` makes `redis://` and `rediss://` broker URLs use it in this process: the worker,
beat and our producers import `worker.celeryapp.app`, which calls it. Foreign producers need
nothing: the wire format is kombu's.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from queue import Empty
from typing import Any

# the broker, not our store: exempt from "Redis only in worker.core.store" (pyproject.toml,
# tests/unit/test_redis_owner.py); its keys are kombu's, its Lua is lua/broker_pop.lua
import redis
from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps

from worker.celeryapp import frames

POP_SCRIPT = resources.files("worker.celeryapp").joinpath("lua/broker_pop.lua").read_text()
IDLE_POLL_SECONDS = (0.005, 0.1)
"""An idle consumer looks at all its queues again after the first of these, doubling the wait
while nothing comes up to the second: work tends to follow work (a step sends the next), and a
long-idle worker costs Redis about 20 commands a second."""
TRANSPORT = "worker.celeryapp.broker:Transport"
log = logging.getLogger("rebook.broker")
_told: set[str] = set()
"""What this process has logged once already (one line per condition, not one per channel)."""


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: Any) -> None:
        """The pop script has recorded the message in `unacked` already: only the in-memory
        bookkeeping is left (one round trip less per message than kombu's)."""
        virtual.QoS.append(self, message, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    from_transport_options = (  # type: ignore[assignment]  # kombu's, and one more
        *kombu_redis.Channel.from_transport_options,
        "idle_poll_seconds",
    )
    idle_poll_seconds = IDLE_POLL_SECONDS[1]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting = False  # the command in flight is the idle wait, not the pop
        self._idle = False  # the last pop found every queue empty: wait before the next
        self._idle_rounds = 0  # empty pops in a row
        self._can_blmove: bool | None = None
        self._wait_name = "BLMOVE"  # the idle wait's command, to read its reply as such
        self._noack_queues: set[str] = set()  # consumed with no_ack: never recorded as unacked
        self._get_no_ack = False  # the basic_get in progress is no_ack

    # -- no_ack: kombu records only what will be acknowledged ----------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._noack_queues.add(queue)
        else:
            self._noack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        result = super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._noack_queues.discard(queue)
        return result

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        self._get_no_ack = no_ack
        try:
            return super().basic_get(queue, no_ack=no_ack, **kwargs)
        finally:
            self._get_no_ack = False

    # -- the consumer's receive loop (kombu calls these "BRPOP") ------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        pairs = [(self._q_for_pri(q, pri), q) for pri in self.priority_steps for q in queues]
        connection = self.client.connection
        self._in_poll = connection
        # kombu's clock, as kombu's watchdog of an unanswered poll reads it
        self._brpop_sent_at = kombu_redis.monotonic()  # type: ignore[assignment]  # kombu: None
        if self._idle:
            self._waiting, self._idle = True, False
            connection.send_command(*self._wait_command(self._first_key()))
        else:
            self._waiting = False
            keys = [key for key, _ in pairs]
            record = [self.ack_emulation and q not in self._noack_queues for _, q in pairs]
            connection.send_command(*self._pop_command(keys, record))

    def _brpop_read(self, **options: Any) -> bool:
        try:
            waited = self._waiting
            try:
                reply = self.client.parse_response(
                    self.client.connection, self._wait_name if waited else "EVAL", **options
                )
            except self.connection_errors:
                self.client.connection.disconnect()  # reconnects on the next round
                raise
            except redis.ResponseError as exc:
                if not (waited and self._wait_name == "BLMOVE"):
                    raise
                self._can_blmove = False  # refused (ACL -blmove): the timed wait from now on
                self._tell_once("blmove", "BLMOVE", exc)
                reply = None
            if waited or not reply:
                self._idle = not waited
                self._idle_rounds += not waited
                raise Empty()
            self._idle_rounds = 0
            key, item, recorded = self._unprefixed(reply[0]), reply[1], bool(reply[2])
            dest = key.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._checked(item, dest, key, recorded, dest not in self._noack_queues)
            if payload is None:  # refused and dead-lettered: pop again at once
                raise Empty()
            self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own idle value
            self._flush_brpop_reauth()

    def _poll_error(self, type: str, **options: Any) -> Any:
        if type == "BRPOP":
            name = self._wait_name if self._waiting else "EVAL"
            return self.client.parse_response(self.client.connection, name)
        return super()._poll_error(type, **options)

    def _get(self, queue: str, timeout: Any = None) -> Any:
        """`basic_get`: the same atomic pop, for one queue."""
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
        acked = not self._get_no_ack
        record = [acked and self.ack_emulation] * len(keys)
        with self.conn_or_acquire() as client:
            reply = client.execute_command(*self._pop_command(keys, record))
            self._maybe_update_queues_expire(client, queue)
        if not reply:
            raise Empty()
        key = self._unprefixed(reply[0])
        payload = self._checked(reply[1], queue, key, bool(reply[2]), acked)
        if payload is None:
            raise Empty()
        return payload

    def _unprefixed(self, key: bytes | str) -> str:
        text = bytes_to_str(key)
        prefix = self.global_keyprefix or ""
        return text[len(prefix) :] if prefix and text.startswith(prefix) else text

    def _checked(
        self, item: bytes | str, queue: str, key: str, recorded: bool, acked: bool
    ) -> dict[str, Any] | None:
        """The envelope of a popped item, or None when it is not one kombu can build a message
        from, or is over the size limit (what the worker runs: acked queues), or a check raised
        anything: then it is dead-lettered and dropped from `unacked`. If the store refused the
        dead letter, the item stays in `unacked` (back after the visibility timeout) or, if the
        pop could not record it, is pushed back to the end of its list: never dropped unread.
        An accepted item carries the list it came from (`frames.SOURCE_KEY`), and one the pop
        could not record (too deep for Redis's JSON parser) is recorded here, as kombu does."""
        try:
            limit = frames.MAX_FRAME_BYTES if acked else None
            payload = frames.check_redis_item(item, self.decode_body, limit)
        except Exception as exc:  # BadFrame, RecursionError, MemoryError, anything
            if frames.deadletter_frame(frames.refusal(exc), item, queue=queue):
                tag = frames.delivery_tag_of(item) if recorded else None
                if tag:
                    self.qos._remove_from_indices(tag).execute()
            elif not recorded:
                with self.conn_or_acquire() as client:
                    client.lpush(key, item)
            return None
        props = payload["properties"]
        info = props.get("delivery_info")
        props["delivery_info"] = {**(info or {}), frames.SOURCE_KEY: queue}
        if acked and self.ack_emulation and not recorded:
            self._record(payload, info or {})
        return payload

    def _record(self, payload: dict[str, Any], info: dict[str, Any]) -> None:
        """kombu's own record of an unacknowledged message (`QoS.append`), for one the pop
        script could not parse."""
        tag = payload["properties"]["delivery_tag"]
        raw = {**payload, "properties": {**payload["properties"], "delivery_info": info}}
        with self.qos.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {tag: time.time()}).hset(
                self.unacked_key,
                tag,
                dumps([raw, info.get("exchange") or "", info.get("routing_key") or ""]),
            ).execute()

    # -- commands ------------------------------------------------------------------------------

    def _prefixed(self, key: str) -> str:
        return f"{self.global_keyprefix or ''}{key}"

    def _pop_command(self, keys: list[str], record: list[bool]) -> list[Any]:
        """The pop script over `keys`; `record[i]`: record what `keys[i]` gives as unacked."""
        full = [self._prefixed(k) for k in (self.unacked_key, self.unacked_index_key, *keys)]
        flags = "".join("1" if r else "0" for r in record)
        return ["EVAL", POP_SCRIPT, len(full), *full, repr(time.time()), flags]

    def _first_key(self) -> str:
        return self._q_for_pri(self.active_queues[0], self.priority_steps[0])

    def _wait_command(self, key: str) -> list[Any]:
        """Blocks until `key` has a message or the idle interval passed; takes nothing.
        Before Redis 6.2 (no BLMOVE), or when the account may not ask the version (ACL `-info`),
        it is a plain timed wait on a key nobody writes."""
        if self._can_blmove is None:
            self._can_blmove = self._has_blmove()
        shortest, longest = IDLE_POLL_SECONDS[0], float(self.idle_poll_seconds)
        seconds = repr(min(longest, shortest * 2 ** min(self._idle_rounds, 16)))
        if self._can_blmove:
            full = self._prefixed(key)
            self._wait_name = "BLMOVE"
            return ["BLMOVE", full, full, "RIGHT", "RIGHT", seconds]
        self._wait_name = "BLPOP"
        return ["BLPOP", self._prefixed("_rebook.idle"), seconds]

    def _has_blmove(self) -> bool:
        """Redis >= 6.2, from `INFO server`. An account that may not run INFO (or a server that
        renamed it) is not an error: the timed wait works everywhere, at up to
        `idle_poll_seconds` of latency for the first queue's new work."""
        try:
            with self.conn_or_acquire() as client:
                version = str(client.info("server").get("redis_version", "0"))
        except redis.ResponseError as exc:  # NoPermissionError (NOPERM), unknown command
            self._tell_once("info", "INFO", exc)
            return False
        parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:2]]
        return tuple(parts) >= (6, 2)

    def _tell_once(self, what: str, command: str, exc: Exception) -> None:
        """One log line per process that the idle wait is the timed one, and why."""
        if what in _told:
            return
        _told.add(what)
        log.warning(
            "the broker refused %s (%s): an idle worker waits with a plain timed BLPOP and sees "
            "new work within %.3f s (grant +%s to the broker user to wake at once)",
            command,
            " ".join(str(exc).split())[:120],
            float(self.idle_poll_seconds),
            command.lower(),
        )


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel, Channel):
    """The same pop script and idle wait, on the master the sentinels name (kombu's
    `sentinel://h1:26379;sentinel://h2:26379` form, transport option `master_name`)."""

    from_transport_options = (  # type: ignore[assignment]
        *kombu_redis.SentinelChannel.from_transport_options,
        "idle_poll_seconds",
    )


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def install() -> None:
    """`redis://`, `rediss://` and `sentinel://` broker URLs use these transports here."""
    for scheme in ("redis", "rediss"):
        kombu_transport.TRANSPORT_ALIASES[scheme] = TRANSPORT
    kombu_transport.TRANSPORT_ALIASES["sentinel"] = "worker.celeryapp.broker:SentinelTransport"
