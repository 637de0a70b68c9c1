"""Bad input and limits: a corpus of hostile and malformed messages, each sent end to end.

One table, one row per hostile input, so the whole corpus reads at a glance. A row is either
refused by ``send()`` with an ``InvalidMessage`` subclass whose text names the problem (and nothing
is queued), or delivered by a real Dramatiq worker to a real SMTP server byte for byte as a
synchronous send of the same message through the same server. Either way the queue keeps flowing:
an ordinary message sent next is delivered, and nothing is left ready, in progress, delayed or dead.
A second table does the same for poison that no ``send()`` could produce, written straight into Redis:
it must be dead-lettered with a decode error while the worker goes on.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives, mailers
from dramatiq.errors import QueueJoinTimeout

from mailqueue import deadletters
from mailqueue.broker import actor_name
from mailqueue.client import redis_client
from mailqueue.envelope import Envelope
from mailqueue.exceptions import HeaderInjection, InvalidAddress, InvalidMessage, MessageTooLarge
from mailqueue.keys import QueueKeys
from mailqueue.monitoring import queue_depths
from tests.servers import ReceivedMail, SMTPServer

FROM = "from@example.com"
TO = ["to@example.com"]
TEN_MB = random.Random(3).randbytes(10 * 1024 * 1024)


def plain(
    subject: str = "s", body: str = "b", from_email: str = FROM, to: list[str] = TO, **kwargs: Any
) -> Callable[[], EmailMessage]:
    return lambda: EmailMessage(subject, body, from_email, to, **kwargs)


def attaching(filename: Any, content: Any, mimetype: str) -> Callable[[], EmailMessage]:
    def build() -> EmailMessage:
        message = EmailMessage("attached", "see attachment", FROM, TO)
        message.attach(filename, content, mimetype)
        return message

    return build


def inner_message(subject: str = "Inner", body: str = "inner body") -> EmailMessage:
    # A fixed Date/Message-ID: an attached message is rendered anew by each send, and both sends must match.
    headers = {"Date": "Mon, 23 Nov 2026 10:00:00 +0000", "Message-ID": "<inner@example.com>"}
    return EmailMessage(subject, body, "inner@example.com", ["b@example.com"], headers=headers)


def doubly_nested() -> EmailMessage:
    middle = inner_message("Middle", "middle body")
    middle.attach("inner.eml", inner_message(), "message/rfc822")
    message = EmailMessage("Fwd: Fwd", "two levels down", FROM, TO)
    message.attach("middle.eml", middle, "message/rfc822")
    return message


def thousand_recipients() -> EmailMessage:
    addresses = [f"user{i}@example.com" for i in range(1000)]
    return EmailMessage("to a thousand", "b", FROM, addresses[:400], cc=addresses[400:700], bcc=addresses[700:])


def html_alternative(content: bytes) -> Callable[[], EmailMessage]:
    def build() -> EmailMessage:
        message = EmailMultiAlternatives("alt", "text", FROM, TO)
        message.attach_alternative(content, "text/html")
        return message

    return build


@dataclass(frozen=True)
class Refused:
    error: type[InvalidMessage]
    names: str  # a regex the error text must match: what is wrong, and where


DELIVERED = None


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], EmailMessage]
    outcome: Refused | None
    settings: dict[str, Any] = field(default_factory=dict)


CORPUS = [
    # --- header injection ---------------------------------------------------------------------
    Case(
        "subject-crlf-bcc-injection",
        plain("Hi\r\nBcc: evil@example.com"),
        Refused(HeaderInjection, "Subject contains a line break"),
    ),
    Case(
        "subject-unicode-line-separator",
        plain("Hi\u2028Bcc: evil@example.com"),
        Refused(HeaderInjection, "Subject contains a line break"),
    ),
    # Text that merely looks like an encoded CRLF is text: sent as Django sends it, no header is forged.
    Case("subject-encoded-word-hiding-crlf", plain("=?utf-8?q?Hi=0D=0ABcc:_evil@example.com?="), DELIVERED),
    Case("subject-nul-and-escape-sequence", plain("a\x00b \x1b[31mred"), DELIVERED),
    Case(
        "from-crlf-bcc-injection",
        plain(from_email="from@example.com\r\nBcc: evil@example.com"),
        Refused(InvalidAddress, "from_email address .* contains a control character"),
    ),
    Case(
        "from-header-crlf-injection",
        plain(headers={"From": "from@example.com\nBcc: evil@example.com"}),
        Refused(HeaderInjection, "Header 'From' contains a line break"),
    ),
    Case(
        "reply-to-crlf-bcc-injection",
        plain(reply_to=["r@example.com\nBcc: evil@example.com"]),
        Refused(InvalidAddress, "reply_to address .* contains a control character"),
    ),
    Case(
        "reply-to-header-crlf-injection",
        plain(headers={"Reply-To": "r@example.com\r\nBcc: evil@example.com"}),
        Refused(HeaderInjection, "Header 'Reply-To' contains a line break"),
    ),
    Case(
        "reply-to-two-addresses-in-one-item",
        plain(reply_to=["r@example.com, evil@example.com"]),
        Refused(InvalidAddress, "reply_to address .* holds 2 addresses"),
    ),
    Case(
        "display-name-encoded-word-smuggling-an-address",
        plain(to=["=?utf-8?q?x=3Cevil=40attacker.com=3E=2C_y?= <ann@example.com>"]),
        Refused(InvalidAddress, "to address .* encoded-word"),
    ),
    Case(
        "header-name-smuggling-a-header",
        plain(headers={"X-A: b\r\nBcc": "evil@example.com"}),
        Refused(HeaderInjection, "Header name .* is not valid"),
    ),
    Case(
        "attachment-filename-crlf-injection",
        attaching("a.txt\r\nContent-Type: text/html", "x", "text/plain"),
        Refused(HeaderInjection, r"attachments\[0\] filename .* contains a line break"),
    ),
    # --- control characters in addresses ------------------------------------------------------
    Case(
        "to-nul-byte",
        plain(to=["to\x00@example.com"]),
        Refused(InvalidAddress, "to address .* contains a control character"),
    ),
    Case(
        "cc-delete-character",
        plain(cc=["c\x7fc@example.com"]),
        Refused(InvalidAddress, "cc address .* contains a control character"),
    ),
    Case(
        "bcc-tab-in-display-name",
        plain(bcc=["Ann\tSmith <ann@example.com>"]),
        Refused(InvalidAddress, "bcc address .* contains a control character"),
    ),
    Case(
        "to-next-line-in-display-name",
        plain(to=["Ann\x85Bcc: evil@example.com <ann@example.com>"]),
        Refused(InvalidAddress, "to address .* contains a control character"),
    ),
    Case(
        "reply-to-escape-sequence",
        plain(reply_to=["\x1b[2J <r@example.com>"]),
        Refused(InvalidAddress, "reply_to address .* contains a control character"),
    ),
    # --- international addresses --------------------------------------------------------------
    Case(
        "idn-domains-everywhere",
        plain(
            from_email='"Zoë" <zoe@exämple.de>',
            to=["Ünsal <u@bücher.example>", "x@xn--bcher-kva.example"],
            cc=["c@日本.example"],
            reply_to=["r@straße.example"],
        ),
        DELIVERED,
    ),
    Case(
        "non-ascii-local-part",
        plain(to=["ünsal@example.com"]),
        Refused(InvalidAddress, "to address .* non-ASCII"),
    ),
    # --- size ----------------------------------------------------------------------------------
    Case("10mb-attachment", attaching("big.bin", TEN_MB, "application/octet-stream"), DELIVERED),
    Case(
        "10mb-attachment-over-a-5mb-limit",
        attaching("big.bin", TEN_MB, "application/octet-stream"),
        Refused(MessageTooLarge, r"over MAILQUEUE\['MAX_MESSAGE_BYTES'\] = 5242880"),
        settings={"MAX_MESSAGE_BYTES": 5 * 1024 * 1024},
    ),
    Case("1000-recipients", thousand_recipients, DELIVERED),
    Case("5000-character-subject", plain("x" * 5000), DELIVERED),
    Case("2000-character-unbreakable-header", plain(headers={"X-Long": "y" * 2000}), DELIVERED),
    # --- bodies --------------------------------------------------------------------------------
    Case("empty-body-and-subject", plain("", ""), DELIVERED),
    Case("body-smuggling-smtp-end-of-data", plain(body="hi\r\n.\r\nMAIL FROM:<evil@example.com>\r\n.\r\n"), DELIVERED),
    Case("body-nul-and-lone-cr", plain(body="a\x00b\rc"), DELIVERED),
    Case(
        "body-lone-surrogate",
        plain(body="bad \udcff body"),
        Refused(InvalidMessage, "Body cannot be encoded as utf-8"),
    ),
    # --- attachments ---------------------------------------------------------------------------
    # Django sends text/* bytes that are not UTF-8 as application/octet-stream, unchanged.
    Case("text-attachment-invalid-utf8", attaching("bad.txt", b"\xff\xfe\x80 \xc3\x28", "text/plain"), DELIVERED),
    Case(
        "binary-attachment-every-byte",
        attaching("all.bin", bytes(range(256)) * 4, "application/octet-stream"),
        DELIVERED,
    ),
    Case(
        "html-alternative-invalid-utf8",
        html_alternative(b"<p>\xff\xfe</p>"),
        Refused(InvalidMessage, r"alternatives\[0\] content is bytes that are not UTF-8"),
    ),
    Case(
        "attachment-filename-path-traversal", attaching("../../etc/passwd", b"x", "application/octet-stream"), DELIVERED
    ),
    Case(
        "attachment-filename-quotes-and-semicolon",
        attaching('a"; name="evil.exe', b"x", "application/octet-stream"),
        DELIVERED,
    ),
    Case(
        "message-partial-attachment",
        attaching("part.eml", b"Subject: part 1 of 2\r\n\r\nbody", "message/partial"),
        Refused(InvalidMessage, r"attachments\[0\].*message/partial"),
    ),
    # --- nested message/rfc822 -----------------------------------------------------------------
    Case("nested-rfc822", attaching("fwd.eml", inner_message(), "message/rfc822"), DELIVERED),
    Case("nested-rfc822-twice", doubly_nested, DELIVERED),
    Case(
        "nested-rfc822-unicode",
        attaching("fwd.eml", inner_message("Grüße ✓", "Körper äöü"), "message/rfc822"),
        DELIVERED,
    ),
    Case(
        "nested-rfc822-raw-garbage-bytes",
        attaching("junk.eml", b"\xff\xfe\x00garbage\r\n\r\n", "message/rfc822"),
        DELIVERED,
    ),
    Case(
        "nested-rfc822-crlf-injection-in-its-subject",
        attaching("fwd.eml", inner_message("Hi\nBcc: evil@example.com"), "message/rfc822"),
        Refused(HeaderInjection, r"attachments\[0\].*Subject contains a line break"),
    ),
    Case(
        "nested-rfc822-lone-surrogate-in-its-body",
        attaching("fwd.eml", inner_message(body="bad \udcff body"), "message/rfc822"),
        Refused(InvalidMessage, r"attachments\[0\].*Body cannot be encoded"),
    ),
]


def _boundaries(data: bytes) -> bytes:
    """``data`` with each MIME boundary (random per rendering) replaced by its order of appearance."""
    for index, boundary in enumerate(dict.fromkeys(re.findall(rb'boundary="([^"]+)"', data))):
        data = data.replace(boundary, b"BOUNDARY-%d" % index)
    return data


def _headers(received: ReceivedMail) -> email.message.Message:
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(received.data)


def _idle() -> bool:
    """Nothing ready, in progress, delayed or dead on any queue."""
    return all((d.ready, d.in_progress, d.delayed, d.dead) == (0, 0, 0, 0) for d in queue_depths())


def _params(rows: list[Any]) -> list[Any]:
    return [pytest.param(row, id=row.id) for row in rows]


@pytest.mark.parametrize("case", _params(CORPUS))
def test_hostile_message(case: Case, configure, smtp_server: SMTPServer, run_worker) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, **case.settings)
    if case.outcome is not None:
        with pytest.raises(case.outcome.error, match=case.outcome.names):
            case.build().send()
        assert _idle()
        return

    assert case.build().send() == 1
    assert EmailMessage("ordinary", "after the hostile one", FROM, TO).send() == 1
    with run_worker(threads=1) as worker:  # one thread, one SMTP session: delivered in the order sent
        worker.drain()
    queued, ordinary = smtp_server.wait_for(2)
    assert _headers(ordinary)["Subject"] == "ordinary"
    assert smtp_server.handler.sessions == 1  # no failure made the worker drop its connection
    assert _idle()

    # The same message sent synchronously through the same provider, with the same Date/Message-ID.
    message = case.build()
    fixed = {name: _headers(queued)[name] for name in ("Date", "Message-ID")}
    message.extra_headers = {**fixed, **message.extra_headers}
    assert mailers["smtp"].send_messages([message]) == 1
    synchronous = smtp_server.wait_for(3)[2]
    assert (queued.mail_from, queued.rcpt_tos) == (synchronous.mail_from, synchronous.rcpt_tos)
    assert _boundaries(queued.data) == _boundaries(synchronous.data)


def test_the_whole_corpus_then_an_ordinary_message_on_one_queue(smtp_setup: SMTPServer, run_worker) -> None:
    for case in CORPUS:
        if case.outcome is not None and not case.settings:
            with pytest.raises(case.outcome.error):
                case.build().send()
    batch = []
    for case in CORPUS:
        if case.outcome is DELIVERED:
            message = case.build()
            message.extra_headers["X-Corpus"] = case.id
            batch.append(message)
    assert mailers["default"].send_messages(batch) == len(batch)
    assert EmailMessage("ordinary", "after the corpus", FROM, TO, headers={"X-Corpus": "ordinary"}).send() == 1
    with run_worker(threads=2) as worker:
        worker.drain()
    received = smtp_setup.wait_for(len(batch) + 1)
    assert sorted(_headers(mail)["X-Corpus"] for mail in received) == sorted(
        [case.id for case in CORPUS if case.outcome is DELIVERED] + ["ordinary"]
    )
    assert _idle()


# --- poison in Redis: what no send() produces, written straight into the queue ---------------
# An unknown envelope version is covered by test_delivery.py; Envelope.decode's errors one by one
# by test_envelope.py. These rows go end to end, including below the envelope: Dramatiq's own message.


def dramatiq_message(redis_id: str, args: list[Any]) -> bytes:
    """A well-formed Dramatiq message for the default queue's actor, carrying ``args``."""
    message = {
        "queue_name": "default",
        "actor_name": actor_name("default"),
        "args": args,
        "kwargs": {},
        "options": {"redis_message_id": redis_id},
        "message_id": redis_id,
        "message_timestamp": 0,
    }
    return json.dumps(message).encode()


def envelope(**changes: Any) -> dict[str, Any]:
    good = Envelope.from_message(EmailMessage("poison", "b", FROM, TO), queue="default", mailer="default").encode()
    return {**good, **changes}


def with_message_fields(**changes: Any) -> dict[str, Any]:
    good = envelope()
    return {**good, "message": {**good["message"], **changes}}


@dataclass(frozen=True)
class Poison:
    id: str
    data: Callable[[str], bytes]  # what is stored in Redis, given the Redis message id
    error_type: str
    reason: str  # a regex the dead letter's reason must match


POISONS = [
    Poison("garbage-bytes", lambda _: b"\x80\xfe not json at all", "DecodeError", "(?i)decode"),
    Poison("json-of-the-wrong-shape", lambda _: b'{"hello": "world"}', "DecodeError", "(?i)decode"),
    Poison(
        "no-envelope-argument",
        lambda rid: dramatiq_message(rid, []),
        "EnvelopeError",
        "(?i)envelope",
    ),
    Poison(
        "envelope-is-a-string",
        lambda rid: dramatiq_message(rid, ["\x80garbage"]),
        "EnvelopeError",
        "envelope is a str, not a mapping",
    ),
    Poison(
        "envelope-of-the-wrong-shape",
        lambda rid: dramatiq_message(rid, [{"v": 1, "id": "x"}]),
        "EnvelopeError",
        "missing or has a bad field",
    ),
    Poison(
        "envelope-message-without-body",
        lambda rid: dramatiq_message(rid, [envelope(message={"subject": "s"})]),
        "EnvelopeError",
        "malformed message: KeyError",
    ),
    Poison(
        "envelope-to-is-a-string",
        lambda rid: dramatiq_message(rid, [with_message_fields(to="a@example.com")]),
        "EnvelopeError",
        "malformed message: TypeError",
    ),
    Poison(
        "envelope-attachment-not-base64",
        lambda rid: dramatiq_message(rid, [with_message_fields(attachments=[{"mime": "!!"}])]),
        "EnvelopeError",
        "malformed message",
    ),
]


@pytest.mark.parametrize("poison", _params(POISONS))
def test_poison_in_redis_is_dead_lettered_and_the_queue_keeps_flowing(
    poison: Poison, smtp_setup: SMTPServer, run_worker, namespace: str
) -> None:
    keys = QueueKeys.of(namespace, "default")
    redis_client().hset(keys.messages, "poison-1", poison.data("poison-1"))
    redis_client().rpush(keys.ready, "poison-1")
    assert EmailMessage("ordinary", "after the poison", FROM, TO).send() == 1
    # Healthy rows drain in a fraction of a second; what a stuck queue holds, the asserts below report.
    with run_worker(threads=1) as worker, contextlib.suppress(QueueJoinTimeout):
        worker.drain(timeout=15)
    depth = next(d for d in queue_depths() if d.queue == "default")
    assert (depth.ready, depth.in_progress, depth.delayed, depth.dead) == (0, 0, 0, 1)
    (letter,) = deadletters.iter_dead("default")
    assert letter.error_type == poison.error_type
    assert re.search(poison.reason, letter.reason), letter.reason
    assert letter.attempts == 1
    assert [_headers(mail)["Subject"] for mail in smtp_setup.wait_for(1)] == ["ordinary"]
