"""Sending one envelope through its queue's providers, written once, in the order a reader expects.

Ask for admission: the queue's strategy picks a provider among those not
tried yet in this attempt (``admit`` in workers/admission.py passes over the
ones whose circuit is open or whose quota is spent, which "failover" then
leaves out for the rest of the attempt, and reserves a rate-limit token and a
concurrency slot); send over this thread's open connection; a
transient failure is retried a few times with tenacity (reconnecting each
time); a refusal by that provider, or transient failures beyond its tries,
ask for admission again among the providers left; a permanent failure stops
everything. Every outcome is recorded for the provider's circuit and counters
(a message fault only frees its slot: it says nothing about the provider),
and each provider's failure is announced (``attempt_failed``).

With "failover" the provider is the first of the chain, with "weighted" one
drawn by weight, with "spill-over" the first that can take the message within
the queue's latency budget (counted from ``send_mail()``). A provider picked
but at its limit defers the message (no retry used up): under "spill-over"
only once every provider is; under "weighted" the message keeps its draw.
When no provider took the message,
``AllProvidersFailed`` says to retry later, and ``AllProvidersRefused``
(every provider refused) to dead-letter it: what follows is decided in
workers/outcomes.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage
from dramatiq.middleware import Interrupt
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from mailqueue import eventlog
from mailqueue.conf import MailQueueConfig, ProviderConfig, QueueConfig
from mailqueue.envelope import Envelope, QueuedMessage
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
from mailqueue.signals import AttemptFailed, announce

from .admission import AckTarget, Admission, Result, admit, new_claim, next_draw, release, settle
from .classify import MESSAGE_ERRORS, classify, found_before_sending, invalid_field, message_fault
from .connections import connections
from .dramatiq_redis import acknowledged_early
from .redaction import redact_addresses

logger = logging.getLogger(__name__)

#: Seconds between two asks for a concurrency slot while the provider is busy.
BUSY_POLL = 0.02
#: Shortest deferral, in seconds: a busy provider with RATE_LIMIT_MAX_WAIT = 0 must not spin.
MIN_DEFERRAL = 0.05


@dataclass(frozen=True, slots=True)
class Delivered:
    """A provider took the message (in this attempt, or in an earlier one when ``earlier`` is set)."""

    provider: str
    #: The provider's id for it where its backend reports one (anymail's ``anymail_status.message_id``).
    provider_message_id: str | None
    #: The Message-ID header that was sent: None when none was (an ESP's API, and the caller set none).
    message_id: str | None
    #: Time spent handing it to the provider, in-attempt retries included.
    send_seconds: float
    earlier: bool = False


def _provider_message_id(message: EmailMessage) -> str | None:
    status = getattr(message, "anymail_status", None)
    ids = getattr(status, "message_id", None)
    if ids is None or isinstance(ids, str):
        return ids
    return ", ".join(sorted(map(str, ids)))  # one id per recipient


def _message_id_header(message: EmailMessage) -> str | None:
    if isinstance(message, QueuedMessage):
        return message.sent_message_id()
    for name, value in message.extra_headers.items():
        if name.lower() == "message-id":
            return str(value)
    return None


def _failure(error: Exception, alias: str, message: EmailMessage, envelope_id: str, backend: object) -> DeliveryError:
    """Classify ``error``; a failure the message itself causes (rendering, addresses) is a permanent message fault."""
    if isinstance(error, DeliveryError):
        return error
    failure = classify(error, provider=alias, envelope_id=envelope_id)
    if failure.message_fault:
        # anymail's checks or the ESP's validation refused it: name the field where send_mail()'s checks can.
        invalid = invalid_field(message)
        if invalid is not None:
            return type(failure)(
                f"{failure} ({invalid})", envelope_id=envelope_id, provider=alias, cause=error, message_fault=True
            )
    elif isinstance(failure, TransientDeliveryError) and isinstance(error, MESSAGE_ERRORS):
        fault = message_fault(message, backend)
        if fault is not None:
            return PermanentDeliveryError(
                fault, envelope_id=envelope_id, provider=alias, cause=error, message_fault=True
            )
    return failure


def send_once(alias: str, message: EmailMessage, envelope_id: str) -> None:
    """Hand ``message`` to provider ``alias``; raise a DeliveryError if it did not take it."""
    backend = None
    if isinstance(message, QueuedMessage):
        message.fixed_headers_rendered = False  # so Delivered says what this provider was sent
    try:
        backend = connections.get(alias)
        sent = backend.send_messages([message])
    except Exception as error:
        connections.discard(alias)
        raise _failure(error, alias, message, envelope_id, backend) from error
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
    envelope: Envelope,
    candidates: list[ProviderConfig],
    queue: QueueConfig,
    config: MailQueueConfig,
    claim: str,
    draw: float,
) -> tuple[Admission, float | None]:
    """``admit``, waiting up to RATE_LIMIT_MAX_WAIT for a free concurrency slot; and when a deferral must end.

    A "weighted" message keeps its ``draw`` while it waits: the provider drawn
    is its provider. The time returned (this worker's clock, None if there is
    none) is when a "spill-over" message's budget runs out, given when the
    provider it waits for takes it within the budget: deferred, it must be
    back by then.
    """
    deadline = time.monotonic() + config.rate_limit_max_wait
    while True:
        budget = None
        now = time.time()
        if queue.strategy == "spill-over":
            # The budget counts from send_mail(): time the message spent queued is spent of it. The web host's
            # clock set that time: a clock ahead of this one must not lengthen the budget (nor a negative one).
            budget = min(max(queue.latency_budget - (now - envelope.created_at), 0.0), queue.latency_budget)
        admission = admit(envelope.id, candidates, queue, config, claim, budget=budget, draw=draw)
        if admission.outcome != "busy" or time.monotonic() >= deadline:
            return admission, now + budget if budget is not None and admission.wait <= budget else None
        time.sleep(BUSY_POLL)


def _settle_quietly(
    admission: Admission,
    envelope_id: str,
    provider: ProviderConfig,
    result: Result,
    config: MailQueueConfig,
    event: bytes = b"",
    *,
    unsent: bool = False,
    send_seconds: float | None = None,
) -> None:
    """``settle`` for an outcome that is already being raised: its own failure must not hide that."""
    try:
        settle(admission, envelope_id, provider, result, config, event=event, unsent=unsent, send_seconds=send_seconds)
    except Exception:
        logger.exception("could not record the %s outcome of %s at provider %s", result, envelope_id, provider.alias)


def deliver_envelope(
    envelope: Envelope,
    queue: QueueConfig,
    config: MailQueueConfig,
    *,
    attempt: int = 1,
    ack: AckTarget | None = None,
    draw: float | None = None,
) -> Delivered:
    """Send ``envelope`` through ``queue``'s provider chain; say which provider took it.

    Raises PermanentDeliveryError (do not retry; AllProvidersRefused is one),
    AllProvidersFailed (retry later), DeliveryDeferred (re-schedule without
    using a retry), or EnvelopeError (cannot be rebuilt). With ``ack``, the
    delivery record also acknowledges the Dramatiq message. ``draw`` is the
    message's draw for a "weighted" queue, kept from an earlier attempt that
    was deferred (a new one if None); a deferral carries it on.
    """
    message = envelope.to_message()
    claim = new_claim(ack.broker_id if ack is not None else None)
    try:
        return _through_chain(envelope, message, queue, config, claim, ack, attempt, draw)
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


def _announce_failure(error: DeliveryError, envelope: Envelope, attempt: int) -> None:
    cause = error.cause if error.cause is not None else error
    announce(
        AttemptFailed(
            envelope_id=envelope.id,
            queue=envelope.queue,
            provider=error.provider or "",
            error_type=type(cause).__name__,
            transient=isinstance(error, TransientDeliveryError),
            error=str(error),
            attempt=attempt,
        )
    )


def _log_failures(failures: list[DeliveryError], envelope_id: str, next_step: str) -> None:
    """One line per provider that failed, once what follows is known (never "trying" a provider that is not tried).

    A failure after which no provider is tried is not logged here: the
    attempt's outcome line (retry or dead letter, workers/outcomes.py) names
    every provider's failure. Addresses in the errors are redacted.
    """
    for failure in failures:
        reason = redact_addresses(str(failure))
        logger.warning("provider %s failed for %s, %s: %s", failure.provider, envelope_id, next_step, reason)
    failures.clear()


#: Why admission passed a provider over, as a log line says it.
SKIP_REASONS = {"open": "its circuit is open", "quota": "its quota is spent"}


def _log_skips(admission: Admission, envelope_id: str, logged: set[str]) -> None:
    """One line per provider passed over, the first time in this attempt."""
    for alias, why in admission.skipped:
        if alias not in logged:
            logged.add(alias)
            logger.info("provider %s is skipped for %s: %s", alias, envelope_id, SKIP_REASONS.get(why, why))


def _through_chain(
    envelope: Envelope,
    message: EmailMessage,
    queue: QueueConfig,
    config: MailQueueConfig,
    claim: str,
    ack: AckTarget | None,
    attempt: int,
    draw: float | None,
) -> Delivered:
    #: The message's own draw ("weighted"): a deferral keeps it, so the provider drawn stays its provider.
    draw = next_draw() if draw is None else draw
    carried = draw if queue.strategy == "weighted" else None
    failures: list[DeliveryError] = []
    #: Failures not logged yet: see _log_failures.
    unlogged: list[DeliveryError] = []
    #: For the providers passed over (open circuit, spent quota): seconds until the first may be asked again.
    skipped: list[float] = []
    #: The providers not tried yet in this attempt, in the queue's order; admission picks among them.
    candidates = [config.provider(alias) for alias in queue.providers]
    logged_skips: set[str] = set()
    why: set[str] = set()
    while candidates:
        admission, not_after = _admission(envelope, candidates, queue, config, claim, draw)
        _log_skips(admission, envelope.id, logged_skips)
        if admission.outcome == "delivered":
            _log_failures(unlogged, envelope.id, f"and it was already delivered via {admission.detail}")
            logger.warning("%s was already delivered via %s: not sending it again", envelope.id, admission.detail)
            return Delivered(admission.detail, None, _message_id_header(message), 0.0, earlier=True)
        if admission.outcome == "claimed":
            _log_failures(unlogged, envelope.id, "deferred: another worker is sending it")
            raise DeliveryDeferred(
                f"another worker is sending {envelope.id} right now",
                envelope_id=envelope.id,
                delay=admission.wait,
                draw=carried,
            )
        if admission.outcome == "open":
            skipped.append(admission.wait)
            why |= {why for _, why in admission.skipped}
            break
        if admission.skipped and queue.strategy == "failover":
            # As the chain always walked: a provider passed over is not asked again in this attempt, so one whose
            # cooldown ends meanwhile does not get the message as its probe when the provider chosen fails.
            passed_over = {alias for alias, _ in admission.skipped}
            candidates = [candidate for candidate in candidates if candidate.alias not in passed_over]
            skipped.append(admission.reopens_in)
            why |= {why for _, why in admission.skipped}
        alias = admission.provider
        if admission.outcome in ("busy", "later"):
            # The provider is healthy, only at its limit: wait for it rather than fail over (with "spill-over",
            # admission hands the message to another provider while one can take it in time).
            limit = "concurrency" if admission.outcome == "busy" else "rate"
            _log_failures(unlogged, envelope.id, f"deferred: provider {alias} is at its {limit} limit")
            raise DeliveryDeferred(
                f"provider {alias} is at its {limit} limit",
                envelope_id=envelope.id,
                delay=max(admission.wait, MIN_DEFERRAL),
                draw=carried,
                not_after=not_after,
            )
        provider = next(candidate for candidate in candidates if candidate.alias == alias)
        candidates.remove(provider)
        if unlogged:
            _log_failures(unlogged, envelope.id, f"trying {alias}")
        if admission.wait:
            try:
                time.sleep(admission.wait)
            except BaseException:
                # Interrupted before sending (time limit, shutdown): free the slot, the quota and the claim now.
                _settle_quietly(admission, envelope.id, provider, "aborted", config, unsent=True)
                _release_quietly(envelope.id, claim, config)
                raise
        started = time.monotonic()
        try:
            send_with_retries(provider, message, envelope.id)
        except (TransientDeliveryError, ProviderRefused) as error:
            took = time.monotonic() - started
            result: Result = "rejected" if isinstance(error, ProviderRefused) else "failed"
            result = "faulted" if error.message_fault else result
            event = (
                eventlog.attempt_failed(
                    envelope.id, alias, attempt, str(error), transient=isinstance(error, TransientDeliveryError)
                )
                if config.log.enabled
                else b""
            )
            unsent = found_before_sending(error)
            _settle_quietly(admission, envelope.id, provider, result, config, event, unsent=unsent, send_seconds=took)
            _announce_failure(error, envelope, attempt)
            if isinstance(error.cause, ImproperlyConfigured):
                # Said at once and loudly: it fails every message until someone fixes the settings.
                logger.error(
                    "provider %s is misconfigured (sending %s): %s",
                    alias,
                    envelope.id,
                    redact_addresses(str(error.cause)),
                    exc_info=error.cause,
                )
            else:
                unlogged.append(error)
            failures.append(error)
            draw = next_draw()  # the next provider is drawn afresh among those left
            continue
        except PermanentDeliveryError as error:
            took = time.monotonic() - started
            # A message fault frees the provider's slot and leaves its circuit and failure counters alone (and
            # its quota, when the provider never saw the message).
            result = "faulted" if error.message_fault else "rejected"
            event = eventlog.failed(envelope.id, attempt, str(error), alias) if config.log.enabled else b""
            unsent = found_before_sending(error)
            _settle_quietly(admission, envelope.id, provider, result, config, event, unsent=unsent, send_seconds=took)
            _announce_failure(error, envelope, attempt)
            raise
        except BaseException:
            # Time limit or shutdown mid-send: whether the provider took it is unknown.
            _settle_quietly(admission, envelope.id, provider, "aborted", config)
            raise
        delivered = Delivered(
            alias, _provider_message_id(message), _message_id_header(message), time.monotonic() - started
        )
        try:
            event = (
                eventlog.sent(envelope.id, alias, attempt, delivered.provider_message_id or delivered.message_id)
                if config.log.enabled
                else b""
            )
            settled = settle(
                admission,
                envelope.id,
                provider,
                "sent",
                config,
                ack,
                event,
                send_seconds=delivered.send_seconds,
                created_at=envelope.created_at,
            )
            if ack is not None and settled.acked:
                acknowledged_early(ack)
        except redis.RedisError:
            # The provider took it: retrying would send it again. The ack waits for Redis, and the
            # claim keeps any other copy away until it expires.
            logger.exception("%s was sent via %s, but its delivery record could not be written", envelope.id, alias)
        except Interrupt:
            # The time limit (it fires once per message) landed while recording: the provider took the
            # message all the same, and this attempt must say so, or it would be retried and sent again.
            logger.warning("%s was sent via %s; the time limit interrupted recording it", envelope.id, alias)
        return delivered
    if skipped and not failures:
        has = {"open": "an open circuit", "quota": "a spent quota"}
        raise DeliveryDeferred(
            f"every provider of queue {queue.name} has {' or '.join(has[each] for each in sorted(why))}",
            envelope_id=envelope.id,
            delay=min(skipped),
            draw=carried,
        )
    refused = all(isinstance(failure, ProviderRefused) for failure in failures)
    if skipped and refused:
        # Every provider asked refused, but one whose circuit is open (or quota spent) was not asked yet.
        are = {"open": "circuits are open", "quota": "quotas are spent"}
        raise DeliveryDeferred(
            f"refused by {', '.join(str(f.provider) for f in failures)}; the others' "
            + " or ".join(are[each] for each in sorted(why)),
            envelope_id=envelope.id,
            delay=min(skipped),
            draw=carried,
        )
    if failures and refused:
        raise AllProvidersRefused(envelope.id, failures)
    raise AllProvidersFailed(envelope.id, failures)
