"""The message log's bulk statements: a folded batch into the database in three multi-row statements.

On SQLite and PostgreSQL (``INSERT ... ON CONFLICT``) the messages are one
upsert whose ``DO UPDATE`` merges each row with the stored one by the rules of
``mailqueue.logrows.combine``; events and recipients are one insert each that
skips rows already there. No row is read first, so two writers at once (or a
batch written again after a crash) cannot overwrite each other's fields, and
the statements are built from plain tuples, not model instances: the writer
keeps up with the fastest drain (docs/benchmarks.md, "The message log").
PostgreSQL gets each column as one array (``unnest``), SQLite multi-row
``VALUES``. Other databases go through the ORM (``OrmStatements``): rows read with a lock,
merged in Python by the same rules, written with ``bulk_create``/``bulk_update``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from .logrows import STATUS_RANK, Batch, MessageRow, combine
from .models import Message, MessageEvent, MessageRecipient

#: Message columns, in the order of a row's values.
MESSAGE_COLUMNS = (
    "envelope_id",
    "queue",
    "queue_at",
    "mailer",
    "subject",
    "from_email",
    "recipient_count",
    "size",
    "status",
    "status_at",
    "attempts",
    "provider",
    "provider_at",
    "provider_message_id",
    "composed_at",
    "queued_at",
    "first_attempt_at",
    "sent_at",
    "updated_at",
    "last_error",
    "last_error_at",
)
#: The MessageRow attribute of each column: a time column ``x_at`` is ``x_ms`` there, in epoch milliseconds.
ROW_FIELD = {column: column[:-3] + "_ms" if column.endswith("_at") else column for column in MESSAGE_COLUMNS}
#: Described by a ``queued`` event: the batch's value when it had one (its ``queued_at`` is set), else the stored one.
DESCRIPTIVE = ("mailer", "subject", "from_email", "recipient_count", "size", "composed_at")
EVENT_COLUMNS = ("message_id", "stream_id", "kind", "at", "provider", "attempt", "detail")
RECIPIENT_COLUMNS = ("message_id", "kind", "address", "domain")
#: PostgreSQL's limit on the parameters of one statement (its wire protocol counts them in 16 bits).
MAX_PARAMETERS = 65_535


def _at(milliseconds: int | None) -> datetime | None:
    return None if milliseconds is None else datetime.fromtimestamp(milliseconds / 1000, UTC)


def message_updates(table: str, quote: Callable[[str], str], collate: str = "") -> str:
    """The ``DO UPDATE SET`` clause: ``logrows.combine`` in SQL (each side sees the row as it was stored).

    ``collate`` makes text compare by code point on a tie, as Python does
    (PostgreSQL's default collation would not; SQLite's BINARY does already).
    """
    stored = {column: f"{table}.{quote(column)}" for column in MESSAGE_COLUMNS}
    new = {column: f"excluded.{quote(column)}" for column in MESSAGE_COLUMNS}
    ranks = " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in STATUS_RANK.items())

    def later(at: str, new_value: str, stored_value: str) -> str:
        """logrows.later: set at ``at`` (new and stored), the later wins, a tie the greater value."""
        return (
            f"({new[at]} IS NOT NULL AND ({stored[at]} IS NULL OR {new[at]} > {stored[at]} OR "
            f"({new[at]} = {stored[at]} AND {new_value} > {stored_value})))"
        )

    def rank(column: str) -> str:
        return f"(CASE {column} {ranks} ELSE 0 END)"

    def text(column: str) -> tuple[str, str]:
        return f"{new[column]}{collate}", f"{stored[column]}{collate}"

    takes = {
        "queue": later("queue_at", *text("queue")),
        "status": later("status_at", rank(new["status"]), rank(stored["status"])),
        "last_error": later("last_error_at", *text("last_error")),
        "sent": later("sent_at", *text("provider_message_id")),
        "provider": later("provider_at", *text("provider")),
    }

    def pick(condition: str, column: str) -> str:
        return f"CASE WHEN {condition} THEN {new[column]} ELSE {stored[column]} END"

    def earliest(column: str) -> str:
        return pick(f"{stored[column]} IS NULL OR {new[column]} < {stored[column]}", column)

    def latest(column: str) -> str:
        return pick(f"{stored[column]} IS NULL OR {new[column]} > {stored[column]}", column)

    updates = {
        "queue": pick(takes["queue"], "queue"),
        "queue_at": pick(takes["queue"], "queue_at"),
        **{column: pick(f"{new['queued_at']} IS NOT NULL", column) for column in DESCRIPTIVE},
        "queued_at": earliest("queued_at"),
        "first_attempt_at": earliest("first_attempt_at"),
        "attempts": pick(f"{new['attempts']} > {stored['attempts']}", "attempts"),
        "status": pick(takes["status"], "status"),
        "status_at": pick(takes["status"], "status_at"),
        "last_error": pick(takes["last_error"], "last_error"),
        "last_error_at": pick(takes["last_error"], "last_error_at"),
        "updated_at": latest("updated_at"),
        "sent_at": pick(takes["sent"], "sent_at"),
        "provider_message_id": pick(takes["sent"], "provider_message_id"),
        "provider": pick(takes["provider"], "provider"),
        "provider_at": pick(takes["provider"], "provider_at"),
    }
    return ", ".join(f"{quote(column)} = {expression}" for column, expression in updates.items())


class Statements:
    """Writes a folded batch; ``write`` returns the number of SQL statements it issued."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection

    def write(self, batch: Batch) -> int:
        raise NotImplementedError


class UpsertStatements(Statements):
    """SQLite and PostgreSQL: multi-row ``INSERT ... ON CONFLICT``, no read."""

    #: Appended to a text column compared on a tie (see ``message_updates``).
    collate = ""

    def __init__(self, connection: BaseDatabaseWrapper, *, max_parameters: int | None = None) -> None:
        super().__init__(connection)
        quote = connection.ops.quote_name
        self._adapt_time = connection.ops.adapt_datetimefield_value
        limit = max_parameters or connection.features.max_query_params or MAX_PARAMETERS
        self._limit = min(limit, MAX_PARAMETERS)
        message_table = quote(Message._meta.db_table)
        self._messages = self._insert(
            message_table,
            MESSAGE_COLUMNS,
            f"ON CONFLICT ({quote('envelope_id')}) DO UPDATE SET {message_updates(message_table, quote, self.collate)}",
        )
        self._events = self._insert(quote(MessageEvent._meta.db_table), EVENT_COLUMNS, "ON CONFLICT DO NOTHING")
        self._recipients = self._insert(
            quote(MessageRecipient._meta.db_table), RECIPIENT_COLUMNS, "ON CONFLICT DO NOTHING"
        )

    def _insert(self, table: str, columns: Sequence[str], conflict: str) -> Callable[[Sequence[tuple[Any, ...]]], int]:
        """A function inserting rows of ``columns`` into ``table``: as few statements as the parameter limit allows."""
        quote = self.connection.ops.quote_name
        head = f"INSERT INTO {table} ({', '.join(quote(column) for column in columns)}) VALUES "
        one_row = "(" + ", ".join(["%s"] * len(columns)) + ")"
        per_statement = max(self._limit // len(columns), 1)

        def insert(rows: Sequence[tuple[Any, ...]]) -> int:
            statements = 0
            with self.connection.cursor() as cursor:
                for start in range(0, len(rows), per_statement):
                    chunk = rows[start : start + per_statement]
                    parameters = [value for row in chunk for value in row]
                    cursor.execute(f"{head}{', '.join([one_row] * len(chunk))} {conflict}", parameters)
                    statements += 1
            return statements

        return insert

    def _time(self, milliseconds: int | None) -> Any:
        return None if milliseconds is None else self._adapt_time(_at(milliseconds))

    def write(self, batch: Batch) -> int:
        time = self._time
        # In key order: two writers' upserts lock shared rows in the same order, so they wait, never deadlock.
        times = [column.endswith("_at") for column in MESSAGE_COLUMNS]
        fields = [ROW_FIELD[column] for column in MESSAGE_COLUMNS]
        messages = [
            tuple(
                time(getattr(row, name)) if is_time else getattr(row, name)
                for name, is_time in zip(fields, times, strict=True)
            )
            for _, row in sorted(batch.messages.items())
        ]
        statements = self._messages(messages)
        if batch.recipients:
            statements += self._recipients(batch.recipients)
        events = [
            (row.envelope_id, row.stream_id, row.kind, time(row.at_ms), row.provider, row.attempt, row.detail)
            for row in batch.events
        ]
        return statements + self._events(events)


class PostgresStatements(UpsertStatements):
    """PostgreSQL: the same upserts with each column's values as one array (``unnest``).

    The statement's text is the same for every batch (one parameter per
    column, not per value), so PostgreSQL parses and plans a few hundred bytes
    instead of thousands of placeholders: a 500-row insert takes about half
    the time (measured, docs/design.md).
    """

    collate = ' COLLATE "C"'

    def _insert(self, table: str, columns: Sequence[str], conflict: str) -> Callable[[Sequence[tuple[Any, ...]]], int]:
        quote = self.connection.ops.quote_name
        model = {
            quote(Message._meta.db_table): Message,
            quote(MessageEvent._meta.db_table): MessageEvent,
            quote(MessageRecipient._meta.db_table): MessageRecipient,
        }[table]
        types = [_array_type(model._meta.get_field(column), self.connection) for column in columns]
        arrays = ", ".join(f"%s::{kind}[]" for kind in types)
        sql = (
            f"INSERT INTO {table} ({', '.join(quote(column) for column in columns)}) "
            f"SELECT * FROM unnest({arrays}) {conflict}"
        )

        def insert(rows: Sequence[tuple[Any, ...]]) -> int:
            with self.connection.cursor() as cursor:
                cursor.execute(sql, [list(values) for values in zip(*rows, strict=True)])
            return 1

        return insert


def _array_type(field: Any, connection: BaseDatabaseWrapper) -> str:
    """The SQL type of an array of ``field``'s values; ``varchar(64)`` for a foreign key to a varchar primary key."""
    target = field.target_field if field.is_relation else field
    return str(target.db_type(connection))


def stored_row(message: Message) -> MessageRow:
    """A stored Message as the MessageRow ``combine`` takes."""
    values = {}
    for column in MESSAGE_COLUMNS:
        value = getattr(message, column)
        if column.endswith("_at"):
            value = None if value is None else round(value.timestamp() * 1000)
        values[ROW_FIELD[column]] = value
    values["updated_ms"] = values["updated_ms"] or 0
    return MessageRow(**values)


def filled(message: Message, row: MessageRow) -> Message:
    """``message`` with the values of ``row``."""
    for column in MESSAGE_COLUMNS:
        value = getattr(row, ROW_FIELD[column])
        setattr(message, column, _at(value) if column.endswith("_at") else value)
    return message


class OrmStatements(Statements):
    """Any other database: stored rows read with a row lock, merged in Python, then bulk inserts and updates."""

    def write(self, batch: Batch) -> int:
        using = self.connection.alias
        messages = Message.objects.using(using)
        stored = {
            message.envelope_id: message
            for message in messages.select_for_update().filter(envelope_id__in=sorted(batch.messages))
        }
        new, changed = [], []
        for envelope_id, row in sorted(batch.messages.items()):
            if envelope_id in stored:
                changed.append(filled(stored[envelope_id], combine(stored_row(stored[envelope_id]), row)))
            else:
                new.append(filled(Message(), row))
        statements = 1
        if new:
            messages.bulk_create(new)
            statements += 1
        if changed:
            messages.bulk_update(changed, [column for column in MESSAGE_COLUMNS if column != "envelope_id"])
            statements += 1
        if batch.recipients:
            MessageRecipient.objects.using(using).bulk_create(
                [
                    MessageRecipient(message_id=envelope_id, kind=kind, address=address, domain=domain)
                    for envelope_id, kind, address, domain in batch.recipients
                ],
                ignore_conflicts=True,
            )
            statements += 1
        MessageEvent.objects.using(using).bulk_create(
            [
                MessageEvent(
                    message_id=row.envelope_id,
                    stream_id=row.stream_id,
                    kind=row.kind,
                    at=datetime.fromtimestamp(row.at_ms / 1000, UTC),
                    provider=row.provider,
                    attempt=row.attempt,
                    detail=row.detail,
                )
                for row in batch.events
            ],
            ignore_conflicts=True,
        )
        return statements + 1


#: Database vendors with ``INSERT ... ON CONFLICT (...) DO UPDATE`` and ``excluded``.
UPSERT_VENDORS = frozenset({"sqlite", "postgresql"})


def statements_for(using: str) -> Statements:
    """The statements for the database ``using``: upserts where the database has them, else the ORM path."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        return PostgresStatements(connection)
    if connection.vendor in UPSERT_VENDORS:
        return UpsertStatements(connection)
    return OrmStatements(connection)
