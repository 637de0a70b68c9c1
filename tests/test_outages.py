"""Redis going away under a running worker: nothing is lost, nothing is sent twice."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from io import StringIO

import pytest
from django.core.mail import EmailMessage, send_mail
from django.core.management import call_command
from redis.backoff import NoBackoff
from redis.retry import Retry

from mailqueue import outbox
from mailqueue.conf import get_config
from mailqueue.envelope import Envelope
from mailqueue.exceptions import BrokerUnavailable
from mailqueue.models import OutboxMessage
from mailqueue.monitoring import queue_depths
from tests import providers
from tests.redis_server import RedisServer
from workers import admission
from workers.delivery import deliver_envelope

QUEUES = ("critical", "default", "bulk")
#: No client-side retries, so a short outage is enough to make every Redis call fail.
FAIL_FAST = {"retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 0.2}


@pytest.fixture
def aof_redis(tmp_path):
    server = RedisServer(tmp_path, appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _clean_providers():
    providers.SENT.clear()
    providers.STARTED.clear()
    yield
    providers.RecordingBackend.after_send = None


def test_mail_a_provider_took_is_not_sent_again_when_its_record_cannot_be_written(
    configure, aof_redis, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(admission, "SENT_RECORD_PATIENCE", 1.0)
    configure(
        providers={"p": {"BACKEND": "tests.providers.RecordingBackend"}},
        queues={name: {"providers": ["p"], "time_limit": 3000} for name in QUEUES},
        BROKER_URL=aof_redis.url,
        BROKER_OPTIONS=FAIL_FAST,
    )
    config = get_config()
    envelope = Envelope.from_message(EmailMessage("once", "b", None, ["x@example.com"]), queue="default", mailer="d")
    providers.RecordingBackend.after_send = aof_redis.stop  # Redis goes away right after the provider took it
    assert deliver_envelope(envelope, config.queues["default"], config).provider == "p"  # delivered: no retry that would resend
    assert providers.SENT == ["once"]
    assert "was sent via p, but its delivery record could not be written" in caplog.text


def test_the_delivery_record_is_written_once_redis_is_back(configure, aof_redis, redis_client) -> None:
    configure(
        providers={"p": {"BACKEND": "tests.providers.RecordingBackend"}},
        BROKER_URL=aof_redis.url,
        BROKER_OPTIONS=FAIL_FAST,
    )
    config = get_config()
    envelope = Envelope.from_message(EmailMessage("once", "b", None, ["x@example.com"]), queue="default", mailer="d")

    def outage() -> None:
        aof_redis.stop()
        threading.Timer(1.0, aof_redis.start).start()

    providers.RecordingBackend.after_send = outage
    assert deliver_envelope(envelope, config.queues["default"], config).provider == "p"
    providers.RecordingBackend.after_send = None
    again = deliver_envelope(envelope, config.queues["default"], config)  # a redelivery finds the record
    assert (again.provider, again.earlier, providers.SENT) == ("p", True, ["once"])


@pytest.mark.django_db(transaction=True)
def test_a_message_waiting_for_a_slot_survives_a_redis_restart(configure, aof_redis, run_worker) -> None:
    configure(
        providers={"slow": {"BACKEND": "tests.providers.SlowBackend"}},
        queues={name: {"providers": ["slow"], "min_backoff": 100, "max_backoff": 200} for name in QUEUES},
        PROVIDERS={"slow": {"max_concurrency": 1}},
        RATE_LIMIT_MAX_WAIT=30,  # m1 keeps asking for the slot while m0 is being sent
        BROKER_URL=aof_redis.url,
        BROKER_OPTIONS=FAIL_FAST,
        ON_COMMIT=False,
    )
    send_mail("m0", "b", None, ["a@example.com"])
    send_mail("m1", "b", None, ["a@example.com"])
    with run_worker(threads=2) as worker:
        assert providers.STARTED.wait(10)
        time.sleep(0.5)
        aof_redis.stop()  # m1's next ask for the slot fails; Dramatiq would retry it... into a dead Redis
        time.sleep(3)
        aof_redis.start()
        worker.drain(timeout=30)
    assert sorted(providers.SENT) == ["m0", "m1"]
    assert sum(depth.dead for depth in queue_depths()) == 0


@pytest.mark.django_db(transaction=True)
def test_deferred_mail_is_not_stranded_by_a_redis_blip(configure, aof_redis, run_worker) -> None:
    configure(
        providers={"p": {"BACKEND": "tests.providers.RecordingBackend"}},
        PROVIDERS={"p": {"rate_limit": "20/m"}},  # one send every 3 s
        RATE_LIMIT_MAX_WAIT=0.2,
        BROKER_URL=aof_redis.url,
        BROKER_OPTIONS=FAIL_FAST,
        ON_COMMIT=False,
    )
    send_mail("m0", "b", None, ["a@example.com"])
    send_mail("m1", "b", None, ["a@example.com"])
    with run_worker(threads=2) as worker:
        deadline = time.monotonic() + 5
        while queue_depths()[1].delayed == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(providers.SENT) == 1  # the other is deferred, held in the worker's delay queue
        aof_redis.stop()
        time.sleep(1.5)
        aof_redis.start()
        worker.drain(timeout=30)
    assert sorted(providers.SENT) == ["m0", "m1"]


@pytest.fixture
def pausable_redis(tmp_path):
    """A private redis-server that a test can freeze (SIGSTOP) and thaw, as a partition or a paused VM does."""
    server = RedisServer(tmp_path).start()
    yield server
    os.kill(server.process.pid, signal.SIGCONT)  # a frozen process would not act on the SIGTERM of stop()
    server.stop()


def freeze(server: RedisServer) -> None:
    os.kill(server.process.pid, signal.SIGSTOP)


def thaw(server: RedisServer) -> None:
    os.kill(server.process.pid, signal.SIGCONT)


def relay_once() -> str:
    out = StringIO()
    call_command("mailqueue", "relay", "--once", stdout=out)
    return out.getvalue()


def timed_send(subject: str) -> float:
    started = time.monotonic()
    assert send_mail(subject, "b", None, ["a@example.com"]) == 1
    return time.monotonic() - started


#: Short enough to keep the test quick, long enough to tell a wait from a skip on a busy machine.
SOCKET_TIMEOUT = 2.0


@pytest.mark.django_db(transaction=True)
def test_a_redis_that_stops_answering_costs_one_send_the_timeout_and_all_mail_is_delivered_once(
    configure, smtp_server, pausable_redis, run_worker
) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        BROKER_URL=pausable_redis.url,
        BROKER_OPTIONS={"socket_timeout": SOCKET_TIMEOUT},
        ON_COMMIT=False,
    )
    assert timed_send("before") < 1  # this thread's connection is made and in use, as in a running web process
    freeze(pausable_redis)
    try:
        waits = [timed_send(f"m{i}") for i in range(20)]
        # The relay ignores the cool-down: it tries Redis (and waits out the timeout), keeping every row.
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not answer in time"):
            outbox.relay_batch()
        assert time.monotonic() - started >= SOCKET_TIMEOUT * 0.9
    finally:
        thaw(pausable_redis)
    # The first send waits the socket timeout; the other 19 go straight to the outbox within the cool-down.
    assert waits[0] >= SOCKET_TIMEOUT * 0.9, waits
    assert max(waits[1:]) < 0.5, waits
    assert sum(waits[1:]) < 2, waits
    assert OutboxMessage.objects.count() == 20
    assert "relayed 20 message(s) in all" in relay_once()
    assert not OutboxMessage.objects.exists()
    # The first message's script reached the frozen Redis, which ran it once thawed: it is both queued and in
    # the outbox, and the relay, finding it on its queue, does not push it again.
    assert queue_depths()[1].ready == 1 + 20  # "before" and the twenty: each once
    with run_worker(threads=4) as worker:
        worker.drain()
    subjects = Counter(message.parsed["Subject"] for message in smtp_server.received)
    assert subjects == Counter({"before": 1, **{f"m{i}": 1 for i in range(20)}})  # every one delivered, once


@pytest.mark.django_db(transaction=True)
def test_after_the_cool_down_one_send_probes_redis_while_the_others_still_skip_it(
    configure, smtp_server, pausable_redis
) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        BROKER_URL=pausable_redis.url,
        BROKER_OPTIONS={"socket_timeout": SOCKET_TIMEOUT},
        BROKER_COOLDOWN=1.0,
        ON_COMMIT=False,
    )
    timed_send("warm")
    freeze(pausable_redis)
    try:
        assert timed_send("times out") >= SOCKET_TIMEOUT * 0.9
        assert timed_send("skips") < 0.5
        time.sleep(1.2)  # the cool-down is over: the next send probes, and waits the timeout again
        probe = threading.Thread(target=timed_send, args=("probe",))
        probe.start()
        time.sleep(0.3)
        assert timed_send("while the probe waits") < 0.5  # only one send probes; the others keep skipping
        probe.join()
    finally:
        thaw(pausable_redis)
    assert OutboxMessage.objects.count() == 4
    assert timed_send("still cooling down") < 0.5  # straight to the outbox: the probe failed a moment ago
    assert OutboxMessage.objects.count() == 5
    time.sleep(1.2)
    assert timed_send("redis is back") < 0.5  # the next probe finds Redis: queued, not kept
    assert OutboxMessage.objects.count() == 5
    assert timed_send("and stays in use") < 0.5
    assert OutboxMessage.objects.count() == 5
    assert queue_depths()[1].ready >= 3  # warm, redis is back, and stays in use (and "times out", once thawed)


@pytest.mark.django_db(transaction=True)
def test_a_refused_connection_starts_no_cool_down(configure, smtp_server, tmp_path) -> None:
    server = RedisServer(tmp_path).start()
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=server.url, ON_COMMIT=False)
    server.stop()
    timed_send("refused")  # fails at once: no reason to skip Redis on the next send
    server.start()
    try:
        timed_send("queued")
        assert OutboxMessage.objects.count() == 1
        assert queue_depths()[1].ready == 1
    finally:
        server.stop()


def test_with_raise_a_send_in_the_cool_down_raises_at_once(configure, smtp_server, pausable_redis) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        BROKER_URL=pausable_redis.url,
        BROKER_OPTIONS={"socket_timeout": SOCKET_TIMEOUT},
        ON_BROKER_FAILURE="raise",
        ON_COMMIT=False,
    )
    timed_send("warm")
    freeze(pausable_redis)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="did not answer in time for 1 message"):
            send_mail("times out", "b", None, ["a@example.com"])
        assert time.monotonic() - started >= SOCKET_TIMEOUT * 0.9
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=r"sends skip it for MAILQUEUE\['BROKER_COOLDOWN'\] = 10 s"):
            send_mail("skipped", "b", None, ["a@example.com"])
        assert time.monotonic() - started < 0.5
    finally:
        thaw(pausable_redis)
