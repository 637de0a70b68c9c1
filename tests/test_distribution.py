"""A queue's strategy picks each message's provider inside the one ``admit`` call (real Redis, real scripts).

The end-to-end proofs, with worker processes and SMTP servers, are in tests/test_distribution_processes.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from anymail.message import AnymailMessage
from django.core.mail import EmailMessage, send_mass_mail
from dramatiq.middleware import TimeLimitExceeded, raise_thread_exception

from mailqueue.client import redis_client
from mailqueue.conf import get_config
from mailqueue.envelope import Envelope
from mailqueue.exceptions import DeliveryDeferred, PermanentDeliveryError
from mailqueue.keys import ProviderKeys
from mailqueue.monitoring import provider_health, queue_distribution
from mailqueue.signals import MessageDeferred
from tests.servers import SMTPServer, free_port
from workers import delivery
from workers.admission import admit, next_draw, settle

THREE_QUEUES = ("critical", "default", "bulk")


def two_providers(configure, smtp_server, backup_smtp, queue: dict, providers: dict | None = None, **options) -> None:
    """Every queue delivers through "a" then "b" (two real SMTP servers) with the strategy ``queue`` gives."""
    configure(
        providers={"a": smtp_server.mailer(), "b": backup_smtp.mailer()},
        queues={name: {"providers": ["a", "b"], "max_retries": 0, **queue} for name in THREE_QUEUES},
        PROVIDERS={"a": {}, "b": {}} | (providers or {}),
        **options,
    )


def candidates():
    config = get_config()
    queue = config.queues["default"]
    return [config.provider(alias) for alias in queue.providers], queue, config


def open_circuit(alias: str, config) -> None:
    provider = config.provider(alias)
    for n in range(provider.failure_threshold):
        settle(
            admit(f"fail-{alias}-{n}", provider, config.queues["default"], config),
            f"fail-{alias}-{n}",
            provider,
            "failed",
            config,
        )


def test_weighted_draws_follow_the_weights_closely(configure, smtp_server, backup_smtp) -> None:
    two_providers(configure, smtp_server, backup_smtp, {"strategy": "weighted", "weights": {"a": 3, "b": 1}})
    providers, queue, config = candidates()
    picks = Counter(admit(f"m{n}", providers, queue, config).provider for n in range(400))
    # The draws are spread evenly over [0, 1), not at random: 400 messages split 300/100 within a message or two.
    assert abs(picks["a"] - 300) <= 2 and picks["a"] + picks["b"] == 400


def test_weighted_a_draw_picks_by_cumulative_weight(configure, smtp_server, backup_smtp) -> None:
    two_providers(configure, smtp_server, backup_smtp, {"strategy": "weighted", "weights": {"a": 3, "b": 1}})
    providers, queue, config = candidates()
    assert admit("m1", providers, queue, config, draw=0.0).provider == "a"
    assert admit("m2", providers, queue, config, draw=0.74).provider == "a"
    assert admit("m3", providers, queue, config, draw=0.76).provider == "b"
    assert admit("m4", providers, queue, config, draw=0.999).provider == "b"


def test_weighted_an_open_circuit_takes_a_provider_out_of_the_draw(configure, smtp_server, backup_smtp) -> None:
    two_providers(
        configure,
        smtp_server,
        backup_smtp,
        {"strategy": "weighted", "weights": {"a": 3, "b": 1}},
        {"a": {"failure_threshold": 2, "cooldown": 30}},
    )
    providers, queue, config = candidates()
    open_circuit("a", config)
    answers = [admit(f"m{n}", providers, queue, config) for n in range(20)]
    assert {answer.provider for answer in answers} == {"b"}
    assert answers[0].skipped == (("a", "open"),)
    open_circuit("b", config)
    none = admit("m-last", providers, queue, config)
    assert none.outcome == "open" and 29 < none.wait <= 30  # until the first circuit lets a probe through


def test_weighted_a_weight_of_0_is_only_a_failover(configure, smtp_server, backup_smtp) -> None:
    two_providers(
        configure,
        smtp_server,
        backup_smtp,
        {"strategy": "weighted", "weights": {"a": 1, "b": 0}},
        {"a": {"failure_threshold": 1}},
    )
    providers, queue, config = candidates()
    assert {admit(f"m{n}", providers, queue, config, draw=n / 10).provider for n in range(10)} == {"a"}
    open_circuit("a", config)
    assert admit("m-after", providers, queue, config).provider == "b"


@pytest.mark.django_db(transaction=True)
def test_weighted_a_message_deferred_at_its_providers_rate_limit_keeps_its_draw(
    configure, smtp_server, backup_smtp, run_worker, recorder
) -> None:
    count = 120
    two_providers(
        configure,
        smtp_server,
        backup_smtp,
        {"strategy": "weighted", "weights": {"a": 3, "b": 1}},
        {"a": {"rate_limit": "40/s"}},
        RATE_LIMIT_MAX_WAIT=0.05,
    )
    send_mass_mail([(f"m{i}", "b", None, ["a@example.com"]) for i in range(count)])
    with run_worker(threads=4) as worker:
        worker.drain(timeout=30)
    assert len(smtp_server.received) + len(backup_smtp.received) == count
    # a, at its limit, deferred most of its share, some of it several times; drawn again each time, a quarter
    # of what came back went to b. Each message keeps its draw: the split is its draws', within a message or two.
    assert len(recorder.of(MessageDeferred)) > count / 4
    assert abs(len(smtp_server.received) - count * 3 / 4) <= 3, (len(smtp_server.received), len(backup_smtp.received))


def test_spill_over_takes_the_first_provider_with_a_token_within_the_budget(
    configure, smtp_server, backup_smtp
) -> None:
    two_providers(
        configure,
        smtp_server,
        backup_smtp,
        {"strategy": "spill-over", "latency_budget": 1},
        {"a": {"rate_limit": "2/s"}},
    )
    providers, queue, config = candidates()
    first = admit("m1", providers, queue, config, budget=0.2)
    assert (first.outcome, first.provider, first.wait) == ("go", "a", 0)
    # a's next token is 0.5 s away: beyond a 0.2 s budget, so b (no limit) takes it at once.
    spilled = admit("m2", providers, queue, config, budget=0.2)
    assert (spilled.outcome, spilled.provider, spilled.wait) == ("go", "b", 0)
    # Within a 1 s budget the message waits for a's token instead.
    waits = admit("m3", providers, queue, config, budget=1.0)
    assert (waits.outcome, waits.provider) == ("go", "a")
    assert waits.wait == pytest.approx(0.5, abs=0.05)


def test_spill_over_within_the_budget_but_beyond_the_longest_sleep_asks_again_later(
    configure, smtp_server, backup_smtp
) -> None:
    two_providers(
        configure,
        smtp_server,
        backup_smtp,
        {"strategy": "spill-over", "latency_budget": 60},
        {"a": {"rate_limit": "1/s"}},
        RATE_LIMIT_MAX_WAIT=0.25,
    )
    providers, queue, config = candidates()
    assert admit("m1", providers, queue, config).provider == "a"
    later = admit("m2", providers, queue, config)
    # The preferred provider takes it within the budget: the message comes back for it, it does not spill.
    assert (later.outcome, later.provider) == ("later", "a")
    assert later.wait == pytest.approx(1.0, abs=0.05)


def test_spill_over_when_every_provider_is_at_its_limit_the_soonest_token_is_waited_for(
    configure, smtp_server, backup_smtp
) -> None:
    two_providers(
        configure,
        smtp_server,
        backup_smtp,
        {"strategy": "spill-over", "latency_budget": 0.1},
        {"a": {"rate_limit": "1/s"}, "b": {"rate_limit": "4/s"}},
    )
    providers, queue, config = candidates()
    assert [admit(f"m{n}", providers, queue, config).provider for n in range(2)] == ["a", "b"]
    # a's token is 1 s away, b's 0.25 s: both beyond the budget; b's is the sooner, and short enough to sleep on.
    third = admit("m3", providers, queue, config)
    assert (third.outcome, third.provider) == ("go", "b")
    assert third.wait == pytest.approx(0.25, abs=0.05)


@pytest.mark.django_db(transaction=True)
def test_spill_over_a_message_deferred_within_its_budget_comes_back_within_it(
    configure, smtp_server, run_worker, recorder
) -> None:
    budget = 1.02
    configure(
        providers={"a": smtp_server.mailer()},
        queues={
            name: {"providers": ["a"], "strategy": "spill-over", "latency_budget": budget} for name in THREE_QUEUES
        },
        PROVIDERS={"a": {"rate_limit": "1/s"}},
        RATE_LIMIT_MAX_WAIT=0.05,
    )
    config = get_config()
    provider, queue = config.provider("a"), config.queues["default"]
    with run_worker() as worker:
        for n in range(4):
            taken = admit(f"token-{n}", provider, queue, config)
            assert (taken.outcome, taken.wait) == ("go", 0)  # a's next token: 1 s from now
            sent_at = time.time()
            send_mass_mail([(f"m{n}", "b", None, ["a@example.com"])])
            sent_by = time.time()
            # Its token is due within its budget (by 20 ms and the time it took to queue it): it is deferred for it.
            while len(recorder.of(MessageDeferred)) <= n:
                assert time.time() - sent_at < 5, "not deferred"
                time.sleep(0.005)
            deferred = recorder.of(MessageDeferred)[n]
            # Up to 10 % of jitter would have carried it up to 0.08 s past its budget (in 4 of 5 tries).
            assert deferred.until <= sent_by + budget + 0.001, f"back {deferred.until - sent_at - budget:.3f}s late"
            worker.drain()
            time.sleep(1)  # until a's next token is free
    assert len(smtp_server.received) == 4  # none spilled, and each through a when its token came


def test_spill_over_a_message_from_a_clock_ahead_gets_no_more_than_the_budget(
    configure, smtp_server, backup_smtp
) -> None:
    two_providers(
        configure,
        smtp_server,
        backup_smtp,
        {"strategy": "spill-over", "latency_budget": 0.2},
        {"a": {"rate_limit": "1/s"}},
    )
    providers, queue, config = candidates()
    assert admit("first", providers, queue, config).provider == "a"  # a's next token: 1 s away
    message = envelope_of(EmailMessage("ahead", "b", None, ["x@example.com"]))
    # Queued on a web host whose clock is 100 s ahead: 100.2 s of budget left, read naively, so it would wait for a.
    ahead = Envelope(message.id, message.queue, message.mailer, time.time() + 100, message.message)
    started = time.monotonic()
    assert delivery.deliver_envelope(ahead, queue, config).provider == "b"
    assert time.monotonic() - started < 0.5 and len(backup_smtp.received) == 1


def test_spill_over_passes_a_provider_with_no_free_slot(configure, smtp_server, backup_smtp) -> None:
    two_providers(
        configure, smtp_server, backup_smtp, {"strategy": "spill-over"}, {"a": {"max_concurrency": 1}, "b": {}}
    )
    providers, queue, config = candidates()
    first = admit("m1", providers, queue, config)
    assert [first.provider, admit("m2", providers, queue, config).provider] == ["a", "b"]
    settle(first, "m1", config.provider("a"), "sent", config)
    assert admit("m3", providers, queue, config).provider == "a"


def test_failover_keeps_to_the_first_provider_at_its_limit(configure, smtp_server, backup_smtp) -> None:
    two_providers(configure, smtp_server, backup_smtp, {}, {"a": {"rate_limit": "1/s"}}, RATE_LIMIT_MAX_WAIT=0.25)
    providers, queue, config = candidates()
    assert admit("m1", providers, queue, config).provider == "a"
    later = admit("m2", providers, queue, config)
    assert (later.outcome, later.provider) == ("later", "a")  # a rate limit is not a failure: no failover


def test_failover_does_not_go_back_to_a_provider_passed_over_when_the_chosen_one_fails(
    configure, smtp_server, backup_smtp
) -> None:
    third = SMTPServer().start()
    try:
        nobody = {"BACKEND": "workers.smtp.EmailBackend", "OPTIONS": {"host": "127.0.0.1", "port": free_port()}}
        configure(
            providers={"a": smtp_server.mailer(), "b": nobody, "c": third.mailer()},
            queues={name: {"providers": ["a", "b", "c"], "max_retries": 0} for name in THREE_QUEUES},
            PROVIDERS={
                "a": {"failure_threshold": 1, "cooldown": 0.3},
                # Nothing listens: b fails, after a wait between its two tries that outlasts a's cooldown.
                "b": {"attempts": 2, "wait_min": 0.5, "wait_max": 0.5},
                "c": {},
            },
        )
        config = get_config()
        open_circuit("a", config)
        envelope = envelope_of(EmailMessage("m", "b", None, ["x@example.com"]))
        delivered = delivery.deliver_envelope(envelope, config.queues["default"], config)
        # a was passed over (its circuit open), b failed; a's cooldown has ended since, but the chain goes on to c,
        # as it always has: a's probe is a later message's.
        assert delivered.provider == "c"
        assert (len(smtp_server.received), len(third.received)) == (0, 1)
        assert provider_health()[0].state == "open"
    finally:
        third.stop()


def test_failover_refused_by_every_provider_asked_waits_for_the_one_passed_over(configure, smtp_server) -> None:
    configure(
        providers={"a": smtp_server.mailer(), "b": {"BACKEND": "tests.providers.RefusingBackend"}},
        queues={name: {"providers": ["a", "b"], "max_retries": 0} for name in THREE_QUEUES},
        PROVIDERS={"a": {"failure_threshold": 1, "cooldown": 30}, "b": {}},
    )
    config = get_config()
    open_circuit("a", config)
    envelope = envelope_of(EmailMessage("m", "b", None, ["x@example.com"]))
    # b refused it, and a was not asked: not a dead letter, but a deferral until a's circuit lets a probe through.
    with pytest.raises(DeliveryDeferred) as deferred:
        delivery.deliver_envelope(envelope, config.queues["default"], config)
    assert 29 < deferred.value.delay <= 30
    assert "refused by b; the others' circuits are open" in str(deferred.value)


@pytest.mark.parametrize("strategy", [{}, {"strategy": "weighted"}, {"strategy": "spill-over"}])
def test_a_spent_quota_hands_the_message_to_the_next_provider_under_every_strategy(
    configure, smtp_server, backup_smtp, strategy
) -> None:
    weights = {"weights": {"a": 1, "b": 0}} if strategy.get("strategy") == "weighted" else {}
    two_providers(configure, smtp_server, backup_smtp, strategy | weights, {"a": {"quota": "3/d"}})
    providers, queue, config = candidates()
    picks = [admit(f"m{n}", providers, queue, config) for n in range(5)]
    assert [pick.provider for pick in picks] == ["a", "a", "a", "b", "b"]
    assert picks[3].skipped == (("a", "quota"),)
    (a, _) = provider_health()
    assert (a.quota, a.quota_used, a.quota_left) == ("3/d", 3, 0)
    assert 0 < a.quota_resets_in <= 86400


def test_a_provider_whose_quota_is_spent_waits_for_the_next_day_when_it_is_the_only_one(configure, smtp_server) -> None:
    configure(providers={"a": smtp_server.mailer()}, PROVIDERS={"a": {"quota": "1/d"}})
    config = get_config()
    provider, queue = config.provider("a"), config.queues["default"]
    assert admit("m1", provider, queue, config).outcome == "go"
    spent = admit("m2", provider, queue, config)
    assert spent.outcome == "open"
    assert spent.wait == pytest.approx(86400 - time.time() % 86400, abs=2)  # midnight UTC


def test_a_quota_starts_again_whole_in_the_next_period(configure, smtp_server, backup_smtp) -> None:
    two_providers(configure, smtp_server, backup_smtp, {}, {"a": {"quota": "2/h"}})
    providers, queue, config = candidates()
    key = ProviderKeys.of(config.namespace, "a").quota
    # Two sends counted in the hour before this one: spent then, whole now.
    redis_client().hset(key, mapping={"window": int(time.time() // 3600) - 1, "used": 2})
    assert [admit(f"m{n}", providers, queue, config).provider for n in range(3)] == ["a", "a", "b"]
    assert redis_client().hget(key, "used") == b"2"


def quota_used(alias: str) -> int | None:
    return {each.provider: each for each in provider_health()}[alias].quota_used


def envelope_of(message: EmailMessage, **headers: str) -> Envelope:
    """``message`` as the worker reads it; ``headers`` go in past send_mail()'s checks, as an older client's could."""
    envelope = Envelope.from_message(message, queue="default", mailer="default")
    fields = {**envelope.message, "headers": {**envelope.message["headers"], **headers}}
    return Envelope(envelope.id, envelope.queue, envelope.mailer, envelope.created_at, fields)


def test_a_message_fault_found_before_sending_gives_the_quota_back(configure, smtp_server) -> None:
    configure(providers={"a": smtp_server.mailer()}, PROVIDERS={"a": {"quota": "5/d"}})
    config = get_config()
    broken = envelope_of(EmailMessage("broken", "b", None, ["x@example.com"]), **{"X-Bad": "a\nb"})
    with pytest.raises(PermanentDeliveryError):
        delivery.deliver_envelope(broken, config.queues["default"], config)
    # The provider never saw it: it must not use up the provider's day (nor count against it in any way).
    assert smtp_server.received == [] and quota_used("a") == 0
    delivery.deliver_envelope(
        envelope_of(EmailMessage("ok", "b", None, ["x@example.com"])), config.queues["default"], config
    )
    assert quota_used("a") == 1


def test_a_message_fault_the_esp_found_in_its_answer_still_counts(configure, postmark_api) -> None:
    configure(providers={"pm": postmark_api.mailer()}, PROVIDERS={"pm": {"quota": "5/d"}})
    config = get_config()
    postmark_api.responses.append((422, {"ErrorCode": 300, "Message": "Invalid 'From' address."}))
    refused = envelope_of(AnymailMessage("refused", "b", "shop@example.com", ["x@example.com"]))
    with pytest.raises(PermanentDeliveryError):
        delivery.deliver_envelope(refused, config.queues["default"], config)
    # The ESP had the message: its count of the day may well include it.
    assert len(postmark_api.requests) == 1 and quota_used("pm") == 1


def test_a_send_interrupted_while_it_sleeps_for_its_token_gives_the_quota_back(configure, smtp_server) -> None:
    configure(providers={"a": smtp_server.mailer()}, PROVIDERS={"a": {"quota": "5/d", "rate_limit": "1/s"}})
    config = get_config()
    queue = config.queues["default"]
    delivery.deliver_envelope(envelope_of(EmailMessage("first", "b", None, ["x@example.com"])), queue, config)
    outcome: dict[str, Any] = {}

    def second() -> None:
        try:
            delivery.deliver_envelope(envelope_of(EmailMessage("second", "b", None, ["x@example.com"])), queue, config)
        except BaseException as error:  # noqa: BLE001  (the test reports what escaped)
            outcome["raised"] = error

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.3)  # it sleeps about 1 s for a's next token, admitted and counted
    assert thread.is_alive()
    raise_thread_exception(thread.ident, TimeLimitExceeded)  # as Dramatiq's time limit does
    thread.join(10)
    assert isinstance(outcome.get("raised"), TimeLimitExceeded)
    assert len(smtp_server.received) == 1 and quota_used("a") == 1


@pytest.mark.parametrize(
    "limit, outcome", [({"max_concurrency": 1}, "busy"), ({"rate_limit": "1/s"}, "later")], ids=["busy", "later"]
)
def test_an_admission_that_waits_for_a_limit_uses_no_quota(configure, smtp_server, limit, outcome) -> None:
    configure(
        providers={"a": smtp_server.mailer()}, PROVIDERS={"a": {"quota": "5/d", **limit}}, RATE_LIMIT_MAX_WAIT=0.25
    )
    config = get_config()
    provider, queue = config.provider("a"), config.queues["default"]
    assert admit("m1", provider, queue, config).outcome == "go"
    # Nothing is reserved for a message told to wait: it is counted when it goes.
    assert [admit(f"m{n}", provider, queue, config).outcome for n in range(2, 5)] == [outcome] * 3
    assert quota_used("a") == 1


def test_a_send_given_back_is_taken_off_this_periods_count_only(configure, smtp_server) -> None:
    configure(providers={"a": smtp_server.mailer()}, PROVIDERS={"a": {"quota": "5/h"}})
    config = get_config()
    provider, queue = config.provider("a"), config.queues["default"]
    key = ProviderKeys.of(config.namespace, "a").quota
    admitted = admit("m1", provider, queue, config)
    # The hour turned between admission and settle: the send counted in the hour before; this one owes nothing.
    redis_client().hset(key, mapping={"window": int(time.time() // 3600) - 1, "used": 3})
    settle(admitted, "m1", provider, "aborted", config, unsent=True)
    assert redis_client().hmget(key, "window", "used")[1] == b"3"
    redis_client().delete(key)
    admitted = admit("m2", provider, queue, config)
    settle(admitted, "m2", provider, "aborted", config)  # interrupted mid-send: the provider may have it
    assert quota_used("a") == 1
    settle(admit("m3", provider, queue, config), "m3", provider, "aborted", config, unsent=True)
    assert quota_used("a") == 1


def test_a_delivered_envelope_is_not_sent_again_whichever_provider_would_be_picked(
    configure, smtp_server, backup_smtp
) -> None:
    two_providers(configure, smtp_server, backup_smtp, {"strategy": "weighted", "weights": {"a": 1, "b": 1}})
    providers, queue, config = candidates()
    first = admit("once", providers, queue, config, draw=0.9)
    assert first.provider == "b"
    settle(first, "once", config.provider("b"), "sent", config)
    again = admit("once", providers, queue, config, draw=0.1)  # would draw a
    assert (again.outcome, again.detail) == ("delivered", "b")


def test_next_draw_stays_in_the_unit_interval() -> None:
    draws = [next_draw() for _ in range(1000)]
    assert all(0 <= draw < 1 for draw in draws)
    # Evenly spread: every tenth of the interval holds about a tenth of them.
    assert all(90 <= sum(1 for draw in draws if tenth / 10 <= draw < (tenth + 1) / 10) <= 110 for tenth in range(10))


@pytest.mark.django_db(transaction=True)
def test_a_spill_over_message_costs_one_admission_even_when_it_spills(
    configure, smtp_server, backup_smtp, run_worker, monkeypatch
) -> None:
    two_providers(
        configure,
        smtp_server,
        backup_smtp,
        {"strategy": "spill-over", "latency_budget": 0.05},
        {"a": {"rate_limit": "1/m"}},
    )
    calls = Counter()
    real_admit = delivery.admit

    def counting_admit(envelope_id, *args, **kwargs):
        calls[envelope_id] += 1
        return real_admit(envelope_id, *args, **kwargs)

    monkeypatch.setattr(delivery, "admit", counting_admit)
    send_mass_mail([(f"m{i}", "b", None, ["a@example.com"]) for i in range(30)])
    with run_worker(threads=4) as worker:
        worker.drain()
    assert len(smtp_server.received) == 1 and len(backup_smtp.received) == 29
    assert set(calls.values()) == {1}, "a spilled message was admitted in one call"


@pytest.mark.django_db(transaction=True)
def test_routing_rules_and_per_message_overrides_pick_the_queue_whose_strategy_applies(
    configure, smtp_server, backup_smtp, run_worker
) -> None:
    configure(
        providers={"reliable": smtp_server.mailer(), "cheap": backup_smtp.mailer()},
        queues={
            "critical": {"providers": ["reliable", "cheap"]},
            "default": {"providers": ["reliable", "cheap"]},
            "bulk": {
                "providers": ["reliable", "cheap"],
                "strategy": "weighted",
                "weights": {"reliable": 0, "cheap": 1},
            },
        },
        ROUTES=[{"tag": "newsletter", "queue": "bulk"}],
    )
    newsletter = EmailMessage("news", "b", None, ["a@example.com"])
    newsletter.tags = ["newsletter"]
    override = EmailMessage("digest", "b", None, ["a@example.com"])
    override.queue = "bulk"
    reset = EmailMessage("reset", "b", None, ["a@example.com"])
    for message in (newsletter, override, reset):
        message.send()
    with run_worker() as worker:
        worker.drain()
    assert [m.parsed["Subject"] for m in smtp_server.received] == ["reset"]
    assert sorted(m.parsed["Subject"] for m in backup_smtp.received) == ["digest", "news"]


def test_the_distribution_shows_each_queues_strategy_and_shares(configure, smtp_server, backup_smtp) -> None:
    configure(
        providers={"a": smtp_server.mailer(), "b": backup_smtp.mailer()},
        queues={
            "critical": {"providers": ["a", "b"]},
            "default": {"providers": ["a", "b"], "strategy": "spill-over", "latency_budget": 1.5},
            "bulk": {"providers": ["a", "b"], "strategy": "weighted", "weights": {"a": 3, "b": 1}},
        },
    )
    config = get_config()
    # The same two providers serve every queue: each queue's shares count that queue's mail only.
    for queue, sends in (("bulk", "aaab"), ("default", "ab")):
        for n, alias in enumerate(sends):
            provider = config.provider(alias)
            settle(
                admit(f"{queue}{n}", provider, config.queues[queue], config), f"{queue}{n}", provider, "sent", config
            )
    spread = {each.queue: each for each in queue_distribution()}
    assert (spread["critical"].strategy, spread["critical"].latency_budget) == ("failover", None)
    assert (spread["default"].strategy, spread["default"].latency_budget) == ("spill-over", 1.5)
    bulk = spread["bulk"]
    assert [(share.provider, share.weight, share.target) for share in bulk.providers] == [
        ("a", 3, 0.75),
        ("b", 1, 0.25),
    ]
    assert [(share.sent_5m, share.share_5m) for share in bulk.providers] == [(3, 0.75), (1, 0.25)]
    assert [(share.sent_5m, share.share_5m) for share in spread["default"].providers] == [(1, 0.5), (1, 0.5)]
    assert [(share.sent_5m, share.share_5m) for share in spread["critical"].providers] == [(0, None), (0, None)]
    # The providers' own counters still count all of it.
    assert [(each.provider, each.sent_5m) for each in provider_health()] == [("a", 4), ("b", 2)]
