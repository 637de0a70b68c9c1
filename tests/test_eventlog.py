"""The message log's events: appended to the stream by the calls that record each step, in the contract's format."""

from __future__ import annotations

import time

import pytest
import redis
from django.core.mail import EmailMessage, send_mail, send_mass_mail

from mailqueue import deadletters, eventlog, outbox
from mailqueue.exceptions import LogEventError
from mailqueue.keys import events_key
from tests.redis_server import RedisServer
from tests.servers import free_port


def events(redis_client, namespace: str) -> list[dict]:
    """Every event on the stream, oldest first, read as the log writer reads them."""
    return [eventlog.decode(fields) for _, fields in redis_client.xrange(events_key(namespace))]


def of(stream: list[dict], envelope_id: str) -> list[dict]:
    return [event for event in stream if event["id"] == envelope_id]


def unreachable_smtp() -> dict:
    return {
        "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "OPTIONS": {"host": "127.0.0.1", "port": free_port(), "timeout": 2},
    }


def test_a_send_then_a_delivery_logs_queued_then_sent_with_the_contracts_fields(
    smtp_setup, run_worker, redis_client, namespace
) -> None:
    message = EmailMessage(
        "Your receipt " + "x" * 300,
        "body never logged",
        "Shop <shop@example.com>",
        ["Ann Example <ann@example.com>", "bob@example.org"],
        cc=["carol@example.net"],
        bcc=["dan@example.com"],
    )
    before = int(time.time() * 1000)
    assert message.send() == 1
    (queued,) = events(redis_client, namespace)
    with run_worker() as worker:
        worker.drain()
    assert smtp_setup.wait_for(1)
    stream = events(redis_client, namespace)
    assert [event["k"] for event in stream] == ["queued", "sent"]
    assert all(event["id"] == message.mailqueue_id for event in stream)
    assert queued["q"] == "default" and queued["m"] == "default"
    assert queued["s"] == ("Your receipt " + "x" * 300)[:255]
    assert queued["f"] == "shop@example.com"
    assert queued["to"] == ["ann@example.com", "bob@example.org"]
    assert queued["cc"] == ["carol@example.net"] and queued["bcc"] == ["dan@example.com"]
    assert before <= queued["c"] <= queued["t"] + 1 and queued["t"] <= int(time.time() * 1000)
    assert "body never logged" not in str(stream)
    sent = stream[1]
    assert sent["p"] == "smtp" and sent["n"] == 1
    # SMTP reports no provider id: the Message-ID that was sent stands for it.
    assert sent["pid"] == smtp_setup.received[0].parsed["Message-ID"]
    assert sent["t"] >= queued["t"]


def test_the_queued_event_counts_the_encoded_size(smtp_setup, redis_client, namespace) -> None:
    send_mail("size", "b" * 5000, None, ["a@example.com"])
    (queued,) = events(redis_client, namespace)
    (data,) = redis_client.hvals(f"{namespace}:default.msgs")
    assert queued["z"] == len(data)


def test_a_batch_logs_one_queued_event_per_message_in_the_same_call(smtp_setup, redis_client, namespace) -> None:
    assert send_mass_mail([(f"s{i}", "b", None, [f"r{i}@example.com"]) for i in range(50)], using="bulk") == 50
    stream = events(redis_client, namespace)
    assert [event["s"] for event in stream] == [f"s{i}" for i in range(50)]
    assert {event["q"] for event in stream} == {"bulk"}


def test_an_idempotency_key_sent_twice_logs_one_queued_event(smtp_setup, redis_client, namespace) -> None:
    for _ in range(2):
        message = EmailMessage("once", "b", None, ["a@example.com"])
        message.idempotency_key = "order-42"
        message.send()
    assert [event["k"] for event in events(redis_client, namespace)] == ["queued"]


def test_failover_logs_the_failed_attempt_then_the_send(configure, smtp_server, run_worker, redis_client, namespace):
    configure(providers={"primary": unreachable_smtp(), "secondary": smtp_server.mailer()})
    send_mail("failover", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    stream = events(redis_client, namespace)
    assert [event["k"] for event in stream] == ["queued", "attempt_failed", "sent"]
    failed, sent = stream[1], stream[2]
    assert failed["p"] == "primary" and failed["n"] == 1 and failed["tr"] is True
    assert "Connection refused" in failed["r"] or "ConnectionRefusedError" in failed["r"]
    assert sent["p"] == "secondary" and sent["n"] == 1


def test_a_permanent_refusal_logs_failed_then_dead(smtp_setup, run_worker, redis_client, namespace) -> None:
    smtp_setup.handler.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    send_mail("bounce", "b", None, ["gone@example.com"])
    with run_worker() as worker:
        worker.drain()
    stream = events(redis_client, namespace)
    assert [event["k"] for event in stream] == ["queued", "failed", "dead"]
    failed, dead = stream[1], stream[2]
    assert failed["p"] == "smtp" and failed["n"] == 1 and "550" in failed["r"]
    assert dead["p"] == "smtp" and dead["n"] == 1 and "550" in dead["r"]


def test_a_retry_logs_deferred_with_when_it_is_due(configure, smtp_server, run_worker, redis_client, namespace):
    configure(providers={"smtp": smtp_server.mailer()}, PROVIDERS={"smtp": {"attempts": 1}})
    smtp_server.handler.replies.append("451 busy")
    send_mail("second attempt", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    stream = events(redis_client, namespace)
    assert [event["k"] for event in stream] == ["queued", "attempt_failed", "deferred", "sent"]
    failed, deferred, sent = stream[1:]
    assert failed["tr"] is True and "451" in failed["r"]
    assert deferred["n"] == 1 and deferred["u"] >= deferred["t"] and "451" in deferred["r"]
    assert sent["n"] == 2


def test_exhausted_retries_log_dead_after_the_last_attempt(configure, run_worker, redis_client, namespace) -> None:
    configure(providers={"down": unreachable_smtp()})
    send_mail("never", "b", None, ["a@example.com"], using="bulk")  # bulk: max_retries=1
    with run_worker() as worker:
        worker.drain()
    kinds = [event["k"] for event in events(redis_client, namespace)]
    assert kinds == ["queued", "attempt_failed", "deferred", "attempt_failed", "dead"]
    assert events(redis_client, namespace)[-1]["n"] == 2


def test_a_requeue_logs_requeued_and_the_delivery_that_follows(smtp_setup, run_worker, redis_client, namespace):
    smtp_setup.handler.rcpt_replies["later@example.com"] = "550 not yet"
    send_mail("second chance", "b", None, ["later@example.com"])
    with run_worker() as worker:
        worker.drain()
        del smtp_setup.handler.rcpt_replies["later@example.com"]
        assert deadletters.requeue(deadletters.iter_dead("default")) == 1
        worker.drain()
    stream = events(redis_client, namespace)
    assert [event["k"] for event in stream] == ["queued", "failed", "dead", "requeued", "sent"]
    assert stream[3]["q"] == "default"
    assert len({event["id"] for event in stream}) == 1


def test_a_dead_letter_recorded_twice_logs_once(smtp_setup, redis_client, namespace) -> None:
    letter = deadletters.DeadLetter(
        id="e1", queue="default", reason="r", error_type="X", failed_at=time.time(), attempts=3, payload={}
    )
    deadletters.record(letter)
    deadletters.record(letter)  # the time limit interrupted the first write: it is carried out again
    assert [(event["k"], event["n"]) for event in events(redis_client, namespace)] == [("dead", 3)]


@pytest.mark.django_db(transaction=True)
def test_a_message_kept_in_the_outbox_is_logged_queued_and_relayed_when_relayed(
    configure, smtp_server, tmp_path, redis_client, namespace
) -> None:
    server = RedisServer(tmp_path).start()
    try:
        configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=server.url, ON_COMMIT=False)
        server.stop()
        message = EmailMessage("kept", "b", "shop@example.com", ["ann@example.com"])
        message.send()
        composed = int(time.time() * 1000)
        server.start()
        private = redis.Redis.from_url(server.url)
        assert private.xlen(events_key(namespace)) == 0  # the refused send appended nothing
        time.sleep(0.01)
        assert outbox.relay_batch() == 1
        stream = [eventlog.decode(fields) for _, fields in private.xrange(events_key(namespace))]
        assert outbox.relay_batch() == 0
    finally:
        server.stop()
    assert [event["k"] for event in stream] == ["queued", "relayed"]
    queued, relayed = stream
    assert queued["id"] == relayed["id"] == message.mailqueue_id
    assert queued["s"] == "kept" and queued["to"] == ["ann@example.com"] and queued["q"] == "default"
    assert queued["t"] <= composed < relayed["t"]  # queued when accepted, relayed when pushed
    assert relayed["q"] == "default"


def test_the_stream_stays_bounded_by_stream_maxlen(configure, smtp_server, redis_client, namespace) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, LOG={"STREAM_MAXLEN": 100})
    node = int(redis_client.config_get("stream-node-max-entries")["stream-node-max-entries"])
    for start in range(0, 2000, 200):
        send_mass_mail([(f"s{i}", "b", None, ["a@example.com"]) for i in range(start, start + 200)])
    length = redis_client.xlen(events_key(namespace))
    # MAXLEN ~ trims whole radix-tree nodes: the stream keeps at most one node beyond the bound.
    assert 100 <= length <= 100 + node
    assert events(redis_client, namespace)[-1]["s"] == "s1999"


def test_logging_disabled_appends_nothing(configure, smtp_server, run_worker, redis_client, namespace) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, LOG={"ENABLED": False})
    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 no"
    send_mail("one", "b", None, ["a@example.com"])
    send_mail("two", "b", None, ["gone@example.com"])
    with run_worker() as worker:
        worker.drain()
        assert deadletters.requeue(deadletters.iter_dead("default")) == 1
        worker.drain()
    assert len(smtp_server.wait_for(1)) == 1
    assert not redis_client.exists(events_key(namespace))


def test_decode_refuses_what_is_not_an_event() -> None:
    assert eventlog.decode({b"e": b'{"k":"queued","id":"x","t":1}'}) == {"k": "queued", "id": "x", "t": 1}
    for fields in ({b"x": b"{}"}, {b"e": b"not json"}, {b"e": b"[1]"}, {b"e": b'{"k":"sent","id":"x"}'}):
        with pytest.raises(LogEventError):
            eventlog.decode(fields)


@pytest.mark.parametrize(
    ("given", "plain"),
    [
        ("ann@example.com", "ann@example.com"),
        ("Ann <ann@example.com>", "ann@example.com"),
        ('"Doe, Ann" <ann@example.com>', "ann@example.com"),
        ("Ann <ann@example.com> ", "ann@example.com"),
    ],
)
def test_addresses_are_logged_without_display_names(given: str, plain: str) -> None:
    assert eventlog.plain_address(given) == plain
