"""Durable enqueue: Redis away at send time (the outbox and its relay), and a Redis crash with AOF."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from django.core.mail import send_mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction

from mailqueue import outbox
from mailqueue.enqueue import EncodedMessage, push
from mailqueue.exceptions import BrokerUnavailable
from mailqueue.models import OutboxMessage
from mailqueue.monitoring import queue_depths
from tests.redis_server import RedisServer


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def ready() -> int:
    return sum(depth.ready for depth in queue_depths())


@pytest.mark.django_db(transaction=True)
def test_redis_stopped_500_messages_wait_in_the_outbox_then_are_delivered_once(
    configure, smtp_server, private_redis, run_worker
) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=private_redis.url, ON_COMMIT=False)
    private_redis.stop()
    started = time.monotonic()
    for i in range(500):
        assert send_mail(f"m{i}", "b", None, ["a@example.com"]) == 1
    per_send = (time.monotonic() - started) / 500
    assert OutboxMessage.objects.count() == 500
    assert per_send < 0.05, f"send_mail took {per_send * 1000:.1f} ms with Redis away"

    private_redis.start()
    call_command("mailqueue", "relay", "--once")
    assert OutboxMessage.objects.count() == 0
    with run_worker(threads=4) as worker:
        worker.drain()
    subjects = Counter(m.parsed["Subject"] for m in smtp_server.received)
    assert set(subjects) == {f"m{i}" for i in range(500)}
    assert max(subjects.values()) == 1


@pytest.mark.django_db(transaction=True)
def test_mail_sent_inside_a_transaction_while_redis_is_away_waits_in_the_outbox(
    configure, smtp_server, private_redis
) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=private_redis.url)
    private_redis.stop()
    with transaction.atomic():
        send_mail("s", "b", None, ["a@example.com"])
    assert OutboxMessage.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_relay_that_crashed_after_pushing_queues_nothing_twice(configure, smtp_server, private_redis) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=private_redis.url, ON_COMMIT=False)
    private_redis.stop()
    for i in range(3):
        send_mail(f"m{i}", "b", None, ["a@example.com"])
    private_redis.start()
    # The crashed relay pushed these rows, then died before deleting them.
    rows = [
        EncodedMessage(row.queue, row.envelope_id, row.redis_id, bytes(row.data), guarded=True)
        for row in OutboxMessage.objects.all()
    ]
    assert push(rows) == 3
    assert outbox.relay_batch() == 3
    assert ready() == 3
    assert OutboxMessage.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_relay_waits_while_redis_is_still_away_and_keeps_everything(configure, smtp_server, private_redis) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=private_redis.url, ON_COMMIT=False)
    private_redis.stop()
    send_mail("s", "b", None, ["a@example.com"])
    with pytest.raises(CommandError, match="Redis did not accept 1 message"):
        call_command("mailqueue", "relay", "--once")
    assert OutboxMessage.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_queued_mail_survives_a_redis_crash_with_aof_everysec(configure, smtp_server, tmp_path, run_worker) -> None:
    server = RedisServer(tmp_path, appendonly=True).start()
    try:
        configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=server.url, ON_COMMIT=False)
        for i in range(200):
            send_mail(f"m{i}", "b", None, ["a@example.com"])
        time.sleep(1.5)  # appendfsync everysec: what was written is on disk within a second
        server.kill()
        server.start()
        assert ready() == 200
        with run_worker(threads=4) as worker:
            worker.drain()
    finally:
        server.stop()
    assert sorted(m.parsed["Subject"] for m in smtp_server.received) == sorted(f"m{i}" for i in range(200))


@pytest.mark.django_db(transaction=True)
def test_with_on_commit_off_inside_a_transaction_redis_away_is_a_clear_error(
    configure, smtp_server, private_redis
) -> None:
    # The outbox row would roll back with the caller's transaction: refuse rather than pretend.
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=private_redis.url, ON_COMMIT=False)
    private_redis.stop()
    with pytest.raises(BrokerUnavailable, match="a transaction is open on database 'default'"), transaction.atomic():
        send_mail("s", "b", None, ["a@example.com"])
    assert OutboxMessage.objects.count() == 0
