"""Redis going away under a running worker: nothing is lost, nothing is sent twice."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.mail import EmailMessage, send_mail
from redis.backoff import NoBackoff
from redis.retry import Retry

from mailqueue.conf import get_config
from mailqueue.envelope import Envelope
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
