"""``mailqueue.lookup(mailqueue_id)``: where a message is, from the log, or from Redis before the log has it.

The log writer records a message a moment after ``send_mail()`` (or, while the
writer is down, later): in that window the answer comes from Redis itself (the
delivery record, the dead letters, the queues) or the outbox table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from .client import redis_client
from .conf import get_config
from .keys import QueueKeys, delivered_key
from .models import Message, OutboxMessage, Status

#: Entries read per HSCAN call while looking for a queued message in a queue's hash.
SCAN_COUNT = 1000


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageStatus:
    """Where one message is, as far as mailqueue knows."""

    envelope_id: str
    #: A ``mailqueue.models.Status`` value.
    status: str
    queue: str = ""
    provider: str = ""
    provider_message_id: str = ""
    attempts: int = 0
    queued_at: datetime | None = None
    sent_at: datetime | None = None
    updated_at: datetime | None = None
    last_error: str = ""
    #: "log": the Message row; "redis": read from Redis, the log has no row yet; "outbox": waiting in the outbox.
    source: Literal["log", "redis", "outbox"] = "log"


def lookup(mailqueue_id: str) -> MessageStatus | None:
    """The status of the message ``send_mail()`` gave this id; None when mailqueue has no trace of it."""
    row = Message.objects.filter(envelope_id=mailqueue_id).first()
    if row is not None:
        return MessageStatus(
            envelope_id=row.envelope_id,
            status=row.status,
            queue=row.queue,
            provider=row.provider,
            provider_message_id=row.provider_message_id,
            attempts=row.attempts,
            queued_at=row.queued_at,
            sent_at=row.sent_at,
            updated_at=row.updated_at,
            last_error=row.last_error,
            source="log",
        )
    return from_redis(mailqueue_id) or from_outbox(mailqueue_id)


def from_redis(envelope_id: str) -> MessageStatus | None:
    """The message's status read from Redis: delivered, dead-lettered, or waiting in (or taken from) a queue.

    Finding a queued message scans its queue's hashes (the envelope id is inside
    the stored message, not its key): a cost paid only for a message the log has
    not written yet.
    """
    config = get_config()
    client = redis_client()
    queues = list(config.queues)
    with client.pipeline(transaction=False) as pipe:
        pipe.get(delivered_key(config.namespace, envelope_id))
        for queue in queues:
            pipe.hget(QueueKeys.of(config.namespace, queue).dead_messages, envelope_id)
        delivered, *dead = pipe.execute()
    if delivered is not None:
        provider = delivered.decode() if isinstance(delivered, bytes) else str(delivered)
        return MessageStatus(envelope_id=envelope_id, status=Status.SENT, provider=provider, source="redis")
    for queue, record in zip(queues, dead, strict=True):
        if record is not None:
            letter = json.loads(record)
            return MessageStatus(
                envelope_id=envelope_id,
                status=Status.DEAD,
                queue=queue,
                provider=letter.get("provider") or "",
                attempts=int(letter.get("attempts") or 0),
                updated_at=datetime.fromtimestamp(float(letter["failed_at"]), UTC),
                last_error=letter.get("reason") or "",
                source="redis",
            )
    needle = f'"message_id":"{envelope_id}"'.encode()
    for queue in queues:
        keys = QueueKeys.of(config.namespace, queue)
        for key, status in ((keys.messages, Status.QUEUED), (keys.delayed_messages, Status.DEFERRED)):
            for _, data in client.hscan_iter(key, count=SCAN_COUNT):
                if needle in data:
                    return MessageStatus(envelope_id=envelope_id, status=status, queue=queue, source="redis")
    return None


def from_outbox(envelope_id: str) -> MessageStatus | None:
    """A message kept in the outbox (Redis was away when it was sent): queued, once the relay pushes it."""
    kept = OutboxMessage.objects.using(get_config().outbox_database).filter(envelope_id=envelope_id).first()
    if kept is None:
        return None
    return MessageStatus(
        envelope_id=envelope_id,
        status=Status.QUEUED,
        queue=kept.queue,
        queued_at=kept.created_at,
        last_error=kept.reason,
        source="outbox",
    )
