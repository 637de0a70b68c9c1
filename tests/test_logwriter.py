"""The log writer against real Redis and the test database: events in, rows out, nothing twice.

Events are appended here in the contract's format (log-common: one field ``e``,
orjson, short keys) as the enqueue and the workers will append them.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from io import StringIO
from typing import Any

import orjson
import pytest
import redis
from django.conf import settings
from django.core.mail import EmailMessage
from django.core.management import call_command
from django.db import OperationalError, connections, transaction

import mailqueue
from mailqueue import deadletters, retention
from mailqueue.deadletters import DeadLetter
from mailqueue.keys import delivered_key, events_key
from mailqueue.logrows import fold
from mailqueue.logsql import UpsertStatements
from mailqueue.logwriter import GROUP, LogWriter, write
from mailqueue.models import Message, MessageEvent, MessageRecipient, OutboxMessage
from mailqueue.monitoring import writer_lag

LOCMEM = {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}
NOW = int(time.time() * 1000)


def queued(envelope_id: str, t: int, **extra: Any) -> dict[str, Any]:
    return {
        "k": "queued",
        "id": envelope_id,
        "t": t,
        "q": "default",
        "m": "default",
        "s": f"Subject {envelope_id}",
        "f": "shop@example.com",
        "to": ["Alice@Example.COM"],
        "cc": [],
        "bcc": ["audit@example.org"],
        "z": 1234,
        "c": t - 1,
        **extra,
    }


def append(client: redis.Redis, namespace: str, *events: dict[str, Any]) -> list[str]:
    key = events_key(namespace)
    return [client.xadd(key, {"e": orjson.dumps(event)}).decode() for event in events]


@pytest.fixture
def setup(configure: Callable[..., None]) -> None:
    configure(providers={"smtp": LOCMEM})


def writer(namespace: str, **options: Any) -> LogWriter:
    return LogWriter(namespace=namespace, **options)


@pytest.mark.django_db
def test_events_in_rows_out(setup, namespace, redis_client) -> None:
    append(
        redis_client,
        namespace,
        queued("a", NOW),
        {"k": "attempt_failed", "id": "a", "t": NOW + 10, "p": "postmark", "n": 1, "r": "503 busy", "tr": True},
        {"k": "sent", "id": "a", "t": NOW + 20, "p": "ses", "n": 1, "pid": "<x@ses>"},
        queued("b", NOW + 1, q="bulk"),
        {"k": "deferred", "id": "b", "t": NOW + 11, "n": 1, "r": "rate limit", "u": NOW + 5000},
        {"k": "failed", "id": "b", "t": NOW + 21, "n": 2, "r": "550 no such user", "p": "ses"},
        {"k": "dead", "id": "b", "t": NOW + 22, "n": 2, "r": "550 no such user"},
        # Its queued event was trimmed from a full stream: the row still comes, with what is known.
        {"k": "sent", "id": "c", "t": NOW + 30, "p": "ses", "n": 3},
    )
    total = writer(namespace, batch_size=3).drain()

    assert total.entries == 8 and total.events == 8 and total.skipped == 0
    a, b, c = Message.objects.order_by("envelope_id")
    assert (a.status, a.queue, a.mailer, a.subject, a.from_email) == (
        "sent",
        "default",
        "default",
        "Subject a",
        "shop@example.com",
    )
    assert (a.attempts, a.provider, a.provider_message_id, a.size, a.recipient_count) == (1, "ses", "<x@ses>", 1234, 2)
    assert a.queued_at == datetime.fromtimestamp(NOW / 1000, UTC)
    assert a.composed_at == datetime.fromtimestamp((NOW - 1) / 1000, UTC)
    assert a.first_attempt_at == datetime.fromtimestamp((NOW + 10) / 1000, UTC)
    assert a.sent_at == a.updated_at == datetime.fromtimestamp((NOW + 20) / 1000, UTC)
    assert a.last_error == "503 busy"
    assert (b.status, b.queue, b.attempts, b.last_error, b.provider, b.sent_at) == (
        "dead",
        "bulk",
        2,
        "550 no such user",
        "ses",
        None,
    )
    assert (c.status, c.queue, c.attempts, c.queued_at) == ("sent", "", 3, None)
    assert sorted(MessageRecipient.objects.values_list("message_id", "kind", "address", "domain")) == [
        ("a", "bcc", "audit@example.org", "example.org"),
        ("a", "to", "alice@example.com", "example.com"),
        ("b", "bcc", "audit@example.org", "example.org"),
        ("b", "to", "alice@example.com", "example.com"),
    ]
    timeline = list(MessageEvent.objects.filter(message_id="a").values_list("kind", "provider", "attempt", "detail"))
    assert timeline == [
        ("queued", "", None, ""),
        ("attempt_failed", "postmark", 1, "503 busy"),
        ("sent", "ses", 1, "<x@ses>"),
    ]
    assert redis_client.xpending(events_key(namespace), GROUP)["pending"] == 0


@pytest.mark.django_db
def test_a_batch_written_but_not_acknowledged_is_written_again_without_duplicates(
    setup, namespace, redis_client
) -> None:
    append(
        redis_client,
        namespace,
        *(queued(f"m{i}", NOW + i) for i in range(20)),
        *({"k": "sent", "id": f"m{i}", "t": NOW + 100 + i, "p": "ses", "n": 1} for i in range(20)),
    )
    first = writer(namespace, batch_size=100, consumer="killed")
    first.ensure_group()
    entries = first.read(block=False)
    write(entries, recipients="store", using="default")  # committed, then the writer "dies" before XACK
    assert redis_client.xpending(events_key(namespace), GROUP)["pending"] == 40
    before = sorted(Message.objects.values_list("envelope_id", "status", "attempts", "updated_at", "first_attempt_at"))

    restarted = writer(namespace, batch_size=7, consumer="restarted", claim_idle_ms=0)
    total = restarted.drain()

    assert total.entries == 40  # the abandoned entries were claimed and written again...
    assert MessageEvent.objects.count() == 40  # ...adding no event twice
    assert MessageRecipient.objects.count() == 40
    after = sorted(Message.objects.values_list("envelope_id", "status", "attempts", "updated_at", "first_attempt_at"))
    assert after == before and {row[1] for row in after} == {"sent"}
    assert redis_client.xpending(events_key(namespace), GROUP)["pending"] == 0


@pytest.mark.django_db
def test_later_event_written_first_keeps_the_latest_status(setup, namespace, redis_client) -> None:
    append(redis_client, namespace, {"k": "sent", "id": "x", "t": NOW + 50, "p": "ses", "n": 2}, queued("x", NOW))
    reply = redis_client.xrange(events_key(namespace))
    entries = [(stream_id.decode(), fields) for stream_id, fields in reply]
    write(entries[:1], recipients="store", using="default")
    write(entries[1:], recipients="store", using="default")
    row = Message.objects.get()
    assert (row.status, row.attempts, row.queue, row.subject) == ("sent", 2, "default", "Subject x")
    # A requeue after death moves it back to queued: the latest event decides.
    write(
        [("9999999999999-0", {b"e": orjson.dumps({"k": "requeued", "id": "x", "t": NOW + 60, "q": "bulk"})})],
        recipients="store",
        using="default",
    )
    row.refresh_from_db()
    assert (row.status, row.queue) == ("queued", "bulk")


@pytest.mark.django_db
@pytest.mark.parametrize("mode", ["hash", "off"])
def test_recipients_hashed_or_not_kept(setup, namespace, redis_client, mode) -> None:
    append(redis_client, namespace, queued("h", NOW))
    writer(namespace, recipients=mode).drain()
    rows = sorted(MessageRecipient.objects.values_list("kind", "address", "domain"))
    if mode == "off":
        assert rows == []
    else:
        assert rows == sorted(
            [
                ("to", hashlib.sha256(b"alice@example.com").hexdigest(), "example.com"),
                ("bcc", hashlib.sha256(b"audit@example.org").hexdigest(), "example.org"),
            ]
        )
    assert Message.objects.get().recipient_count == 2


@pytest.mark.django_db
def test_an_entry_that_is_not_an_event_is_skipped_and_acknowledged(setup, namespace, redis_client) -> None:
    key = events_key(namespace)
    redis_client.xadd(key, {"e": b"not json"})
    redis_client.xadd(key, {"other": b"1"})
    append(redis_client, namespace, queued("ok", NOW))
    total = writer(namespace).drain()
    assert (total.entries, total.skipped, Message.objects.count()) == (3, 2, 1)
    assert redis_client.xpending(key, GROUP)["pending"] == 0


@pytest.mark.django_db
def test_status_shows_the_writers_lag(setup, namespace, redis_client) -> None:
    lag = writer_lag()
    assert (lag.stream_length, lag.unwritten, lag.oldest_age, lag.group_exists) == (0, 0, None, False)
    append(redis_client, namespace, *(queued(f"l{i}", NOW + i) for i in range(5)))
    lag = writer_lag()
    assert (lag.stream_length, lag.unwritten, lag.group_exists) == (5, 5, False)
    assert lag.oldest_age is not None and 0 <= lag.oldest_age < 60

    slow = writer(namespace, batch_size=2, consumer="slow")
    slow.ensure_group()
    slow.read(block=False)  # two entries handed out, not yet written
    lag = writer_lag()
    assert (lag.pending, lag.undelivered, lag.unwritten, lag.stream_length) == (2, 3, 5, 5)

    out = StringIO()
    call_command("mailqueue", "status", "--json", stdout=out)
    assert json.loads(out.getvalue())["log"] | {"oldest_age": None} == {
        "stream_length": 5,
        "undelivered": 3,
        "pending": 2,
        "unwritten": 5,
        "oldest_age": None,
        "group_exists": True,
    }
    out = StringIO()
    call_command("mailqueue", "status", stdout=out)
    assert "log: 5 event(s) not yet written (2 pending, 3 not yet read)" in out.getvalue()

    writer(namespace, consumer="other", claim_idle_ms=0).drain()
    lag = writer_lag()
    assert (lag.pending, lag.undelivered, lag.unwritten, lag.oldest_age) == (0, 0, 0, None)


@pytest.mark.django_db(transaction=True)  # send_mail enqueues on commit
def test_lookup_from_the_log_and_from_redis(setup, namespace, redis_client) -> None:
    assert mailqueue.lookup("nothing-like-it") is None

    email = EmailMessage("s", "b", None, ["a@example.com"])
    email.send()
    envelope_id = email.mailqueue_id  # type: ignore[attr-defined]
    found = mailqueue.lookup(envelope_id)
    assert found is not None and (found.status, found.queue, found.source) == ("queued", "default", "redis")

    redis_client.set(delivered_key(namespace, "sent-one"), "smtp")
    found = mailqueue.lookup("sent-one")
    assert found is not None and (found.status, found.provider, found.source) == ("sent", "smtp", "redis")

    deadletters.record(
        DeadLetter(
            id="dead-one",
            queue="bulk",
            reason="550 gone",
            error_type="X",
            failed_at=time.time(),
            attempts=3,
            payload={},
            provider="smtp",
        )
    )
    found = mailqueue.lookup("dead-one")
    assert found is not None and (found.status, found.queue, found.attempts, found.last_error, found.source) == (
        "dead",
        "bulk",
        3,
        "550 gone",
        "redis",
    )

    OutboxMessage.objects.create(envelope_id="kept", queue="critical", redis_id="r", data=b"x", reason="refused")
    found = mailqueue.lookup("kept")
    assert found is not None and (found.status, found.queue, found.source) == ("queued", "critical", "outbox")

    append(
        redis_client,
        namespace,
        queued(envelope_id, NOW),
        # After the queued event the real send_mail() above appended (at the real time).
        {"k": "sent", "id": envelope_id, "t": int(time.time() * 1000) + 5, "p": "smtp", "n": 1, "pid": "<m@x>"},
    )
    writer(namespace).drain()
    found = mailqueue.lookup(envelope_id)
    assert found is not None and (found.status, found.provider, found.provider_message_id, found.source) == (
        "sent",
        "smtp",
        "<m@x>",
        "log",
    )


@pytest.mark.django_db
def test_prune_deletes_old_messages_in_batches(setup, namespace, redis_client) -> None:
    old = int((time.time() - 40 * 86400) * 1000)
    append(
        redis_client,
        namespace,
        *(queued(f"old{i}", old + i) for i in range(25)),
        *({"k": "sent", "id": f"old{i}", "t": old + 100 + i, "p": "ses", "n": 1} for i in range(25)),
        *(queued(f"new{i}", NOW + i) for i in range(5)),
    )
    writer(namespace).drain()
    batches: list[int] = []
    pruned = retention.prune(days=30, batch=10, progress=lambda so_far: batches.append(so_far.messages))
    assert (pruned.messages, pruned.events, pruned.recipients, pruned.batches) == (25, 50, 50, 3)
    assert batches == [10, 20, 25]
    assert sorted(Message.objects.values_list("envelope_id", flat=True)) == [f"new{i}" for i in range(5)]
    assert MessageEvent.objects.count() == 5 and MessageRecipient.objects.count() == 10

    out = StringIO()
    call_command("mailqueue", "prune", "--days", "0", "--batch", "2", stdout=out)
    assert "pruned 5 message(s), 10 recipient(s), 5 event(s) older than 0 day(s) in 3 batch(es)" in out.getvalue()
    assert not Message.objects.exists()


@pytest.mark.django_db
def test_a_short_batch_waits_to_fill_and_is_written_in_one_transaction(setup, namespace, redis_client) -> None:
    """Under a trickle, a read finds a few entries; what arrives during BATCH_WAIT joins them."""
    running = writer(namespace, batch_size=100, batch_wait_ms=400, claim_every=3600)
    running.ensure_group()
    running._next_claim = time.monotonic() + 3600
    append(redis_client, namespace, queued("first", NOW))
    later = threading.Timer(
        0.15, lambda: append(redis_client, namespace, *(queued(f"t{i}", NOW + i) for i in range(5)))
    )
    later.start()
    started = time.monotonic()
    written = running.step()
    later.join()
    assert (written.entries, written.messages) == (6, 6)
    assert time.monotonic() - started >= 0.4
    assert written.statements == 3  # messages, recipients, events: one transaction for all six

    nothing_waits = writer(namespace, batch_size=100, batch_wait_ms=0, consumer="eager")
    append(redis_client, namespace, queued("alone", NOW))
    nothing_waits._next_claim = time.monotonic() + 3600
    started = time.monotonic()
    assert nothing_waits.step().entries == 1
    assert time.monotonic() - started < 0.3


class FailingOnce(UpsertStatements):
    """The real statements, but the first write fails as a database that went away does."""

    failures = 1

    def write(self, batch):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise OperationalError("server closed the connection unexpectedly")
        return super().write(batch)


@pytest.mark.django_db
def test_a_batch_whose_write_failed_is_written_again_before_anything_new(setup, namespace, redis_client) -> None:
    first = append(redis_client, namespace, *(queued(f"f{i}", NOW + i) for i in range(3)))
    running = writer(namespace, batch_wait_ms=0, claim_every=3600)
    running.ensure_group()
    running._next_claim = time.monotonic() + 3600
    running._statements = FailingOnce(connections["default"])
    with pytest.raises(OperationalError):
        running.step(block=False)
    assert redis_client.xpending(events_key(namespace), GROUP)["pending"] == 3  # read, not acknowledged
    assert Message.objects.count() == 0
    append(redis_client, namespace, queued("later", NOW + 10))

    retried = running.step(block=False)
    assert retried.entries == 3 and sorted(MessageEvent.objects.values_list("stream_id", flat=True)) == sorted(first)
    assert running.step(block=False).entries == 1
    assert Message.objects.count() == 4 and redis_client.xpending(events_key(namespace), GROUP)["pending"] == 0


@pytest.mark.skipif("postgres" not in settings.DATABASES, reason="no PostgreSQL answers")
@pytest.mark.django_db(databases=["default", "postgres"])
def test_an_entry_the_database_refuses_is_skipped_and_the_rest_of_its_batch_written(
    setup, namespace, redis_client, caplog
) -> None:
    """PostgreSQL refuses a size past its integer column: that one entry is logged by id and skipped."""
    good = [queued(f"g{i}", NOW + i) for i in range(9)]
    poisoned = append(redis_client, namespace, *good[:4], queued("huge", NOW + 5, z=2**40), *good[4:])[4]
    total = writer(namespace, using="postgres", batch_wait_ms=0).drain()

    assert (total.entries, total.skipped, total.messages) == (10, 1, 9)
    assert sorted(Message.objects.using("postgres").values_list("envelope_id", flat=True)) == [
        f"g{i}" for i in range(9)
    ]
    assert f"stream entry {poisoned} is refused by the database (DataError): skipped" in caplog.text
    assert redis_client.xpending(events_key(namespace), GROUP)["pending"] == 0


@pytest.mark.django_db
def test_a_batch_past_the_parameter_limit_is_cut_into_several_statements(setup) -> None:
    # 50 parameters: 2 message rows, 12 recipient rows, 7 event rows per statement.
    statements = UpsertStatements(connections["default"], max_parameters=50)
    batch = fold([(f"{NOW}-{i}", queued(f"p{i}", NOW + i)) for i in range(5)], recipients="store")
    with transaction.atomic():
        assert statements.write(batch) == 3 + 1 + 1  # messages 2+2+1, recipients 10 in one, events 5 in one
    assert Message.objects.count() == 5 and MessageRecipient.objects.count() == 10
