"""One Dramatiq actor per configured queue, built from settings.

Each actor decodes the envelope, runs the delivery pipeline, and owns the
outcome: delivered (ack), permanent failure or undecodable payload (dead
letter now), transient failure or time limit (raise, so Dramatiq retries with
exponential backoff), the same on the last allowed attempt (dead letter).
If recording the dead letter itself fails (Redis away), the error propagates
and Dramatiq retries the message: it is attempted once more, never dropped.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from functools import cache
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, TimeLimitExceeded

from mailqueue.broker import MESSAGE_ENCODER, actor_name, new_broker
from mailqueue.conf import MailQueueConfig, QueueConfig, get_config, on_config_reset
from mailqueue.deadletters import DeadLetter, record
from mailqueue.envelope import Envelope
from mailqueue.exceptions import DeliveryDeferred, EnvelopeError, PermanentDeliveryError

from .consumer import EarlyAck, WorkerBroker
from .delivery import deliver
from .middleware import CloseDatabaseConnections, CloseProviderConnections

logger = logging.getLogger(__name__)


#: Message option holding a dead letter not yet recorded (Redis failed while
#: recording it): the next attempt records it instead of sending again.
PENDING_DEAD_LETTER = "mailqueue_dead_letter"

#: Message option counting how often the message was deferred (rate limits, open circuits).
DEFERRALS = "mailqueue_deferrals"


def _reason(error: BaseException, queue: QueueConfig) -> str:
    if isinstance(error, TimeLimitExceeded):
        return f"TimeLimitExceeded: the attempt ran over the queue's time_limit ({queue.time_limit} ms)"
    return str(error) or type(error).__name__


def dead_letter(letter: DeadLetter, options: dict[str, Any] | None) -> None:
    """Record ``letter``; if Redis fails, keep it in the message options and re-raise.

    Dramatiq then retries the message, and that attempt only records the letter.
    """
    try:
        record(letter)
    except Exception:
        if options is not None:
            options[PENDING_DEAD_LETTER] = letter.to_json()
        raise
    logger.error(
        "dead-lettered %s on %s after %d attempt(s): %s", letter.id, letter.queue, letter.attempts, letter.reason
    )


def reschedule(current: Any, deferred: DeliveryDeferred) -> None:
    """Put the message back ``deferred.delay`` seconds later, its retry count untouched.

    The copy is enqueued before this attempt is acknowledged: a crash in between
    leaves two copies, and the delivery record keeps the second from sending.
    """
    if current is None:
        raise deferred
    deferrals = current.options.get(DEFERRALS, 0) + 1
    # Jitter, so messages held back together do not all come back in the same instant.
    delay = deferred.delay * (1 + random.random() / 10)
    dramatiq.get_broker().enqueue(current.copy(options={DEFERRALS: deferrals}), delay=max(1, int(delay * 1000)))
    logger.info("deferred %s by %.2f s (%d time(s)): %s", current.message_id, delay, deferrals, deferred)


def process(payload: Any, queue: QueueConfig, config: MailQueueConfig, *, problem: str | None = None) -> str | None:
    """Deliver one queued payload; return the provider that took it, or None if dead-lettered.

    ``problem`` says why the payload is known to be unreadable before decoding it.
    """
    current = CurrentMessage.get_current_message()
    options = current.options if current is not None else None
    retries = options.get("retries", 0) if options is not None else 0
    message_id = current.message_id if current is not None else "unknown"
    attempts = retries + 1
    pending = options.pop(PENDING_DEAD_LETTER, None) if options is not None else None
    if pending is not None:
        try:
            letter = DeadLetter(**pending)
        except TypeError:
            logger.exception("unreadable pending dead letter on %s; attempting delivery again", message_id)
        else:
            dead_letter(letter, options)
            return None
    try:
        if problem is not None:
            raise EnvelopeError(f"{problem}, got {payload!r:.200}", payload)
        envelope = Envelope.decode(payload)
        provider = deliver(envelope, queue, config, EarlyAck.of(current))
    except DeliveryDeferred as deferred:
        reschedule(current, deferred)
        return None
    except (Exception, TimeLimitExceeded) as error:
        final = isinstance(error, (EnvelopeError, PermanentDeliveryError)) or retries >= queue.max_retries
        if not final:
            raise
        letter = DeadLetter(
            id=message_id,
            queue=queue.name,
            reason=_reason(error, queue),
            error_type=type(error).__name__,
            failed_at=time.time(),
            attempts=attempts,
            payload=payload,
            provider=getattr(error, "provider", None),
        )
        dead_letter(letter, options)
        return None
    logger.info("delivered %s from %s via %s (attempt %d)", envelope.id, queue.name, provider, attempts)
    return provider


def _deliverer(queue: QueueConfig, config: MailQueueConfig) -> Callable[..., None]:
    def deliver_queue(*args: Any, **kwargs: Any) -> None:
        if len(args) == 1 and not kwargs:
            process(args[0], queue, config)
        else:
            # Not sent by mailqueue: dead-letter it with what it carried rather than fail (and retry) forever.
            process({"args": list(args), "kwargs": kwargs}, queue, config, problem="expected one envelope argument")

    deliver_queue.__name__ = deliver_queue.__qualname__ = f"deliver_{queue.name}"
    return deliver_queue


def declare(broker: RedisBroker, config: MailQueueConfig) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Add mailqueue's middleware and one delivery actor per queue to ``broker``."""
    present = {type(middleware) for middleware in broker.middleware}
    for middleware in (CurrentMessage, CloseProviderConnections, CloseDatabaseConnections):
        if middleware not in present:
            broker.add_middleware(middleware())
    actors = {}
    for queue in config.queues.values():
        name = actor_name(queue.name)
        if name in broker.actors:
            actors[queue.name] = broker.get_actor(name)
            continue
        actors[queue.name] = dramatiq.actor(
            actor_name=name,
            queue_name=queue.name,
            broker=broker,
            # The actor dead-letters on its last attempt itself; Dramatiq must never
            # fail the message into its own expiring dead-letter set instead.
            max_retries=None,
            min_backoff=queue.min_backoff,
            max_backoff=queue.max_backoff,
            time_limit=queue.time_limit,
        )(_deliverer(queue, config))
    return actors


@cache
def _shared_broker() -> RedisBroker:
    return new_broker(WorkerBroker)


on_config_reset(_shared_broker.cache_clear)


def worker_broker(*, fresh: bool = False) -> RedisBroker:
    """The configured broker with every queue's actor declared: what workers run.

    ``fresh=True`` builds a new broker instead of the process-wide one, so a
    test's short-lived worker leaves no middleware behind on the shared broker.
    """
    dramatiq.set_encoder(MESSAGE_ENCODER)
    broker = new_broker(WorkerBroker) if fresh else _shared_broker()
    declare(broker, get_config())
    dramatiq.set_broker(broker)
    return broker
