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
  ``QuietMessageProxy``, which Dramatiq's logs name by id, not by content.

Importing this module with another Dramatiq version raises, naming the versions it works with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq import Message, MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis, q_name
from dramatiq.errors import DecodeError

from mailqueue.client import LuaScript, redis_client
from mailqueue.deadletters import DeadLetter, record
from mailqueue.exceptions import MailQueueImproperlyConfigured
from mailqueue.keys import QueueKeys, heartbeats_key, in_progress_key
from mailqueue.signals import MessageDeadLettered, announce

from .admission import AckTarget
from .patience import until_redis_accepts

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
                fetched = super().__next__()  # type: ignore[no-untyped-call]
            except DecodeError as error:
                self._dead_letter(error)
                continue
            # Dramatiq 2.2 wraps the decoded message in a MessageProxy (``_message``); rewrap it quietly.
            return None if fetched is None else QuietMessageProxy(fetched._message)

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
