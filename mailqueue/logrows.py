"""A batch of message log events folded into rows: one per message, one per event, one per recipient.

Pure Python, no database: ``fold`` turns the batch's events (in stream order)
into one ``MessageRow`` per message, and ``combine`` merges a row with the one
already stored, field by field, by rules that do not depend on the order in
which batches arrive (times by min/max, attempts by max, status by the time of
the event that set it, the queue, provider and last error likewise).
``mailqueue.logsql`` writes the same rules as SQL for
the databases that have an upsert; ``combine`` is the rule book for the others
and for the tests that hold both to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .models import EventKind, RecipientKind, Status

#: The status each event kind leaves a message in; an attempt that failed changes nothing by itself
#: (the next provider, a retry or the dead letters say where the message went).
STATUS_AFTER: dict[str, str] = {
    EventKind.QUEUED: Status.QUEUED,
    EventKind.DEFERRED: Status.DEFERRED,
    EventKind.SENT: Status.SENT,
    EventKind.FAILED: Status.FAILED,
    EventKind.DEAD: Status.DEAD,
    EventKind.REQUEUED: Status.QUEUED,
    EventKind.RELAYED: Status.QUEUED,
    EventKind.DELIVERED: Status.DELIVERED,
    EventKind.BOUNCED: Status.BOUNCED,
    EventKind.COMPLAINED: Status.COMPLAINED,
}

#: Two status events in the same millisecond: the further status wins. Every status has its own rank, so
#: the result does not depend on which of the two was written first.
STATUS_RANK: dict[str, int] = {
    Status.QUEUED: 0,
    Status.DEFERRED: 1,
    Status.FAILED: 2,
    Status.SENT: 3,
    Status.DEAD: 4,
    Status.DELIVERED: 5,
    Status.BOUNCED: 6,
    Status.COMPLAINED: 7,
}

#: Events that are an attempt at a provider (the first one sets ``first_attempt_at``).
ATTEMPT_KINDS = frozenset({EventKind.ATTEMPT_FAILED, EventKind.SENT, EventKind.FAILED})

#: Kinds whose ``r`` is the message's latest error.
ERROR_KINDS = frozenset({EventKind.ATTEMPT_FAILED, EventKind.DEFERRED, EventKind.FAILED, EventKind.DEAD})

#: Kinds that name the provider involved (the one that took it, or the last that refused it for good).
PROVIDER_KINDS = frozenset({EventKind.SENT, EventKind.FAILED, EventKind.DEAD})

#: Kinds that name the queue the message is (now) in.
QUEUE_KINDS = frozenset({EventKind.QUEUED, EventKind.REQUEUED, EventKind.RELAYED})

KNOWN_KINDS = frozenset(EventKind.values)

SUBJECT_CHARS = 255
FROM_CHARS = 320
QUEUE_CHARS = 200
MAILER_CHARS = 200
PROVIDER_CHARS = 200
PROVIDER_ID_CHARS = 255
ENVELOPE_ID_CHARS = 64
ADDRESS_CHARS = 320
DOMAIN_CHARS = 255


def text(value: Any, limit: int | None = None) -> str:
    """``value`` as the text a column keeps: cut to ``limit``, without NUL (PostgreSQL refuses it in text)."""
    kept = str(value or "")
    if "\x00" in kept:
        kept = kept.replace("\x00", "")
    return kept if limit is None else kept[:limit]


def later(when: int, value: Any, stored_when: int | None, stored_value: Any) -> bool:
    """Does a value set at ``when`` replace one set at ``stored_when``? The later wins; a tie, the greater value.

    Comparing the values on a tie makes the result the same whichever of two
    same-millisecond events is written first (text compares by code point, as
    SQLite's BINARY and PostgreSQL's "C" collation do).
    """
    if stored_when is None or when > stored_when:
        return True
    return when == stored_when and value > stored_value


@dataclass(slots=True)
class MessageRow:
    """One Message row as a batch (or the table) knows it; times are epoch milliseconds.

    Each field a later event may change carries the time of the event that set
    it (``status_ms``, ``queue_ms``, ``provider_ms``, ``last_error_ms``;
    ``sent_ms`` for the provider's message id), None when no event set it:
    ``combine`` keeps the later of two, so no order of writing can change a row.
    ``queued_ms`` is set only by a ``queued`` event, so it also says whether the
    descriptive fields (mailer, subject, ...) are known.
    """

    envelope_id: str
    queue: str = ""
    queue_ms: int | None = None
    mailer: str = ""
    subject: str = ""
    from_email: str = ""
    recipient_count: int = 0
    size: int = 0
    status: str = Status.QUEUED
    status_ms: int | None = None
    attempts: int = 0
    provider: str = ""
    provider_ms: int | None = None
    provider_message_id: str = ""
    composed_ms: int | None = None
    queued_ms: int | None = None
    first_attempt_ms: int | None = None
    sent_ms: int | None = None
    updated_ms: int = 0
    last_error: str = ""
    last_error_ms: int | None = None

    def apply(self, event: Mapping[str, Any]) -> None:
        """Fold one event in, by the same rules as ``combine`` (so the order within a batch does not matter either)."""
        kind = event["k"]
        when = event["t"]
        if kind == EventKind.QUEUED:
            self.mailer = text(event.get("m"), MAILER_CHARS)
            self.subject = text(event.get("s"), SUBJECT_CHARS)
            self.from_email = text(event.get("f"), FROM_CHARS)
            self.recipient_count = sum(len(event.get(name) or ()) for name in RecipientKind.values)
            self.size = int(event.get("z") or 0)
            composed = event.get("c")
            self.composed_ms = int(composed) if composed is not None else None
            self.queued_ms = when if self.queued_ms is None else min(self.queued_ms, when)
        if kind in QUEUE_KINDS and event.get("q"):
            queue = text(event["q"], QUEUE_CHARS)
            if later(when, queue, self.queue_ms, self.queue):
                self.queue, self.queue_ms = queue, when
        if kind in ATTEMPT_KINDS and (self.first_attempt_ms is None or when < self.first_attempt_ms):
            self.first_attempt_ms = when
        attempt = event.get("n")
        if attempt is not None and int(attempt) > self.attempts:
            self.attempts = int(attempt)
        status = STATUS_AFTER.get(kind)
        if status is not None and later(when, STATUS_RANK[status], self.status_ms, STATUS_RANK[self.status]):
            self.status, self.status_ms = status, when
        if kind in ERROR_KINDS and event.get("r"):
            error = text(event["r"])
            if later(when, error, self.last_error_ms, self.last_error):
                self.last_error, self.last_error_ms = error, when
        self.updated_ms = max(self.updated_ms, when)
        if kind == EventKind.SENT:
            message_id = text(event.get("pid"), PROVIDER_ID_CHARS)
            if later(when, message_id, self.sent_ms, self.provider_message_id):
                self.sent_ms, self.provider_message_id = when, message_id
        if kind in PROVIDER_KINDS and event.get("p"):
            provider = text(event["p"], PROVIDER_CHARS)
            if later(when, provider, self.provider_ms, self.provider):
                self.provider, self.provider_ms = provider, when


def _earliest(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def combine(stored: MessageRow, new: MessageRow) -> MessageRow:
    """``stored`` updated with a batch's ``new`` row: what the upsert does, field by field.

    Associative and commutative: any order of writing the same batches gives
    the same row. The same rules in SQL are ``mailqueue.logsql.message_updates``.
    """
    source = new if new.queued_ms is not None else stored

    def newer(when: int | None, value: Any, stored_when: int | None, stored_value: Any) -> bool:
        return when is not None and later(when, value, stored_when, stored_value)

    takes_queue = newer(new.queue_ms, new.queue, stored.queue_ms, stored.queue)
    takes_status = newer(new.status_ms, STATUS_RANK[new.status], stored.status_ms, STATUS_RANK[stored.status])
    takes_error = newer(new.last_error_ms, new.last_error, stored.last_error_ms, stored.last_error)
    takes_sent = newer(new.sent_ms, new.provider_message_id, stored.sent_ms, stored.provider_message_id)
    takes_provider = newer(new.provider_ms, new.provider, stored.provider_ms, stored.provider)
    return MessageRow(
        envelope_id=stored.envelope_id,
        queue=new.queue if takes_queue else stored.queue,
        queue_ms=new.queue_ms if takes_queue else stored.queue_ms,
        mailer=source.mailer,
        subject=source.subject,
        from_email=source.from_email,
        recipient_count=source.recipient_count,
        size=source.size,
        composed_ms=source.composed_ms,
        queued_ms=_earliest(stored.queued_ms, new.queued_ms),
        first_attempt_ms=_earliest(stored.first_attempt_ms, new.first_attempt_ms),
        attempts=max(stored.attempts, new.attempts),
        status=new.status if takes_status else stored.status,
        status_ms=new.status_ms if takes_status else stored.status_ms,
        last_error=new.last_error if takes_error else stored.last_error,
        last_error_ms=new.last_error_ms if takes_error else stored.last_error_ms,
        updated_ms=max(stored.updated_ms, new.updated_ms),
        sent_ms=new.sent_ms if takes_sent else stored.sent_ms,
        provider_message_id=new.provider_message_id if takes_sent else stored.provider_message_id,
        provider=new.provider if takes_provider else stored.provider,
        provider_ms=new.provider_ms if takes_provider else stored.provider_ms,
    )


@dataclass(slots=True)
class EventRow:
    """One MessageEvent row."""

    stream_id: str
    envelope_id: str
    kind: str
    at_ms: int
    provider: str
    attempt: int | None
    detail: str


def event_row(stream_id: str, event: Mapping[str, Any]) -> EventRow:
    kind = event["k"]
    if kind in (EventKind.REQUEUED, EventKind.RELAYED):
        detail = event.get("q")
    elif kind == EventKind.SENT:
        detail = event.get("pid")
    else:
        detail = event.get("r")
    attempt = event.get("n")
    return EventRow(
        stream_id=stream_id,
        envelope_id=event["id"],
        kind=kind,
        at_ms=event["t"],
        provider=text(event.get("p"), PROVIDER_CHARS),
        attempt=int(attempt) if attempt is not None else None,
        detail=text(detail),
    )


def recipient_rows(event: Mapping[str, Any], mode: str) -> Iterable[tuple[str, str, str, str]]:
    """(envelope id, kind, address, domain) of a ``queued`` event's recipients, as LOG["RECIPIENTS"] keeps them."""
    if mode == "off":
        return
    envelope_id = event["id"]
    for kind in RecipientKind.values:
        for address in event.get(kind) or ():
            lowered = text(address).strip().lower()
            domain = lowered.rpartition("@")[2][:DOMAIN_CHARS]
            kept = hashlib.sha256(lowered.encode()).hexdigest() if mode == "hash" else lowered[:ADDRESS_CHARS]
            yield envelope_id, kind, kept, domain


@dataclass(slots=True)
class Batch:
    """A batch of events folded: what the statements write."""

    messages: dict[str, MessageRow]
    events: list[EventRow]
    recipients: list[tuple[str, str, str, str]]


def fold(events: Iterable[tuple[str, Mapping[str, Any]]], *, recipients: str) -> Batch:
    """Fold ``(stream id, event)`` pairs, in stream order, into the rows of one batch."""
    messages: dict[str, MessageRow] = {}
    event_rows: list[EventRow] = []
    recipient_list: list[tuple[str, str, str, str]] = []
    for stream_id, event in events:
        envelope_id = event["id"]
        row = messages.get(envelope_id)
        if row is None:
            row = messages[envelope_id] = MessageRow(envelope_id=envelope_id)
        row.apply(event)
        event_rows.append(event_row(stream_id, event))
        if event["k"] == EventKind.QUEUED:
            recipient_list.extend(recipient_rows(event, recipients))
    return Batch(messages=messages, events=event_rows, recipients=recipient_list)
