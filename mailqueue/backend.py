"""The queued email backend: validate, route, serialize, enqueue. Never deliver."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

import redis
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.db import connections, transaction

from . import outbox
from .conf import MailQueueConfig, get_config
from .cooldown import redis_cooldown
from .enqueue import EncodedMessage, encode, push
from .envelope import Envelope, random_ids
from .exceptions import BrokerUnavailable, InvalidMessage, MailQueueError, MessageTooLarge
from .routing import choose_queue
from .validation import validate_message

logger = logging.getLogger(__name__)

#: Longest idempotency key accepted (it becomes part of an id, not a Redis key).
MAX_IDEMPOTENCY_KEY = 500


def idempotent_id(key: object, config: MailQueueConfig) -> str | None:
    """The envelope id for a message's ``idempotency_key``: the same key always gives the same id."""
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidMessage(
            f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} characters, not {key!r}."
        )
    return uuid.uuid5(uuid.NAMESPACE_URL, f"mailqueue:{config.namespace}:{key}").hex


def push_or_keep(batch: list[EncodedMessage], config: MailQueueConfig) -> None:
    """Push to Redis; if Redis refuses, keep the batch in the outbox (or raise, if so configured).

    Within the cool-down after a send timed out, Redis is not tried at all (see mailqueue.cooldown).
    """
    cooldown = config.broker_cooldown
    try:
        # While Redis answers, ``until`` is 0.0: the usual path costs two truth tests, not a clock read.
        if redis_cooldown.until and redis_cooldown.skipping(cooldown):
            raise BrokerUnavailable(
                f"Redis did not answer a send {time.monotonic() - redis_cooldown.since:.1f} s ago; "
                f"sends skip it for MAILQUEUE['BROKER_COOLDOWN'] = {cooldown:g} s, then one tries again."
            )
        try:
            push(batch)
        except BrokerUnavailable as error:
            redis_cooldown.settle(timed_out=isinstance(error.__cause__, redis.TimeoutError), length=cooldown)
            raise
        if redis_cooldown.until:  # this send was the probe, or one that started before the timeout
            redis_cooldown.settle(timed_out=False, length=cooldown)
    except BrokerUnavailable as error:
        if config.on_broker_failure != "outbox":
            raise
        if connections[config.outbox_database].in_atomic_block:
            # on_commit is off for this send, yet a transaction is open: a rollback would take the
            # outbox row with it, while the caller believes the mail was accepted.
            raise BrokerUnavailable(
                f"{error} The outbox cannot keep it: a transaction is open on database "
                f"{config.outbox_database!r} and its rollback would discard the message. Send with "
                "on_commit (the default) to queue after the commit."
            ) from error
        outbox.keep(batch, error)


class EmailBackend(BaseEmailBackend):
    """Queues messages on Redis for mailqueue's worker pools to deliver."""

    def __init__(
        self, *, queue: str | None = None, on_commit: bool | None = None, fail_silently: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.queue = queue
        self.on_commit = on_commit
        # RemovedInDjango2028: Django 6.1 deprecates fail_silently (send_mail(), get_connection() warn); a
        # backend that still honours it takes the argument and keeps its own attribute, as Django's SMTP backend does.
        self.fail_silently = fail_silently

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Enqueue every message with recipients; return how many were accepted.

        Raises an InvalidMessage subclass for bad input, and BrokerUnavailable
        when Redis refuses the batch and it cannot be kept in the outbox (or
        ON_BROKER_FAILURE is "raise"); in both cases nothing of the batch is queued.
        """
        try:
            return self._enqueue(email_messages)
        except MailQueueError:
            # Runtime errors only: configuration errors sit outside MailQueueError and are never silenced.
            if self.fail_silently:
                return 0
            raise

    def _enqueue(self, email_messages: Sequence[EmailMessage]) -> int:
        config = get_config()
        mailer = getattr(self, "alias", None) or "default"
        mailer_queue = self.queue
        log = config.log.enabled
        batch: list[EncodedMessage] = []
        # Two flat lists, not a (message, envelope) pair per message: nothing per message outlives its encoding
        # but its id, so a 10,000-message batch leaves the garbage collector nothing new to walk.
        accepted: list[EmailMessage] = []
        accepted_ids: list[str] = []
        messages = list(email_messages)  # any iterable, as Django's own backends take
        # An envelope id and a Redis message id for each message, from one system call.
        ids = iter(random_ids(2 * len(messages)))
        for message in messages:
            if not message.recipients():
                continue
            validate_message(message)
            queue = choose_queue(message, mailer_queue, config)
            envelope_id = idempotent_id(getattr(message, "idempotency_key", None), config)
            envelope = Envelope.from_message(message, queue=queue, mailer=mailer, id=envelope_id or next(ids))
            encoded = encode(envelope, guarded=envelope_id is not None, redis_id=next(ids), log=log)
            if len(encoded.data) > config.max_message_bytes:
                raise MessageTooLarge(
                    f"Message {message.subject!r} is {len(encoded.data)} bytes once encoded, over "
                    f"MAILQUEUE['MAX_MESSAGE_BYTES'] = {config.max_message_bytes}."
                )
            batch.append(encoded)
            accepted.append(message)
            accepted_ids.append(envelope.id)
        if not batch:
            return 0
        on_commit = config.on_commit if self.on_commit is None else self.on_commit
        if on_commit and connections[config.on_commit_using].in_atomic_block:
            # robust: the commit has happened; a Redis failure now must not cancel other apps' hooks.
            transaction.on_commit(partial(self._push_after_commit, batch), using=config.on_commit_using, robust=True)
        else:
            push_or_keep(batch, config)
        for message, envelope_id in zip(accepted, accepted_ids, strict=True):
            message.mailqueue_id = envelope_id  # type: ignore[attr-defined]
        return len(batch)

    def _push_after_commit(self, batch: list[EncodedMessage]) -> None:
        """Push a batch once its transaction committed; a failure now can only be logged."""
        try:
            push_or_keep(batch, get_config())
        except BrokerUnavailable:
            # Envelope ids are what the sender saw as message.mailqueue_id: name them so the loss can be traced.
            ids = ", ".join(item.envelope_id for item in batch)
            logger.exception(
                "%d message(s) accepted in a committed transaction could not be queued (mailqueue ids: %s)",
                len(batch),
                ids,
            )


#: The name used in MAILERS examples; Django's convention is ``EmailBackend``.
QueuedEmailBackend = EmailBackend
