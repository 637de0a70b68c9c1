"""Envelope fidelity: what a worker rebuilds renders to what a synchronous send would have sent."""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from email.message import MIMEPart

import anymail.backends
import pytest
from anymail.backends.base import BasePayload
from anymail.message import AnymailMessage
from django.core.mail import EmailMessage, EmailMultiAlternatives, mailers
from django.utils.translation import gettext_lazy, override

from mailqueue.anymail_attributes import ANYMAIL_ATTRIBUTES
from mailqueue.envelope import ENVELOPE_VERSION, Envelope
from mailqueue.exceptions import EnvelopeError, UnserializableMessage
from tests.mime import rendered

PNG = bytes(range(256)) * 4  # binary, every byte value


def plain() -> EmailMessage:
    return EmailMessage("Hello", "Plain body.\n", "from@example.com", ["to@example.com"])


def everything() -> EmailMultiAlternatives:
    message = EmailMultiAlternatives(
        subject="Grüße aus Köln – ünïcödé ✓",
        body="Körper mit Umlauten: äöü ß, and emoji 📬.\nSecond line.",
        from_email='"Zoë Ö." <zoe@exämple.de>',
        to=["Ünsal <uensal@example.com>", "plain@example.com"],
        cc=["cc@example.org"],
        bcc=["hidden@example.net"],
        reply_to=["Réply <reply@example.com>"],
        headers={"X-Campaign": "spring", "Message-ID": "<fixed-id@example.com>", "X-Unicode": "naïve"},
    )
    message.attach_alternative("<p>HTML <b>body</b> äöü</p>", "text/html")
    message.attach_alternative(b"binary alternative", "application/x-custom")
    message.attach("notes.txt", "text attachment ✓", "text/plain")
    message.attach("räksmörgås.bin", PNG, "application/octet-stream")
    message.attach("data.csv", b"a,b\n1,2\n", "text/csv")
    message.attach("latin1.txt", "caf\xe9".encode("latin-1"), "text/plain")  # not UTF-8: becomes octet-stream
    message.attach(("utf-8", "de", "grüße.txt"), "RFC 2231 filename", "text/plain")
    inline = MIMEPart()
    inline.set_content(PNG, maintype="image", subtype="png", disposition="inline", filename="logo.png")
    inline["Content-ID"] = "<logo@example.com>"
    message.attach(inline)
    return message


def html_only() -> EmailMessage:
    message = EmailMessage("HTML", "<h1>Hi</h1>", "from@example.com", ["to@example.com"])
    message.content_subtype = "html"
    message.encoding = "iso-8859-1"
    return message


def nested_rfc822() -> EmailMessage:
    inner = EmailMessage(
        "Inner",
        "inner body",
        "a@example.com",
        ["b@example.com"],
        headers={"Date": "Mon, 23 Nov 2026 10:00:00 +0000", "Message-ID": "<inner@example.com>"},
    )
    message = EmailMessage("Forward", "see attached", "from@example.com", ["to@example.com"])
    message.attach("forwarded.eml", inner, "message/rfc822")
    return message


def lazy_strings() -> EmailMessage:
    return EmailMessage(gettext_lazy("Password reset"), gettext_lazy("Hello"), "from@example.com", ["to@example.com"])


def long_lines() -> EmailMessage:
    return EmailMessage("Long", "x" * 2000 + "\n" + "ü" * 1200, "from@example.com", ["to@example.com"])


def explicit_date() -> EmailMessage:
    return EmailMessage(
        "Dated",
        "body",
        "from@example.com",
        ["to@example.com"],
        headers={"Date": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)},
    )


def attachment_only() -> EmailMessage:
    message = EmailMessage("No body", "", "from@example.com", ["to@example.com"])
    message.attach("only.pdf", b"%PDF-1.4 fake", "application/pdf")
    return message


CASES: dict[str, Callable[[], EmailMessage]] = {
    "plain": plain,
    "everything": everything,
    "html_only": html_only,
    "nested_rfc822": nested_rfc822,
    "lazy_strings": lazy_strings,
    "long_lines": long_lines,
    "explicit_date": explicit_date,
    "attachment_only": attachment_only,
}


def through_redis(message: EmailMessage) -> tuple[Envelope, EmailMessage]:
    """Envelope a message, pass it through JSON as Redis would, and rebuild it."""
    envelope = Envelope.from_message(message, queue="default", mailer="default")
    payload = json.loads(json.dumps(envelope.encode()))
    return envelope, Envelope.decode(payload).to_message()


def with_fixed_headers(message: EmailMessage, envelope: Envelope) -> EmailMessage:
    """The original message as a synchronous send would render it with the same Date/Message-ID."""
    fixed = {
        name: envelope.message["headers"][name]
        for name in ("Date", "Message-ID")
        if name in envelope.message["headers"]
    }
    given = {name.lower() for name in message.extra_headers}
    message.extra_headers = {**{k: v for k, v in fixed.items() if k.lower() not in given}, **message.extra_headers}
    return message


@pytest.mark.parametrize("name", CASES)
def test_rebuilt_message_renders_like_a_synchronous_send(name: str) -> None:
    envelope, rebuilt = through_redis(CASES[name]())
    original = with_fixed_headers(CASES[name](), envelope)
    assert rendered(rebuilt) == rendered(original)
    assert rebuilt.recipients() == original.recipients()


def test_lazy_strings_are_evaluated_in_the_language_active_at_send_time() -> None:
    with override("de"):
        envelope = Envelope.from_message(lazy_strings(), queue="default", mailer="default")
    assert envelope.message["subject"] == "Passwort zurücksetzen"


def test_date_and_message_id_are_fixed_at_send_time() -> None:
    envelope, rebuilt = through_redis(plain())
    first, second = rebuilt.message(), Envelope.decode(envelope.encode()).to_message().message()
    assert first["Date"] == second["Date"] == envelope.message["headers"]["Date"]
    assert first["Message-ID"] == second["Message-ID"] == envelope.message["headers"]["Message-ID"]


def test_a_given_message_id_is_kept() -> None:
    envelope, rebuilt = through_redis(everything())
    assert rebuilt.message()["Message-ID"] == "<fixed-id@example.com>"


def test_every_anymail_attribute_survives() -> None:
    message = AnymailMessage(
        "Template",
        "body",
        "from@example.com",
        ["to@example.com", "two@example.com"],
        tags=["welcome", "onboarding"],
        metadata={"user_id": 42, "plan": "pro", "price": Decimal("9.90")},
        merge_data={"to@example.com": {"name": "Ann"}, "two@example.com": {"name": "Bo"}},
        merge_global_data={"product": "mailqueue"},
        merge_metadata={"to@example.com": {"order": 1}},
        merge_headers={"to@example.com": {"List-Unsubscribe": "<mailto:u@example.com>"}},
        template_id="welcome-v2",
        esp_extra={"MessageStream": "outbound"},
        send_at=datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
        track_clicks=True,
        track_opens=False,
        envelope_sender="bounces@example.com",
    )
    _, rebuilt = through_redis(message)
    assert isinstance(rebuilt, AnymailMessage)
    for name in ANYMAIL_ATTRIBUTES:
        assert getattr(rebuilt, name) == getattr(message, name), name


def anymail_payload_classes() -> set[type[BasePayload]]:
    """Every payload class anymail ships: each backend's module imported, subclasses walked."""
    for module in pkgutil.iter_modules(anymail.backends.__path__):
        importlib.import_module(f"anymail.backends.{module.name}")
    found: set[type[BasePayload]] = set()
    pending = [BasePayload]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending += cls.__subclasses__()
    return found


def test_the_anymail_attribute_list_is_every_attribute_anymail_reads() -> None:
    defaults = vars(EmailMultiAlternatives())
    # anymail_status is what a backend writes after sending, not what it reads.
    set_by_anymail_message = {name for name in vars(AnymailMessage()) if name not in defaults} - {"anymail_status"}
    read_by_backends = {
        name
        for cls in anymail_payload_classes()
        for name, _combiner, _converter in (*cls.anymail_message_attrs, *cls.esp_message_attrs)
    }
    assert set_by_anymail_message <= set(ANYMAIL_ATTRIBUTES)
    assert read_by_backends == set(ANYMAIL_ATTRIBUTES)


def test_anymail_builds_the_same_payload_from_the_queued_message(settings) -> None:
    settings.MAILERS = {"anymail-test": {"BACKEND": "anymail.backends.test.EmailBackend"}}
    values = {
        "envelope_sender": "bounces@example.com",
        "esp_extra": {"MessageStream": "outbound", "$weird": [1, 2]},
        "merge_data": {"to@example.com": {"name": "Ann"}, "two@example.com": {"name": "Bo"}},
        "merge_global_data": {"product": "mailqueue", "when": date(2026, 12, 24)},
        "merge_headers": {"to@example.com": {"List-Unsubscribe": "<mailto:u@example.com>"}},
        "merge_metadata": {"to@example.com": {"order": 1}},
        "metadata": {"user_id": 42, "plan": "pro", "price": Decimal("9.90")},
        "send_at": datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
        "tags": ["welcome", "onboarding"],
        "template_id": "welcome-v2",
        "track_clicks": True,
        "track_opens": False,
    }
    assert set(values) == set(ANYMAIL_ATTRIBUTES), "give every attribute anymail reads a value here"
    headers = {"Date": "Tue, 01 Dec 2026 09:30:00 +0000", "Message-ID": "<fixed@example.com>"}
    message = AnymailMessage("T", "body", "from@example.com", ["to@example.com", "two@example.com"], headers=headers)
    for name, value in values.items():
        setattr(message, name, value)
    _, rebuilt = through_redis(message)
    backend = mailers["anymail-test"]
    backend.send_messages([message, rebuilt])
    assert rebuilt.anymail_test_params == message.anymail_test_params


def test_anymail_attributes_on_a_plain_django_message_survive() -> None:
    message = EmailMessage("Hi", "body", "from@example.com", ["to@example.com"])
    message.tags = ["newsletter"]
    message.send_at = date(2026, 12, 24)
    _, rebuilt = through_redis(message)
    assert rebuilt.tags == ["newsletter"]
    assert rebuilt.send_at == date(2026, 12, 24)


def test_payload_is_plain_json_with_a_version() -> None:
    envelope = Envelope.from_message(everything(), queue="bulk", mailer="bulk")
    data = envelope.encode()
    assert data["v"] == ENVELOPE_VERSION
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\x80garbage", "not a mapping"),
        ({"v": 99, "id": "x"}, "unknown envelope version 99"),
        ({"v": ENVELOPE_VERSION, "id": "x"}, "missing or has a bad field"),
        (
            {"v": ENVELOPE_VERSION, "id": "x", "queue": "q", "mailer": "m", "created_at": 1, "message": []},
            "not a mapping",
        ),
    ],
)
def test_unreadable_payloads_raise_one_envelope_error(payload: object, fragment: str) -> None:
    with pytest.raises(EnvelopeError, match=fragment) as caught:
        Envelope.decode(payload)
    assert caught.value.raw == payload


def test_malformed_message_fields_raise_envelope_error_keeping_the_cause() -> None:
    envelope = Envelope(id="x", queue="q", mailer="m", created_at=0, message={"subject": "no body"})
    with pytest.raises(EnvelopeError) as caught:
        envelope.to_message()
    assert isinstance(caught.value.cause, KeyError)


def test_file_objects_cannot_be_queued(tmp_path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("x")
    message = plain()
    with path.open("rb") as handle:
        message.attachments.append(("a.bin", handle, "application/octet-stream"))
        with pytest.raises(UnserializableMessage, match="attachments\\[0\\] content is a BufferedReader"):
            Envelope.from_message(message, queue="default", mailer="default")


def test_metadata_that_is_not_json_is_refused_with_its_path() -> None:
    message = AnymailMessage("Hi", "body", "from@example.com", ["to@example.com"], metadata={"when": object()})
    with pytest.raises(UnserializableMessage, match=r"metadata\['when'\] is a object"):
        Envelope.from_message(message, queue="default", mailer="default")


def test_user_dicts_that_look_like_type_tags_stay_dicts() -> None:
    metadata = {"x": {"$date": "2024-01-01"}, "y": {"$date": "soon"}, "$top": 1, "when": date(2024, 1, 1)}
    message = AnymailMessage("Hi", "body", "from@example.com", ["to@example.com"], metadata=metadata)
    _, rebuilt = through_redis(message)
    assert rebuilt.metadata == metadata
