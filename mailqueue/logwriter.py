"""The log writer: events from the Redis stream into Message, MessageRecipient and MessageEvent rows.

``manage.py mailqueue log`` runs a ``LogWriter``: it reads the stream in
batches through the consumer group ``mailqueue-log``, folds each batch into a
few bulk statements in ONE transaction and acknowledges the entries only after
the commit. A writer killed mid-batch leaves its entries pending; the next
writer claims them (XAUTOCLAIM) and writes them again, and the rows come out
the same: messages are upserted by a merge that does not depend on the order
the events arrive in (``mailqueue.logrows.combine``: status from the latest
status event, attempts the highest number seen, first/last times by min/max),
events are keyed by their stream id. So several writers may run at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from django.db import DatabaseError, InterfaceError, OperationalError, transaction

from . import eventlog
from .client import redis_client
from .conf import get_config
from .exceptions import LogEventError
from .keys import events_key
from .logrows import ENVELOPE_ID_CHARS, fold
from .logsql import Statements, statements_for
from .models import EventKind
from .monitoring import LOG_GROUP

logger = logging.getLogger(__name__)

GROUP = LOG_GROUP

#: Stream entries as redis-py returns them: (id, fields).
Entries = list[tuple[str, dict[bytes, bytes]]]

KNOWN_KINDS = frozenset(EventKind.values)

#: The type each optional key must have (eventlog's contract); an entry that breaks it is skipped, not written.
KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(("q", "m", "s", "f", "p", "pid", "r"), str),
    **dict.fromkeys(("z", "c", "n", "u"), int),
    **dict.fromkeys(("to", "cc", "bcc"), list),
    "tr": bool,
}


def decode(fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    """The event of one stream entry, of a kind this writer knows; ValueError (LogEventError) when it is not one."""
    event = eventlog.decode(fields)
    if event["k"] not in KNOWN_KINDS:
        raise LogEventError(f"unknown event kind {event['k']!r}", fields)
    if not 0 < len(event["id"]) <= ENVELOPE_ID_CHARS or "\x00" in event["id"]:
        raise LogEventError("the envelope id is not one (empty, too long or with NUL)", fields)
    for key, value in event.items():
        wanted = KEY_TYPES.get(key)
        if wanted is not None and value is not None and not isinstance(value, wanted):
            raise LogEventError(f"{key!r} is a {type(value).__name__}", fields)
    for key in ("to", "cc", "bcc"):
        if not all(isinstance(address, str) for address in event.get(key) or ()):
            raise LogEventError(f"{key!r} holds a value that is not an address", fields)
    return event


def stream_order(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)


@dataclass(kw_only=True, slots=True)
class Written:
    """What one batch (or a whole run) wrote: counts only, never addresses."""

    entries: int = 0
    messages: int = 0
    recipients: int = 0
    events: int = 0
    #: Entries not written: not message log events, or refused by the database (acknowledged, logged by id).
    skipped: int = 0
    #: SQL statements issued for the writes (on databases without an upsert, the read of stored rows included).
    statements: int = 0

    def add(self, other: Written) -> None:
        for name in ("entries", "messages", "recipients", "events", "skipped", "statements"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def write(
    entries: Sequence[tuple[str, Mapping[bytes, bytes]]],
    *,
    recipients: str,
    using: str,
    statements: Statements | None = None,
) -> Written:
    """Write a batch of stream entries in one transaction; return what was written.

    The events are folded into one row per message (``logrows.fold``), then
    written in a few multi-row statements (``logsql``): one upsert for the
    messages, one insert each for recipients and events.
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
    batch = fold(decoded, recipients=recipients)
    with transaction.atomic(using=using):
        written.statements = (statements or statements_for(using)).write(batch)
    written.messages, written.recipients, written.events = len(batch.messages), len(batch.recipients), len(batch.events)
    return written


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(kw_only=True)
class LogWriter:
    """One consumer of the events stream in the group ``mailqueue-log``."""

    namespace: str
    batch_size: int = 500
    #: Milliseconds a short batch waits for more entries before it is written (LOG BATCH_WAIT).
    batch_wait_ms: int = 500
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
    #: A batch read but not yet written and acknowledged (its write failed): written again before anything else.
    _in_hand: Entries = field(default_factory=list)
    _statements: Statements | None = None

    @classmethod
    def from_settings(cls, **overrides: Any) -> LogWriter:
        config = get_config()
        values: dict[str, Any] = {
            "namespace": config.namespace,
            "batch_size": config.log.batch_size,
            "batch_wait_ms": config.log.batch_wait,
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

    def claim(self) -> Entries:
        """Take over entries left pending by a dead writer; acknowledge those trimmed from the stream meanwhile."""
        claimed: Entries = []
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

    def read(self, *, block: bool) -> Entries:
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

    def fill(self, entries: Entries, *, wait: bool) -> Entries:
        """Let a short batch fill for ``batch_wait_ms``, then top it up with what arrived, in one more read.

        Under a steady trickle each read finds a few entries; writing each at once
        costs a transaction, three statements and a commit per handful of events,
        CPU the workers on the same host need (docs/benchmarks.md). One sleep and
        one read per wait, never a read per entry.
        """
        if not entries or not wait or self.batch_wait_ms <= 0 or len(entries) >= self.batch_size:
            return entries
        time.sleep(self.batch_wait_ms / 1000)
        reply: Any = self.client.xreadgroup(GROUP, self.consumer, {self.key: ">"}, count=self.batch_size - len(entries))
        if reply:
            entries += [(_text(stream_id), fields) for stream_id, fields in reply[0][1]]
        return entries

    def step(self, *, block: bool = True) -> Written:
        """Write one batch in one transaction, then acknowledge it.

        The batch is the one in hand when the last write failed (the database
        was down, a lock timed out), else the next one read: such a failure
        (OperationalError, InterfaceError) leaves nothing acknowledged, and the
        same entries are written on the next step. Any other database error is
        the data's, not the database's: the batch is written in halves, down to
        the entry no database will take, which is logged by id and skipped.
        """
        entries = self._in_hand
        if not entries:
            entries = self._in_hand = self.read(block=block)
            entries = self._in_hand = self.fill(entries, wait=block)
        if not entries:
            return Written()
        if self._statements is None:
            self._statements = statements_for(self.using)
        written = self.write_or_split(entries)
        self.client.xack(self.key, GROUP, *(stream_id for stream_id, _ in entries))
        self._in_hand = []
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

    def write(self, entries: Entries) -> Written:
        return write(entries, recipients=self.recipients, using=self.using, statements=self._statements)

    def write_or_split(self, entries: Entries) -> Written:
        """Write ``entries`` in one transaction; refused for their content, in halves, down to the entry refused.

        An outage (OperationalError, InterfaceError) is raised: the batch stays
        in hand. Any other database error is the data's: a lone entry refused is
        logged by id (never its content) and skipped.
        """
        try:
            return self.write(entries)
        except (OperationalError, InterfaceError):
            raise
        except DatabaseError as error:
            if len(entries) == 1:
                logger.error(
                    "log writer %s: stream entry %s is refused by the database (%s): skipped",
                    self.consumer,
                    entries[0][0],
                    type(error).__name__,
                )
                return Written(entries=1, skipped=1)
        middle = len(entries) // 2
        written = Written()
        for half in (entries[:middle], entries[middle:]):
            written.add(self.write_or_split(half))
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
