"""The durable fallback: keep a batch in the database when Redis refuses it, relay it when Redis is back.

Relayed messages are pushed guarded (by envelope id), so a relay that crashes
between pushing and deleting its rows queues nothing twice when it runs again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis
from django.db import DatabaseError, transaction
from dramatiq.errors import DecodeError

from . import eventlog
from .broker import MESSAGE_ENCODER
from .client import exchange
from .conf import get_config
from .enqueue import EncodedMessage, push, refusal
from .envelope import Envelope
from .exceptions import BrokerAccessDenied, BrokerUnavailable, EnvelopeError
from .keys import QueueKeys
from .models import OutboxMessage
from .signals import MessageRelayed, announce

logger = logging.getLogger(__name__)

#: Rows pushed per relay transaction, and their most bytes (one Redis call carries them all).
RELAY_BATCH = 500
RELAY_BATCH_BYTES = 64 * 1024 * 1024


def keep(batch: Sequence[EncodedMessage], error: BrokerUnavailable) -> None:
    """Store ``batch`` in the outbox; raise BrokerUnavailable if the database refuses too."""
    database = get_config().outbox_database
    rows = [
        OutboxMessage(
            envelope_id=item.envelope_id, queue=item.queue, redis_id=item.redis_id, data=item.data, reason=str(error)
        )
        for item in batch
    ]
    try:
        # ignore_conflicts: an envelope id already waiting (same idempotency key) is one message.
        OutboxMessage.objects.using(database).bulk_create(rows, ignore_conflicts=True)
    except DatabaseError as db_error:
        raise BrokerUnavailable(
            f"{error} The outbox database {database!r} refused it too ({db_error}); the message was not accepted."
        ) from db_error
    if isinstance(error, BrokerAccessDenied):
        # Not an outage: nothing gets better by waiting, so it is an ERROR that says what to fix.
        logger.error(
            "Redis refused mailqueue (%s): %d message(s) kept in the outbox; `manage.py mailqueue relay` pushes "
            "them once this is fixed: %s",
            error.__cause__ or error,
            len(rows),
            error.fix,
        )
        return
    logger.warning(
        "Redis is unavailable (%s): %d message(s) kept in the outbox until `manage.py mailqueue relay` pushes them",
        error,
        len(rows),
    )


def waiting() -> int:
    """How many messages wait in the outbox."""
    return OutboxMessage.objects.using(get_config().outbox_database).count()


def latest_reason() -> str | None:
    """Why the newest waiting message went to the outbox (the Redis error), or None when none waits."""
    return (
        OutboxMessage.objects.using(get_config().outbox_database)
        .order_by("-id")
        .values_list("reason", flat=True)
        .first()
    )


def already_queued(rows: Sequence[OutboxMessage]) -> set[str]:
    """Envelope ids of ``rows`` whose message is on its queue already, in one round trip.

    A send that timed out may have reached Redis, which then ran it (a paused
    Redis does, once it resumes): the message is queued and in the outbox. The
    relay's guard cannot tell (that push was not guarded), but the message
    sits in its queue's messages hash under the redis id the row keeps, until a
    worker acknowledges it. Once acknowledged it is gone from there, and a copy
    the relay pushes then is stopped by the worker's delivery record instead.
    """
    namespace = get_config().namespace
    commands = [("HEXISTS", QueueKeys.of(namespace, row.queue).messages, row.redis_id) for row in rows]
    try:
        # On this thread's connection, as the push that follows: one try, no redis-py retries to wait out.
        found = exchange(commands, lambda wire: [wire.read() for _ in commands])
    except redis.RedisError as error:
        raise refusal(error, len(rows)) from error
    return {row.envelope_id for row, there in zip(rows, found, strict=True) if there}


def relay_events(row: OutboxMessage) -> bytes:
    """The ``queued`` and ``relayed`` events a relayed message's push appends.

    The send that kept it in the outbox appended nothing (Redis refused that
    call), so its ``queued`` event is made now, from the stored message itself:
    the row keeps exactly what the push would have written, and nothing more
    (no second copy of the event to keep in step). An unreadable row gets its
    ``relayed`` event only; the worker will dead-letter it.
    """
    relayed = eventlog.relayed(row.envelope_id, row.queue)
    try:
        envelope = Envelope.decode(MESSAGE_ENCODER.decode(bytes(row.data))["args"][0])
    except (EnvelopeError, DecodeError, KeyError, IndexError, TypeError) as error:
        logger.warning("outbox message %s has no readable envelope for its queued event: %s", row.envelope_id, error)
        return relayed
    return eventlog.queued(envelope, len(row.data)) + b"\n" + relayed


def relay_batch(limit: int = RELAY_BATCH) -> int:
    """Push up to ``limit`` waiting messages to Redis, oldest first; return how many.

    Raises BrokerUnavailable (nothing is removed) when Redis still refuses them.
    Rows of queues no longer configured stay where they are, and are logged.
    """
    config = get_config()
    database = config.outbox_database
    with transaction.atomic(using=database):
        rows = OutboxMessage.objects.using(database).filter(queue__in=list(config.queues)).order_by("id")
        if transaction.get_connection(database).features.has_select_for_update_skip_locked:
            # Several relays may run: each takes rows the others are not pushing.
            rows = rows.select_for_update(skip_locked=True)
        taken: list[OutboxMessage] = []
        size = 0
        for row in rows[:limit]:
            size += len(row.data)
            if taken and size > RELAY_BATCH_BYTES:
                break
            taken.append(row)
        if not taken:
            return 0
        queued = already_queued(taken)
        if queued:
            logger.info(
                "%d outbox message(s) are already queued (Redis ran the send after its reply was lost): "
                "not pushed again",
                len(queued),
            )
        log = config.log.enabled
        push(
            [
                EncodedMessage(
                    queue=row.queue,
                    envelope_id=row.envelope_id,
                    redis_id=row.redis_id,
                    data=bytes(row.data),
                    guarded=True,
                    events=relay_events(row) if log else b"",
                )
                for row in taken
                if row.envelope_id not in queued
            ]
        )
        OutboxMessage.objects.using(database).filter(pk__in=[row.pk for row in taken]).delete()
    for row in taken:
        announce(MessageRelayed(envelope_id=row.envelope_id, queue=row.queue))
    return len(taken)


def stranded() -> dict[str, int]:
    """Waiting messages whose queue is no longer configured, by queue: the relay leaves them alone."""
    config = get_config()
    counts: dict[str, int] = {}
    for queue in (
        OutboxMessage.objects.using(config.outbox_database)
        .exclude(queue__in=list(config.queues))
        .values_list("queue", flat=True)
    ):
        counts[queue] = counts.get(queue, 0) + 1
    return counts
