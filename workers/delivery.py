"""The delivery pipeline, written once, in the order a reader expects.

For each provider in the queue's chain, primary first: ask for admission
(already delivered? circuit open? a rate-limit token and a concurrency
slot); send over this thread's open connection; a transient failure is
retried a few times with tenacity (reconnecting each time); a refusal by that
provider, or transient failures beyond its tries, move on to the next
provider; a permanent failure stops everything. Every outcome is recorded for
the provider's circuit and counters.

A provider at its limit defers the message (no failover, no retry used up);
a provider with an open circuit is skipped. When no provider took the
message, ``AllProvidersFailed`` tells the actor to let Dramatiq retry later,
and ``AllProvidersRefused`` (every provider refused) dead-letters it.
"""

from __future__ import annotations

import logging
import time

import redis
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from mailqueue.conf import MailQueueConfig, ProviderConfig, QueueConfig
from mailqueue.envelope import Envelope
from mailqueue.exceptions import (
    AllProvidersFailed,
    AllProvidersRefused,
    DeliveryDeferred,
    DeliveryError,
    MailQueueError,
    PermanentDeliveryError,
    ProviderRefused,
    TransientDeliveryError,
)

from .admission import Admission, Result, admit, new_claim, release, settle
from .classify import classify
from .connections import connections
from .consumer import EarlyAck

logger = logging.getLogger(__name__)

#: Seconds between two asks for a concurrency slot while the provider is busy.
BUSY_POLL = 0.02
#: Shortest deferral, in seconds: a busy provider with RATE_LIMIT_MAX_WAIT = 0 must not spin.
MIN_DEFERRAL = 0.05

#: What Django raises when a message's own content cannot be rendered.
RENDERING_ERRORS = (ValueError, TypeError, LookupError)


def _send(alias: str, message: EmailMessage, envelope_id: str) -> None:
    sent = connections.get(alias).send_messages([message])
    if sent != 1:
        raise TransientDeliveryError(
            f"provider reported {sent!r} messages sent instead of 1", envelope_id=envelope_id, provider=alias
        )


def _failure(error: Exception, alias: str, message: EmailMessage, envelope_id: str) -> DeliveryError:
    """Classify ``error``; a message that cannot even be rendered is a permanent failure."""
    if isinstance(error, DeliveryError):
        return error
    failure = classify(error, provider=alias, envelope_id=envelope_id)
    if isinstance(error, ValueError) and str(error).startswith("Invalid address"):
        # Django's SMTP backend refusing an address (prep_address): no provider will take it either.
        return PermanentDeliveryError(str(error), envelope_id=envelope_id, provider=alias, cause=error)
    if isinstance(failure, TransientDeliveryError) and isinstance(error, RENDERING_ERRORS):
        try:
            message.message()
        except RENDERING_ERRORS as rendering:
            return PermanentDeliveryError(
                f"message cannot be rendered: {type(rendering).__name__}: {rendering}",
                envelope_id=envelope_id,
                provider=alias,
                cause=rendering,
            )
    return failure


def send_once(alias: str, message: EmailMessage, envelope_id: str) -> None:
    """Hand ``message`` to provider ``alias``; raise a DeliveryError if it did not take it."""
    try:
        _send(alias, message, envelope_id)
    except Exception as error:
        connections.discard(alias)
        raise _failure(error, alias, message, envelope_id) from error
    except BaseException:
        # Interrupted mid-send (time limit, shutdown): the connection is in an unknown state.
        connections.discard(alias)
        raise


def send_with_retries(provider: ProviderConfig, message: EmailMessage, envelope_id: str) -> None:
    """``send_once`` with quick in-attempt retries of transient failures.

    The first try runs without tenacity: building its retry state for every
    message cost more than the rest of the worker's own code.
    """
    try:
        send_once(provider.alias, message, envelope_id)
        return
    except TransientDeliveryError:
        if provider.attempts <= 1:
            raise
    # Tenacity's exponential wait, continued: wait_min before the second try, then doubling.
    time.sleep(min(provider.wait_min, provider.wait_max))
    retrying = Retrying(
        stop=stop_after_attempt(provider.attempts - 1),
        wait=wait_exponential(multiplier=provider.wait_min * 2, max=provider.wait_max),
        retry=retry_if_exception_type(TransientDeliveryError),
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            send_once(provider.alias, message, envelope_id)


def _admission(
    envelope_id: str, provider: ProviderConfig, queue: QueueConfig, config: MailQueueConfig, claim: str
) -> Admission:
    """``admit``, waiting up to RATE_LIMIT_MAX_WAIT for a free concurrency slot."""
    deadline = time.monotonic() + config.rate_limit_max_wait
    while True:
        admission = admit(envelope_id, provider, queue, config, claim)
        if admission.outcome != "busy" or time.monotonic() >= deadline:
            return admission
        time.sleep(BUSY_POLL)


def _settle_quietly(
    admission: Admission, envelope_id: str, provider: ProviderConfig, result: Result, config: MailQueueConfig
) -> None:
    """``settle`` for an outcome that is already being raised: its own failure must not hide that."""
    try:
        settle(admission, envelope_id, provider, result, config)
    except Exception:
        logger.exception("could not record the %s outcome of %s at provider %s", result, envelope_id, provider.alias)


def deliver(envelope: Envelope, queue: QueueConfig, config: MailQueueConfig, ack: EarlyAck | None = None) -> str:
    """Deliver ``envelope`` through ``queue``'s provider chain; return the provider used.

    Raises PermanentDeliveryError (do not retry; AllProvidersRefused is one),
    AllProvidersFailed (retry later), DeliveryDeferred (re-schedule without
    using a retry), or EnvelopeError (cannot be rebuilt). With ``ack``, the
    delivery record also acknowledges the Dramatiq message.
    """
    message = envelope.to_message()
    claim = new_claim()
    try:
        return _through_chain(envelope, message, queue, config, claim, ack)
    except MailQueueError:
        # Not delivered: let the next attempt (or another copy) send it without waiting out the claim.
        # An interruption mid-send (time limit, shutdown) keeps the claim: the provider may have taken it.
        _release_quietly(envelope.id, claim, config)
        raise


def _release_quietly(envelope_id: str, claim: str, config: MailQueueConfig) -> None:
    try:
        release(envelope_id, claim, config)
    except Exception:
        logger.exception("could not release the sending claim on %s; it expires with the time limit", envelope_id)


def _through_chain(
    envelope: Envelope,
    message: EmailMessage,
    queue: QueueConfig,
    config: MailQueueConfig,
    claim: str,
    ack: EarlyAck | None,
) -> str:
    failures: list[DeliveryError] = []
    skipped: list[float] = []
    for alias in queue.providers:
        provider = config.provider(alias)
        admission = _admission(envelope.id, provider, queue, config, claim)
        if admission.outcome == "delivered":
            logger.warning("%s was already delivered via %s: not sending it again", envelope.id, admission.detail)
            return admission.detail
        if admission.outcome == "claimed":
            raise DeliveryDeferred(
                f"another worker is sending {envelope.id} right now", envelope_id=envelope.id, delay=admission.wait
            )
        if admission.outcome == "open":
            logger.info("provider %s is skipped for %s: its circuit is open", alias, envelope.id)
            skipped.append(admission.wait)
            continue
        if admission.outcome in ("busy", "later"):
            # The provider is healthy, only at its limit: wait for it rather than fail over.
            limit = "concurrency" if admission.outcome == "busy" else "rate"
            raise DeliveryDeferred(
                f"provider {alias} is at its {limit} limit",
                envelope_id=envelope.id,
                delay=max(admission.wait, MIN_DEFERRAL),
            )
        if admission.wait:
            try:
                time.sleep(admission.wait)
            except BaseException:
                # Interrupted before sending (time limit, shutdown): free the slot and the claim now.
                _settle_quietly(admission, envelope.id, provider, "aborted", config)
                _release_quietly(envelope.id, claim, config)
                raise
        try:
            send_with_retries(provider, message, envelope.id)
        except (TransientDeliveryError, ProviderRefused) as error:
            result: Result = "rejected" if isinstance(error, ProviderRefused) else "failed"
            _settle_quietly(admission, envelope.id, provider, result, config)
            if isinstance(error.cause, ImproperlyConfigured):
                logger.error("provider %s is misconfigured, failing over: %s", alias, error.cause, exc_info=error.cause)
            else:
                logger.warning("provider %s failed for %s, trying the next one: %s", alias, envelope.id, error)
            failures.append(error)
            continue
        except PermanentDeliveryError:
            _settle_quietly(admission, envelope.id, provider, "rejected", config)
            raise
        except BaseException:
            # Time limit or shutdown mid-send: whether the provider took it is unknown.
            _settle_quietly(admission, envelope.id, provider, "aborted", config)
            raise
        try:
            settle(admission, envelope.id, provider, "sent", config, ack)
        except redis.RedisError:
            # The provider took it: retrying would send it again. The ack waits for Redis, and the
            # claim keeps any other copy away until it expires.
            logger.exception("%s was sent via %s, but its delivery record could not be written", envelope.id, alias)
        return alias
    if skipped and not failures:
        raise DeliveryDeferred(
            f"every provider of queue {queue.name} has an open circuit", envelope_id=envelope.id, delay=min(skipped)
        )
    refused = all(isinstance(failure, ProviderRefused) for failure in failures)
    if skipped and refused:
        # Every provider asked refused, but one whose circuit is open was not asked yet.
        raise DeliveryDeferred(
            f"refused by {', '.join(str(f.provider) for f in failures)}; the others' circuits are open",
            envelope_id=envelope.id,
            delay=min(skipped),
        )
    if failures and refused:
        raise AllProvidersRefused(envelope.id, failures)
    raise AllProvidersFailed(envelope.id, failures)
