"""The delivery pipeline, written once, in the order a reader expects.

For each provider in the queue's chain, primary first: send over this
thread's open connection; a transient failure is retried a few times with
tenacity (reconnecting each time), then the next provider is tried; a
permanent failure stops everything. When every provider failed transiently,
``AllProvidersFailed`` tells the actor to let Dramatiq retry later.
"""

from __future__ import annotations

import logging

from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from mailqueue.conf import MailQueueConfig, ProviderConfig
from mailqueue.envelope import Envelope
from mailqueue.exceptions import AllProvidersFailed, TransientDeliveryError

from .classify import classify
from .connections import connections

logger = logging.getLogger(__name__)


def send_once(alias: str, message: EmailMessage, envelope_id: str) -> None:
    """Hand ``message`` to provider ``alias``; raise a DeliveryError if it did not take it."""
    try:
        sent = connections.get(alias).send_messages([message])
    except Exception as error:
        connections.discard(alias)
        raise classify(error, provider=alias, envelope_id=envelope_id) from error
    except BaseException:
        # Interrupted mid-send (time limit, shutdown): the connection is in an unknown state.
        connections.discard(alias)
        raise
    if sent != 1:
        connections.discard(alias)
        raise TransientDeliveryError(
            f"provider reported {sent!r} messages sent instead of 1", envelope_id=envelope_id, provider=alias
        )


def send_with_retries(provider: ProviderConfig, message: EmailMessage, envelope_id: str) -> None:
    """``send_once`` with quick in-attempt retries of transient failures."""
    retrying = Retrying(
        stop=stop_after_attempt(provider.attempts),
        wait=wait_exponential(multiplier=provider.wait_min, max=provider.wait_max),
        retry=retry_if_exception_type(TransientDeliveryError),
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            send_once(provider.alias, message, envelope_id)


def deliver(envelope: Envelope, config: MailQueueConfig) -> str:
    """Deliver ``envelope`` through its queue's provider chain; return the provider used.

    Raises PermanentDeliveryError (do not retry), AllProvidersFailed (retry
    later), or EnvelopeError (the payload cannot be rebuilt).
    """
    message = envelope.to_message()
    failures: list[TransientDeliveryError] = []
    for alias in config.queues[envelope.queue].providers:
        try:
            send_with_retries(config.provider(alias), message, envelope.id)
        except TransientDeliveryError as error:
            if isinstance(error.cause, ImproperlyConfigured):
                logger.error("provider %s is misconfigured, failing over: %s", alias, error.cause, exc_info=error.cause)
            else:
                logger.warning("provider %s failed for %s, trying the next one: %s", alias, envelope.id, error)
            failures.append(error)
            continue
        return alias
    raise AllProvidersFailed(envelope.id, failures)
