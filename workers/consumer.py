"""Dramatiq's Redis consumer, made to dead-letter a stored message it cannot decode.

Dramatiq's own consumer raises on such a message and restarts; the message,
and every message fetched with it, then stays in this worker's in-progress
set for as long as the worker lives, and the queue stalls behind it. Here the
message goes to mailqueue's dead letters with the decode error, and the
consumer carries on with the rest of its batch. (This builds on
``dramatiq.brokers.redis._RedisConsumer``, pinned with dramatiq 2.2.)
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import q_name
from dramatiq.errors import DecodeError

from mailqueue.deadletters import DeadLetter, record

logger = logging.getLogger(__name__)


class DeadLetteringConsumer(_RedisConsumer):
    """A consumer that dead-letters undecodable messages instead of stalling on them."""

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
        fetched = sorted(client.smembers(f"{namespace}:__acks__.{self.broker.broker_id}.{self.queue_name}"))
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
    """The Redis broker workers consume with: undecodable messages are dead-lettered."""

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return DeadLetteringConsumer
