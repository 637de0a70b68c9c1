"""Dramatiq's Redis broker and consumer, made to lose nothing when Redis misbehaves.

* A stored message Dramatiq cannot decode: its consumer raises and restarts,
  and the message, with every message fetched with it, stays in this worker's
  in-progress set for as long as the worker lives. Here it is dead-lettered
  with the decode error, and the consumer carries on with its batch.
* Redis away while a worker re-enqueues a message (a retry, a deferral, a
  delayed message coming due): Dramatiq logs the failure and acknowledges the
  message anyway, so it is lost. Here the enqueue waits for Redis instead.
* A connection error in a delay-queue consumer: Dramatiq drops the delayed
  messages it holds in memory while their ids stay in this live worker's
  in-progress set, where nothing requeues them. Here the next consumer puts
  them back.

This builds on ``dramatiq.brokers.redis._RedisConsumer``, pinned with dramatiq 2.2.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis, q_name
from dramatiq.errors import DecodeError

from mailqueue.client import LuaScript, redis_client
from mailqueue.deadletters import DeadLetter, record

logger = logging.getLogger(__name__)

#: Backoff, in seconds, between tries of an enqueue while Redis is away.
ENQUEUE_RETRY_MIN = 0.2
ENQUEUE_RETRY_MAX = 5.0


@dataclass(frozen=True, slots=True)
class EarlyAck:
    """What recording a delivery needs to acknowledge the Dramatiq message in the same call."""

    in_progress: str
    messages: str
    heartbeats: str
    redis_id: str
    broker_id: str
    broker: WorkerBroker

    @classmethod
    def of(cls, message: Any) -> EarlyAck | None:
        """For the message being processed, when this worker consumes through a WorkerBroker."""
        broker = dramatiq.get_broker()
        redis_id = message.options.get("redis_message_id") if message is not None else None
        if not isinstance(broker, WorkerBroker) or redis_id is None:
            return None
        namespace, queue = broker.namespace, message.queue_name
        return cls(
            in_progress=f"{namespace}:__acks__.{broker.broker_id}.{queue}",
            messages=f"{namespace}:{queue}.msgs",
            heartbeats=f"{namespace}:__heartbeats__",
            redis_id=redis_id,
            broker_id=broker.broker_id,
            broker=broker,
        )

    def done(self) -> None:
        """Tell the consumer this Redis message needs no acknowledgement of its own.

        Kept by Redis id in the broker, never in the message's options: those
        travel with every copy of the message (a retry), which must be acked.
        """
        self.broker.acknowledged.add(self.redis_id)


class DeadLetteringConsumer(_RedisConsumer):
    """A consumer that dead-letters undecodable messages instead of stalling on them."""

    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)  # type: ignore[no-untyped-call]
        if queue_name.endswith(".DQ"):
            self._requeue_forgotten_delayed()

    def _requeue_forgotten_delayed(self) -> None:
        """Put back delayed messages a previous consumer of this worker fetched and then dropped."""
        held = self.broker.client.smembers(self._acks_key())
        if held:
            self.broker.do_requeue(self.queue_name, *held)
            logger.warning("requeued %d delayed message(s) dropped after a Redis error", len(held))

    def _acks_key(self) -> str:
        return f"{self.broker.namespace}:__acks__.{self.broker.broker_id}.{self.queue_name}"

    def ack(self, message: Any) -> None:
        acknowledged = self.broker.acknowledged
        redis_id = message.options.get("redis_message_id")
        if redis_id in acknowledged:
            acknowledged.discard(redis_id)  # acknowledged with its delivery record
            self.queued_message_ids.discard(message.message_id)
            return
        super().ack(message)  # type: ignore[no-untyped-call]

    def __next__(self) -> Any:
        while True:
            try:
                return super().__next__()  # type: ignore[no-untyped-call]
            except DecodeError as error:
                self._dead_letter(error)

    def _redis_id_of(self, data: bytes) -> str | None:
        """The id under which ``data`` sits among this consumer's fetched messages."""
        client = self.broker.client
        namespace = self.broker.namespace
        fetched = sorted(client.smembers(self._acks_key()))
        if not fetched:
            return None
        stored = client.hmget(f"{namespace}:{self.queue_name}.msgs", fetched)
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
        record(letter)
        if redis_id is not None:
            self.broker.do_ack(self.queue_name, redis_id)
        logger.error("dead-lettered an undecodable message %s on %s: %s", letter.id, letter.queue, error.error)


class WorkerBroker(RedisBroker):
    """The Redis broker workers consume with (see the module docstring).

    Its commands (fetch, ack, enqueue...) run Dramatiq's own dispatch script
    over this thread's connection: two of them per message, and through
    redis-py's wrappers they cost a worker more CPU than the round trips.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        if self.client is not redis_client():
            raise ValueError("WorkerBroker runs its scripts on mailqueue's client: build it with new_broker()")
        self._dispatch_script = LuaScript(self.scripts["dispatch"].script)  # type: ignore[arg-type]
        #: Redis ids of messages whose delivery record also acknowledged them (see EarlyAck).
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
        wait = ENQUEUE_RETRY_MIN
        while True:
            try:
                return super().enqueue(message, delay=delay)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                logger.error("Redis is unavailable, re-enqueueing %s in %.1fs: %s", message.message_id, wait, error)
                time.sleep(wait)
                wait = min(wait * 2, ENQUEUE_RETRY_MAX)
