"""The outcome hook: every state change a worker, the relay or a requeue causes arrives as one signal."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.core.mail import send_mail
from django.core.management import call_command

from mailqueue import deadletters, signals
from mailqueue.models import OutboxMessage
from tests.redis_server import RedisServer
from tests.servers import free_port


def unreachable() -> dict[str, Any]:
    return {
        "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "OPTIONS": {"host": "127.0.0.1", "port": free_port(), "timeout": 2},
    }


def test_a_delivered_message_announces_message_sent_with_the_provider_id(
    configure, postmark_api, run_worker, recorder
) -> None:
    configure(providers={"postmark": postmark_api.mailer()})
    before = time.time()
    send_mail("hello", "b", None, ["a@example.com"], using="transactional")
    with run_worker() as worker:
        worker.drain()
    (sent,) = recorder.of(signals.MessageSent)
    assert (sent.queue, sent.mailer, sent.provider, sent.attempt) == ("critical", "transactional", "postmark", 1)
    assert sent.provider_message_id == "pm-1"  # what the provider answered, through anymail_status
    assert sent.message_id is None  # an ESP's API is sent no Message-ID unless the caller set one
    assert 0 < sent.queued_seconds < time.time() - before + 0.01
    assert 0 < sent.send_seconds <= sent.queued_seconds
    assert recorder.of(signals.AttemptFailed) == []


def test_failover_announces_the_failed_provider_then_the_one_that_took_it(
    configure, smtp_server, run_worker, recorder
) -> None:
    configure(providers={"down": unreachable(), "smtp": smtp_server.mailer()})
    send_mail("failover", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    (failed,) = recorder.of(signals.AttemptFailed)
    assert (failed.provider, failed.transient, failed.attempt) == ("down", True, 1)
    assert failed.error_type == "ConnectionRefusedError"
    (sent,) = recorder.of(signals.MessageSent)
    assert sent.provider == "smtp" and sent.envelope_id == failed.envelope_id


def test_a_retry_is_announced_as_deferred_until_its_backoff_ends(configure, smtp_server, run_worker, recorder) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, PROVIDERS={"smtp": {"attempts": 1}})
    smtp_server.handler.replies.append("451 busy")
    send_mail("retried", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    (deferred,) = recorder.of(signals.MessageDeferred)
    assert deferred.retry and deferred.attempt == 1 and "451 busy" in deferred.reason
    assert deferred.until > time.time() - 5
    (sent,) = recorder.of(signals.MessageSent)
    assert sent.attempt == 2


def test_a_permanent_failure_announces_the_refusal_and_the_dead_letter(
    configure, smtp_server, run_worker, recorder
) -> None:
    configure(providers={"smtp": smtp_server.mailer()})
    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    send_mail("bounce", "b", None, ["gone@example.com"])
    with run_worker() as worker:
        worker.drain()
    (failed,) = recorder.of(signals.AttemptFailed)
    assert (failed.transient, failed.error_type) == (False, "SMTPRecipientsRefused")
    (dead,) = recorder.of(signals.MessageDeadLettered)
    assert (dead.envelope_id, dead.queue, dead.attempts, dead.provider) == (failed.envelope_id, "default", 1, "smtp")
    assert "550" in dead.reason
    assert recorder.of(signals.MessageSent) == []


def test_a_provider_at_its_rate_limit_defers_without_using_a_retry(
    configure, smtp_server, run_worker, recorder
) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        PROVIDERS={"smtp": {"rate_limit": "2/s"}},
        RATE_LIMIT_MAX_WAIT=0,
    )
    for i in range(3):
        send_mail(f"m{i}", "b", None, ["a@example.com"])
    with run_worker(threads=3) as worker:
        worker.drain()
    assert len(recorder.of(signals.MessageSent)) == 3
    deferred = recorder.of(signals.MessageDeferred)
    assert deferred and not any(event.retry for event in deferred)
    assert all("rate limit" in event.reason for event in deferred)


def test_a_receiver_that_raises_never_changes_the_fate_of_the_message(
    configure, settings, smtp_server, run_worker, recorder, caplog
) -> None:
    configure(providers={"smtp": smtp_server.mailer()})
    settings.ADMINS = []  # Django would mail its error log of the receiver to them, through the queue

    def broken(sender: type, event: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.message_sent.connect(broken, weak=False)
    try:
        send_mail("still sent", "b", None, ["a@example.com"])
        with run_worker() as worker:
            worker.drain()
    finally:
        signals.message_sent.disconnect(broken)
    assert [m.parsed["Subject"] for m in smtp_server.wait_for(1)] == ["still sent"]
    assert len(recorder.of(signals.MessageSent)) == 1  # the other receiver still heard it
    assert recorder.of(signals.MessageDeferred) == recorder.of(signals.MessageDeadLettered) == []
    assert "Error calling" in caplog.text and "RuntimeError: receiver bug" in caplog.text


def test_requeueing_a_dead_letter_announces_it(configure, smtp_server, run_worker, recorder) -> None:
    configure(providers={"smtp": smtp_server.mailer()})
    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 no such user"
    send_mail("bounce", "b", None, ["gone@example.com"])
    with run_worker() as worker:
        worker.drain()
    (dead,) = recorder.of(signals.MessageDeadLettered)
    assert deadletters.requeue(deadletters.iter_dead("default")) == 1
    (requeued,) = recorder.of(signals.MessageRequeued)
    assert (requeued.envelope_id, requeued.queue) == (dead.envelope_id, "default")


@pytest.mark.django_db(transaction=True)
def test_the_relay_announces_each_message_it_pushes_from_the_outbox(configure, smtp_server, tmp_path, recorder) -> None:
    server = RedisServer(tmp_path).start()
    try:
        configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=server.url, ON_COMMIT=False)
        server.stop()
        for i in range(3):
            send_mail(f"m{i}", "b", None, ["a@example.com"])
        ids = sorted(OutboxMessage.objects.values_list("envelope_id", flat=True))
        assert len(ids) == 3
        server.start()
        call_command("mailqueue", "relay", "--once")
    finally:
        server.stop()
    relayed = recorder.of(signals.MessageRelayed)
    assert sorted(event.envelope_id for event in relayed) == ids
    assert {event.queue for event in relayed} == {"default"}
