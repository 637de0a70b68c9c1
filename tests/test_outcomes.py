"""workers/outcomes.py: each message's fate decided once, and kept when the time limit lands mid-decision.

Dramatiq's time limit raises ``TimeLimitExceeded`` asynchronously in the worker's thread, once per message,
wherever it is. These tests make it land in the places where it used to change a message's fate: in a slow
receiver after a retry was put back, while a dead letter waits for Redis, right after the provider took the
message, and while the delivery record waits for Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.mail import EmailMessage, send_mail
from dramatiq.middleware import TimeLimitExceeded, raise_thread_exception
from redis.backoff import NoBackoff
from redis.retry import Retry

from mailqueue import deadletters, signals
from mailqueue.conf import get_config
from mailqueue.envelope import Envelope
from tests import providers
from tests.redis_server import RedisServer
from tests.servers import free_port
from workers import actors

#: A short time limit, so that a slow step below is interrupted by it.
TIME_LIMIT_MS = 1500


#: No client-side retries, so a stopped Redis fails every call at once.
FAIL_FAST = {"retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 0.2}


@pytest.fixture
def private_redis(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _clean_providers() -> Iterator[None]:
    providers.SENT.clear()
    yield
    providers.RecordingBackend.after_send = providers.BouncingBackend.after_send = None


def redis_away_for(server: RedisServer, *, seconds: float) -> None:
    """Stop the real Redis now, and start it again ``seconds`` later."""
    server.stop()
    threading.Timer(seconds, server.start).start()


def interrupted_after(seconds: float, attempt: Callable[[], Any]) -> dict[str, Any]:
    """Run ``attempt`` in a thread and raise TimeLimitExceeded in it after ``seconds``, as Dramatiq's time limit does."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["returned"] = attempt()
        except BaseException as error:  # noqa: BLE001  (the test reports what escaped)
            outcome["raised"] = error

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(seconds)
    assert thread.is_alive(), "the attempt ended before the time limit could land"
    raise_thread_exception(thread.ident, TimeLimitExceeded)
    thread.join(30)
    return outcome


def default_queue() -> Any:
    return get_config().queues["default"]


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
    configure, private_redis, recorder
) -> None:
    # A real Redis stops right after the provider's permanent refusal, so the dead letter must wait for it;
    # the real time limit's exception lands while it waits. The attempt must still end with the dead
    # letter recorded, and nothing may send the message to the provider again.
    configure(
        providers={"p": {"BACKEND": "tests.providers.BouncingBackend"}},
        QUEUES=queues(max_retries=3),
        BROKER_URL=private_redis.url,
        BROKER_OPTIONS=FAIL_FAST,
    )
    providers.BouncingBackend.after_send = lambda: redis_away_for(private_redis, seconds=3.0)
    payload = Envelope.from_message(
        EmailMessage("bounce", "b", None, ["gone@example.com"]), queue="default", mailer="d"
    )
    outcome = interrupted_after(1.0, lambda: actors.run_attempt(payload.encode(), default_queue(), get_config()))
    assert outcome == {"returned": None}
    assert providers.SENT == ["bounce"]
    assert [(event.transient, event.error_type) for event in recorder.of(signals.AttemptFailed)] == [
        (False, "SMTPRecipientsRefused")
    ]
    assert [letter.error_type for letter in deadletters.iter_dead("default")] == ["PermanentDeliveryError"]
    assert len(recorder.of(signals.MessageDeadLettered)) == 1


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


def test_a_delivery_record_interrupted_while_redis_is_away_counts_as_sent(configure, private_redis, recorder) -> None:
    # A real Redis stops right after the provider took the message, so the delivery record waits for it;
    # the real time limit's exception lands while it waits. The attempt must end as sent: retried, the
    # message would be sent a second time once the sending claim expired.
    configure(
        providers={"p": {"BACKEND": "tests.providers.RecordingBackend"}},
        QUEUES=queues(max_retries=3),
        BROKER_URL=private_redis.url,
        BROKER_OPTIONS=FAIL_FAST,
    )
    providers.RecordingBackend.after_send = lambda: redis_away_for(private_redis, seconds=3.0)
    payload = Envelope.from_message(EmailMessage("once", "b", None, ["a@example.com"]), queue="default", mailer="d")
    outcome = interrupted_after(1.0, lambda: actors.run_attempt(payload.encode(), default_queue(), get_config()))
    assert outcome == {"returned": None}
    assert providers.SENT == ["once"]
    (sent,) = recorder.of(signals.MessageSent)
    assert (sent.provider, sent.attempt) == ("p", 1)
    assert recorder.of(signals.MessageDeferred) == recorder.of(signals.MessageDeadLettered) == []
