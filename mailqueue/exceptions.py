"""One error tree for mailqueue.

Runtime errors derive from :class:`MailQueueError`. Configuration errors derive
from Django's ``ImproperlyConfigured`` and sit outside that tree, so neither
``fail_silently`` nor a worker's retry can ever swallow them.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.core.exceptions import ImproperlyConfigured


class MailQueueImproperlyConfigured(ImproperlyConfigured):
    """The MAILQUEUE or MAILERS setting is wrong; the message says what to fix."""


class MailQueueError(Exception):
    """Base class of every runtime error mailqueue raises."""


# --- enqueue side: raised from send_mail() / send_messages() ---------------


class EnqueueError(MailQueueError):
    """A message could not be accepted; nothing of its batch was enqueued."""


class InvalidMessage(EnqueueError, ValueError):
    """The message itself is bad input. Subclasses say how.

    Derives from ``ValueError`` because that is what Django raises for a bad
    header, so existing ``except ValueError`` code keeps working.
    """


class InvalidAddress(InvalidMessage):
    """An address field holds something that is not one valid mailbox."""


class HeaderInjection(InvalidMessage):
    """A header name or value would let the sender forge extra headers."""


class InvalidHeader(InvalidMessage):
    """A header (given in ``headers=``, or made from ``content_subtype`` or a mimetype) that cannot be rendered.

    A second value for a header that appears once, a value the email package
    cannot fold or encode, a value of a type Django does not render.
    """


class UnserializableMessage(InvalidMessage):
    """A part of the message cannot travel through Redis (e.g. a file object)."""


class MessageTooLarge(InvalidMessage):
    """The encoded message is over ``MAILQUEUE['MAX_MESSAGE_BYTES']``."""


class UnknownQueue(InvalidMessage):
    """A per-message queue override named no configured queue."""


class BrokerUnavailable(EnqueueError):
    """Redis did not accept the batch (unreachable, timed out, or refused)."""


class BrokerAccessDenied(BrokerUnavailable):
    """Redis refused mailqueue's credentials, an ACL permission or TLS: not an outage, a setting to fix.

    A runtime error all the same (the batch still waits in the outbox, and a
    fixed setting lets the relay push it); ``fix`` says what to change.
    """

    def __init__(self, reason: str, *, fix: str):
        super().__init__(reason)
        self.fix = fix


# --- worker side ------------------------------------------------------------


class EnvelopeError(MailQueueError):
    """A payload from Redis is not an envelope this version can read.

    Keeps the raw payload and the cause so the dead-letter record can show both.
    """

    def __init__(self, reason: str, raw: object = None, cause: BaseException | None = None):
        super().__init__(reason)
        self.raw = raw
        self.cause = cause


class LogEventError(MailQueueError, ValueError):
    """An entry of the message log's stream is not an event this version can read; keeps the entry and the cause."""

    def __init__(self, reason: str, raw: object = None, cause: BaseException | None = None):
        super().__init__(reason)
        self.raw = raw
        self.cause = cause


class DeliveryError(MailQueueError):
    """A provider failed to take a message.

    Carries the envelope id, the provider alias and the underlying cause, and
    whether the message itself is at fault (``message_fault``: it cannot be
    rendered, encoded or addressed, or the provider's own checks refused it
    before any sending): such a failure says nothing about the provider, and
    is never counted against its circuit or its failure counters.
    """

    def __init__(
        self,
        reason: str,
        *,
        envelope_id: str | None = None,
        provider: str | None = None,
        cause: BaseException | None = None,
        message_fault: bool = False,
    ):
        super().__init__(reason)
        self.envelope_id = envelope_id
        self.provider = provider
        self.cause = cause
        self.message_fault = message_fault


class TransientDeliveryError(DeliveryError):
    """Worth trying again later: connection refused, timeout, 4xx SMTP, HTTP 429/5xx."""


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help: recipients refused, invalid address, a message that cannot be rendered."""


class ProviderRefused(DeliveryError):
    """This provider will not take this message (sender not allowed, content refused), another may.

    Not retried on the same provider; the next provider in the chain is tried,
    and when every provider refuses, the message is dead-lettered.
    """


class ChainFailure(DeliveryError):
    """No provider of the chain took the message; ``errors`` holds each provider's failure."""

    headline = "no provider took the message"

    def __init__(self, envelope_id: str, errors: Sequence[DeliveryError]):
        summary = "; ".join(f"{error.provider}: {error}" for error in errors)
        super().__init__(
            f"{self.headline}: {summary}",
            envelope_id=envelope_id,
            provider=errors[-1].provider if errors else None,
            cause=errors[-1] if errors else None,
        )
        self.errors = tuple(errors)


class AllProvidersRefused(ChainFailure, PermanentDeliveryError):
    """Every provider in the queue's chain refused the message."""

    headline = "every provider refused"


class AllProvidersFailed(ChainFailure, TransientDeliveryError):
    """Every provider in the queue's chain failed (at least one transiently) in this attempt."""

    headline = "all providers failed"


class DeliveryDeferred(MailQueueError):
    """Not a failure: the providers are at their rate or concurrency limit, or their circuits are open.

    The worker re-schedules the message ``delay`` seconds later without using
    up one of its retries. ``draw`` is a "weighted" message's draw, which the
    copy put back keeps: drawn again, a message waiting for a provider at its
    limit would leave it, and the split would drift from the weights.
    ``not_after`` (a time, the worker's clock) is when a "spill-over"
    message's latency budget runs out: the jitter added to ``delay`` must not
    carry the copy past it.
    """

    def __init__(
        self,
        reason: str,
        *,
        envelope_id: str,
        delay: float,
        draw: float | None = None,
        not_after: float | None = None,
    ):
        super().__init__(reason)
        self.envelope_id = envelope_id
        self.delay = delay
        self.draw = draw
        self.not_after = not_after
