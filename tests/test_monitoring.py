"""What the operator watches (mailqueue.monitoring.overview): read from a real Redis, in a fixed number of round trips."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import redis
from django.core.mail import EmailMessage, send_mail
from django.db import connection

from mailqueue.conf import get_config
from mailqueue.enqueue import encode, push
from mailqueue.envelope import Envelope
from mailqueue.models import OutboxMessage
from mailqueue.monitoring import (
    ProviderView,
    QueueDepth,
    desired_workers,
    overview,
)
from workers.admission import admit, settle

pytestmark = pytest.mark.django_db(transaction=True)


def send(count: int, queue_mailer: str = "default") -> None:
    for n in range(count):
        send_mail(f"s{n}", "body", "from@example.com", ["to@example.com"], using=queue_mailer)


def queue_view(name: str) -> Any:
    return next(view for view in overview().queues if view.queue == name)


def test_an_empty_queue_has_no_oldest_message_and_wants_no_workers(smtp_setup) -> None:
    view = queue_view("default")
    assert (view.ready, view.in_progress, view.delayed, view.dead) == (0, 0, 0, 0)
    assert view.oldest_enqueued_at is None and view.oldest_age is None
    assert view.desired_workers == 0
    assert view.pool == "default" and view.threads == 8


def test_the_oldest_waiting_message_is_dated_by_its_send_mail(smtp_setup) -> None:
    before = time.time()
    send(1, "bulk")
    time.sleep(0.3)
    send(4, "bulk")
    view = queue_view("bulk")
    assert view.ready == 5
    assert before - 0.05 <= view.oldest_enqueued_at <= before + 0.2
    assert 0.3 <= view.oldest_age < 5
    assert view.desired_workers == 1
    assert queue_view("critical").oldest_enqueued_at is None


def test_the_oldest_is_found_in_a_large_message_too(smtp_setup) -> None:
    before = time.time()
    send_mail("big", "x" * 3_000_000, "from@example.com", ["to@example.com"])
    assert before - 0.05 <= queue_view("default").oldest_enqueued_at <= time.time()


def test_throughput_counts_what_the_providers_accepted_for_each_queue(smtp_setup) -> None:
    config = get_config()
    provider = config.provider("smtp")
    for n in range(3):
        settle(admit(f"d{n}", provider, config.queues["default"], config), f"d{n}", provider, "sent", config)
    settle(admit("c0", provider, config.queues["critical"], config), "c0", provider, "sent", config)
    settle(admit("c1", provider, config.queues["critical"], config), "c1", provider, "failed", config)
    views = {view.queue: view for view in overview().queues}
    assert (views["default"].sent_1m, views["default"].sent_1h) == (3, 3)
    assert (views["critical"].sent_1m, views["critical"].sent_1h) == (1, 1)
    assert views["bulk"].sent_1h == 0
    smtp = overview().providers[0]
    assert (smtp.sent_5m, smtp.failed_5m) == (4, 1)


def test_rate_limit_headroom_and_sends_in_flight(configure, smtp_server) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        PROVIDERS={"smtp": {"rate_limit": {"rate": "1/m", "burst": 2}, "max_concurrency": 4}},
    )
    config = get_config()
    provider = config.provider("smtp")
    queue = config.queues["default"]
    (limit,) = overview().providers[0].rate_limits
    assert (limit.tokens, limit.wait) == (2.0, 0.0)
    first = admit("a", provider, queue, config)
    admit("b", provider, queue, config)
    view = overview().providers[0]
    assert view.in_flight == 2 and view.max_concurrency == 4
    (limit,) = view.rate_limits
    assert limit.tokens == 0.0
    assert 55 < limit.wait <= 60
    settle(first, "a", provider, "sent", config)
    assert overview().providers[0].in_flight == 1


def test_the_outbox_and_the_writer_are_in_the_overview(smtp_setup) -> None:
    assert (overview().outbox.waiting, overview().outbox.oldest_at) == (0, None)
    OutboxMessage.objects.create(envelope_id="e1", queue="default", redis_id="r1", data=b"{}")
    outbox = overview().outbox
    assert outbox.waiting == 1
    assert 0 <= outbox.oldest_age < 5
    data = overview().as_dict()
    assert set(data) == {"at", "refresh", "queues", "providers", "outbox", "writer"}
    assert data["writer"]["unwritten"] is not None


def test_one_overview_costs_the_same_round_trips_whatever_the_queues_hold(smtp_setup, monkeypatch) -> None:
    sends: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sends.append(1)
        original(self, command, check_health)

    def round_trips() -> int:
        sends.clear()
        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
        try:
            overview()
        finally:
            monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", original)
        return len(sends)

    round_trips()  # the connection's own set-up
    empty = round_trips()
    send(1)
    one = round_trips()
    send(2_000, "bulk")
    many = round_trips()
    assert empty == one == many <= 4


def view(state: str = "closed", mean_send: float | None = 0.5, quota_left: int | None = None) -> ProviderView:
    return ProviderView(
        provider="p",
        state=state,
        failures=0,
        probe_in=None,
        sent_5m=0,
        failed_5m=0,
        sent_1h=0,
        failed_1h=0,
        in_flight=0,
        max_concurrency=None,
        rate_limits=[],
        quota=None,
        quota_used=None,
        quota_left=quota_left,
        quota_resets_in=None,
        mean_send=mean_send,
    )


@pytest.fixture
def scaling(configure, smtp_server, backup_smtp):
    configure(
        providers={"fast": smtp_server.mailer(), "slow": backup_smtp.mailer()},
        queues={
            "default": {"providers": ["fast", "slow"]},
            "critical": {"providers": ["fast", "slow"], "strategy": "weighted", "weights": {"fast": 1, "slow": 1}},
            "bulk": {"providers": ["fast"]},
        },
        PROVIDERS={"slow": {"rate_limit": "10/s", "max_concurrency": 3}},
        POOLS={"all": {"queues": ["default", "critical", "bulk"], "threads": 4}},
        MONITOR={"SCALE_TARGET": 10},
    )
    return get_config()


def depth(ready: int = 0, in_progress: int = 0, delayed: int = 0) -> QueueDepth:
    return QueueDepth(queue="q", ready=ready, in_progress=in_progress, delayed=delayed, dead=0)


def wanted(config: Any, queue: str, depth_now: QueueDepth, views: list[ProviderView], sent_1m: int = 0) -> int:
    queue_config = config.queues[queue]
    providers = [config.provider(alias) for alias in queue_config.providers]
    return desired_workers(depth_now, sent_1m, queue_config, views, providers, config.pools["all"], config)


def test_desired_workers_clear_the_backlog_within_the_scale_target(scaling) -> None:
    assert wanted(scaling, "bulk", depth(), [view()]) == 0
    assert wanted(scaling, "bulk", depth(delayed=3), [view()]) == 1
    # 400 messages at 0.5 s in 10 s: 20 threads, 5 processes of 4 threads.
    assert wanted(scaling, "bulk", depth(ready=400), [view()]) == 5
    # Fetched (prefetched) but not yet sent is backlog too, no more.
    assert wanted(scaling, "bulk", depth(ready=392, in_progress=8), [view()]) == 5


def test_desired_workers_keep_up_with_the_mail_flowing_through(scaling) -> None:
    # 960 sent in the last minute at 0.5 s each: 8 threads busy all the time, 2 processes, though nothing waits.
    assert wanted(scaling, "bulk", depth(in_progress=8), [view()], sent_1m=960) == 3
    assert wanted(scaling, "bulk", depth(ready=400, in_progress=8), [view()], sent_1m=960) == 8


def test_desired_workers_settle_when_an_autoscaler_follows_them(scaling) -> None:
    """Each process prefetches and holds messages (in progress): the figure must not grow with the workers."""
    processes, ready = 2, 5000
    seen = []
    for _ in range(8):
        in_progress = min(ready, processes * 4 * 3)  # 4 threads each, prefetching twice as many
        seen.append(wanted(scaling, "bulk", depth(ready=ready - in_progress, in_progress=in_progress), [view()]))
        processes = seen[-1]
    assert seen[-1] == seen[-2] <= 63, seen


def test_desired_workers_stop_at_what_the_providers_limits_let_work(scaling) -> None:
    # "slow" alone (the first is open): 10/s x 0.5 s -> 6 in flight, capped at max_concurrency 3: one process.
    assert wanted(scaling, "default", depth(ready=400), [view("open"), view()]) == 1
    # Failover: the first usable provider alone decides, and it has no limit.
    assert wanted(scaling, "default", depth(ready=400), [view(), view()]) == 5
    # Weighted: both count; "fast" has no limit.
    assert wanted(scaling, "critical", depth(ready=400), [view(), view()]) == 5
    assert wanted(scaling, "critical", depth(ready=400), [view(quota_left=0), view()]) == 1
    # Every provider unusable: one worker stays to probe.
    assert wanted(scaling, "default", depth(ready=400), [view("open"), view("open")]) == 1


def test_an_outbox_database_that_cannot_be_read_leaves_the_redis_figures(smtp_setup, caplog) -> None:
    send(2)
    table = OutboxMessage._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        seen = overview()
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
    assert (seen.outbox.waiting, seen.outbox.oldest_at) == (None, None)
    assert next(view for view in seen.queues if view.queue == "default").ready == 2
    assert "outbox database 'default' cannot be read" in caplog.text


def test_a_requeued_message_waits_from_its_requeue_not_its_send_mail(smtp_setup) -> None:
    message = EmailMessage("old", "body", "from@example.com", ["to@example.com"])
    sent_long_ago = Envelope.from_message(message, queue="bulk", mailer="bulk")._replace(created_at=time.time() - 86400)
    push([encode(sent_long_ago, ready_at=time.time())])  # as deadletters.requeue puts it back
    assert queue_view("bulk").oldest_age < 5
    push([encode(sent_long_ago._replace(id="x" * 32, queue="critical"))])  # never requeued: waiting a day
    assert queue_view("critical").oldest_age > 86400 - 5


def test_the_senders_own_json_cannot_pass_for_the_waiting_time(smtp_setup) -> None:
    hostile = EmailMessage("metadata", "body", "from@example.com", ["to@example.com"])
    hostile.metadata = {"mailqueue_ready_at": 1, "message_timestamp": 1, "options": {"mailqueue_ready_at": 1}}
    before = time.time()
    hostile.send()
    assert 0 <= queue_view("default").oldest_age <= time.time() - before + 0.1


def test_a_retry_traceback_in_the_options_does_not_hide_the_stamp(smtp_setup, redis_client, namespace) -> None:
    message = EmailMessage("retried", "body", "from@example.com", ["to@example.com"])
    envelope = Envelope.from_message(message, queue="bulk", mailer="bulk")._replace(created_at=time.time() - 86400)
    encoded = encode(envelope, ready_at=time.time())
    data = orjson.loads(encoded.data)
    fake = '} "mailqueue_ready_at":1, {"options":{"mailqueue_ready_at":2}'
    data["options"] = {"traceback": fake * 500, **data["options"]}
    push([encoded._replace(data=orjson.dumps(data))])
    assert queue_view("bulk").oldest_age < 5
