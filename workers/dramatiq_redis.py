"""The one adapter to Dramatiq's private Redis broker and consumer code (written for Dramatiq 2.2).

Everything mailqueue builds on Dramatiq internals lives here, so an upgrade
has one module to read:

* ``WorkerBroker._dispatch``: Dramatiq's own dispatch script (fetch, ack,
  requeue...), run over mailqueue's per-thread connection instead of redis-py's
  script wrapper; two calls per message, which cost more CPU than the round trips.
* ``WorkerBroker.enqueue``: a retry, a deferral or a delayed message coming due
  waits for Redis instead of being logged and lost (Dramatiq acknowledges the
  message it was processing either way).
* ``DeadLetteringConsumer``: a stored message Dramatiq cannot decode is
  dead-lettered with its decode error instead of stalling the consumer and its
  whole batch; delayed messages a consumer dropped after a Redis error are put
  back; a message acknowledged early (with its delivery record, see
  ``ack_target``) is not acknowledged twice; every message it hands out is a
  ``QuietMessageProxy``, which Dramatiq's logs name by id, not by content; an acknowledgement Redis refuses
  (full, read-only) is retried instead of forgotten; a message Dramatiq
  rejects (no actor of its name here) goes to mailqueue's dead letters.
* ``WorkerBroker.do_fetch``: before fetching, what this process fetched but no
  longer holds (a consumer dropped it after a Redis error, or a fetch whose
  reply was lost) is put back: a live worker never strands a message.
* ``Keepalive``: every worker process heartbeats from a thread of its own and
  puts back dead workers' messages on a timer (Dramatiq does both only as a
  side effect of its broker commands, and recovery only on a random few); after
  Redis was away long enough to stale every heartbeat, it declares nobody dead
  for one heartbeat timeout (see RECOVER).
* ``DeadLetteringConsumer._next_or_wait``: Dramatiq's ``__next__``, with the
  poll backoff it slept when idle replaced by a wait for the queue's wake-up
  (workers/wakeup.py).

Importing this module with another Dramatiq version raises, naming the versions it works with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import dramatiq
import redis
from dramatiq import Broker, Message, MessageProxy, Middleware, Worker
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis, dq_name, q_name
from dramatiq.errors import ActorNotFound, ConnectionClosed, DecodeError

from mailqueue.broker import actor_name
from mailqueue.client import LuaScript, redis_client
from mailqueue.deadletters import DeadLetter, record
from mailqueue.enqueue import READY_AT_OPTION
from mailqueue.exceptions import MailQueueImproperlyConfigured
from mailqueue.keys import QueueKeys, heartbeats_key, in_progress_key, keepalive_key
from mailqueue.signals import MessageDeadLettered, announce

from .admission import AckTarget, release_unanswered, unanswered_claims
from .patience import is_outage, until_redis_accepts
from .redaction import redact_addresses
from .wakeup import Wakeups, wakeups_for

#: The Dramatiq releases (major, minor) whose private broker code this module was written against.
SUPPORTED_DRAMATIQ = ((2, 2),)


def _check_version(version: str) -> None:
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    if major_minor not in SUPPORTED_DRAMATIQ:
        works = ", ".join(f"{major}.{minor}.x" for major, minor in SUPPORTED_DRAMATIQ)
        raise MailQueueImproperlyConfigured(
            f"mailqueue's workers build on Dramatiq's Redis broker internals and work with Dramatiq {works}; "
            f"Dramatiq {version} is installed. Install a supported version (pip install 'dramatiq[redis]>=2.2,<2.3')."
        )


_check_version(dramatiq.__version__)

logger = logging.getLogger(__name__)


def ack_target(message: Any) -> AckTarget | None:
    """What a delivery record must acknowledge for ``message``, when this worker consumes through a WorkerBroker."""
    broker = dramatiq.get_broker()
    redis_id = message.options.get("redis_message_id") if message is not None else None
    if not isinstance(broker, WorkerBroker) or redis_id is None:
        return None
    namespace, queue = broker.namespace, message.queue_name
    return AckTarget(
        in_progress=in_progress_key(namespace, broker.broker_id, queue),
        messages=QueueKeys.of(namespace, queue).messages,
        heartbeats=heartbeats_key(namespace),
        redis_id=redis_id,
        broker_id=broker.broker_id,
    )


def acknowledged_early(target: AckTarget) -> None:
    """Tell the consumer this Redis message was acknowledged with its delivery record: no ack of its own.

    Kept by Redis id in the broker, never in the message's options: those
    travel with every copy of the message (a retry), which must be acked.
    """
    broker = dramatiq.get_broker()
    if isinstance(broker, WorkerBroker):
        broker.acknowledged.add(target.redis_id)


@contextmanager
def outage_closes_connection() -> Iterator[None]:
    """Redis away or refusing writes (see ``is_outage``) as the ConnectionClosed Dramatiq's consumer thread expects.

    Dramatiq's consumer thread restarts its consumer after a ConnectionClosed;
    any other error sends it down a path that re-queues its delayed messages
    inside its error handler, and a second refusal there ends the thread: the
    queue is no longer consumed by this (live, heartbeating) worker.
    """
    try:
        yield
    except redis.RedisError as error:
        if not is_outage(error):
            raise
        raise ConnectionClosed(error) from None  # type: ignore[no-untyped-call]


def _rejected_letter(message: Any, queue: str) -> DeadLetter:
    """The dead letter of a message Dramatiq rejected; a mailqueue envelope keeps its payload, so it can be requeued."""
    error = getattr(message, "_exception", None)  # what Dramatiq stuffed into the message when it rejected it
    if isinstance(error, ActorNotFound) or error is None:
        reason = f"ActorNotFound: no worker here declares actor {message.actor_name!r}"
        if message.actor_name != actor_name(queue):
            reason += f" (queue {queue!r} is delivered by {actor_name(queue)!r})"
        error_type = "ActorNotFound"
    else:
        reason, error_type = f"{type(error).__name__}: {error}", type(error).__name__
    if message.actor_name.startswith(actor_name("")) and len(message.args) == 1 and not message.kwargs:
        payload: Any = message.args[0]
    else:
        payload = message.asdict()
    return DeadLetter(
        id=str(message.message_id),
        queue=queue,
        reason=reason,
        error_type=error_type,
        failed_at=time.time(),
        attempts=int(message.options.get("retries", 0)) + 1,
        payload=payload,
    )


def _announce_dead_letter(letter: DeadLetter) -> None:
    """``message_dead_lettered`` for a message the consumer dead-lettered before any actor saw it."""
    announce(
        MessageDeadLettered(
            envelope_id=letter.id,
            queue=letter.queue,
            reason=letter.reason,
            error_type=letter.error_type,
            attempts=letter.attempts,
            provider=None,
        )
    )


class QuietMessageProxy(MessageProxy):
    """A fetched message that Dramatiq's worker logs by actor and id, never by its arguments.

    Dramatiq 2.2's worker writes a message with ``%s`` when an error escapes
    the actor, when a middleware skips it, when its ack waits for Redis, and
    at DEBUG for every message; ``Message.__str__`` spells out every
    argument, and here the argument is the envelope: subject, body,
    recipients, attachments.
    """

    def __str__(self) -> str:
        return f"{self.actor_name}(<{self.message_id}>)"

    def __repr__(self) -> str:
        return f"<QuietMessageProxy {self.message_id} for {self.actor_name}>"


class DeadLetteringConsumer(_RedisConsumer):
    """A consumer that dead-letters undecodable messages instead of stalling on them (see the module docstring)."""

    def __init__(self, broker: WorkerBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self.worker_broker = broker
        #: Redis ids of the messages of this queue that Dramatiq's threads hold (shared by every consumer
        #: of the queue this process makes: a consumer made after a Redis error inherits what is in work).
        self.held = broker.held[queue_name]
        if queue_name.endswith(".DQ"):
            with outage_closes_connection():  # Dramatiq makes a new consumer after its restart delay
                self._requeue_forgotten_delayed()

    def _in_progress(self) -> str:
        return in_progress_key(self.worker_broker.namespace, self.worker_broker.broker_id, self.queue_name)

    def _requeue_forgotten_delayed(self) -> None:
        """Put back delayed messages a previous consumer of this worker fetched and then dropped.

        Dramatiq's consumer thread keeps delayed messages in memory until they
        are due, and drops them all after a Redis error: none of them is held
        any more when a new consumer of the delay queue is made.
        """
        self.held.clear()
        held = self.worker_broker.client.smembers(self._in_progress())
        if held:
            self.worker_broker.do_requeue(self.queue_name, *held)
            logger.warning("requeued %d delayed message(s) dropped after a Redis error", len(held))

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]  # (Dramatiq's returns the consumer itself)
        # Dramatiq's consumer thread iterates its consumer: each message it is given is held by this
        # process until it is acknowledged, rejected or requeued; what the queue's in-progress set has
        # beyond that was dropped (see WorkerBroker.do_fetch).
        while True:
            message = next(self)
            if message is not None:
                self.held.add(message.options.get("redis_message_id"))
            yield message

    def ack(self, message: Any) -> None:
        acknowledged = self.worker_broker.acknowledged
        redis_id = message.options.get("redis_message_id")
        if redis_id in acknowledged:
            acknowledged.discard(redis_id)  # acknowledged with its delivery record
            self.queued_message_ids.discard(message.message_id)
            self.held.discard(redis_id)
            return
        self._settle(super().ack, message)

    def nack(self, message: Any) -> None:
        """Dead-letter ``message`` in mailqueue's store with the reason, and acknowledge it.

        mailqueue's actors never fail a message (they decide every outcome), so
        Dramatiq rejects one only when it cannot run it: no actor of its name is
        declared here. Dramatiq's own dead-letter set would hide it from
        ``mailqueue dead`` and drop it after a week.
        """
        letter = _rejected_letter(message, q_name(self.queue_name))
        until_redis_accepts(lambda: record(letter), f"the dead letter of rejected message {letter.id}")
        self._settle(super().ack, message)
        logger.error("dead-lettered %s on %s: %s", letter.id, letter.queue, redact_addresses(letter.reason))
        _announce_dead_letter(letter)

    def requeue(self, messages: Iterable[Any]) -> None:
        messages = list(messages)
        with outage_closes_connection():  # what is not put back, the next consumer's _requeue_forgotten_delayed does
            super().requeue(messages)  # type: ignore[no-untyped-call]
        for message in messages:
            self.held.discard(message.options.get("redis_message_id"))

    def _settle(self, step: Callable[[Any], None], message: Any) -> None:
        """Acknowledge through ``step``; Redis refusing it (full, read-only, timed out) is retried, not forgotten.

        Dramatiq retries an acknowledgement only after a connection error; any
        other error left the message in this live worker's in-progress set for
        good. As a ConnectionClosed, Dramatiq retries it every few seconds.
        """
        with outage_closes_connection():
            step(message)
        self.held.discard(message.options.get("redis_message_id"))

    def __next__(self) -> Any:
        while True:
            try:
                return self._next_or_wait()
            except DecodeError as error:
                with outage_closes_connection():
                    self._dead_letter(error)

    @cached_property
    def _wakeups(self) -> Wakeups:
        return wakeups_for(self.worker_broker)

    @cached_property
    def _wakeup(self) -> threading.Event:
        return self._wakeups.event(self.queue_name)

    def _next_or_wait(self) -> Any:
        """Dramatiq 2.2's ``_RedisConsumer.__next__``, waiting for a wake-up where it slept its poll backoff.

        The event is cleared before the fetch, so a wake-up published after it
        (the message was queued too late for this fetch) ends the wait at once.
        """
        with outage_closes_connection():
            while True:
                try:
                    data = self.message_cache.pop(0)
                    if data is None:
                        logger.warning("found 'None' in the message cache of queue %r (Dramatiq #266)", self.queue_name)
                        continue
                    self.misses = 0
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return QuietMessageProxy(message)
                except IndexError:
                    messages = []
                    room = self.prefetch - self.outstanding_message_count
                    if room > 0:
                        self._wakeup.clear()
                        self.message_cache = messages = self.worker_broker.do_fetch(self.queue_name, room)
                    if not messages:
                        self._idle_wait(full=room <= 0)
                        return None

    def _idle_wait(self, *, full: bool) -> None:
        """Wait before the next fetch: for a wake-up, or for as long as Dramatiq's backoff would sleep.

        With its prefetch ``full`` the consumer waits for acks, not for new
        messages: Dramatiq's short backoff, as before. Subscribed to its queue's
        wake channel it waits up to the worker timeout (the fallback poll: pub/sub
        drops what is published while a subscriber is away); otherwise (a delay
        queue, or no subscription yet) for Dramatiq's backoff, which a local
        re-enqueue still cuts short.
        """
        self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
        if full:
            time.sleep(backoff_ms / 1000)
            return
        wait_ms = self.timeout if self._wakeups.listening(self.queue_name) else backoff_ms
        self._wakeup.wait(wait_ms / 1000)

    def _redis_id_of(self, data: bytes) -> str | None:
        """The id under which ``data`` sits among this consumer's fetched messages."""
        client = self.worker_broker.client
        fetched = sorted(client.smembers(self._in_progress()))
        if not fetched:
            return None
        stored = client.hmget(QueueKeys.of(self.worker_broker.namespace, self.queue_name).messages, fetched)
        for redis_id, value in zip(fetched, stored, strict=True):
            if value == data:
                return str(redis_id.decode())
        return None

    def _dead_letter(self, error: DecodeError) -> None:
        raw = error.data if isinstance(error.data, bytes) else str(error.data).encode()
        redis_id = self._redis_id_of(raw)
        letter = DeadLetter(
            id=redis_id or "undecodable",
            queue=q_name(self.queue_name),
            reason=f"DecodeError: the stored message is not a Dramatiq message: {error.error!r}",
            error_type="DecodeError",
            failed_at=time.time(),
            attempts=1,
            payload=raw.decode("utf-8", "backslashreplace"),
        )
        until_redis_accepts(lambda: record(letter), f"the dead letter of undecodable message {letter.id}")
        if redis_id is not None:
            self.worker_broker.do_ack(self.queue_name, redis_id)
        logger.error("dead-lettered an undecodable message %s on %s: %s", letter.id, letter.queue, error.error)
        _announce_dead_letter(letter)


class WorkerBroker(RedisBroker):
    """The Redis broker workers consume with (see the module docstring).

    mailqueue's actors decide every outcome themselves (workers/outcomes.py);
    Dramatiq's ``Retries`` middleware only retries an error that escapes them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        if self.client is not redis_client():
            raise ValueError("WorkerBroker runs its scripts on mailqueue's client: build it with new_broker()")
        self._dispatch_script = LuaScript(self.scripts["dispatch"].script)  # type: ignore[arg-type]
        #: Redis ids of messages whose delivery record also acknowledged them (see ``acknowledged_early``).
        self.acknowledged: set[str] = set()
        #: Per queue, the Redis ids of the messages Dramatiq's threads hold (see DeadLetteringConsumer).
        self.held: defaultdict[str, set[str]] = defaultdict(set)
        #: Per queue, when (time.monotonic()) ``do_fetch`` next looks for dropped messages.
        self._next_sweep: dict[str, float] = {}
        #: Seconds between two of those looks.
        self.sweep_interval = 1.0

    def _dispatch(self, command: str) -> Callable[..., Any]:
        # Dramatiq 2.2's RedisBroker._dispatch, with the script call replaced.
        keys = [self.namespace]

        def do_dispatch(queue_name: str, *args: Any) -> Any:
            return self._dispatch_script(
                keys,
                [
                    command,
                    current_millis(),
                    queue_name,
                    self.broker_id,
                    self.heartbeat_timeout,
                    self.dead_message_ttl,
                    self._should_do_maintenance(command),
                    self._max_unpack_size(),  # type: ignore[no-untyped-call]
                    *args,
                ],
            )

        return do_dispatch

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return DeadLetteringConsumer

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Enqueue, waiting for Redis as long as it takes: the message being processed is acked after.

        A message put on its ready list (a retry or a deferral whose delay ran out) is stamped with when: the
        operator's "oldest waiting" counts from then, not from its send_mail() (mailqueue.monitoring).
        """
        if delay is None:
            message = message.copy(options={READY_AT_OPTION: current_millis()})
        return until_redis_accepts(
            lambda: super(WorkerBroker, self).enqueue(message, delay=delay), f"the re-enqueue of {message.message_id}"
        )

    def do_fetch(self, queue_name: str, count: int) -> Any:
        """Dramatiq's fetch, after putting back what this process fetched and no longer holds, once a second.

        Dramatiq's consumer thread makes a new consumer after a Redis error and
        drops the old one's prefetched messages; and a fetch whose reply was
        lost (Redis paused past the socket timeout) ran all the same. Either
        way the messages sit in this live worker's in-progress set, which no
        recovery looks at. Called only when the consumer's cache is empty, from
        the one thread that fetches this queue, so whatever is in the set and
        not held by a thread here is dropped.
        """
        now = time.monotonic()
        if now >= self._next_sweep.get(queue_name, 0.0):
            self._next_sweep[queue_name] = now + self.sweep_interval
            self._put_back_dropped(queue_name)
        return self._dispatch("fetch")(queue_name, count)

    def _put_back_dropped(self, queue_name: str) -> None:
        held = self.held[queue_name].copy()
        in_progress = in_progress_key(self.namespace, self.broker_id, queue_name)
        fetched = BEYOND_HELD([in_progress], [len(held)])
        dropped = [redis_id for redis_id in fetched if redis_id.decode() not in held]
        if dropped:
            self.do_requeue(queue_name, *dropped)
            logger.warning("requeued %d message(s) of %s this worker had fetched and dropped", len(dropped), queue_name)


#: KEYS: a worker's in-progress set for one queue; ARGV: how many of its messages the worker holds.
#: Returns the set's members when it has more than that (some were dropped), else nothing: the usual
#: answer costs one SCARD, however many delayed messages the worker keeps.
BEYOND_HELD = LuaScript(
    """
if redis.call("scard", KEYS[1]) > tonumber(ARGV[1]) then return redis.call("smembers", KEYS[1]) end
return {}
"""
)

#: KEYS: Dramatiq's heartbeats, the keepalive marks (a hash). ARGV: namespace, this worker's id, now (ms,
#: on this worker's clock, like Dramatiq's own heartbeats), heartbeat timeout (ms), how long (ms) a dead
#: worker is remembered, the gap (ms) that starts a grace, then every queue name a worker may consume (each
#: queue and its delay queue).
#: Heartbeats for this worker, then puts every message a dead worker (heartbeat older than the timeout)
#: had fetched back at the head of its queue: what Dramatiq's maintenance does (dispatch.lua), for all
#: queues at once and without its KEYS scan. A dead worker is kept in the heartbeats for a while, so a
#: worker configured with other queues (a deploy in progress) may recover those too.
#: The marks hold when (Redis's clock) any worker last ran this ("last"). A gap longer than "gap" (about
#: half the timeout, at least two intervals: see Keepalive.gap) means nobody could heartbeat (Redis
#: paused, partitioned, failing over): every heartbeat is stale, the live workers' too, so nobody is
#: declared dead until one timeout later ("grace_until"), by which time every live worker has heartbeat
#: again. ADMIT reads the same marks. They never expire (one small hash, like the heartbeats): an idle
#: worker runs this every second, and each command here counts.
#: Returns {dead workers, messages put back, ms of grace left (0: none)}.
RECOVER = LuaScript(
    """
local namespace = ARGV[1]
local now = tonumber(ARGV[3])
local timeout = tonumber(ARGV[4])
local clock = redis.call("time")
local server_now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local gap = tonumber(ARGV[6])
local marks = redis.call("hmget", KEYS[2], "last", "grace_until")
local last, grace_until = tonumber(marks[1]), tonumber(marks[2]) or 0
if last and server_now - last > gap then grace_until = server_now + timeout end
redis.call("hset", KEYS[2], "last", server_now, "grace_until", grace_until, "gap", gap)
redis.call("zadd", KEYS[1], now, ARGV[2])
if server_now < grace_until then return {0, 0, grace_until - server_now} end
local dead = redis.call("zrangebyscore", KEYS[1], "-inf", now - timeout, "WITHSCORES")
local recovered = 0
for i = 1, #dead, 2 do
  local worker = dead[i]
  for q = 7, #ARGV do
    local queue = namespace .. ":" .. ARGV[q]
    local acks = namespace .. ":__acks__." .. worker .. "." .. ARGV[q]
    local ids = redis.call("smembers", acks)
    for _, id in ipairs(ids) do
      if redis.call("hexists", queue .. ".msgs", id) == 1 then
        redis.call("lpush", queue, id)
        recovered = recovered + 1
      end
    end
    if #ids > 0 then redis.call("del", acks) end
  end
  if tonumber(dead[i + 1]) < now - tonumber(ARGV[5]) then redis.call("zrem", KEYS[1], worker) end
end
return {#dead / 2, recovered, 0}
"""
)

#: A dead worker is remembered (and its queues looked at) for this many heartbeat timeouts.
REMEMBER_DEAD = 10

#: Seconds between two log lines of the same unexpected keepalive error.
REPORT_EVERY = 60.0


class Keepalive(Middleware):
    """A worker process's heartbeat and crash recovery, on a timer of their own.

    Dramatiq heartbeats only as a side effect of broker commands, which stop
    while every thread is busy in a slow send and the prefetch is full; and it
    recovers dead workers' messages on a random one in ``MAINTENANCE_CHANCE``
    commands of the same queue, which on a quiet queue takes minutes. Here a
    thread heartbeats and recovers every ``interval`` ms: one script call,
    cheap when no worker is dead (five commands inside Redis). The thread
    outlives any error: without it this live worker would be taken for dead.
    """

    def __init__(self, queues: Iterable[str], *, interval: int, timeout: int) -> None:
        names: list[str] = []
        for queue in queues:
            names += (queue, dq_name(queue))
        self.queue_names = tuple(names)
        self.interval = interval
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: A gap (ms) in every worker's keepalive longer than this starts a grace (see RECOVER): about half the
        #: timeout, and at least two intervals, so that one late beat never starts one.
        self.gap = max(timeout // 2, 2 * interval)
        #: Whether the last beat found the grace after a keepalive gap (see RECOVER): logged once as it starts.
        self._in_grace = False

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        assert isinstance(broker, RedisBroker)
        if isinstance(broker, WorkerBroker):
            broker.sweep_interval = self.interval / 1000
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(broker,), name="mailqueue-keepalive", daemon=True)
        self._thread.start()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        # After the worker's threads finished their messages: heartbeats go on while they do.
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, broker: RedisBroker) -> None:
        failing, answered = False, 0
        #: When (time.monotonic()) each distinct unexpected error was last logged.
        reported: dict[str, float] = {}
        while True:
            try:
                self.beat(broker)
                if failing:
                    logger.warning("heartbeat and recovery reach Redis again")
                failing, answered = False, answered + 1
                if answered >= 2 and unanswered_claims():
                    release_unanswered(broker.namespace)
            except Exception as error:  # noqa: BLE001  (logged below, with its traceback when unexpected)
                # Whatever goes wrong, the thread goes on: without it this live worker stops heartbeating, is
                # declared dead, and its messages are sent again by others while it still sends them.
                if isinstance(error, ConnectionClosed) or is_outage(error):
                    if not failing:
                        logger.error("heartbeat and recovery could not reach Redis (%s); trying every interval", error)
                else:
                    self._report(error, reported)
                failing, answered = True, 0
            if self._stop.wait(self.interval / 1000):
                return

    @staticmethod
    def _report(error: Exception, reported: dict[str, float]) -> None:
        """Log an unexpected error at ERROR with its traceback, once a minute at most for each distinct one."""
        key, now = f"{type(error).__name__}: {error}", time.monotonic()
        if now - reported.get(key, -REPORT_EVERY) < REPORT_EVERY:
            return
        reported[key] = now
        logger.error("heartbeat and recovery failed (%s); trying every interval", key, exc_info=error)

    def beat(self, broker: RedisBroker) -> tuple[int, int]:
        """Heartbeat once and recover dead workers' messages: (dead workers seen, messages put back)."""
        dead, recovered, grace = RECOVER(
            [heartbeats_key(broker.namespace), keepalive_key(broker.namespace)],
            [
                broker.namespace,
                broker.broker_id,
                current_millis(),
                self.timeout,
                self.timeout * REMEMBER_DEAD,
                self.gap,
                *self.queue_names,
            ],
        )
        if recovered:
            logger.warning(
                "put back %d message(s) fetched by dead worker(s) (no heartbeat for %d ms)", recovered, self.timeout
            )
        if int(grace) and not self._in_grace:
            logger.warning(
                "no worker could heartbeat for over %d ms (Redis was away): nobody is declared dead for %d ms",
                self.gap,
                int(grace),
            )
        self._in_grace = bool(int(grace))
        return int(dead), int(recovered)
