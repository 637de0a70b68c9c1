"""One Dramatiq actor per configured queue, built from settings.

An actor's body is the whole story of one attempt: read the envelope, send it
through the queue's provider chain (workers/delivery.py), and hand what
happened to workers/outcomes.py, which decides and announces what follows.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, TimeLimitExceeded

from mailqueue.broker import MESSAGE_ENCODER, actor_name, new_broker
from mailqueue.conf import MailQueueConfig, QueueConfig, get_config, on_config_reset
from mailqueue.envelope import Envelope
from mailqueue.exceptions import EnvelopeError

from .delivery import Delivered, deliver_envelope
from .dramatiq_redis import Keepalive, WorkerBroker, ack_target
from .middleware import CloseDatabaseConnections, CloseProviderConnections
from .outcomes import Attempt, conclude
from .redaction import actor_arguments
from .wakeup import WakeLocalConsumers


def run_attempt(payload: Any, queue: QueueConfig, config: MailQueueConfig, *, problem: str | None = None) -> None:
    """Attempt to deliver one queued payload, then conclude: sent, deferred, retried or dead-lettered.

    ``problem`` says why the payload is known to be unreadable before decoding it.
    """
    current = CurrentMessage.get_current_message()
    attempt = Attempt.of(current, queue)
    envelope: Envelope | None = None
    outcome: Delivered | BaseException
    try:
        if problem is not None:
            # The reason names the problem, never the payload's content: it is logged (the letter keeps the payload).
            raise EnvelopeError(problem, payload)
        envelope = Envelope.decode(payload)
        outcome = deliver_envelope(
            envelope,
            queue,
            config,
            attempt=attempt.number,
            ack=ack_target(current) if current else None,
            draw=attempt.draw,
        )
    except (Exception, TimeLimitExceeded) as error:  # noqa: BLE001  (every error is an outcome to conclude)
        outcome = error
    conclude(attempt, payload, outcome, envelope)


def _queue_actor_function(queue: QueueConfig, config: MailQueueConfig) -> Callable[..., None]:
    def deliver_from_queue(*args: Any, **kwargs: Any) -> None:
        if len(args) == 1 and not kwargs:
            run_attempt(args[0], queue, config)
        else:
            # Not sent by mailqueue: dead-letter it with what it carried rather than fail (and retry) forever.
            problem = f"expected one envelope argument, got {len(args)} and {len(kwargs)} keyword argument(s)"
            run_attempt({"args": list(args), "kwargs": kwargs}, queue, config, problem=problem)

    deliver_from_queue.__name__ = deliver_from_queue.__qualname__ = f"deliver_from_{queue.name}"
    return deliver_from_queue


def declare(broker: RedisBroker, config: MailQueueConfig) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Add mailqueue's middleware and one delivery actor per queue to ``broker``."""
    present = {type(middleware) for middleware in broker.middleware}
    for middleware in (CurrentMessage, CloseProviderConnections, CloseDatabaseConnections, WakeLocalConsumers):
        if middleware not in present:
            broker.add_middleware(middleware())
    if Keepalive not in present:
        # Recovers every configured queue, not only the ones this pool consumes: a dead worker of
        # another pool gets its messages back as soon as any worker notices.
        broker.add_middleware(
            Keepalive(config.queues, interval=config.recovery_interval, timeout=config.heartbeat_timeout)
        )
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
            # The actor decides every outcome itself (workers/outcomes.py). Dramatiq's Retries only
            # retries an error that escapes it, with no limit: it must never fail the message into
            # Dramatiq's own expiring dead-letter set.
            max_retries=None,
            min_backoff=queue.min_backoff,
            max_backoff=queue.max_backoff,
            time_limit=queue.time_limit,
        )(_queue_actor_function(queue, config))
        actors[queue.name].logger.addFilter(actor_arguments)
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
