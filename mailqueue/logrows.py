"""A batch of message log events folded into rows: one per message, one per event, one per recipient.

Pure Python, no database: ``fold`` turns the batch's events (in stream order)
into one ``MessageRow`` per message, and ``combine`` merges a row with the one
already stored, field by field, by rules that do not depend on the order in
which batches arrive (times by min/max, attempts by max, status by the time of
the event that set it, the last error likewise). ``mailqueue.logsql`` writes the same rules as SQL for
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

#: Kinds that name the queue the message is (now) in.
QUEUE_KINDS = frozenset({EventKind.QUEUED, EventKind.REQUEUED, EventKind.RELAYED})

KNOWN_KINDS = frozenset(EventKind.values)

SUBJECT_CHARS = 255
FROM_CHARS = 320
PROVIDER_CHARS = 200
PROVIDER_ID_CHARS = 255
ADDRESS_CHARS = 320
DOMAIN_CHARS = 255


@dataclass(slots=True)
class MessageRow:
    """One Message row as a batch (or the table) knows it; times are epoch milliseconds.

    ``queued_ms`` is set only by a ``queued`` event, so it also says whether the
    descriptive fields (mailer, subject, ...) are known; ``status_ms`` is None when
    no event of the batch set a status.
    """

    envelope_id: str
    queue: str = ""
    mailer: str = ""
    subject: str = ""
    from_email: str = ""
    recipient_count: int = 0
    size: int = 0
    status: str = Status.QUEUED
    status_ms: int | None = None
    attempts: int = 0
    provider: str = ""
    provider_message_id: str = ""
    composed_ms: int | None = None
    queued_ms: int | None = None
    first_attempt_ms: int | None = None
    sent_ms: int | None = None
    updated_ms: int = 0
    last_error: str = ""
    last_error_ms: int | None = None

    def apply(self, event: Mapping[str, Any]) -> None:
        """Fold one event in; events come in stream order, each at least as late as the ones before."""
        kind = event["k"]
        when = event["t"]
        if kind == EventKind.QUEUED:
            self.mailer = str(event.get("m") or "")
            self.subject = str(event.get("s") or "")[:SUBJECT_CHARS]
            self.from_email = str(event.get("f") or "")[:FROM_CHARS]
            self.recipient_count = sum(len(event.get(name) or ()) for name in RecipientKind.values)
            self.size = int(event.get("z") or 0)
            composed = event.get("c")
            self.composed_ms = int(composed) if composed is not None else None
            self.queued_ms = when if self.queued_ms is None else min(self.queued_ms, when)
        if kind in QUEUE_KINDS and event.get("q"):
            self.queue = str(event["q"])
        if kind in ATTEMPT_KINDS and (self.first_attempt_ms is None or when < self.first_attempt_ms):
            self.first_attempt_ms = when
        attempt = event.get("n")
        if attempt is not None and int(attempt) > self.attempts:
            self.attempts = int(attempt)
        status = STATUS_AFTER.get(kind)
        if status is not None and _status_wins(when, status, self.status_ms, self.status):
            self.status, self.status_ms = status, when
        if kind in ERROR_KINDS and event.get("r") and (self.last_error_ms is None or when >= self.last_error_ms):
            self.last_error, self.last_error_ms = str(event["r"]), when
        self.updated_ms = max(self.updated_ms, when)
        if kind == EventKind.SENT:
            self.sent_ms = when
            self.provider = str(event.get("p") or "")[:PROVIDER_CHARS]
            self.provider_message_id = str(event.get("pid") or "")[:PROVIDER_ID_CHARS]
        elif kind in (EventKind.FAILED, EventKind.DEAD) and event.get("p") and self.sent_ms is None:
            self.provider = str(event["p"])[:PROVIDER_CHARS]


def _status_wins(when: int, status: str, stored_ms: int | None, stored: str) -> bool:
    """Does a status set at ``when`` replace the one set at ``stored_ms``? Later wins; a tie goes to the further one."""
    if stored_ms is None or when > stored_ms:
        return True
    return when == stored_ms and STATUS_RANK[status] >= STATUS_RANK[stored]


def _earliest(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def combine(stored: MessageRow, new: MessageRow) -> MessageRow:
    """``stored`` updated with a batch's ``new`` row: what the upsert does, field by field.

    The same rules in SQL are ``mailqueue.logsql.MESSAGE_UPDATES``.
    """
    described = new.queued_ms is not None
    source = new if described else stored
    status_wins = new.status_ms is not None and _status_wins(new.status_ms, new.status, stored.status_ms, stored.status)
    takes_error = new.last_error_ms is not None and (
        stored.last_error_ms is None or new.last_error_ms >= stored.last_error_ms
    )
    takes_provider = new.sent_ms is not None or (stored.sent_ms is None and bool(new.provider))
    takes_message_id = new.sent_ms is not None and bool(new.provider_message_id)
    return MessageRow(
        envelope_id=stored.envelope_id,
        queue=new.queue or stored.queue,
        mailer=source.mailer,
        subject=source.subject,
        from_email=source.from_email,
        recipient_count=source.recipient_count,
        size=source.size,
        composed_ms=source.composed_ms,
        queued_ms=_earliest(stored.queued_ms, new.queued_ms),
        first_attempt_ms=_earliest(stored.first_attempt_ms, new.first_attempt_ms),
        attempts=max(stored.attempts, new.attempts),
        status=new.status if status_wins else stored.status,
        status_ms=new.status_ms if status_wins else stored.status_ms,
        last_error=new.last_error if takes_error else stored.last_error,
        last_error_ms=new.last_error_ms if takes_error else stored.last_error_ms,
        updated_ms=max(stored.updated_ms, new.updated_ms),
        sent_ms=new.sent_ms if new.sent_ms is not None else stored.sent_ms,
        provider=new.provider if takes_provider else stored.provider,
        provider_message_id=new.provider_message_id if takes_message_id else stored.provider_message_id,
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
        provider=str(event.get("p") or "")[:PROVIDER_CHARS],
        attempt=int(attempt) if attempt is not None else None,
        detail=str(detail or ""),
    )


def recipient_rows(event: Mapping[str, Any], mode: str) -> Iterable[tuple[str, str, str, str]]:
    """(envelope id, kind, address, domain) of a ``queued`` event's recipients, as LOG["RECIPIENTS"] keeps them."""
    if mode == "off":
        return
    envelope_id = event["id"]
    for kind in RecipientKind.values:
        for address in event.get(kind) or ():
            lowered = str(address).strip().lower()
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
