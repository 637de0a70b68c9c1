"""Provider rate limits: shared by every worker process through Redis, deferring instead of failing."""

from __future__ import annotations

import time

import pytest
import redis
from django.core.mail import send_mail, send_mass_mail

from mailqueue.conf import MailQueueConfig, ProviderConfig, QueueConfig, RateLimit, get_config
from mailqueue.monitoring import queue_depths
from tests.worker_processes import WorkerProcess
from workers.admission import admit, settle


def provider(*limits: RateLimit, **options) -> ProviderConfig:
    return ProviderConfig(alias="esp", rate_limits=limits, **options)


@pytest.fixture
def limits_setup(configure, smtp_server) -> tuple[QueueConfig, MailQueueConfig]:
    configure(providers={"esp": smtp_server.mailer()}, RATE_LIMIT_MAX_WAIT=0.25)
    config = get_config()
    return config.queues["default"], config


def test_a_burst_goes_at_once_then_tokens_are_spaced_by_the_rate(limits_setup) -> None:
    queue, config = limits_setup
    esp = provider(RateLimit(count=10, period=1, burst=3))
    waits = [admit(f"id{i}", esp, queue, config) for i in range(6)]
    assert [a.outcome for a in waits] == ["go"] * 5 + ["later"]
    assert [round(a.wait, 1) for a in waits[:5]] == [0.0, 0.0, 0.0, 0.1, 0.2]
    # Beyond RATE_LIMIT_MAX_WAIT nothing is reserved: the answer says when to come back.
    assert waits[5].wait == pytest.approx(0.3, abs=0.02)
    assert admit("id6", esp, queue, config).wait == pytest.approx(0.3, abs=0.02)


def test_every_limit_must_grant_a_token(limits_setup) -> None:
    queue, config = limits_setup
    esp = provider(RateLimit(count=100, period=1, burst=100), RateLimit(count=2, period=60, burst=2))
    assert [admit(f"id{i}", esp, queue, config).outcome for i in range(3)] == ["go", "go", "later"]
    assert admit("id3", esp, queue, config).wait == pytest.approx(30, abs=0.1)


def test_max_concurrency_holds_a_slot_until_the_send_is_settled(limits_setup) -> None:

    queue, config = limits_setup
    esp = provider(max_concurrency=1)
    first = admit("id1", esp, queue, config)
    assert first.outcome == "go"
    assert admit("id2", esp, queue, config).outcome == "busy"
    settle(first, "id1", esp, "sent", config)
    assert admit("id2", esp, queue, config).outcome == "go"


@pytest.mark.django_db(transaction=True)
def test_a_message_without_a_token_is_deferred_without_using_a_retry(configure, smtp_server, run_worker) -> None:
    configure(
        providers={"esp": smtp_server.mailer()},
        queues={name: {"providers": ["esp"], "max_retries": 0} for name in ("critical", "default", "bulk")},
        PROVIDERS={"esp": {"rate_limit": {"rate": "4/s", "burst": 1}}},
        RATE_LIMIT_MAX_WAIT=0.05,
    )
    send_mass_mail([(f"m{i}", "b", None, ["a@example.com"]) for i in range(4)])
    with run_worker(threads=4) as worker:
        worker.drain(timeout=20)
    received = smtp_server.received
    assert len(received) == 4  # max_retries=0: a deferral that used up a retry would have dead-lettered it
    assert queue_depths()[0].dead == 0
    gaps = [b.received_at - a.received_at for a, b in zip(received, received[1:], strict=False)]
    assert min(gaps) > 0.2  # 4/s with no burst: about 0.25 s apart


@pytest.mark.django_db(transaction=True)
def test_a_slow_providers_queue_does_not_hold_up_another_queues_provider(
    configure, smtp_server, backup_smtp, run_worker
) -> None:
    configure(
        providers={"cheap": smtp_server.mailer(), "fast": backup_smtp.mailer()},
        queues={
            name: {"providers": ["cheap" if name == "bulk" else "fast"]} for name in ("critical", "default", "bulk")
        },
        PROVIDERS={"cheap": {"rate_limit": {"rate": "2/s", "burst": 1}}},
        POOLS={"all": {"queues": ["critical", "default", "bulk"]}},
        RATE_LIMIT_MAX_WAIT=0.2,
    )
    send_mass_mail([(f"news {i}", "b", None, ["a@example.com"]) for i in range(20)], using="bulk")
    with run_worker(threads=2) as worker:
        time.sleep(0.5)
        started = time.monotonic()
        for i in range(5):
            send_mail(f"reset {i}", "b", None, ["a@example.com"], using="transactional")
        backup_smtp.wait_for(5, timeout=10)
        took = time.monotonic() - started
        worker.worker.stop()
    assert len(backup_smtp.received) == 5
    assert took < 2.0, f"critical mail waited {took:.1f}s behind the rate-limited bulk queue"
    assert len(smtp_server.received) < 20  # bulk is still trickling out at 2/s


#: Seconds a worker's sleep until its granted slot may overrun on this loaded 2-core machine.
SLEEP_JITTER = 0.03


@pytest.mark.django_db(transaction=True)
def test_four_worker_processes_share_one_limit(configure, smtp_server, tmp_path, redis_url, namespace) -> None:
    rate, burst, count = 50, 10, 1000
    timing_key = f"{namespace}:test:send-times"
    esp = smtp_server.mailer()
    esp["BACKEND"] = "tests.providers.TimedSMTPBackend"
    esp["OPTIONS"] |= {"timing_url": redis_url, "timing_key": timing_key}
    configure(
        providers={"esp": esp},
        PROVIDERS={"esp": {"rate_limit": {"rate": f"{rate}/s", "burst": burst}}},
        RATE_LIMIT_MAX_WAIT=0.25,
    )
    send_mass_mail([(f"n{i}", "b", None, [f"r{i}@example.com"]) for i in range(count)], using="bulk")
    workers = [WorkerProcess(["bulk"], threads=4, log=tmp_path / f"worker{n}.log").start() for n in range(4)]
    try:
        smtp_server.wait_for(count, timeout=60)
    finally:
        for worker in workers:
            worker.stop()
    assert len(smtp_server.received) == count
    assert len({mail.parsed["Subject"] for mail in smtp_server.received}) == count
    # When the workers released each send (what the limit governs), across all four processes.
    times = sorted(float(t) for t in redis.Redis.from_url(redis_url).lrange(timing_key, 0, -1))
    assert len(times) == count
    observed = (count - burst) / (times[-1] - times[burst - 1])
    assert observed == pytest.approx(rate, rel=0.05), f"observed {observed:.2f}/s"
    # A burst plus one second's rate is what the limit allows in any second. The times are taken when each
    # send reached the provider, after the worker slept until its granted slot: a sleep that overran by a few
    # milliseconds on a loaded machine moves a send later than its grant, and one window looks a send fuller
    # than the grants were. SLEEP_JITTER allows for that measurement error, not for a looser limit.
    window = 1.0 - SLEEP_JITTER
    busiest = max(sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times))
    assert busiest <= rate + burst, f"{busiest} sends in one second"
