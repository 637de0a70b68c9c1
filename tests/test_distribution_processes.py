"""Spreading mail over a queue's providers, end to end: worker processes, real SMTP servers, real Redis.

Each test sends a batch to the ``bulk`` queue, lets two worker processes deliver it, and checks what each
SMTP server received: how the mail was shared, that every message arrived exactly once, how long each waited.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from django.core.mail import send_mass_mail

from mailqueue.client import redis_client
from mailqueue.conf import get_config
from mailqueue.keys import events_key, heartbeats_key
from mailqueue.monitoring import provider_health, queue_depths
from tests.servers import SMTPServer
from tests.worker_processes import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def start_workers(tmp_path: Path) -> Iterator[Callable[..., list[WorkerProcess]]]:
    """Start ``count`` worker processes on ``bulk`` and wait until they consume; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(count: int = 2, threads: int = 8, queues: tuple[str, ...] = ("bulk",)) -> list[WorkerProcess]:
        for _ in range(count):
            log = tmp_path / f"worker{len(started)}.log"
            started.append(WorkerProcess(list(queues), threads=threads, log=log).start())
        # A worker heartbeats once its consumers run (Keepalive starts after the worker's boot).
        heartbeats = heartbeats_key(get_config().namespace)
        deadline = time.monotonic() + 60
        while redis_client().zcard(heartbeats) < len(started):
            assert time.monotonic() < deadline, "the worker processes did not start"
            time.sleep(0.05)
        return started

    yield start
    for worker in started:  # all at once: each takes a few seconds to finish its threads
        if worker.process is not None and worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in started:
        try:
            if worker.process is not None:
                worker.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def configure_bulk(configure, primary: SMTPServer, secondary: SMTPServer, bulk: dict, providers: dict) -> None:
    """bulk delivers through primary and secondary as ``bulk`` says; default through the secondary alone."""
    configure(
        providers={"primary": primary.mailer(), "secondary": secondary.mailer()},
        queues={
            "critical": {"providers": ["primary"]},
            "default": {"providers": ["secondary"]},
            "bulk": {"providers": ["primary", "secondary"], "max_retries": 3, "min_backoff": 50, **bulk},
        },
        PROVIDERS=providers,
    )


def send_batch(count: int, using: str = "bulk") -> float:
    """Queue ``count`` messages on bulk (or the queue of mailer ``using``) in one call; when they were queued."""
    queued_at = time.time()
    send_mass_mail([(f"m{i}", "b", None, [f"r{i}@example.com"]) for i in range(count)], using=using)
    return queued_at


def wait_for_all(count: int, *servers: SMTPServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(server.received) for server in servers) < count:
        assert time.monotonic() < deadline, f"only {[len(s.received) for s in servers]} of {count} arrived"
        time.sleep(0.02)


def assert_each_exactly_once(count: int, *servers: SMTPServer) -> None:
    subjects = sorted(mail.parsed["Subject"] for server in servers for mail in server.received)
    assert subjects == sorted(f"m{i}" for i in range(count)), "a message was lost or arrived twice"


def logged_events(kind: str) -> list[dict]:
    """The message log's events of ``kind`` on the stream (the workers append them as they go)."""
    entries = redis_client().xrange(events_key(get_config().namespace))
    events = [orjson.loads(fields[b"e"]) for _, fields in entries]
    return [event for event in events if event["k"] == kind]


def sustained_rate(server: SMTPServer) -> float:
    times = sorted(mail.received_at for mail in server.received)
    return (len(times) - 1) / (times[-1] - times[0])


def test_weighted_3_to_1_over_2000_messages(configure, smtp_server, backup_smtp, start_workers) -> None:
    count = 2000
    configure_bulk(
        configure, smtp_server, backup_smtp, {"strategy": "weighted", "weights": {"primary": 3, "secondary": 1}}, {}
    )
    send_batch(count)
    start_workers()
    wait_for_all(count, smtp_server, backup_smtp, timeout=60)
    assert_each_exactly_once(count, smtp_server, backup_smtp)
    share = len(smtp_server.received) / count
    assert 0.72 <= share <= 0.78, f"the primary took {share:.1%}"
    assert logged_events("deferred") == []


def test_weighted_with_a_providers_server_stopped_mid_run_every_message_arrives_exactly_once(
    configure, smtp_server, backup_smtp, start_workers
) -> None:
    count = 2000
    configure_bulk(
        configure,
        smtp_server,
        backup_smtp,
        {"strategy": "weighted", "weights": {"primary": 3, "secondary": 1}},
        {"primary": {"attempts": 2, "wait_min": 0.01, "wait_max": 0.05, "failure_threshold": 3, "cooldown": 60}},
    )
    send_batch(count)
    start_workers()
    while len(smtp_server.received) < 300:
        time.sleep(0.005)
    smtp_server.stop()
    try:
        wait_for_all(count, smtp_server, backup_smtp, timeout=60)
    finally:
        smtp_server.restart()  # for the fixture to stop
    assert_each_exactly_once(count, smtp_server, backup_smtp)
    assert 300 <= len(smtp_server.received) < count * 0.75
    assert provider_health()[0].state == "open"  # out of the draw: the secondary took the rest
    assert sum(depth.dead for depth in queue_depths()) == 0


#: The primary's limit in the spill-over tests.
PRIMARY_RATE = 20


def spill_over(configure, primary: SMTPServer, secondary: SMTPServer, budget: float) -> None:
    configure_bulk(
        configure,
        primary,
        secondary,
        {"strategy": "spill-over", "latency_budget": budget},
        {"primary": {"rate_limit": f"{PRIMARY_RATE}/s"}},
    )


def test_spill_over_1_s_budget_the_primary_runs_at_its_limit_the_rest_spills_and_nothing_waits_longer(
    configure, smtp_server, backup_smtp, start_workers
) -> None:
    count, budget = 600, 1.0
    spill_over(configure, smtp_server, backup_smtp, budget)
    # Up and waiting, so the batch waits for providers, not for the workers' start-up. A thread sleeps until the
    # primary's token it reserved (up to the budget): 16 threads a process leave some free for the secondary.
    start_workers(threads=16)
    queued_at = send_batch(count)
    wait_for_all(count, smtp_server, backup_smtp, timeout=30)
    assert_each_exactly_once(count, smtp_server, backup_smtp)
    # What the budget controls: how long a message waits for the primary. Each one the primary took arrived
    # within the budget of its send_mail() (the queued event's time: its envelope's), give or take half a second
    # for the SMTP exchange and a loaded machine.
    accepted = {event["s"]: event["t"] / 1000 for event in logged_events("queued")}
    primary_waits = [mail.received_at - accepted[mail.parsed["Subject"]] for mail in smtp_server.received]
    assert max(primary_waits) <= budget + 0.5, f"a message waited {max(primary_waits):.2f}s for the primary"
    # Nothing waited for a token beyond the budget: nothing was re-scheduled.
    assert logged_events("deferred") == []
    # The batch as a whole: the workers' own pace for 600 messages on a loaded 2-core machine, not the budget's.
    longest = max(mail.received_at for server in (smtp_server, backup_smtp) for mail in server.received) - queued_at
    assert longest < 15, f"the batch took {longest:.2f}s"
    # The primary took what its limit allowed while it was offered mail, no more and not much less.
    primary = len(smtp_server.received)
    assert primary >= 5
    assert sustained_rate(smtp_server) == pytest.approx(PRIMARY_RATE, rel=0.25)
    assert primary <= PRIMARY_RATE * (max(mail.received_at for mail in smtp_server.received) - queued_at) + 1
    assert len(backup_smtp.received) == count - primary


def test_spill_over_60_s_budget_everything_goes_through_the_primary(
    configure, smtp_server, backup_smtp, start_workers
) -> None:
    count, budget = 600, 60.0
    spill_over(configure, smtp_server, backup_smtp, budget)
    start_workers()
    queued_at = send_batch(count)
    wait_for_all(count, smtp_server, timeout=count / PRIMARY_RATE + 15)
    assert_each_exactly_once(count, smtp_server)
    assert backup_smtp.received == []
    assert sustained_rate(smtp_server) == pytest.approx(PRIMARY_RATE, rel=0.05)
    assert max(mail.received_at for mail in smtp_server.received) - queued_at < budget


def test_a_daily_quota_spent_on_the_primary_sends_the_next_messages_through_the_secondary_at_once(
    configure, smtp_server, backup_smtp, start_workers
) -> None:
    quota, count = 50, 200
    configure_bulk(configure, smtp_server, backup_smtp, {}, {"primary": {"quota": f"{quota}/d"}})
    start_workers()
    queued_at = send_batch(count)
    wait_for_all(count, smtp_server, backup_smtp, timeout=20)
    assert_each_exactly_once(count, smtp_server, backup_smtp)
    assert len(smtp_server.received) == quota
    assert len(backup_smtp.received) == count - quota
    # At once: no message waited for the primary's next day, nor for a retry.
    assert max(mail.received_at for mail in backup_smtp.received) - queued_at < 5
    assert logged_events("deferred") == []
    primary = provider_health()[0]
    assert (primary.quota, primary.quota_used, primary.quota_left) == (f"{quota}/d", quota, 0)
