"""Mail sent to an idle queue reaches its provider in milliseconds: the enqueue wakes the worker (issue 10 §4).

Real worker processes with the default worker timeout (1 s), a real SMTP
server, real Redis. Before the wake-up, an idle consumer slept Dramatiq's poll
backoff: after a silence longer than a second, a message waited 0.5–1 s. The
bounds here are generous (a noisy 2-core machine); docs/benchmarks.md has the
measured figures (``python -m bench --only-idle``).
"""

from __future__ import annotations

import select
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.mail import EmailMessage, mailers, send_mail, send_mass_mail

from mailqueue import outbox
from mailqueue.enqueue import encode, push
from mailqueue.envelope import Envelope
from mailqueue.exceptions import BrokerUnavailable
from mailqueue.keys import wake_channel
from tests.redis_server import RedisServer
from tests.servers import SMTPServer
from tests.worker_processes import WorkerProcess
from workers.actors import worker_broker
from workers.wakeup import wakeups_for

#: Generous bounds for a shared, loaded 2-core machine: the goal (p50 <= 5 ms, p99 <= 20 ms) is what the bench
#: records. Before the wake-up, a send after a silence waited for the end of a poll sleep of 0.5-1 s: a median of
#: 200-400 ms, and below 100 ms for about one send in eight.
P50_BOUND_MS = 100
MAX_BOUND_MS = 400


def _send(subject: str, using: str = "transactional") -> float:
    """Send one message; return when (time.time(), as the SMTP server stamps arrivals) just before send_mail()."""
    began = time.time()
    send_mail(subject, "body", "from@example.com", ["to@example.com"], using=using)
    return began


def _latencies_ms(server: SMTPServer, sent: dict[str, float], timeout: float = 20.0) -> list[float]:
    deadline = time.monotonic() + timeout
    while True:
        arrived = {mail.parsed["Subject"]: mail.received_at for mail in list(server.received)}
        if all(subject in arrived for subject in sent) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    missing = [subject for subject in sent if subject not in arrived]
    assert not missing, f"never delivered: {missing}"
    return [(arrived[subject] - began) * 1000 for subject, began in sent.items()]


def _warm(server: SMTPServer, using: str = "transactional") -> None:
    """One message through the worker: it has started, connected and subscribed."""
    _latencies_ms(server, {"warm-up": _send("warm-up", using)}, timeout=60)


@pytest.fixture
def critical_pool(smtp_setup, tmp_path: Path):
    """Two worker processes consuming ``critical``: every publish wakes both, whichever fetches sends."""
    workers = [WorkerProcess(["critical"], threads=2, log=tmp_path / f"critical{n}.log").start() for n in range(2)]
    yield workers
    for worker in workers:
        worker.stop()


def test_an_idle_pool_delivers_within_milliseconds_also_after_a_silence(smtp_setup, critical_pool) -> None:
    _warm(smtp_setup)
    steady: dict[str, float] = {}
    for index in range(16):
        steady[f"steady {index}"] = _send(f"steady {index}")
        time.sleep(0.25)
    after_silence: dict[str, float] = {}
    for index in range(6):
        # Longer than the worker timeout (1 s), Dramatiq's poll backoff cap: it slept 0.3-1 s here before.
        time.sleep(1.5)
        after_silence[f"quiet {index}"] = _send(f"quiet {index}")
        _latencies_ms(smtp_setup, {f"quiet {index}": after_silence[f"quiet {index}"]})
    steady_ms = _latencies_ms(smtp_setup, steady)
    quiet_ms = _latencies_ms(smtp_setup, after_silence)
    assert statistics.median(steady_ms) < P50_BOUND_MS, steady_ms
    assert statistics.median(quiet_ms) < P50_BOUND_MS, quiet_ms


def test_a_critical_message_behind_a_bulk_drain_of_another_pool_goes_at_once(
    configure, smtp_server, backup_smtp, tmp_path: Path
) -> None:
    configure(
        providers={"smtp": smtp_server.mailer(), "bulk-smtp": backup_smtp.mailer()},
        queues={
            "critical": {"providers": ["smtp"]},
            "default": {"providers": ["smtp"]},
            "bulk": {"providers": ["bulk-smtp"]},
        },
    )
    backlog = 5000
    workers = [
        WorkerProcess(["critical"], threads=4, log=tmp_path / "critical.log").start(),
        WorkerProcess(["bulk"], threads=8, log=tmp_path / "bulk.log").start(),
    ]
    try:
        _warm(smtp_server)
        send_mass_mail(
            [(f"bulk {i}", "b", "from@example.com", [f"r{i}@example.com"]) for i in range(backlog)], using="bulk"
        )
        deadline = time.monotonic() + 30
        while len(backup_smtp.received) < 50:  # the bulk pool is draining
            assert time.monotonic() < deadline, "the bulk pool did not start draining"
            time.sleep(0.02)
        sent: dict[str, float] = {}
        for index in range(5):
            # The critical pool idles between sends longer than its poll backoff's cap, as a real one does.
            time.sleep(1.2)
            sent[f"urgent {index}"] = _send(f"urgent {index}")
        latencies = _latencies_ms(smtp_server, sent)
        bulk_done_when_measured = len(backup_smtp.received)
    finally:
        for worker in workers:
            worker.stop()
    assert bulk_done_when_measured < backlog, "the bulk drain ended before the critical sends: not measured behind it"
    assert statistics.median(latencies) < P50_BOUND_MS, latencies


def _published(client: redis.Redis, namespace: str, action: Any) -> list[str]:
    """The wake channels ``action()`` published on, read by a real subscriber, one entry per PUBLISH."""
    pubsub = client.pubsub()
    pubsub.psubscribe(wake_channel(namespace, "*"))
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
    action()
    channels = []
    while (message := pubsub.get_message(timeout=0.2)) is not None:
        channels.append(message["channel"].decode().rsplit(":", 1)[1])
    pubsub.close()
    return channels


def test_a_push_onto_an_empty_queue_publishes_one_wake_up_in_its_script_call(smtp_setup, redis_client, namespace):
    def drained() -> None:
        """As consumers leave it: the next push finds the queue empty."""
        redis_client.delete(*(f"{namespace}:{queue}" for queue in ("critical", "default")))

    assert _published(redis_client, namespace, lambda: _send("one", "transactional")) == ["critical"]
    # Onto a backlog nothing is published: the consumers are busy, or were woken when it began.
    assert _published(redis_client, namespace, lambda: _send("two", "transactional")) == []
    drained()
    batch = [EmailMessage(f"b{i}", "b", "f@example.com", [f"t{i}@example.com"]) for i in range(50)]
    for message in batch[:3]:
        message.queue = "default"  # type: ignore[attr-defined]
    assert sorted(_published(redis_client, namespace, lambda: mailers["transactional"].send_messages(batch))) == [
        "critical",
        "default",
    ]
    drained()
    # A guarded push (an idempotency key, the outbox relay) that queues nothing publishes nothing.
    guarded = encode(Envelope.from_message(batch[0], queue="critical", mailer="transactional"), guarded=True)
    assert _published(redis_client, namespace, lambda: push([guarded])) == ["critical"]
    drained()
    assert _published(redis_client, namespace, lambda: push([guarded])) == []


@pytest.mark.django_db(transaction=True)
def test_the_outbox_relay_wakes_the_queue_it_pushes_to(smtp_setup, redis_client, namespace) -> None:
    message = EmailMessage("kept", "b", "f@example.com", ["t@example.com"])
    outbox.keep(
        [encode(Envelope.from_message(message, queue="critical", mailer="transactional"))], BrokerUnavailable("away")
    )
    assert _published(redis_client, namespace, outbox.relay_batch) == ["critical"]


def test_a_local_re_enqueue_wakes_this_processs_consumer_without_redis(smtp_setup) -> None:
    broker = worker_broker(fresh=True)
    wakeups = wakeups_for(broker)
    try:
        ready, delayed = wakeups.event("critical"), wakeups.event("critical.DQ")
        # The subscription's confirmation wakes the consumer too (what was published before it is fetched then):
        # let it come first; on a loaded machine it came mid-test and set "critical" after the delayed push.
        deadline = time.monotonic() + 10
        while not wakeups.listening("critical") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert wakeups.listening("critical")
        ready.clear()
        actor = broker.get_actor("mailqueue.deliver.critical")
        broker.enqueue(actor.message("payload"))
        assert ready.is_set() and not delayed.is_set()
        ready.clear()
        broker.enqueue(actor.message("payload"), delay=60_000)
        assert delayed.is_set() and not ready.is_set()
    finally:
        wakeups.stop()
        broker.flush_all()


def monitor(port: int, seconds: float) -> tuple[int, int]:
    """Redis MONITOR for ``seconds``: (commands clients sent, commands their scripts ran)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"MONITOR\r\n")
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([sock], [], [], left)
            if readable:
                received += sock.recv(65536)
    # "+OK", then one line per command: +<time> [<db> <client address>|lua] "COMMAND" ...
    lines = [line for line in received.split(b"\r\n") if line.startswith(b"+") and b" [" in line]
    in_scripts = sum(1 for line in lines if b" lua] " in line)
    return len(lines) - in_scripts, in_scripts


def test_an_idle_worker_costs_a_few_commands_a_second_and_survives_a_lost_subscription(
    configure, settings, smtp_server, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path).start()
    worker = None
    try:
        configure(providers={"smtp": smtp_server.mailer()})
        settings.MAILQUEUE = {**settings.MAILQUEUE, "BROKER_URL": server.url}
        worker = WorkerProcess(["critical"], threads=4, log=tmp_path / "worker.log").start()
        _warm(smtp_server)
        time.sleep(1.5)  # the backoff after the warm-up has run out
        seconds = 4.0
        sent, in_scripts = monitor(server.port, seconds)
        # About one fetch a second on the queue and 1.3 on its delay queue (the fallback poll), a dropped-message
        # check (BEYOND_HELD) once a second on each while they fetch, the keepalive's heartbeat-and-recovery script
        # once a second (workers/dramatiq_redis.py), a PING each 30 s: measured 4.8-5.1 sent, 11-11.5 in scripts (10 s).
        assert sent / seconds <= 6, f"{sent / seconds:.1f} commands/s from an idle worker"
        assert in_scripts / seconds <= 14, f"{in_scripts / seconds:.1f} commands/s in its scripts"
        # Redis drops the subscriber: what is published meanwhile is lost to it; the fallback poll fetches it.
        killer = redis.Redis.from_url(server.url)
        assert killer.client_kill_filter(_type="pubsub") == 1
        killer.close()
        lost = {"after the kill": _send("after the kill")}
        assert max(_latencies_ms(smtp_server, lost)) < 3000
        time.sleep(1)  # resubscribed: wake-ups again
        later = {"resubscribed": _send("resubscribed")}
        assert max(_latencies_ms(smtp_server, later)) < MAX_BOUND_MS
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


def test_a_refused_publish_neither_fails_nor_duplicates_the_push(configure, settings, smtp_server, tmp_path) -> None:
    server = RedisServer(tmp_path).start()
    try:
        admin = redis.Redis.from_url(server.url)
        # Redis 7 gives a new user no channels: this one may use the keys, not publish the wake-up.
        admin.acl_setuser("web", enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all"])
        configure(providers={"smtp": smtp_server.mailer()})
        settings.MAILQUEUE = {**settings.MAILQUEUE, "BROKER_URL": f"redis://web:secret@127.0.0.1:{server.port}/0"}
        namespace = settings.MAILQUEUE["NAMESPACE"]
        pubsub = admin.pubsub()
        pubsub.subscribe(wake_channel(namespace, "critical"))
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        assert send_mail("s", "b", "f@example.com", ["t@example.com"], using="transactional") == 1
        assert admin.llen(f"{namespace}:critical") == 1
        assert pubsub.get_message(timeout=0.5) is None  # refused, and ignored
        pubsub.close()
        admin.close()
        # A worker with the same user: its subscription is refused, said once at ERROR, and it polls instead.
        worker = WorkerProcess(["critical"], threads=2, log=tmp_path / "worker.log").start()
        try:
            assert len(smtp_server.wait_for(1, timeout=60)) == 1
        finally:
            worker.stop()
        log = (tmp_path / "worker.log").read_text()
        assert log.count("Redis refused the wake-up subscription") == 1, log
    finally:
        server.stop()
