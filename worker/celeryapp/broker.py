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

`install()` makes `redis://` and `rediss://` broker URLs use it in this process: the worker,
beat and our producers import `worker.celeryapp.app`, which calls it. Foreign producers need
nothing: the wire format is kombu's.
"""

from __future__ import annotations

import time
from importlib import resources
from queue import Empty
from typing import Any

from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from worker.celeryapp import frames

POP_SCRIPT = resources.files("worker.celeryapp").joinpath("lua/broker_pop.lua").read_text()
IDLE_POLL_SECONDS = (0.005, 0.1)
"""An idle consumer looks at all its queues again after the first of these, doubling the wait
while nothing comes up to the second: work tends to follow work (a step sends the next), and a
long-idle worker costs Redis about 20 commands a second."""
TRANSPORT = "worker.celeryapp.broker:Transport"


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

    # -- the consumer's receive loop (kombu calls these "BRPOP") ------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu: None
        if self._idle:
            self._waiting, self._idle = True, False
            connection.send_command(*self._wait_command(self._first_key()))
        else:
            self._waiting = False
            connection.send_command(*self._pop_command(keys))

    def _brpop_read(self, **options: Any) -> bool:
        try:
            waited = self._waiting
            try:
                reply = self.client.parse_response(
                    self.client.connection, "BLMOVE" if waited else "BRPOP", **options
                )
            except self.connection_errors:
                self.client.connection.disconnect()  # reconnects on the next round
                raise
            if waited or not reply:
                self._idle = not waited
                self._idle_rounds += not waited
                raise Empty()
            self._idle_rounds = 0
            dest, item = reply
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._checked(item, dest)
            if payload is None:  # refused and dead-lettered: pop again at once
                raise Empty()
            self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own idle value
            self._flush_brpop_reauth()

    def _poll_error(self, type: str, **options: Any) -> Any:
        if type == "BRPOP":
            name = "BLMOVE" if self._waiting else "BRPOP"
            return self.client.parse_response(self.client.connection, name)
        return super()._poll_error(type, **options)

    def _get(self, queue: str, timeout: Any = None) -> Any:
        """`basic_get`: the same atomic pop, for one queue."""
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
        with self.conn_or_acquire() as client:
            reply = client.execute_command(*self._pop_command(keys))  # keys are prefixed
            self._maybe_update_queues_expire(client, queue)
        if not reply:
            raise Empty()
        payload = self._checked(reply[1], queue)
        if payload is None:
            raise Empty()
        return payload

    def _checked(self, item: bytes | str, queue: str) -> dict[str, Any] | None:
        """The envelope of a popped item, or None when it is not one kombu can build a message
        from: then it is dead-lettered and dropped from `unacked` (if the store refused the dead
        letter, it stays there and comes back after the visibility timeout)."""
        try:
            return frames.check_redis_item(item, self.decode_body)
        except frames.BadFrame as bad:
            if frames.deadletter_frame(bad.reason, item, queue=queue):
                tag = frames.delivery_tag_of(item)
                if tag:
                    self.qos._remove_from_indices(tag).execute()
            return None

    # -- commands ------------------------------------------------------------------------------

    def _prefixed(self, key: str) -> str:
        return f"{self.global_keyprefix or ''}{key}"

    def _pop_command(self, keys: list[str]) -> list[Any]:
        full = [self._prefixed(k) for k in (self.unacked_key, self.unacked_index_key, *keys)]
        return ["EVAL", POP_SCRIPT, len(full), *full, repr(time.time())]

    def _first_key(self) -> str:
        return self._q_for_pri(self.active_queues[0], self.priority_steps[0])

    def _wait_command(self, key: str) -> list[Any]:
        """Blocks until `key` has a message or the idle interval passed; takes nothing.
        Before Redis 6.2 (no BLMOVE) it is a plain timed wait on a key nobody writes."""
        if self._can_blmove is None:
            with self.conn_or_acquire() as client:
                version = str(client.info("server").get("redis_version", "0"))
            self._can_blmove = tuple(int(p) for p in version.split(".")[:2]) >= (6, 2)
        shortest, longest = IDLE_POLL_SECONDS[0], float(self.idle_poll_seconds)
        seconds = repr(min(longest, shortest * 2 ** min(self._idle_rounds, 16)))
        if self._can_blmove:
            full = self._prefixed(key)
            return ["BLMOVE", full, full, "RIGHT", "RIGHT", seconds]
        return ["BLPOP", self._prefixed("_rebook.idle"), seconds]


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
