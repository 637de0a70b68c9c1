"""The enqueue: a batch of envelopes into Dramatiq's Redis layout, in one atomic round trip.

It writes exactly what Dramatiq's own ``RedisBroker.enqueue`` writes (the
encoded message into ``<ns>:<queue>.msgs`` and its id onto the ``<ns>:<queue>``
list), but for a whole batch in one Lua script call: one command, one reply,
and Redis runs it atomically, so no worker ever sees half a batch. The same
call publishes on each queue's wake channel, so an idle worker fetches at once
instead of at its next poll (workers/wakeup.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

import redis

from . import eventlog
from .broker import MESSAGE_ENCODER, actor_name
from .client import LuaScript, access_problem
from .conf import get_config
from .envelope import Envelope, random_id
from .exceptions import BrokerAccessDenied, BrokerUnavailable
from .keys import QueueKeys, enqueued_key, events_key, wake_channel

logger = logging.getLogger(__name__)


class EncodedMessage(NamedTuple):
    """A Dramatiq message, encoded, ready for Redis.

    A named tuple rather than a frozen dataclass: as immutable, and built in a
    third of the time, which counts when a batch makes ten thousand of them.
    """

    queue: str
    envelope_id: str
    redis_id: str
    data: bytes
    #: Queue it only if this envelope id was not pushed within DEDUP_WINDOW (idempotency keys, the outbox relay).
    guarded: bool = False
    #: The message log's events appended with it (mailqueue.eventlog), newline-separated; empty: none.
    events: bytes = b""


#: The option naming when (epoch ms) a message was put back on its ready list, by a requeue or once a retry's
#: delay ran out (workers.dramatiq_redis.WorkerBroker.enqueue). The dashboard's "oldest waiting" counts from it;
#: a message without it has waited since its ``message_timestamp`` (send_mail()).
READY_AT_OPTION = "mailqueue_ready_at"


def encode(
    envelope: Envelope,
    *,
    guarded: bool = False,
    redis_id: str | None = None,
    log: bool = False,
    ready_at: float | None = None,
) -> EncodedMessage:
    """Wrap ``envelope`` as a message for its queue's delivery actor; with ``log``, carry its ``queued`` event.

    The fields are exactly those of ``dramatiq.Message.asdict()``, built
    directly: going through ``Message`` would cost more than the envelope itself.
    ``ready_at`` (epoch seconds): the message is put back on its queue then (a
    requeue), long after its send_mail().
    """
    redis_id = redis_id or random_id()
    options: dict[str, object] = {"redis_message_id": redis_id}
    if ready_at is not None:
        options[READY_AT_OPTION] = int(ready_at * 1000)
    data = {
        "queue_name": envelope.queue,
        "actor_name": actor_name(envelope.queue),
        "args": [envelope.encode()],
        "kwargs": {},
        "options": options,
        "message_id": envelope.id,
        "message_timestamp": int(envelope.created_at * 1000),
    }
    encoded = MESSAGE_ENCODER.encode(data)
    events = eventlog.queued(envelope, len(encoded)) if log else b""
    return EncodedMessage(envelope.queue, envelope.id, redis_id, encoded, guarded, events)


#: KEYS: the message log's stream, then (messages hash, ready list) per queue;
#: ARGV: the dedup window in seconds, the stream's MAXLEN, the message count per
#: queue, the wake channel per queue, then (redis id, data, guard key or "",
#: events or "") quadruples in the same order. A message with a guard key is
#: queued only if that key was not set within the window. Each queued message's
#: events (its ``queued`` event, and a relayed one's ``relayed``; several are
#: separated by newlines, which JSON text never holds raw) are appended to the
#: stream, so the log sees exactly what was queued. A queue that was empty before
#: this push has its wake channel published on (an empty message): only then can
#: its consumers be waiting. Onto a backlog, nothing is published: every consumer
#: is busy, or was woken by the push that ended the queue's last empty spell
#: (docs/design.md). A PUBLISH that Redis refuses is ignored: the workers'
#: fallback poll finds the messages. Returns how many messages were queued.
ENQUEUE_SCRIPT = """
local queues = (#KEYS - 1) / 2
local arg = 2 * queues + 3
local queued = 0
local events = KEYS[1]
for queue = 1, queues do
  local messages, ready = KEYS[2 * queue], KEYS[2 * queue + 1]
  local fields, ids = {}, {}
  for _ = 1, tonumber(ARGV[queue + 2]) do
    local guard = ARGV[arg + 2]
    if guard == "" or redis.call("set", guard, "1", "nx", "ex", ARGV[1]) then
      fields[#fields + 1] = ARGV[arg]
      fields[#fields + 1] = ARGV[arg + 1]
      ids[#ids + 1] = ARGV[arg]
      if ARGV[arg + 3] ~= "" then
        for event in string.gmatch(ARGV[arg + 3], "[^\\n]+") do
          redis.call("xadd", events, "maxlen", "~", ARGV[2], "*", "e", event)
        end
      end
    end
    arg = arg + 4
  end
  -- One HSET and one RPUSH per chunk, not per message: Lua's stack bounds unpack().
  local length = 0
  for first = 1, #ids, 1000 do
    local last = math.min(first + 999, #ids)
    redis.call("hset", messages, unpack(fields, 2 * first - 1, 2 * last))
    length = redis.call("rpush", ready, unpack(ids, first, last))
  end
  if #ids > 0 and length == #ids then
    -- pcall: a refused PUBLISH (an ACL without the channel) must not fail a push already written.
    redis.pcall("publish", ARGV[queues + queue + 2], "")
  end
  queued = queued + #ids
end
return queued
"""


ENQUEUE = LuaScript(ENQUEUE_SCRIPT)


def refusal(error: redis.RedisError, count: int) -> BrokerUnavailable:
    """The error to raise for a push of ``count`` messages that Redis failed with ``error``."""
    if isinstance(error, redis.TimeoutError):
        # The script may have reached Redis and may still run: say so, rather than "nothing was queued".
        what = f"Redis did not answer in time for {count} message(s) ({error}); they may or may not have been queued."
    else:
        what = f"Redis did not accept {count} message(s) ({error}); nothing of this batch was queued."
    fix = access_problem(error)
    if fix is not None:
        return BrokerAccessDenied(f"{what} This is not an outage: {fix}.", fix=fix)
    return BrokerUnavailable(what)


def push(batch: Sequence[EncodedMessage]) -> int:
    """Queue every message of ``batch`` in one atomic round trip; return how many were new.

    A guarded message already pushed within DEDUP_WINDOW is left out (and not counted).
    """
    if not batch:
        return 0
    config = get_config()
    namespace = config.namespace
    by_queue: dict[str, list[EncodedMessage]] = defaultdict(list)
    for item in batch:
        by_queue[item.queue].append(item)
    keys: list[str] = [events_key(namespace)]
    counts: list[int] = []
    channels: list[str] = []
    quadruples: list[str | bytes] = []
    for queue, items in by_queue.items():
        queue_keys = QueueKeys.of(namespace, queue)
        keys += (queue_keys.messages, queue_keys.ready)
        counts.append(len(items))
        channels.append(wake_channel(namespace, queue))
        for item in items:
            guard = enqueued_key(namespace, item.envelope_id) if item.guarded else ""
            quadruples += (item.redis_id, item.data, guard, item.events)
    try:
        queued = int(ENQUEUE(keys, [config.dedup_window, config.log.stream_maxlen, *counts, *channels, *quadruples]))
    except redis.RedisError as error:
        raise refusal(error, len(batch)) from error
    if queued != len(batch):
        logger.info(
            "%d of %d message(s) were already queued earlier: not queued again", len(batch) - queued, len(batch)
        )
    return queued
