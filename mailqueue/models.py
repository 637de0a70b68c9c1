"""The database side of mailqueue: the outbox (mail waiting for Redis) and the message log."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class OutboxMessage(models.Model):
    """One encoded message that ``manage.py mailqueue relay`` will push to Redis."""

    envelope_id = models.CharField(max_length=32, unique=True)
    queue = models.CharField(max_length=200)
    #: The Dramatiq message id under which it is stored in Redis (part of ``data``).
    redis_id = models.CharField(max_length=36)
    #: The encoded Dramatiq message, exactly as it would have been pushed.
    data = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    #: Why it is here: the Redis error at send time.
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ("id",)
        verbose_name = "outbox message"

    def __str__(self) -> str:
        return f"{self.envelope_id} ({self.queue})"


class Status(models.TextChoices):
    """Where a message is. The last three are for delivery events that tracking webhooks will report."""

    QUEUED = "queued"
    #: Waiting for a rate limit, a busy provider or a retry's backoff.
    DEFERRED = "deferred"
    SENT = "sent"
    #: Refused for good (by every provider, or for a fault of its own), on its way to the dead letters.
    FAILED = "failed"
    #: In the dead-letter store: ``manage.py mailqueue requeue`` can put it back.
    DEAD = "dead"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class Message(models.Model):
    """One queued message, as the log writer last saw it: its metadata and where it is, never its body.

    Written only by the log writer (``manage.py mailqueue log``) from the events
    the enqueue and the workers append to a Redis stream; ``send_mail()`` never
    touches the database.
    """

    #: The id ``send_mail()`` put on ``message.mailqueue_id``.
    envelope_id = models.CharField(max_length=64, primary_key=True)
    queue = models.CharField(max_length=200)
    #: When the event that named ``queue`` happened (queued, or a requeue or relay since).
    queue_at = models.DateTimeField(null=True, blank=True)
    mailer = models.CharField(max_length=200)
    #: Truncated to the field's length.
    subject = models.CharField(max_length=255, blank=True)
    from_email = models.CharField(max_length=320, blank=True)
    #: How many recipients (to, cc, bcc); the addresses are in MessageRecipient, if LOG["RECIPIENTS"] keeps them.
    recipient_count = models.PositiveIntegerField(default=0)
    #: Bytes of the encoded envelope (attachments included).
    size = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    #: When the event that set ``status`` happened: a status arriving late (written by another writer, or again
    #: after a crash) replaces it only if it is newer. ``queue_at``, ``provider_at`` and ``last_error_at`` do
    #: the same for their fields, and ``sent_at`` for ``provider_message_id``.
    status_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    #: The provider (MAILERS alias) that took it.
    provider = models.CharField(max_length=200, blank=True)
    #: When the event that named ``provider`` happened (sent, or failed / dead at a provider).
    provider_at = models.DateTimeField(null=True, blank=True)
    #: The provider's id for it (anymail's ``anymail_status.message_id``); for SMTP, the Message-ID sent.
    provider_message_id = models.CharField(max_length=255, blank=True)
    composed_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    #: When the event that reported ``last_error`` happened (the same rule as ``status_at``).
    last_error_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-queued_at",)
        indexes = [
            models.Index(fields=["-queued_at"], name="mq_message_queued"),
            models.Index(fields=["status", "-queued_at"], name="mq_message_status"),
            models.Index(fields=["queue", "-queued_at"], name="mq_message_queue"),
            models.Index(fields=["provider", "-queued_at"], name="mq_message_provider"),
            models.Index(fields=["provider_message_id"], name="mq_message_provider_id"),
        ]

    def __str__(self) -> str:
        return f"{self.envelope_id} ({self.status})"


class RecipientKind(models.TextChoices):
    TO = "to"
    CC = "cc"
    BCC = "bcc"


class MessageRecipient(models.Model):
    """One recipient of a logged message: what the search by address and by domain reads, through an index.

    With LOG["RECIPIENTS"] = "hash", ``address`` holds a SHA-256 of the
    lower-cased address (the search hashes what it is given); with "off",
    no rows are written.
    """

    #: Not indexed alone: the unique (message, kind, address) constraint's index serves lookups by message.
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="recipients", db_constraint=False, db_index=False
    )
    kind = models.CharField(max_length=3, choices=RecipientKind.choices)
    #: Lower-cased address (or its hash).
    address = models.CharField(max_length=320)
    #: Lower-cased domain, without the "@".
    domain = models.CharField(max_length=255)

    class Meta:
        indexes = [
            models.Index(fields=["address"], name="mq_recipient_address"),
            # With the message id: a domain search reads this index alone, never the table's rows.
            models.Index(fields=["domain", "message"], name="mq_recipient_domain_message"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["message", "kind", "address"], name="mq_recipient_once"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}: {self.address}"


class EventKind(models.TextChoices):
    QUEUED = "queued"
    ATTEMPT_FAILED = "attempt_failed"
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"
    DEAD = "dead"
    REQUEUED = "requeued"
    RELAYED = "relayed"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class MessageEvent(models.Model):
    """One step of a message's timeline, as the stream recorded it."""

    #: No database constraint: an event may be written in the same batch as its message, or (its
    #: ``queued`` event trimmed from a full stream) before the row exists.
    #: Not indexed alone: the (message, at) index serves the timeline and the deletes by message.
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="events", db_constraint=False, db_index=False
    )
    #: The Redis stream entry id: a batch written twice (a writer killed before it acknowledged) adds nothing.
    stream_id = models.CharField(max_length=40, unique=True)
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    at = models.DateTimeField()
    provider = models.CharField(max_length=200, blank=True)
    attempt = models.PositiveIntegerField(null=True, blank=True)
    #: The error or reason, where the event has one.
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ("at", "id")
        indexes = [models.Index(fields=["message", "at"], name="mq_event_message")]

    def __str__(self) -> str:
        return f"{self.kind} at {self.at:%Y-%m-%d %H:%M:%S}"
