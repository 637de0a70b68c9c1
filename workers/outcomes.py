"""What becomes of a message after an attempt: decided here, once, and announced.

The queue's actor (workers/actors.py) calls ``conclude`` with what the
attempt gave, a delivery or an error, and this is the only place that
decides the message's fate:

* delivered: announce ``message_sent``;
* deferred (a provider at its limit, open circuits, another worker sending
  it): put it back after the wait, no retry used up; ``message_deferred``;
* a permanent failure, an unreadable envelope, or the queue's last retry:
  record the dead letter (waiting for Redis if it is away, never dropping it);
  ``message_dead_lettered``;
* any other failure (all providers failed, the time limit): put it back after
  an exponential backoff, one retry used up; ``message_deferred``.

Every path acknowledges the Dramatiq message by returning normally.

Each outcome's event for the message log (mailqueue.eventlog) is appended in
the call that records it (the delivery record, the dead letter), except a
deferral's and a retry's: their record is Dramatiq's own enqueue of the copy,
which cannot carry it, so their ``deferred`` event takes one more round trip,
after the put-back, and is the one event a Redis failure may drop.

Dramatiq's time limit interrupts the worker's thread once per message,
wherever it is. Landing here it cannot undo a decision: the write that carries
the decision out (the put-back, the dead letter) is finished, and only an
announcement can be lost. An outcome that is the time limit itself is checked
against the delivery record first, so a message the provider took just before
the interruption is never retried or dead-lettered. Any other error that
escapes (Redis refusing a write for a reason that is not an outage) is left to
Dramatiq's ``Retries`` middleware: the message is attempted again, never lost.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.common import compute_backoff
from dramatiq.middleware import Interrupt, TimeLimitExceeded

from mailqueue import eventlog
from mailqueue.conf import QueueConfig, get_config
from mailqueue.deadletters import DeadLetter, record
from mailqueue.envelope import Envelope
from mailqueue.exceptions import DeliveryDeferred, EnvelopeError, PermanentDeliveryError
from mailqueue.signals import MessageDeadLettered, MessageDeferred, MessageSent, announce

from .admission import delivered_via
from .delivery import Delivered
from .patience import until_redis_accepts
from .redaction import redact_addresses

logger = logging.getLogger(__name__)

#: Message option counting how often the message was deferred (rate limits, open circuits).
DEFERRALS = "mailqueue_deferrals"
#: Message option keeping a "weighted" message's draw across deferrals (see DeliveryDeferred).
DRAW = "mailqueue_draw"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One run of a queue's actor on one Dramatiq message."""

    queue: QueueConfig
    #: The Dramatiq message being processed (None when the actor is called directly, outside a worker).
    message: Any
    #: Dramatiq re-attempts before this one.
    retries: int

    @classmethod
    def of(cls, message: Any, queue: QueueConfig) -> Attempt:
        retries = message.options.get("retries", 0) if message is not None else 0
        return cls(queue=queue, message=message, retries=retries)

    @property
    def number(self) -> int:
        """1 for the first attempt."""
        return self.retries + 1

    @property
    def draw(self) -> float | None:
        """The draw an earlier attempt of a "weighted" message was deferred with; None for a new draw."""
        draw = self.message.options.get(DRAW) if self.message is not None else None
        return draw if isinstance(draw, float) and 0 <= draw < 1 else None

    @property
    def message_id(self) -> str:
        return str(self.message.message_id) if self.message is not None else "unknown"


def conclude(attempt: Attempt, payload: Any, outcome: Delivered | BaseException, envelope: Envelope | None) -> None:
    """Act on how ``attempt`` went, and announce it (``envelope`` is None when the payload was unreadable)."""
    if isinstance(outcome, Interrupt) and envelope is not None:
        outcome = _delivered_before(outcome, envelope, attempt)
    if isinstance(outcome, Delivered):
        _tell(lambda: _sent(attempt, outcome, envelope), "the delivery")
    elif isinstance(outcome, DeliveryDeferred):
        _defer(attempt, outcome)
    elif isinstance(outcome, (EnvelopeError, PermanentDeliveryError)) or attempt.retries >= attempt.queue.max_retries:
        _dead_letter(attempt, payload, outcome)
    else:
        _retry(attempt, outcome)


def _carry_out(write: Callable[[], object], what: str) -> None:
    """Run the write that carries out a decision to its end, even through the time limit's interruption.

    Left half done, the message would be neither put back nor dead-lettered,
    and Dramatiq would attempt it once more (a permanent failure sent again).
    The time limit fires once per message, so the write is run again: recording
    a dead letter twice keeps one; a put-back that had gone through leaves a
    second copy, which the delivery record keeps from sending twice.
    """
    while True:
        try:
            write()
            return
        except Interrupt:
            logger.warning("the time limit interrupted %s; finishing it", what)


def _tell(announcement: Callable[[], None], what: str) -> None:
    """Log and announce a decision already carried out: an interruption here loses only the announcement."""
    try:
        announcement()
    except Interrupt:
        logger.warning("the time limit interrupted the announcement of %s", what)


def _delivered_before(interrupt: Interrupt, envelope: Envelope, attempt: Attempt) -> Delivered | Interrupt:
    """The time limit as an outcome: unless the delivery record shows the provider had already taken it."""
    provider = delivered_via(envelope.id, get_config())
    if provider is None:
        return interrupt
    logger.warning(
        "%s was delivered via %s before the time limit interrupted attempt %d: not retried",
        envelope.id,
        provider,
        attempt.number,
    )
    return Delivered(provider, None, None, 0.0, earlier=True)


def _sent(attempt: Attempt, delivered: Delivered, envelope: Envelope | None) -> None:
    assert envelope is not None
    if delivered.earlier:
        return  # an earlier attempt sent it (and announced it, unless it died just before)
    logger.info(
        "delivered %s from %s via %s (attempt %d)", envelope.id, attempt.queue.name, delivered.provider, attempt.number
    )
    announce(
        MessageSent(
            envelope_id=envelope.id,
            queue=attempt.queue.name,
            mailer=envelope.mailer,
            provider=delivered.provider,
            provider_message_id=delivered.provider_message_id,
            message_id=delivered.message_id,
            attempt=attempt.number,
            queued_seconds=max(time.time() - envelope.created_at, 0.0),
            send_seconds=delivered.send_seconds,
        )
    )


def _put_back(attempt: Attempt, outcome: BaseException, delay: float, options: dict[str, Any]) -> None:
    """Enqueue a copy ``delay`` seconds later, before this attempt is acknowledged.

    A crash in between leaves two copies; the delivery record keeps the second from sending.
    Outside a worker there is nothing to put back: ``outcome`` is raised to the caller.
    """
    if attempt.message is None:
        raise outcome
    copy = attempt.message.copy(options=options)
    broker = dramatiq.get_broker()
    _carry_out(lambda: broker.enqueue(copy, delay=max(1, int(delay * 1000))), f"putting back {attempt.message_id}")


def _log_deferral(envelope_id: str, attempt: Attempt, reason: str, until: float) -> None:
    """Append the ``deferred`` event, in a round trip of its own (see the module docstring); never raises.

    Losing it loses one step of the timeline: the message's next event
    (sent, another deferral, dead) still tells where it is.
    """
    config = get_config()
    if not config.log.enabled:
        return
    try:
        eventlog.append(eventlog.deferred(envelope_id, attempt.number, reason, until), config)
    except redis.RedisError as error:
        logger.warning("could not log the deferral of %s: %s", envelope_id, error)


def _defer(attempt: Attempt, deferred: DeliveryDeferred) -> None:
    deferrals = (attempt.message.options.get(DEFERRALS, 0) if attempt.message is not None else 0) + 1
    # Jitter, so messages held back together do not all come back in the same instant.
    delay = deferred.delay * (1 + random.random() / 10)
    if deferred.not_after is not None:
        # A spill-over message waiting for a token due within its budget: jitter must not carry it past the budget.
        delay = min(delay, max(deferred.delay, deferred.not_after - time.time()))
    options: dict[str, Any] = {DEFERRALS: deferrals}
    if deferred.draw is not None:
        options[DRAW] = deferred.draw
    _put_back(attempt, deferred, delay, options)
    until = time.time() + delay
    _tell(lambda: _log_deferral(deferred.envelope_id, attempt, str(deferred), until), "logging the deferral")

    def tell() -> None:
        logger.info(
            "deferred %s by %.2f s (%d time(s)): %s",
            deferred.envelope_id,
            delay,
            deferrals,
            redact_addresses(str(deferred)),
        )
        announce(
            MessageDeferred(
                envelope_id=deferred.envelope_id,
                queue=attempt.queue.name,
                reason=str(deferred),
                until=until,
                retry=False,
                attempt=attempt.number,
            )
        )

    _tell(tell, f"the deferral of {deferred.envelope_id}")


def _reason(error: BaseException, queue: QueueConfig) -> str:
    if isinstance(error, TimeLimitExceeded):
        return f"TimeLimitExceeded: the attempt ran over the queue's time_limit ({queue.time_limit} ms)"
    return str(error) or type(error).__name__


def _envelope_id(attempt: Attempt, error: BaseException) -> str:
    return str(getattr(error, "envelope_id", None) or attempt.message_id)


def _retry(attempt: Attempt, error: BaseException) -> None:
    queue = attempt.queue
    _, delay_ms = compute_backoff(attempt.retries, factor=queue.min_backoff, max_backoff=queue.max_backoff)
    _put_back(attempt, error, delay_ms / 1000, {"retries": attempt.retries + 1})
    envelope_id = _envelope_id(attempt, error)
    reason = _reason(error, queue)
    until = time.time() + delay_ms / 1000
    _tell(lambda: _log_deferral(envelope_id, attempt, reason, until), "logging the retry")

    def tell() -> None:
        logger.warning(
            "attempt %d of %s on %s failed, retrying in %.1f s: %s",
            attempt.number,
            envelope_id,
            queue.name,
            delay_ms / 1000,
            redact_addresses(reason),
        )
        announce(
            MessageDeferred(
                envelope_id=envelope_id,
                queue=queue.name,
                reason=reason,
                until=until,
                retry=True,
                attempt=attempt.number,
            )
        )

    _tell(tell, f"the retry of {envelope_id}")


def _dead_letter(attempt: Attempt, payload: Any, error: BaseException) -> None:
    envelope_id = _envelope_id(attempt, error)
    letter = DeadLetter(
        id=attempt.message_id,
        queue=attempt.queue.name,
        reason=_reason(error, attempt.queue),
        error_type=type(error).__name__,
        failed_at=time.time(),
        attempts=attempt.number,
        payload=payload,
        provider=getattr(error, "provider", None),
    )
    what = f"the dead letter of {envelope_id}"
    _carry_out(lambda: until_redis_accepts(lambda: record(letter), what), what)

    def tell() -> None:
        # The letter keeps the whole reason (which recipient refused is what an operator acts on); the log does not.
        logger.error(
            "dead-lettered %s on %s after %d attempt(s): %s",
            envelope_id,
            letter.queue,
            letter.attempts,
            redact_addresses(letter.reason),
        )
        announce(
            MessageDeadLettered(
                envelope_id=envelope_id,
                queue=letter.queue,
                reason=letter.reason,
                error_type=letter.error_type,
                attempts=letter.attempts,
                provider=letter.provider,
            )
        )

    _tell(tell, what)
