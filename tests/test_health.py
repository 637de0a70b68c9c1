"""Provider health: a circuit per provider, shared by every worker through Redis, and failover."""

from __future__ import annotations

import time

import pytest
from django.core.mail import send_mass_mail

from mailqueue.client import redis_client
from mailqueue.conf import get_config
from mailqueue.keys import ProviderKeys
from mailqueue.monitoring import provider_health, queue_depths
from workers.admission import admit, settle


@pytest.fixture
def circuit(configure, smtp_server):
    configure(
        providers={"primary": smtp_server.mailer()},
        PROVIDERS={"primary": {"failure_threshold": 3, "cooldown": 0.3}},
    )
    config = get_config()
    return config.provider("primary"), config.queues["default"], config


def state() -> str:
    return provider_health()[0].state


def test_the_circuit_opens_after_consecutive_failures_then_lets_one_probe_through(circuit) -> None:
    provider, queue, config = circuit
    for n in range(3):
        assert state() == "closed"
        settle(admit(f"f{n}", provider, queue, config), f"f{n}", provider, "failed", config)
    assert state() == "open"
    skipped = admit("m1", provider, queue, config)
    assert skipped.outcome == "open"
    assert 0.2 < skipped.wait <= 0.3
    time.sleep(0.35)
    probe = admit("m1", provider, queue, config)
    assert (probe.outcome, probe.detail) == ("go", "probe")
    assert state() == "half-open"
    assert admit("m2", provider, queue, config).outcome == "open"  # one probe at a time
    settle(probe, "m1", provider, "sent", config)
    assert state() == "closed"
    assert admit("m2", provider, queue, config).outcome == "go"


def test_a_failed_probe_opens_the_circuit_again(circuit) -> None:
    provider, queue, config = circuit
    for n in range(3):
        settle(admit(f"f{n}", provider, queue, config), f"f{n}", provider, "failed", config)
    time.sleep(0.35)
    probe = admit("m1", provider, queue, config)
    assert settle(probe, "m1", provider, "failed", config).circuit == "open"
    assert admit("m2", provider, queue, config).outcome == "open"


def test_a_refusal_is_an_answer_not_a_failure(circuit) -> None:
    provider, queue, config = circuit
    for n in range(2):
        settle(admit(f"f{n}", provider, queue, config), f"f{n}", provider, "failed", config)
    settle(admit("r", provider, queue, config), "r", provider, "rejected", config)  # e.g. 550 no such user
    settle(admit("f3", provider, queue, config), "f3", provider, "failed", config)
    assert state() == "closed"
    health = provider_health()[0]
    # failed_* counts the provider's own faults; a refusal is counted apart.
    assert (health.failures, health.sent_5m, health.failed_5m) == (1, 0, 3)
    assert minute_counters(provider, config) == {"failed": 3, "rejected": 1}


def minute_counters(provider, config) -> dict[str, int]:
    """This minute's settle counters of ``provider``, straight from Redis."""
    key = ProviderKeys.of(config.namespace, provider.alias).stats(int(time.time() // 60))
    return {name.decode(): int(count) for name, count in redis_client().hgetall(key).items()}


def test_a_message_fault_is_neither_a_failure_nor_an_answer(circuit) -> None:
    provider, queue, config = circuit
    for n in range(2):
        settle(admit(f"f{n}", provider, queue, config), f"f{n}", provider, "failed", config)
    for n in range(5):  # five messages that cannot be rendered: more than the threshold of 3
        settle(admit(f"m{n}", provider, queue, config), f"m{n}", provider, "faulted", config)
    health = provider_health()[0]
    assert (health.state, health.failures, health.failed_5m) == ("closed", 2, 2)  # not reset, not counted
    assert minute_counters(provider, config) == {"failed": 2, "faulted": 5}
    settle(admit("f2", provider, queue, config), "f2", provider, "failed", config)
    assert state() == "open"  # the provider's own third failure in a row opens it


def test_a_probe_that_is_a_message_fault_hands_the_probe_to_the_next_message(circuit) -> None:
    provider, queue, config = circuit
    for n in range(3):
        settle(admit(f"f{n}", provider, queue, config), f"f{n}", provider, "failed", config)
    time.sleep(0.35)
    probe = admit("m1", provider, queue, config)
    assert (probe.outcome, probe.detail) == ("go", "probe")
    assert admit("m2", provider, queue, config).outcome == "open"
    assert settle(probe, "m1", provider, "faulted", config).circuit == "half-open"
    # Nothing was learned about the provider: the next message probes it at once, not after another cooldown.
    next_probe = admit("m2", provider, queue, config)
    assert (next_probe.outcome, next_probe.detail) == ("go", "probe")
    settle(next_probe, "m2", provider, "sent", config)
    assert state() == "closed"


@pytest.mark.django_db(transaction=True)
def test_primary_stopped_mid_run_secondary_takes_over_exactly_once_and_primary_is_used_again(
    configure, smtp_server, backup_smtp, run_worker
) -> None:
    primary, secondary = smtp_server, backup_smtp
    configure(
        providers={"primary": primary.mailer(), "secondary": secondary.mailer()},
        PROVIDERS={
            "primary": {"failure_threshold": 3, "cooldown": 0.5, "rate_limit": "200/s", "attempts": 2},
            "secondary": {"attempts": 2},
        },
    )
    count = 300
    send_mass_mail([(f"m{i}", "b", None, ["a@example.com"]) for i in range(count)])
    with run_worker(threads=4) as worker:
        while len(primary.received) < 50:
            time.sleep(0.005)
        primary.stop()
        while len(primary.received) + len(secondary.received) < count:
            time.sleep(0.02)
        assert provider_health()[0].state in ("open", "half-open")
        worker.drain()
        assert 50 <= len(primary.received) < count
        subjects = [m.parsed["Subject"] for m in primary.received + secondary.received]
        assert sorted(subjects) == sorted(f"m{i}" for i in range(count))  # every message, exactly once

        primary.restart()
        time.sleep(0.6)  # past the cool-down: the next message is the probe
        send_mass_mail([("probe", "b", None, ["a@example.com"])])
        worker.drain()
        assert primary.received[-1].parsed["Subject"] == "probe"
        assert provider_health()[0].state == "closed"
        send_mass_mail([(f"back{i}", "b", None, ["a@example.com"]) for i in range(20)])
        worker.drain()
    back = [m.parsed["Subject"] for m in primary.received if m.parsed["Subject"].startswith("back")]
    assert len(back) == 20, "the primary, healthy again, takes the mail"
    assert provider_health()[0].state == "closed"
    assert sum(depth.dead for depth in queue_depths()) == 0


@pytest.mark.django_db(transaction=True)
def test_when_every_circuit_is_open_mail_waits_without_using_retries(configure, smtp_server, run_worker) -> None:
    configure(
        providers={"primary": smtp_server.mailer()},
        queues={name: {"providers": ["primary"], "max_retries": 0} for name in ("critical", "default", "bulk")},
        PROVIDERS={"primary": {"failure_threshold": 1, "cooldown": 0.5, "attempts": 1}},
    )
    smtp_server.stop()
    send_mass_mail([(f"m{i}", "b", None, ["a@example.com"]) for i in range(5)])
    with run_worker(threads=1) as worker:
        time.sleep(0.3)
        # The first message failed (max_retries=0: dead-lettered); the circuit opened for the rest.
        assert provider_health()[0].state == "open"
        smtp_server.restart()
        worker.drain(timeout=20)
    assert len(smtp_server.received) == 4
    assert sum(depth.dead for depth in queue_depths()) == 1
