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
  ``ack_target``) is not acknowledged twice.
* ``DeadLetteringConsumer._next_or_wait``: Dramatiq's ``__next__``, with the
  poll backoff it slept when idle replaced by a wait for the queue's wake-up
  (workers/wakeup.py).

Importing this module with another Dramatiq version raises, naming the versions it works with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

import dramatiq
import redis
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis, q_name
from dramatiq.errors import ConnectionClosed, DecodeError

from mailqueue.client import LuaScript, redis_client
from mailqueue.deadletters import DeadLetter, record
from mailqueue.exceptions import MailQueueImproperlyConfigured
from mailqueue.keys import QueueKeys, heartbeats_key, in_progress_key
from mailqueue.signals import MessageDeadLettered, announce

from .admission import AckTarget
from .patience import until_redis_accepts
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


class DeadLetteringConsumer(_RedisConsumer):
    """A consumer that dead-letters undecodable messages instead of stalling on them."""

    def __init__(self, broker: WorkerBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        self.worker_broker = broker
        if queue_name.endswith(".DQ"):
            self._requeue_forgotten_delayed()

    def _in_progress(self) -> str:
        return in_progress_key(self.worker_broker.namespace, self.worker_broker.broker_id, self.queue_name)

    def _requeue_forgotten_delayed(self) -> None:
        """Put back delayed messages a previous consumer of this worker fetched and then dropped."""
        held = self.worker_broker.client.smembers(self._in_progress())
        if held:
            self.worker_broker.do_requeue(self.queue_name, *held)
            logger.warning("requeued %d delayed message(s) dropped after a Redis error", len(held))

    def ack(self, message: Any) -> None:
        acknowledged = self.worker_broker.acknowledged
        redis_id = message.options.get("redis_message_id")
        if redis_id in acknowledged:
            acknowledged.discard(redis_id)  # acknowledged with its delivery record
            self.queued_message_ids.discard(message.message_id)
            return
        super().ack(message)  # type: ignore[no-untyped-call]

    def __next__(self) -> Any:
        while True:
            try:
                return self._next_or_wait()
            except DecodeError as error:
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
        try:
            while True:
                try:
                    data = self.message_cache.pop(0)
                    if data is None:
                        logger.warning("found 'None' in the message cache of queue %r (Dramatiq #266)", self.queue_name)
                        continue
                    self.misses = 0
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                except IndexError:
                    messages = []
                    room = self.prefetch - self.outstanding_message_count
                    if room > 0:
                        self._wakeup.clear()
                        self.message_cache = messages = self.worker_broker.do_fetch(self.queue_name, room)
                    if not messages:
                        self._idle_wait(full=room <= 0)
                        return None
        except redis.ConnectionError as error:
            raise ConnectionClosed(error) from None  # type: ignore[no-untyped-call]

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
        """Enqueue, waiting for Redis as long as it takes: the message being processed is acked after."""
        return until_redis_accepts(
            lambda: super(WorkerBroker, self).enqueue(message, delay=delay), f"the re-enqueue of {message.message_id}"
        )
