"""workers/dramatiq_redis.py: the one adapter to Dramatiq's private Redis broker code."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.mail import send_mail

from mailqueue.enqueue import READY_AT_OPTION
from mailqueue.exceptions import MailQueueImproperlyConfigured
from mailqueue.keys import QueueKeys, heartbeats_key, in_progress_key
from mailqueue.monitoring import overview
from mailqueue.signals import MessageDeadLettered
from workers import dramatiq_redis
from workers.actors import worker_broker
from workers.admission import AckTarget


def fetch_one(consumer):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            return message
    raise AssertionError("nothing was fetched")


@pytest.fixture
def fetched(smtp_setup) -> Iterator[tuple[Any, Any, Any]]:
    """One queued message, fetched by a real consumer of a WorkerBroker: (broker, consumer, message)."""
    send_mail("one", "b", None, ["a@example.com"])
    broker = worker_broker(fresh=True)
    consumer = broker.consume("default", prefetch=1, timeout=100)
    try:
        yield broker, consumer, fetch_one(consumer)
    finally:
        consumer.close()


@pytest.mark.parametrize("version", ["2.2.0", "2.2.1", "2.2.17"])
def test_the_dramatiq_releases_it_was_written_for_are_accepted(version: str) -> None:
    dramatiq_redis._check_version(version)


@pytest.mark.parametrize("version", ["2.1.9", "2.3.0", "3.0.0"])
def test_another_dramatiq_release_is_refused_naming_the_versions_that_work(version: str) -> None:
    with pytest.raises(MailQueueImproperlyConfigured, match=r"Dramatiq 2\.2\.x") as refused:
        dramatiq_redis._check_version(version)
    assert version in str(refused.value) and "pip install" in str(refused.value)


def test_ack_target_names_the_keys_dramatiq_itself_uses(fetched, redis_client, namespace) -> None:
    # The keys are built in mailqueue/keys.py; a real fetch by Dramatiq's consumer must use the same ones.
    broker, _, message = fetched
    target = dramatiq_redis.ack_target(message)
    assert target == AckTarget(
        in_progress=in_progress_key(namespace, broker.broker_id, "default"),
        messages=QueueKeys.of(namespace, "default").messages,
        heartbeats=heartbeats_key(namespace),
        redis_id=message.options["redis_message_id"],
        broker_id=broker.broker_id,
    )
    assert redis_client.smembers(target.in_progress) == {target.redis_id.encode()}
    assert redis_client.hexists(target.messages, target.redis_id)
    assert redis_client.zscore(target.heartbeats, broker.broker_id) is not None


def test_a_message_acknowledged_early_is_not_acknowledged_again(fetched, redis_client) -> None:
    broker, consumer, message = fetched
    target = dramatiq_redis.ack_target(message)
    assert target is not None
    dramatiq_redis.acknowledged_early(target)
    assert broker.acknowledged == {target.redis_id}
    consumer.ack(message)  # the consumer's own ack is skipped: the message is still "in progress" here
    assert broker.acknowledged == set()
    assert redis_client.smembers(target.in_progress) == {target.redis_id.encode()}


def test_ack_target_is_none_outside_a_worker_broker() -> None:
    assert dramatiq_redis.ack_target(None) is None


def test_an_undecodable_stored_message_is_dead_lettered_and_the_consumer_goes_on(
    smtp_setup, redis_client, namespace, recorder
) -> None:
    keys = QueueKeys.of(namespace, "default")
    redis_client.hset(keys.messages, "garbage-id", b"{not json")
    redis_client.rpush(keys.ready, "garbage-id")
    send_mail("after", "b", None, ["a@example.com"])
    broker = worker_broker(fresh=True)
    consumer = broker.consume("default", prefetch=2, timeout=100)
    try:
        message = fetch_one(consumer)
    finally:
        consumer.close()
    assert message.args[0]["message"]["subject"] == "after"
    assert redis_client.zscore(keys.dead, "garbage-id") is not None
    assert not redis_client.hexists(keys.messages, "garbage-id")
    announced = recorder.of(MessageDeadLettered)
    assert [(event.envelope_id, event.error_type) for event in announced] == [("garbage-id", "DecodeError")]


@pytest.mark.django_db(transaction=True)
def test_a_message_put_back_on_its_ready_list_is_stamped_with_when(fetched, redis_client, namespace) -> None:
    """Dramatiq puts a retried message back through broker.enqueue once its delay ran out: the operator's
    "oldest waiting" counts from then, not from its send_mail() a day ago."""
    broker, _, message = fetched
    a_day_ago = int((time.time() - 86400) * 1000)
    before = int(time.time() * 1000)
    broker.enqueue(message.copy(message_timestamp=a_day_ago))
    keys = QueueKeys.of(namespace, "default")
    stored = redis_client.hget(keys.messages, redis_client.lindex(keys.ready, 0))
    options = json.loads(stored)["options"]
    assert before <= options[READY_AT_OPTION] <= time.time() * 1000
    assert overview().queues[1].oldest_age < 5
    broker.enqueue(message.copy(message_timestamp=a_day_ago), delay=60_000)  # to the delay queue
    (delayed,) = redis_client.hvals(keys.delayed_messages)
    assert READY_AT_OPTION not in json.loads(delayed)["options"]
