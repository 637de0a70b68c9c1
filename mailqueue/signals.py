"""What happened to a message, announced as Django signals: the one outcome hook.

Workers, the outbox relay and the dead-letter requeue call ``announce(event)``
for every state change they cause; nothing else sends these signals. Each
signal carries one small frozen value as ``event``::

    from django.dispatch import receiver
    from mailqueue.signals import MessageSent, message_sent

    @receiver(message_sent)
    def count_sent(sender: type[MessageSent], event: MessageSent, **kwargs):
        statsd.incr(f"mail.sent.{event.provider}")

A receiver that raises never changes what becomes of the message: Django's
``send_robust`` catches it and logs it at ERROR on ``django.dispatch`` (which
Django's default logging mails to ADMINS when DEBUG is off: a receiver that
fails for every message mails the admins once per message). Receivers run in
the process that caused the change (a worker for most events),
synchronously, so they should be quick.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.dispatch import Signal


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageSent:
    """A provider accepted the message."""

    envelope_id: str
    queue: str
    #: The MAILERS alias the application sent through (``using=``).
    mailer: str
    #: The MAILERS alias of the provider that took it.
    provider: str
    #: The provider's own id where its backend reports one (anymail's ``anymail_status.message_id``;
    #: several ids, one per recipient, are joined with ", "), else None.
    provider_message_id: str | None
    #: The Message-ID header that was sent; None when none was (an ESP's API, and the caller set none).
    message_id: str | None
    #: 1 for the first attempt; deferrals (rate limits, open circuits) do not count.
    attempt: int
    #: From ``send_mail()`` to the provider's acceptance.
    queued_seconds: float
    #: Spent handing the message to the provider, in-attempt retries included.
    send_seconds: float


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageDeferred:
    """The message waits and will be attempted again: a provider at its limit, open circuits, or a retry."""

    envelope_id: str
    queue: str
    reason: str
    #: Unix time at which it becomes due again.
    until: float
    #: True when the wait uses up one of the queue's retries (a failed attempt), False for a limit.
    retry: bool
    attempt: int


@dataclass(frozen=True, kw_only=True, slots=True)
class AttemptFailed:
    """One provider did not take the message in this attempt (the chain may go on to the next)."""

    envelope_id: str
    queue: str
    provider: str
    #: The class name of the provider's error (``SMTPServerDisconnected``, ``AnymailAPIError`` ...).
    error_type: str
    #: True when trying again later may help; False when this provider refused the message for good.
    transient: bool
    #: The error as one line: never the subject or body; refused recipients are named when the provider refused them.
    error: str
    attempt: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageDeadLettered:
    """No attempt will follow: the message is in the dead-letter store with its reason."""

    envelope_id: str
    queue: str
    reason: str
    error_type: str
    attempts: int
    #: The provider of the last failure, when one was involved.
    provider: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageRequeued:
    """An operator put a dead-lettered message back on its queue."""

    envelope_id: str
    queue: str


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageRelayed:
    """The outbox relay pushed a message that waited in the database while Redis was unavailable."""

    envelope_id: str
    queue: str


type Event = MessageSent | MessageDeferred | AttemptFailed | MessageDeadLettered | MessageRequeued | MessageRelayed

message_sent = Signal()
message_deferred = Signal()
attempt_failed = Signal()
message_dead_lettered = Signal()
message_requeued = Signal()
message_relayed = Signal()

SIGNALS: dict[type[Event], Signal] = {
    MessageSent: message_sent,
    MessageDeferred: message_deferred,
    AttemptFailed: attempt_failed,
    MessageDeadLettered: message_dead_lettered,
    MessageRequeued: message_requeued,
    MessageRelayed: message_relayed,
}


def announce(event: Event) -> None:
    """Send ``event`` to its signal's receivers; a receiver's error is logged (by Django), never raised."""
    signal = SIGNALS[type(event)]
    if signal.receivers:
        signal.send_robust(sender=type(event), event=event)
