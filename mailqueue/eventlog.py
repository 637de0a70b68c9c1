"""The message log's events: one compact JSON entry per step of a message, on one Redis stream per namespace.

The enqueue script, the workers' record-keeping scripts, the relay and the
dead-letter store append them (``XADD <ns>:events MAXLEN ~ N * e <json>``) in
the very call that records the step, so the log costs no round trip of its
own; the log writer (``manage.py mailqueue log``) reads them in batches and
writes the database. The builders here make the ``e`` field, ``decode`` reads it
back. Short keys keep a 1,000,000-entry stream small (docs/design.md, "The
message log's events"); their meaning is the contract between both sides:

* every event: ``k`` kind (an ``EventKind`` value), ``id`` envelope id, ``t`` epoch ms;
* queued: ``q`` queue, ``m`` mailer, ``s`` subject (first 255 characters), ``f`` from_email,
  ``to``/``cc``/``bcc`` plain addresses, ``z`` encoded size in bytes, ``c`` composed (epoch ms);
* attempt_failed: ``p`` provider, ``n`` attempt (1-based), ``r`` error, ``tr`` transient;
* deferred: ``n``, ``r`` reason, ``u`` epoch ms when it is due again;
* sent: ``p``, ``n``, ``pid`` the provider's message id (else the Message-ID sent; absent when neither);
* failed, dead: ``n``, ``r``, ``p`` (when a provider was involved);
* requeued, relayed: ``q``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from email.utils import parseaddr
from typing import Any

import orjson

from .client import exchange
from .conf import MailQueueConfig
from .envelope import Envelope
from .exceptions import LogEventError
from .keys import events_key

#: The one field of each stream entry.
FIELD = "e"
#: Longest subject kept (the Message.subject column).
SUBJECT_CHARS = 255
#: Longest error or reason kept: a stack of SMTP replies must not bloat a million-entry stream.
REASON_CHARS = 2000

_dumps = orjson.dumps


def now_ms() -> int:
    return int(time.time() * 1000)


def plain_address(text: str) -> str:
    """The address alone, without a display name: ``"Ann <ann@example.com>"`` -> ``ann@example.com``.

    Most addresses are plain already (no "<"): those cost one test. The
    addresses were validated by send_mail(), so what remains parses.
    """
    if "<" not in text:
        return text
    if text.endswith(">"):
        return text[text.rindex("<") + 1 : -1]
    return parseaddr(text)[1] or text


def _plain_list(values: Iterable[str] | None) -> list[str]:
    return [plain_address(value) for value in values] if values else []


def queued(envelope: Envelope, size: int, at_ms: int | None = None) -> bytes:
    """A message was accepted: everything the log shows of it, never its body or attachments."""
    fields = envelope.message
    composed = int(envelope.created_at * 1000)
    event: dict[str, Any] = {
        "k": "queued",
        "id": envelope.id,
        # When send_mail() accepted it: made in the same call, so no clock is read again (a relayed
        # message, too, was accepted then, into the outbox).
        "t": composed if at_ms is None else at_ms,
        "q": envelope.queue,
        "m": envelope.mailer,
        "s": fields.get("subject", "")[:SUBJECT_CHARS],
        "f": plain_address(fields.get("from_email") or ""),
        "z": size,
        "c": composed,
    }
    for name in ("to", "cc", "bcc"):
        values = fields.get(name)
        if values:
            event[name] = _plain_list(values)
    return _dumps(event)


def _reason(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def attempt_failed(envelope_id: str, provider: str, attempt: int, error: str, *, transient: bool) -> bytes:
    """One provider did not take the message in this attempt."""
    return _dumps(
        {
            "k": "attempt_failed",
            "id": envelope_id,
            "t": now_ms(),
            "p": provider,
            "n": attempt,
            "r": _reason(error),
            "tr": transient,
        }
    )


def deferred(envelope_id: str, attempt: int, reason: str, until: float | None = None) -> bytes:
    """It waits (a rate limit, open circuits, a retry's backoff); ``until`` is the Unix time it is due again."""
    event: dict[str, Any] = {"k": "deferred", "id": envelope_id, "t": now_ms(), "n": attempt, "r": _reason(reason)}
    if until is not None:
        event["u"] = int(until * 1000)
    return _dumps(event)


def sent(envelope_id: str, provider: str, attempt: int, provider_message_id: str | None) -> bytes:
    """A provider took it; ``provider_message_id`` is its id, or the Message-ID sent."""
    event: dict[str, Any] = {"k": "sent", "id": envelope_id, "t": now_ms(), "p": provider, "n": attempt}
    if provider_message_id:
        event["pid"] = provider_message_id
    return _dumps(event)


def _final(kind: str, envelope_id: str, attempt: int, reason: str, provider: str | None) -> bytes:
    event: dict[str, Any] = {"k": kind, "id": envelope_id, "t": now_ms(), "n": attempt, "r": _reason(reason)}
    if provider:
        event["p"] = provider
    return _dumps(event)


def failed(envelope_id: str, attempt: int, reason: str, provider: str | None = None) -> bytes:
    """Refused for good (a permanent failure): no other provider or retry will be tried."""
    return _final("failed", envelope_id, attempt, reason, provider)


def dead(envelope_id: str, attempt: int, reason: str, provider: str | None = None) -> bytes:
    """Its dead letter is recorded: ``manage.py mailqueue requeue`` can put it back."""
    return _final("dead", envelope_id, attempt, reason, provider)


def requeued(envelope_id: str, queue: str) -> bytes:
    return _dumps({"k": "requeued", "id": envelope_id, "t": now_ms(), "q": queue})


def relayed(envelope_id: str, queue: str, at_ms: int | None = None) -> bytes:
    return _dumps({"k": "relayed", "id": envelope_id, "t": now_ms() if at_ms is None else at_ms, "q": queue})


def append(event: bytes, config: MailQueueConfig) -> None:
    """Append ``event`` in a call of its own: only for a step whose record is a call mailqueue does not make.

    (A retry's or deferral's put-back is Dramatiq's enqueue.) One round trip
    on this thread's connection; raises redis's errors.
    """
    command = ("XADD", events_key(config.namespace), "MAXLEN", "~", config.log.stream_maxlen, "*", FIELD, event)
    exchange((command,), lambda wire: wire.read())


def decode(fields: Mapping[Any, Any]) -> dict[str, Any]:
    """One stream entry's fields (as redis-py returns them) as the event's dict; LogEventError if it is not one."""
    raw = fields.get(b"e", fields.get(FIELD))
    if raw is None:
        raise LogEventError(f"stream entry has no {FIELD!r} field", fields)
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise LogEventError(f"stream entry is not JSON: {error}", fields, error) from error
    if not isinstance(event, dict) or not isinstance(event.get("k"), str) or not isinstance(event.get("id"), str):
        raise LogEventError("stream entry is not an event (needs 'k' and 'id')", fields)
    if not isinstance(event.get("t"), int):
        raise LogEventError("stream entry has no integer time 't'", fields)
    return event
