"""workers/outcomes.py: each message's fate decided once, and kept when the time limit lands mid-decision.

Dramatiq's time limit raises ``TimeLimitExceeded`` asynchronously in the worker's thread, once per message,
wherever it is. These tests make it land in the places where it used to change a message's fate: in a slow
receiver after a retry was put back, while a dead letter waits for Redis, right after the provider took the
message, and while the delivery record waits for Redis.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from django.core.mail import send_mail
from dramatiq.middleware import TimeLimitExceeded

from mailqueue import deadletters, signals
from tests.servers import free_port
from workers import actors, admission, outcomes

#: A short time limit, so that a slow step below is interrupted by it.
TIME_LIMIT_MS = 1500


def queues(max_retries: int) -> dict[str, Any]:
    spec = {"providers": ["p"], "max_retries": max_retries, "min_backoff": 50, "max_backoff": 200}
    return {name: {**spec, "time_limit": TIME_LIMIT_MS} for name in ("default", "critical", "bulk")}


def outlast_the_time_limit() -> None:
    """Python bytecode between short sleeps, longer than the time limit: the interruption lands in here."""
    deadline = time.monotonic() + 2 * TIME_LIMIT_MS / 1000
    while time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_slow_receiver_interrupted_by_the_time_limit_does_not_repeat_the_retry(
    configure, run_worker, recorder
) -> None:
    unreachable = {
        "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "OPTIONS": {"host": "127.0.0.1", "port": free_port(), "timeout": 2},
    }
    configure(providers={"p": unreachable}, QUEUES=queues(max_retries=1))
    slow = []

    def slow_once(sender: type, event: Any, **kwargs: Any) -> None:
        if not slow:
            slow.append(event)
            outlast_the_time_limit()

    signals.message_deferred.connect(slow_once, weak=False)
    try:
        send_mail("retried", "b", None, ["a@example.com"])
        with run_worker() as worker:
            worker.drain(30)
    finally:
        signals.message_deferred.disconnect(slow_once)
    assert slow, "the receiver ran"
    # max_retries=1: two attempts, one retry between them, one dead letter; not a second chain of copies.
    assert [event.attempt for event in recorder.of(signals.AttemptFailed)] == [1, 2]
    assert len(recorder.of(signals.MessageDeadLettered)) == 1
    assert [letter.attempts for letter in deadletters.iter_dead()] == [2]


def test_a_dead_letter_interrupted_while_redis_is_away_is_still_recorded_and_never_resent(
    configure, smtp_server, run_worker, recorder, monkeypatch
) -> None:
    configure(providers={"p": smtp_server.mailer()}, QUEUES=queues(max_retries=3))
    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    record = outcomes.record
    refusals = []

    def redis_away_for_a_while(letter: deadletters.DeadLetter) -> None:
        if len(refusals) < 5:  # about 3 s of backoff: longer than the time limit
            refusals.append(letter.id)
            raise redis.ConnectionError("Redis is away")
        record(letter)

    monkeypatch.setattr(outcomes, "record", redis_away_for_a_while)
    send_mail("permanent", "b", None, ["gone@example.com"])
    with run_worker() as worker:
        worker.drain(30)
    assert len(refusals) == 5
    assert [(event.attempt, event.transient) for event in recorder.of(signals.AttemptFailed)] == [(1, False)]
    assert len(smtp_server.received) == 0
    assert [letter.attempts for letter in deadletters.iter_dead()] == [1]


def test_an_interruption_right_after_the_provider_took_the_message_counts_as_sent(
    configure, smtp_server, run_worker, recorder, monkeypatch
) -> None:
    # No retry left: if the interrupted attempt counted as failed, a delivered message would be dead-lettered.
    configure(providers={"p": smtp_server.mailer()}, QUEUES=queues(max_retries=0))
    deliver = actors.deliver_envelope

    def delivered_then_interrupted(*args: Any, **kwargs: Any) -> Any:
        deliver(*args, **kwargs)
        raise TimeLimitExceeded()  # as if the time limit landed on the way back from the pipeline

    monkeypatch.setattr(actors, "deliver_envelope", delivered_then_interrupted)
    send_mail("sent", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain(30)
    assert len(smtp_server.received) == 1
    assert recorder.of(signals.MessageDeadLettered) == recorder.of(signals.MessageDeferred) == []
    assert list(deadletters.iter_dead()) == []


def test_a_delivery_record_interrupted_while_redis_is_away_does_not_send_twice(
    configure, smtp_server, run_worker, recorder, monkeypatch
) -> None:
    configure(providers={"p": smtp_server.mailer()}, QUEUES=queues(max_retries=3))
    settle_script = admission.SETTLE
    away_until = time.monotonic() + 2 * TIME_LIMIT_MS / 1000

    def redis_away_after_the_send(keys: Any, args: Any) -> Any:
        if args[0] == "sent" and time.monotonic() < away_until:
            raise redis.ConnectionError("Redis is away")
        return settle_script(keys, args)

    monkeypatch.setattr(admission, "SETTLE", redis_away_after_the_send)
    send_mail("once", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain(30)
    assert len(smtp_server.received) == 1
    (sent,) = recorder.of(signals.MessageSent)
    assert sent.attempt == 1
    assert recorder.of(signals.MessageDeferred) == []
