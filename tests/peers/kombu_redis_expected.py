"""The tests of kombu's `t/unit/transport/test_redis.py` (kombu 5.7) that rebook's transport is
expected to fail, each with the reason. All of them stem from one deliberate difference: rebook
takes a message with one Lua script that pops it *and* records it as unacknowledged
(`EVAL`, `worker/celeryapp/lua/broker_pop.lua`; README "The Redis broker and lost messages"),
where kombu sends `BRPOP` and records in a second command. kombu's tests drive a fake Redis
client that only answers `BRPOP`/`RPOP` and runs no Lua; the same behaviour is tested against a
real Redis in `tests/integration/test_broker_hold.py` (the lost reply), `test_transport.py`
(no_ack, an account without INFO) and every integration test that runs a worker.

Each entry is a strict xfail: if one of them starts to pass, the run fails and the entry goes.
"""

_EVAL_GET = (
    "basic_get takes the message with the pop script (client.execute_command('EVAL', ...)); "
    "kombu's fake client has no execute_command and runs no Lua (real Redis: test_transport.py "
    "test_a_no_ack_delivery_is_not_recorded_as_unacked)"
)
_EVAL_POLL = (
    "the consumer's poll sends the pop script (EVAL over unacked, its index and the queue "
    "keys, which do not block) or, when idle, the wait (BLMOVE q q RIGHT RIGHT, or BLPOP on a "
    "key nobody writes), not 'BRPOP keys timeout'; the keys carry the global prefix inside EVAL"
)

XFAIL: dict[str, str] = {
    "test_Channel::test_delivery_tag_is_uuid": _EVAL_GET,
    "test_Redis::test_publish__get_redispyv3": _EVAL_GET,
    "test_Redis::test_publish__get_redispyv2": _EVAL_GET,
    "test_Redis::test_get__Empty": _EVAL_GET,
    "test_Channel::test_brpop_start_sends_keys_and_timeout": _EVAL_POLL,
    "test_Channel::test_brpop_start_prefixes_keys": _EVAL_POLL,
    "test_Channel::test_poll_error": (
        "the reply of a poll is read as the reply to the command that was sent (EVAL, or the "
        "idle wait's BLMOVE/BLPOP), so _poll_error('BRPOP') parses 'EVAL', not 'BRPOP'"
    ),
    "test_Redis::test_close_in_poll": (
        "close() during a poll reads the pending reply as the pop script's (EVAL); the fake "
        "client holds a queued BRPOP and asserts the command names match"
    ),
    "test_Redis::test_publish__consume": (
        "consuming takes messages with the pop script; the fake client runs no Lua (its "
        "parse_response answers only BRPOP, its info() takes no section), so nothing arrives"
    ),
}
