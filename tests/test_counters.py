"""The cluster counters the workers keep in Redis (mailqueue.counters), in the script calls that record each attempt."""

from __future__ import annotations

import time

import pytest
import redis
from django.core.mail import EmailMessage, mailers, send_mail

from mailqueue.conf import get_config
from mailqueue.counters import (
    INF,
    LATENCY_BUCKETS,
    SEND_BUCKETS,
    bucket_label,
    counters_key,
    deliveries_field,
    latency_bucket_field,
    latency_sum_field,
    rate_limit_waits_field,
    send_bucket_field,
    send_sum_field,
)
from mailqueue.keys import ProviderKeys
from tests.worker_processes import WorkerProcess
from workers.admission import admit, settle

SEND_LABELS = [bucket_label(bound) for bound in SEND_BUCKETS] + [INF]
LATENCY_LABELS = [bucket_label(bound) for bound in LATENCY_BUCKETS] + [INF]
#: No Dramatiq retry: a failure is the message's last attempt, so each test knows its outcomes exactly.
ONE_QUEUE = {name: {"providers": ["smtp"], "max_retries": 0} for name in ("critical", "default", "bulk")}


def counters(client: redis.Redis, namespace: str) -> dict[str, float]:
    return {field.decode(): float(value) for field, value in client.hgetall(counters_key(namespace)).items()}


def send_counts(found: dict[str, float], provider: str) -> dict[str, float]:
    """The provider's send-duration histogram, bucket by bucket, as Redis keeps it (not cumulative)."""
    return {label: found.get(send_bucket_field(provider, label), 0) for label in SEND_LABELS}


def latency_counts(found: dict[str, float], queue: str, provider: str) -> dict[str, float]:
    return {label: found.get(latency_bucket_field(queue, provider, label), 0) for label in LATENCY_LABELS}


def in_flight(client: redis.Redis, namespace: str, provider: str) -> int:
    """Leases not expired yet, as the dashboard counts the concurrency in use."""
    now_ms = time.time() * 1000
    return int(client.zcount(ProviderKeys.of(namespace, provider).in_flight, now_ms, "+inf"))


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_worker_counts_each_delivery_its_send_time_and_its_latency(
    smtp_setup, run_worker, redis_client, namespace
) -> None:
    count = 6
    # The server takes 0.3 s over each message: no send can land in a bucket below that.
    smtp_setup.handler.stall_seconds = 0.3
    mailers["default"].send_messages([EmailMessage(f"m{i}", "b", None, [f"r{i}@example.com"]) for i in range(count)])
    with run_worker(threads=2) as worker:
        worker.drain()
    assert len(smtp_setup.wait_for(count)) == count
    found = counters(redis_client, namespace)
    assert found[deliveries_field("default", "smtp", "sent")] == count
    assert not any(found.get(deliveries_field("default", "smtp", outcome)) for outcome in ("failed", "rejected"))
    sends = send_counts(found, "smtp")
    assert sum(sends.values()) == count
    assert not any(n for label, n in sends.items() if label != INF and float(label) < 0.3), sends
    assert found[send_sum_field("smtp")] >= 0.3 * count
    latencies = latency_counts(found, "default", "smtp")
    assert sum(latencies.values()) == count
    # From send_mail() to acceptance covers the send itself, and the wait behind the other messages.
    assert found[latency_sum_field("default", "smtp")] >= found[send_sum_field("smtp")]
    # Nothing else was written: every field is one the readers build from the configuration.
    expected = {
        deliveries_field("default", "smtp", "sent"),
        send_sum_field("smtp"),
        latency_sum_field("default", "smtp"),
    }
    expected |= {send_bucket_field("smtp", label) for label, n in sends.items() if n}
    expected |= {latency_bucket_field("default", "smtp", label) for label, n in latencies.items() if n}
    assert set(found) == expected


def test_a_failing_provider_counts_failures_refusals_and_their_send_time(
    configure, smtp_server, run_worker, redis_client, namespace
) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, queues=ONE_QUEUE, PROVIDERS={"smtp": {"attempts": 1}})
    # The first two messages' DATA is answered with a transient failure, then a refusal; the third is taken.
    smtp_server.handler.replies.extend(["451 4.3.0 try again later", "550 5.7.1 refused by policy"])
    for i in range(3):
        send_mail(f"m{i}", "b", None, [f"r{i}@example.com"])
    with run_worker(threads=1) as worker:
        worker.drain()
    found = counters(redis_client, namespace)
    assert found[deliveries_field("default", "smtp", "failed")] == 1
    assert found[deliveries_field("default", "smtp", "rejected")] == 1
    assert found[deliveries_field("default", "smtp", "sent")] == 1
    # All three were handed to the server, so each send was timed; only the delivery has a latency.
    assert sum(send_counts(found, "smtp").values()) == 3
    assert sum(latency_counts(found, "default", "smtp").values()) == 1


def test_a_settle_run_again_after_its_reply_was_lost_counts_the_delivery_once(
    smtp_setup, redis_client, namespace
) -> None:
    config = get_config()
    smtp, queue = config.provider("smtp"), config.queues["default"]
    admission = admit("m1", smtp, queue, config)
    created = time.time() - 2.0
    for _ in range(2):
        settle(admission, "m1", smtp, "sent", config, send_seconds=0.02, created_at=created)
    found = counters(redis_client, namespace)
    assert found[deliveries_field("default", "smtp", "sent")] == 1
    assert send_counts(found, "smtp")["0.025"] == 1
    assert found[send_sum_field("smtp")] == pytest.approx(0.02)
    assert latency_counts(found, "default", "smtp")["2.5"] == 1
    assert 2.0 <= found[latency_sum_field("default", "smtp")] < 2.5


def test_a_message_fault_the_provider_never_saw_is_counted_without_a_send_time(
    smtp_setup, redis_client, namespace
) -> None:
    config = get_config()
    smtp, queue = config.provider("smtp"), config.queues["default"]
    settle(admit("m1", smtp, queue, config), "m1", smtp, "faulted", config, unsent=True, send_seconds=0.001)
    settle(admit("m2", smtp, queue, config), "m2", smtp, "faulted", config, send_seconds=0.3)
    settle(admit("m3", smtp, queue, config), "m3", smtp, "aborted", config)
    found = counters(redis_client, namespace)
    assert found[deliveries_field("default", "smtp", "faulted")] == 2
    # Only the fault the provider itself found took a send; an aborted send is no outcome at all.
    assert send_counts(found, "smtp") == {label: (1 if label == "0.5" else 0) for label in SEND_LABELS}
    assert deliveries_field("default", "smtp", "aborted") not in found


@pytest.mark.django_db(transaction=True)
def test_counters_survive_a_killed_worker_and_only_grow(configure, smtp_server, redis_client, namespace, tmp_path):
    configure(providers={"smtp": smtp_server.mailer()})
    sent = deliveries_field("default", "smtp", "sent")
    first = WorkerProcess(["default"], threads=2, log=tmp_path / "first.log").start()
    try:
        for i in range(5):
            send_mail(f"before {i}", "b", None, ["a@example.com"])
        assert wait_until(lambda: counters(redis_client, namespace).get(sent) == 5)
        before = counters(redis_client, namespace)
    finally:
        first.kill()  # SIGKILL: nothing of it can write or reset anything afterwards
    second = WorkerProcess(["default"], threads=2, log=tmp_path / "second.log").start()
    try:
        for i in range(3):
            send_mail(f"after {i}", "b", None, ["a@example.com"])
        assert wait_until(lambda: counters(redis_client, namespace).get(sent) == 8)
    finally:
        second.stop()
    after = counters(redis_client, namespace)
    assert all(after[field] >= value for field, value in before.items())
    assert sum(send_counts(after, "smtp").values()) == 8
    assert sum(latency_counts(after, "default", "smtp").values()) == 8


def test_with_counters_off_nothing_is_written(configure, smtp_server, run_worker, redis_client, namespace) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        queues=ONE_QUEUE,
        PROVIDERS={"smtp": {"rate_limit": {"rate": "2/s", "burst": 1}}},
        RATE_LIMIT_MAX_WAIT=1.0,
        MONITOR={"COUNTERS": False},
    )
    for i in range(3):
        send_mail(f"m{i}", "b", None, ["a@example.com"])
    with run_worker(threads=1) as worker:
        worker.drain()
    assert len(smtp_server.wait_for(3)) == 3  # they were sent, and waited for their tokens
    assert not redis_client.exists(counters_key(namespace))


def test_admission_counts_each_wait_for_a_rate_limit_token(configure, smtp_server, redis_client, namespace) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        queues=ONE_QUEUE,
        PROVIDERS={"smtp": {"rate_limit": {"rate": "2/s", "burst": 1}}},
        RATE_LIMIT_MAX_WAIT=0.6,
    )
    config = get_config()
    smtp, queue = config.provider("smtp"), config.queues["default"]
    waits = rate_limit_waits_field("smtp")
    assert admit("m1", smtp, queue, config).wait == 0  # the burst's token: no wait
    assert not redis_client.hexists(counters_key(namespace), waits)
    second = admit("m2", smtp, queue, config)
    assert second.outcome == "go" and second.wait > 0  # sleeps for its token
    assert counters(redis_client, namespace)[waits] == 1
    assert admit("m3", smtp, queue, config).outcome == "later"  # a token too far away: asks again later
    assert counters(redis_client, namespace)[waits] == 2


def test_a_rate_limited_worker_counts_its_waits(configure, smtp_server, run_worker, redis_client, namespace) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        queues=ONE_QUEUE,
        PROVIDERS={"smtp": {"rate_limit": {"rate": "2/s", "burst": 1}}},
        RATE_LIMIT_MAX_WAIT=0.2,
    )
    count = 4
    for i in range(count):
        send_mail(f"m{i}", "b", None, ["a@example.com"])
    with run_worker(threads=2) as worker:
        worker.drain()
    found = counters(redis_client, namespace)
    assert found[deliveries_field("default", "smtp", "sent")] == count
    # A token every 0.5 s, one at once: each message after the first waited (slept or deferred) at least once.
    assert found[rate_limit_waits_field("smtp")] >= count - 1


def test_a_provider_without_a_concurrency_limit_still_shows_its_sends_in_flight(
    smtp_setup, run_worker, redis_client, namespace
) -> None:
    config = get_config()
    smtp, queue = config.provider("smtp"), config.queues["default"]
    assert smtp.max_concurrency is None
    leases = ProviderKeys.of(namespace, "smtp").in_flight
    # A lease of a worker that died mid-send, long expired: the next admission prunes it.
    redis_client.zadd(leases, {"dead-worker-lease": time.time() * 1000 - 60_000})
    admission = admit("m1", smtp, queue, config)
    assert redis_client.zrange(leases, 0, -1) == [admission.token.encode()]
    assert in_flight(redis_client, namespace, "smtp") == 1
    settle(admission, "m1", smtp, "sent", config)
    assert redis_client.zcard(leases) == 0
    # And through a real worker: in flight while the server holds the message, gone once it is settled.
    smtp_setup.handler.stall_seconds = 1.0
    send_mail("slow", "b", None, ["a@example.com"])
    with run_worker(threads=1) as worker:
        assert wait_until(lambda: in_flight(redis_client, namespace, "smtp") == 1, timeout=10)
        worker.drain()
    assert redis_client.zcard(leases) == 0
