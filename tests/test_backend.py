"""The queued backend: Django's sending APIs, one round trip, clear errors, nothing half-enqueued."""

from __future__ import annotations

import json
import warnings

import pytest
import redis
from anymail.message import AnymailMessage
from django.core.mail import (
    EmailMessage,
    EmailMultiAlternatives,
    MailerDoesNotExist,
    mail_admins,
    mailers,
    send_mail,
    send_mass_mail,
)
from django.db import connection, transaction
from django.utils.deprecation import RemovedInDjango2028Warning
from django.utils.translation import gettext_lazy

from mailqueue.exceptions import (
    BrokerUnavailable,
    HeaderInjection,
    InvalidAddress,
    InvalidMessage,
    MessageTooLarge,
    UnknownQueue,
    UnserializableMessage,
)
from mailqueue.keys import events_key
from mailqueue.models import OutboxMessage
from mailqueue.monitoring import queue_depths


class CountingSocket:
    """A real socket that counts the writes made on it (one per round trip)."""

    def __init__(self, sock) -> None:
        self._sock = sock

    def sendall(self, data, *args):
        CountingConnection.sent += 1
        return self._sock.sendall(data, *args)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class CountingConnection(redis.Connection):
    """A real Redis connection that counts round trips (writes to its socket)."""

    sent = 0

    def _connect(self):
        return CountingSocket(super()._connect())


def with_alternative(content: str | bytes, mimetype: str) -> EmailMultiAlternatives:
    message = EmailMultiAlternatives("s", "b", None, ["a@example.com"])
    message.alternatives.append((content, mimetype))
    return message


def with_attachment(filename: str, content: str, mimetype: str) -> EmailMessage:
    message = EmailMessage("s", "b", None, ["a@example.com"])
    message.attachments.append((filename, content, mimetype))
    return message


def ready(queue: str) -> int:
    return next(depth.ready for depth in queue_depths() if depth.queue == queue)


def queued_envelopes(redis_client, namespace: str, queue: str) -> list[dict]:
    ids = redis_client.lrange(f"{namespace}:{queue}", 0, -1)
    return [json.loads(redis_client.hget(f"{namespace}:{queue}.msgs", i))["args"][0] for i in ids]


@pytest.fixture
def counting(configure, smtp_server):
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_OPTIONS={"connection_class": CountingConnection})
    send_mail("warm up", "connect once", None, ["warm@example.com"])  # opens the pooled connection
    CountingConnection.sent = 0
    return CountingConnection


def test_send_mail_returns_one_after_one_round_trip(counting) -> None:
    assert send_mail("Hi", "body", "from@example.com", ["to@example.com"]) == 1
    assert counting.sent == 1
    assert ready("default") == 2


def test_the_message_logs_queued_events_ride_in_the_same_round_trip(counting, redis_client, namespace) -> None:
    datatuple = [(f"s{i}", "b", None, [f"r{i}@example.com"]) for i in range(50)]
    assert send_mass_mail(datatuple, using="bulk") == 50
    assert counting.sent == 1
    entries = redis_client.xrange(events_key(namespace))
    assert [json.loads(fields[b"e"])["s"] for _, fields in entries] == ["warm up"] + [f"s{i}" for i in range(50)]


def test_a_batch_is_one_round_trip(counting) -> None:
    datatuple = [(f"s{i}", "b", None, [f"r{i}@example.com"]) for i in range(500)]
    assert send_mass_mail(datatuple, using="bulk") == 500
    assert counting.sent == 1
    assert ready("bulk") == 500


def test_a_batch_with_idempotency_keys_queues_each_key_once(smtp_setup) -> None:
    def batch(keys: range) -> list[EmailMessage]:
        messages = []
        for key in keys:
            message = EmailMessage(f"s{key}", "b", None, [f"r{key}@example.com"])
            message.idempotency_key = f"order-{key}"
            messages.append(message)
        return messages

    assert mailers["bulk"].send_messages(batch(range(20))) == 20
    assert mailers["bulk"].send_messages(batch(range(10, 30))) == 20  # accepted, 10 of them already queued
    assert ready("bulk") == 30


def test_send_messages_takes_any_iterable(smtp_setup) -> None:
    messages = (EmailMessage(f"s{i}", "b", None, [f"r{i}@example.com"]) for i in range(3))
    assert mailers["default"].send_messages(messages) == 3
    assert ready("default") == 3


def test_every_django_sending_api_enqueues(smtp_setup, redis_client, namespace, settings) -> None:
    settings.ADMINS = ["ops@example.com"]
    assert send_mail("a", "b", None, ["x@example.com"], using="transactional") == 1
    assert EmailMessage("c", "d", None, ["y@example.com"]).send() == 1
    multi = EmailMultiAlternatives("e", "f", None, ["z@example.com"])
    multi.attach_alternative("<p>f</p>", "text/html")
    assert multi.send(using="bulk") == 1
    assert AnymailMessage("g", "h", None, ["w@example.com"], tags=["t"]).send() == 1
    mail_admins("boom", "traceback")
    assert [depth.ready for depth in queue_depths()] == [1, 3, 1]
    subjects = {envelope["message"]["subject"] for envelope in queued_envelopes(redis_client, namespace, "default")}
    assert subjects == {"c", "g", "[Django] boom"}


def test_messages_without_recipients_are_not_counted(smtp_setup) -> None:
    assert (
        mailers["default"].send_messages([EmailMessage("none", "b"), EmailMessage("one", "b", None, ["a@example.com"])])
        == 1
    )
    assert ready("default") == 1


def test_sent_messages_know_their_queue_id(smtp_setup, redis_client, namespace) -> None:
    message = EmailMessage("Hi", "body", None, ["a@example.com"])
    message.send()
    assert queued_envelopes(redis_client, namespace, "default")[0]["id"] == message.mailqueue_id


@pytest.mark.parametrize(
    ("build", "error", "fragment"),
    [
        (
            lambda: EmailMessage("s", "b", None, ["not-an-address"]),
            InvalidAddress,
            "to address 'not-an-address' is invalid",
        ),
        (
            lambda: EmailMessage("s", "b", None, ["a@example.com\nBcc: evil@example.com"]),
            InvalidAddress,
            "control character",
        ),
        (lambda: EmailMessage("s", "b", "bad@@example.com", ["a@example.com"]), InvalidAddress, "from_email"),
        (
            lambda: EmailMessage("s", "b", None, ["a@example.com"], cc=["two@example.com, three@example.com"]),
            InvalidAddress,
            "holds 2 addresses",
        ),
        (lambda: EmailMessage("s", "b", None, ["a@example.com"], reply_to=["x y"]), InvalidAddress, "reply_to"),
        (
            lambda: EmailMessage("Hi\nBcc: evil@example.com", "b", None, ["a@example.com"]),
            HeaderInjection,
            "Subject contains a line break",
        ),
        (
            lambda: EmailMessage("s", "b", None, ["a@example.com"], headers={"X-Evil": "v\r\nBcc: e@example.com"}),
            HeaderInjection,
            "X-Evil",
        ),
        (
            lambda: EmailMessage("s", "b", None, ["a@example.com"], headers={"Bad Name": "v"}),
            HeaderInjection,
            "Bad Name",
        ),
        (
            lambda: EmailMessage("s", "b", None, ["a@example.com"], headers={"Bcc": "e@example.com"}),
            InvalidMessage,
            "Bcc is not a valid",
        ),
        (
            lambda: EmailMessage("s", "b", None, ["a@example.com"], headers={"Reply-To": "nope"}),
            InvalidAddress,
            "Reply-To",
        ),
        (
            lambda: EmailMessage("s", "b", None, ["a@example.com"], headers={"X-Lazy": gettext_lazy("a\nb")}),
            HeaderInjection,
            "X-Lazy",
        ),
        (
            lambda: EmailMessage("s", "b", None, ["a@example.com"], headers={"X-Vt": "a\x0bBcc: e@example.com"}),
            HeaderInjection,
            "line break",
        ),
        (
            lambda: EmailMessage("Hi\u2028there", "b", None, ["a@example.com"]),
            HeaderInjection,
            "Subject contains a line break",
        ),
        (
            lambda: EmailMessage("s", "bad \udcff body", None, ["a@example.com"]),
            InvalidMessage,
            "Body cannot be encoded as utf-8",
        ),
        (lambda: EmailMessage("s", "b", None, ["Smith, John <j@example.com>"]), InvalidAddress, "holds 2 addresses"),
        (lambda: EmailMessage("s", "b", None, ["Zo\udcff <z@example.com>"]), InvalidAddress, "is invalid"),
        (lambda: with_alternative("<p>x</p>", "html"), InvalidMessage, "alternatives\\[0\\] mimetype 'html'"),
        (
            lambda: with_attachment("evil\r\nX-Injected: 1.txt", "x", "text/plain"),
            HeaderInjection,
            "attachments\\[0\\] filename",
        ),
        (lambda: with_attachment("a.txt", "x", "textplain"), InvalidMessage, "attachments\\[0\\] mimetype"),
    ],
)
def test_bad_input_fails_at_send_time_with_a_clear_error(smtp_setup, build, error, fragment) -> None:
    with pytest.raises(error, match=fragment):
        build().send()
    assert ready("default") == 0


def test_common_display_names_are_accepted(smtp_setup) -> None:
    to = [
        '"J. Smith" <j@example.com>',
        '"Smith, John" <john@example.com>',
        "Zoë Ö <zoe@example.com>",
        "<bare@example.com>",
    ]
    assert send_mail("s", "b", None, to) == 1


def with_encoding(body: str, encoding: str) -> EmailMessage:
    message = EmailMessage("s", body, None, ["a@example.com"])
    message.encoding = encoding
    return message


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        # What Django's SMTP backend would refuse in the worker is refused here instead.
        (lambda: EmailMessage("s", "b", None, ["J. Smith <j@example.com>"]), "quote a display name"),
        (
            lambda: EmailMessage("s", "b", None, ["=?utf-8?q?x=3Cevil=40attacker.com=3E=2C_y?= <ann@example.com>"]),
            "encoded-word",
        ),
        (lambda: EmailMessage("s", "b", None, ["ünsal@example.com"]), "non-ASCII"),
        (lambda: with_encoding("€ not in latin-1", "iso-8859-1"), "Body cannot be encoded as iso-8859-1"),
        (lambda: with_encoding("b", "no-such-charset"), "not a known charset"),
        (lambda: with_attachment("bad\udcff.txt", "x", "text/plain"), "filename cannot be encoded"),
        (lambda: with_alternative(b"\xff\xfe not utf-8", "text/html"), "not UTF-8 text"),
    ],
)
def test_what_the_worker_could_not_render_is_refused_at_send_time(smtp_setup, build, fragment) -> None:
    with pytest.raises(InvalidMessage, match=fragment):
        build().send()
    assert ready("default") == 0


def test_bad_input_errors_are_value_errors_like_djangos(smtp_setup) -> None:
    with pytest.raises(ValueError):
        send_mail("s", "b", None, ["nope"])


def test_idn_and_display_name_addresses_are_accepted(smtp_setup) -> None:
    assert send_mail("s", "b", '"Zoë" <zoe@exämple.de>', ["Ünsal <u@bücher.example>", "x@xn--bcher-kva.example"]) == 1


def test_one_bad_message_enqueues_nothing_of_its_batch(smtp_setup) -> None:
    batch = [EmailMessage(f"s{i}", "b", None, [f"r{i}@example.com"]) for i in range(5)]
    batch.append(EmailMessage("bad", "b", None, ["broken"]))
    with pytest.raises(InvalidAddress):
        mailers["bulk"].send_messages(batch)
    assert ready("bulk") == 0


def test_unknown_mailer_alias_fails_at_send_time(smtp_setup) -> None:
    with pytest.raises(MailerDoesNotExist, match="nosuchmailer"):
        send_mail("s", "b", None, ["a@example.com"], using="nosuchmailer")


def test_unknown_queue_override_fails_at_send_time(smtp_setup) -> None:
    message = EmailMessage("s", "b", None, ["a@example.com"])
    message.queue = "nosuchqueue"
    with pytest.raises(UnknownQueue, match="'nosuchqueue', which is not configured"):
        message.send()


def test_unserializable_attachment_fails_at_send_time(smtp_setup) -> None:
    message = EmailMessage("s", "b", None, ["a@example.com"])
    message.attachments.append(("x.bin", object(), "application/octet-stream"))
    with pytest.raises(UnserializableMessage, match="attachments\\[0\\]"):
        message.send()


def test_oversized_message_fails_at_send_time(configure, smtp_server) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, MAX_MESSAGE_BYTES=100_000)
    message = EmailMessage("big", "b", None, ["a@example.com"])
    message.attach("big.bin", b"\0" * 100_000, "application/octet-stream")
    with pytest.raises(MessageTooLarge, match="over MAILQUEUE\\['MAX_MESSAGE_BYTES'\\] = 100000"):
        message.send()
    assert ready("default") == 0


def test_unreachable_redis_is_a_clear_error_when_configured_to_raise(configure, smtp_server) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL="redis://127.0.0.1:1/0", ON_BROKER_FAILURE="raise")
    with pytest.raises(BrokerUnavailable, match="nothing of this batch was queued"):
        send_mail("s", "b", None, ["a@example.com"])


def test_the_deprecated_fail_silently_still_silences_a_runtime_error(configure, smtp_server) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL="redis://127.0.0.1:1/0", ON_BROKER_FAILURE="raise")
    with pytest.warns(RemovedInDjango2028Warning, match="fail_silently"):
        assert send_mail("s", "b", None, ["a@example.com"], fail_silently=True) == 0


def test_fail_silently_is_the_backends_own_attribute(smtp_setup) -> None:
    with warnings.catch_warnings():
        # Django 6.1 warns when a backend leaves fail_silently to BaseEmailBackend's deprecated fallback.
        warnings.simplefilter("error")
        assert mailers["default"].fail_silently is False


@pytest.mark.parametrize("size", [1, 100], ids=["one message", "a batch"])
def test_a_command_redis_refuses_is_a_clear_error(configure, smtp_server, redis_client, namespace, size) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, ON_BROKER_FAILURE="raise")
    redis_client.set(f"{namespace}:bulk", "not a list")  # the ready list: RPUSH gets WRONGTYPE
    datatuple = [(f"s{i}", "b", None, [f"r{i}@example.com"]) for i in range(size)]
    with pytest.raises(BrokerUnavailable, match="WRONGTYPE"):
        send_mass_mail(datatuple, using="bulk")
    redis_client.delete(f"{namespace}:bulk")
    send_mass_mail(datatuple, using="bulk")  # the thread's connection is usable again
    assert ready("bulk") == size


@pytest.mark.django_db(transaction=True)
def test_unreachable_redis_keeps_the_mail_in_the_outbox(configure, smtp_server) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL="redis://127.0.0.1:1/0", ON_COMMIT=False)
    message = EmailMessage("s", "b", None, ["a@example.com"])
    assert message.send() == 1
    kept = OutboxMessage.objects.get()
    assert kept.envelope_id == message.mailqueue_id
    assert kept.queue == "default"
    assert "Connection refused" in kept.reason


@pytest.mark.django_db(transaction=True)
def test_when_the_outbox_database_fails_too_the_caller_gets_a_clear_error(configure, smtp_server) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL="redis://127.0.0.1:1/0", ON_COMMIT=False)
    table = OutboxMessage._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        with pytest.raises(BrokerUnavailable, match="The outbox database 'default' refused it too"):
            send_mail("s", "b", None, ["a@example.com"])
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_mail_is_enqueued_on_commit(smtp_setup) -> None:
    with transaction.atomic():
        assert send_mail("s", "b", None, ["a@example.com"]) == 1
        assert ready("default") == 0
    assert ready("default") == 1


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_transaction_enqueues_nothing(smtp_setup) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        send_mail("s", "b", None, ["a@example.com"])
        raise RuntimeError("rollback")
    assert ready("default") == 0


@pytest.mark.django_db(transaction=True)
def test_on_commit_can_be_turned_off(configure, smtp_server) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, ON_COMMIT=False)
    with transaction.atomic():
        send_mail("s", "b", None, ["a@example.com"])
        assert ready("default") == 1


@pytest.mark.django_db(transaction=True)
def test_on_commit_per_mailer_option(configure, smtp_server) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        mailers={"immediate": {"BACKEND": "mailqueue.backend.EmailBackend", "OPTIONS": {"on_commit": False}}},
    )
    with transaction.atomic():
        send_mail("s", "b", None, ["a@example.com"], using="immediate")
        assert ready("default") == 1


@pytest.mark.django_db(transaction=True)
def test_bad_input_inside_a_transaction_still_fails_at_send_time(smtp_setup) -> None:
    with pytest.raises(InvalidAddress), transaction.atomic():
        send_mail("s", "b", None, ["nope"])


@pytest.mark.django_db(transaction=True)
def test_redis_away_at_commit_keeps_the_mail_in_the_outbox(configure, smtp_server) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL="redis://127.0.0.1:1/0")
    message = EmailMessage("s", "b", None, ["a@example.com"])
    with transaction.atomic():
        assert message.send() == 1
        assert not OutboxMessage.objects.exists()
    assert OutboxMessage.objects.get().envelope_id == message.mailqueue_id


@pytest.mark.django_db(transaction=True)
def test_redis_away_at_commit_is_logged_and_other_commit_hooks_still_run(configure, smtp_server, caplog) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL="redis://127.0.0.1:1/0", ON_BROKER_FAILURE="raise")
    ran = []
    message = EmailMessage("s", "b", None, ["a@example.com"])
    with transaction.atomic():
        assert message.send() == 1
        transaction.on_commit(lambda: ran.append("later hook"))
    assert ran == ["later hook"]
    assert "1 message(s) accepted in a committed transaction could not be queued" in caplog.text
    assert message.mailqueue_id in caplog.text
