"""The log writer: events from the Redis stream into Message, MessageRecipient and MessageEvent rows.

``manage.py mailqueue log`` runs a ``LogWriter``: it reads the stream in
batches through the consumer group ``mailqueue-log``, folds each batch into a
few bulk statements in ONE transaction and acknowledges the entries only after
the commit. A writer killed mid-batch leaves its entries pending; the next
writer claims them (XAUTOCLAIM) and writes them again, and the rows come out
the same: messages are upserted from a merge that is idempotent (status from
the latest event, attempts the highest number seen, first/last times by
min/max) and events are keyed by their stream id.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from django.db import transaction

from . import eventlog
from .client import redis_client
from .conf import get_config
from .exceptions import LogEventError
from .keys import events_key
from .models import EventKind, Message, MessageEvent, MessageRecipient, RecipientKind, Status
from .monitoring import LOG_GROUP

logger = logging.getLogger(__name__)

GROUP = LOG_GROUP

#: Fields the upsert rewrites on a message row that exists already (all but the key).
UPDATE_FIELDS = (
    "queue",
    "mailer",
    "subject",
    "from_email",
    "recipient_count",
    "size",
    "status",
    "attempts",
    "provider",
    "provider_message_id",
    "composed_at",
    "queued_at",
    "first_attempt_at",
    "sent_at",
    "updated_at",
    "last_error",
)

#: The status each event kind leaves a message in; an attempt that failed changes nothing by itself
#: (the next provider, a retry or the dead letters say where the message went).
STATUS_AFTER = {
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

#: Two events in the same millisecond, written in different batches: the further status wins.
STATUS_RANK = {
    Status.QUEUED: 0,
    Status.DEFERRED: 0,
    Status.SENT: 1,
    Status.FAILED: 1,
    Status.DEAD: 2,
    Status.DELIVERED: 3,
    Status.BOUNCED: 3,
    Status.COMPLAINED: 3,
}

#: Events that are an attempt at a provider (the first one sets ``first_attempt_at``).
ATTEMPT_KINDS = frozenset({EventKind.ATTEMPT_FAILED, EventKind.SENT, EventKind.FAILED})

#: Kinds whose ``r`` is the message's latest error.
ERROR_KINDS = frozenset({EventKind.ATTEMPT_FAILED, EventKind.DEFERRED, EventKind.FAILED, EventKind.DEAD})

KNOWN_KINDS = frozenset(EventKind.values)


def decode(fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    """The event of one stream entry, of a kind this writer knows; ValueError (LogEventError) when it is not one."""
    event = eventlog.decode(fields)
    if event["k"] not in KNOWN_KINDS:
        raise LogEventError(f"unknown event kind {event['k']!r}", fields)
    return event


def at(milliseconds: Any) -> datetime:
    return datetime.fromtimestamp(int(milliseconds) / 1000, UTC)


def stream_order(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def recipient_rows(envelope_id: str, event: Mapping[str, Any], mode: str) -> list[MessageRecipient]:
    """The recipient rows of a ``queued`` event, as LOG["RECIPIENTS"] keeps them."""
    if mode == "off":
        return []
    rows = []
    for kind in RecipientKind.values:
        for address in event.get(kind) or ():
            lowered = str(address).strip().lower()
            domain = lowered.rpartition("@")[2][:255]
            kept = hashlib.sha256(lowered.encode()).hexdigest() if mode == "hash" else lowered[:320]
            rows.append(MessageRecipient(message_id=envelope_id, kind=kind, address=kept, domain=domain))
    return rows


def merge(row: Message, stream_id: str, event: Mapping[str, Any]) -> None:
    """Fold one event into ``row``; folding the same events again (a replayed batch) changes nothing."""
    kind = event["k"]
    when = at(event["t"])
    if kind == EventKind.QUEUED:
        row.queue = str(event.get("q") or row.queue)
        row.mailer = str(event.get("m") or row.mailer)
        row.subject = str(event.get("s") or "")[:255]
        row.from_email = str(event.get("f") or "")[:320]
        row.recipient_count = sum(len(event.get(kind) or ()) for kind in RecipientKind.values)
        row.size = int(event.get("z") or 0)
        row.composed_at = at(event["c"]) if event.get("c") is not None else row.composed_at
        row.queued_at = when if row.queued_at is None else min(row.queued_at, when)
    elif kind in (EventKind.REQUEUED, EventKind.RELAYED) and event.get("q"):
        row.queue = str(event["q"])
    if kind in ATTEMPT_KINDS:
        row.first_attempt_at = when if row.first_attempt_at is None else min(row.first_attempt_at, when)
    if event.get("n") is not None:
        row.attempts = max(row.attempts, int(event["n"]))
    status = STATUS_AFTER.get(kind)
    latest = row.updated_at is None or when > row.updated_at
    tie = row.updated_at is not None and when == row.updated_at
    if latest or tie:
        if status is not None and (latest or STATUS_RANK[status] >= STATUS_RANK[Status(row.status)]):
            row.status = status
        if kind in ERROR_KINDS and event.get("r"):
            row.last_error = str(event["r"])
        row.updated_at = when
    if kind == EventKind.SENT:
        row.sent_at = when
        row.provider = str(event.get("p") or row.provider)[:200]
        row.provider_message_id = str(event.get("pid") or row.provider_message_id)[:255]
    elif kind in (EventKind.FAILED, EventKind.DEAD) and event.get("p") and row.status != Status.SENT:
        row.provider = str(event["p"])[:200]


def event_row(stream_id: str, event: Mapping[str, Any]) -> MessageEvent:
    kind = event["k"]
    if kind in (EventKind.REQUEUED, EventKind.RELAYED):
        detail = str(event.get("q") or "")
    elif kind == EventKind.SENT:
        detail = str(event.get("pid") or "")
    else:
        detail = str(event.get("r") or "")
    attempt = event.get("n")
    return MessageEvent(
        message_id=event["id"],
        stream_id=stream_id,
        kind=kind,
        at=at(event["t"]),
        provider=str(event.get("p") or "")[:200],
        attempt=int(attempt) if attempt is not None else None,
        detail=detail,
    )


@dataclass(kw_only=True, slots=True)
class Written:
    """What one batch (or a whole run) wrote: counts only, never addresses."""

    entries: int = 0
    messages: int = 0
    recipients: int = 0
    events: int = 0
    #: Entries that were not message log events (acknowledged, logged by id, not written).
    skipped: int = 0
    #: SQL statements issued for the writes (the read of existing rows included).
    statements: int = 0

    def add(self, other: Written) -> None:
        for name in ("entries", "messages", "recipients", "events", "skipped", "statements"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def write(entries: Sequence[tuple[str, Mapping[bytes, bytes]]], *, recipients: str, using: str) -> Written:
    """Write a batch of stream entries in one transaction; return what was written.

    Reads the batch's existing message rows in one query, merges in stream order,
    then one upsert for messages and one insert each for recipients and events
    (each ignoring rows already there).
    """
    written = Written(entries=len(entries))
    decoded: list[tuple[str, dict[str, Any]]] = []
    for stream_id, fields in sorted(entries, key=lambda entry: stream_order(entry[0])):
        try:
            decoded.append((stream_id, decode(fields)))
        except ValueError as error:
            written.skipped += 1
            logger.warning("log writer: stream entry %s is not a message log event (%s): skipped", stream_id, error)
    if not decoded:
        return written
    ids = {str(event["id"]) for _, event in decoded}
    with transaction.atomic(using=using):
        rows = {row.envelope_id: row for row in Message.objects.using(using).filter(envelope_id__in=ids)}
        written.statements += 1
        recipient_list: list[MessageRecipient] = []
        event_list: list[MessageEvent] = []
        for stream_id, event in decoded:
            envelope_id = str(event["id"])
            row = rows.get(envelope_id)
            if row is None:
                row = rows[envelope_id] = Message(envelope_id=envelope_id, queue="", mailer="")
            merge(row, stream_id, event)
            if event["k"] == EventKind.QUEUED:
                recipient_list += recipient_rows(envelope_id, event, recipients)
            event_list.append(event_row(stream_id, event))
        Message.objects.using(using).bulk_create(
            list(rows.values()), update_conflicts=True, unique_fields=["envelope_id"], update_fields=UPDATE_FIELDS
        )
        written.statements += 1
        if recipient_list:
            MessageRecipient.objects.using(using).bulk_create(recipient_list, ignore_conflicts=True)
            written.statements += 1
        MessageEvent.objects.using(using).bulk_create(event_list, ignore_conflicts=True)
        written.statements += 1
    written.messages, written.recipients, written.events = len(rows), len(recipient_list), len(event_list)
    return written


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(kw_only=True)
class LogWriter:
    """One consumer of the events stream in the group ``mailqueue-log``."""

    namespace: str
    batch_size: int = 500
    recipients: str = "store"
    using: str = "default"
    consumer: str = field(default_factory=consumer_name)
    #: How long XREADGROUP waits for new entries (ms); below the client's socket timeout.
    block_ms: int = 1000
    #: An entry pending this long on another consumer is taken for abandoned (its writer died) and claimed.
    claim_idle_ms: int = 60_000
    #: Seconds between two claims of abandoned entries while running.
    claim_every: float = 30.0
    total: Written = field(default_factory=Written)
    _next_claim: float = 0.0

    @classmethod
    def from_settings(cls, **overrides: Any) -> LogWriter:
        config = get_config()
        values: dict[str, Any] = {
            "namespace": config.namespace,
            "batch_size": config.log.batch_size,
            "recipients": config.log.recipients,
        }
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    @property
    def key(self) -> str:
        return events_key(self.namespace)

    @property
    def client(self) -> redis.Redis:
        return redis_client()

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing: from id 0, so nothing already appended is missed."""
        try:
            self.client.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def claim(self) -> list[tuple[str, dict[bytes, bytes]]]:
        """Take over entries left pending by a dead writer; acknowledge those trimmed from the stream meanwhile."""
        claimed: list[tuple[str, dict[bytes, bytes]]] = []
        start = "0-0"
        while len(claimed) < self.batch_size:
            reply: Any = self.client.xautoclaim(
                self.key, GROUP, self.consumer, self.claim_idle_ms, start_id=start, count=self.batch_size
            )
            start = _text(reply[0])
            entries = [(_text(stream_id), fields) for stream_id, fields in reply[1] if fields is not None]
            deleted = [_text(stream_id) for stream_id in (reply[2] if len(reply) > 2 else ())]
            if deleted:
                self.client.xack(self.key, GROUP, *deleted)
                logger.warning("log writer: %d pending entries were trimmed before they were written", len(deleted))
            claimed += entries
            if start == "0-0":
                break
        if claimed:
            logger.info("log writer %s: claimed %d entries abandoned by another writer", self.consumer, len(claimed))
        return claimed

    def read(self, *, block: bool) -> list[tuple[str, dict[bytes, bytes]]]:
        """The next batch: abandoned entries when a claim is due, else new ones (waiting up to ``block_ms``)."""
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.claim_every
            claimed = self.claim()
            if len(claimed) >= self.batch_size:
                self._next_claim = 0.0  # more may be waiting: claim again on the next read
            if claimed:
                return claimed
        reply: Any = self.client.xreadgroup(
            GROUP, self.consumer, {self.key: ">"}, count=self.batch_size, block=self.block_ms if block else None
        )
        if not reply:
            return []
        return [(_text(stream_id), fields) for stream_id, fields in reply[0][1]]

    def step(self, *, block: bool = True) -> Written:
        """Read one batch, write it in one transaction, then acknowledge it."""
        entries = self.read(block=block)
        if not entries:
            return Written()
        written = write(entries, recipients=self.recipients, using=self.using)
        self.client.xack(self.key, GROUP, *(stream_id for stream_id, _ in entries))
        self.total.add(written)
        logger.info(
            "log writer %s: %d entries -> %d messages, %d events, %d recipients in %d statements (last id %s)",
            self.consumer,
            written.entries,
            written.messages,
            written.events,
            written.recipients,
            written.statements,
            entries[-1][0],
        )
        return written

    def drain(self) -> Written:
        """Write everything there is now (entries abandoned for ``claim_idle_ms`` included), then return."""
        self.ensure_group()
        self._next_claim = 0.0
        while self.step(block=False).entries:
            pass
        return self.total

    def forget_idle_consumers(self, idle_ms: int) -> None:
        """Drop consumers (writers gone for good) that hold nothing pending, so XINFO stays short."""
        for consumer in self.client.xinfo_consumers(self.key, GROUP):
            name = _text(consumer["name"])
            if name != self.consumer and consumer["pending"] == 0 and consumer["idle"] > idle_ms:
                self.client.xgroup_delconsumer(self.key, GROUP, name)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
