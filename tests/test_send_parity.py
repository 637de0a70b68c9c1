"""Send-time parity with Django, by differential fuzzing over hostile fields.

Every generated message is either refused by ``send_mail()``'s checks with an ``InvalidMessage``
(a ``ValueError``), or it travels as the queue carries it (envelope, JSON, decode) and the worker's
SMTP backend puts on the wire exactly what Django's own SMTP backend puts there for the original
message: the same envelope sender and recipients, the same bytes (Date and Message-ID pinned to the
envelope's, the multipart boundary drawn from the same seed). So no message accepted at send time can
fail to render in the worker, and none is sent differently from how Django would send it.

The run is seeded. ``make test`` runs MAILQUEUE_PARITY_CASES (default 2,000) cases; set it to 100000 for
the long run described in docs/testing.md, and MAILQUEUE_PARITY_SEED to explore other corners.
"""

from __future__ import annotations

import email.policy
import os
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from anymail.message import AnymailMessage
from django.core.mail import EmailMessage, EmailMultiAlternatives, mailers
from django.utils.functional import lazystr

from mailqueue.broker import MESSAGE_ENCODER
from mailqueue.enqueue import encode
from mailqueue.envelope import Envelope
from mailqueue.exceptions import InvalidMessage
from mailqueue.validation import validate_message
from workers.rendering import render

CASES = int(os.environ.get("MAILQUEUE_PARITY_CASES", "2000"))
SEED = int(os.environ.get("MAILQUEUE_PARITY_SEED", "20261110"))

LONG_IDN = "ä" * 70 + ".com"  # a label over IDNA's 63 characters
LOCALS = ["ann", "o'brien+tag", "a.b", "x" * 64, "ünsal", "a..b", '"quoted local"', "", "a b"]
DOMAINS = [
    "example.com",
    "mail.example.co.uk",
    "exämple.de",
    "日本.example",
    "xn--bcher-kva.example",
    LONG_IDN,
    "exa\x85mple.com",
    "exa\x9bmple.com",
    "exa\u202emple.com",
    "[127.0.0.1]",
    "ex_ample.com",
    "-b-.com",
    "a" * 70 + ".com",
    "ä..com",
    "localhost",
    "",
    "exa\udcffmple.com",
]
NAMES = [
    "Ann",
    "Ann Smith",
    '"Smith, Ann"',
    "Zoë",
    "J. Smith",
    '"J. Smith"',
    "Ann\x9b",
    "Ann\u202e",
    "=?utf-8?q?x?=",
    "Ann\udcff",
    "a" * 80,
    "Ann (comment)",
    "",
    "x:",
    "Ann\x00",
]
ODD_ADDRESSES = [
    "x:; <y@z.com>",
    "undisclosed-recipients:;",
    "webmaster",
    "Webmaster <webmaster>",
    "a@example.com, b@example.com",
    "ann@example.com (Ann)",
    "<ann@example.com>",
    "ann@",
    "@example.com",
    "Ann <ann@example.com",
    " ann@example.com",
    "ann@example.com\n",
    lazystr("lazy@example.com"),
]
SUBJECTS = [
    "Your receipt 42",
    "Café au lait",
    "",
    "x" * 200,
    "word " * 30,
    "a\nb",
    "a\x00b",
    "\x9b",
    "\u202e rtl",
    "\udcff",
    "=?utf-8?q?encoded?=",
    "tab\there",
    lazystr("lazy subject"),
]
BODIES = ["Thanks.\n", "", "Grüße\n", "x" * 100, "a\r\nb\rc\x00", "\u2028", "\udcff", "emoji 📬\n", ".\r\n.\r\n"]
HEADER_NAMES = [
    "X-Tag",
    "X-Tag",
    "X" * 76,
    "X" * 77,
    "X" * 78,
    "X" * 79,
    "X" * 80,
    "X" * 100,
    "Message-ID",
    "Date",
    "date",
    "Subject",
    "Content-Type",
    "MIME-Version",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "content-disposition",
    "Sender",
    "Resent-To",
    "Resent-Date",
    "In-Reply-To",
    "References",
    "List-Unsubscribe",
    "Reply-To",
    "To",
    "From",
    "Cc",
    "X-Ü",
    "X Tag",
    "Bcc",
    "Keywords",
    "Comments",
]
HEADER_VALUES: list[Any] = [
    "v",
    "",
    " ",
    "x" * 80,
    "x " * 50,
    "Zoë",
    "<ä@example.com>",
    "<a@b>",
    "<1763947349.42.1@worker.example.com>",
    "not an id",
    "\x9b",
    "\u202e",
    "\udcff",
    "a\nb",
    "=?utf-8?q?x?=",
    "Tue, 24 Nov 2026 01:22:29 +0000",
    "garbage",
    "z@" + LONG_IDN,
    "Ann <a@exämple.com>",
    "a@example.com",
    "x:; <y@z.com>",
    "1.0",
    "text/html",
    "8bit",
    "(comment)",
    '"quoted"',
    "a" * 998,
    42,
    datetime(2026, 11, 24, 1, 22, 29, tzinfo=UTC),
    lazystr("lazy"),
]
SUBTYPES = ["plain", "html", "x-custom", "plain; x=1", "h\ntml", "h\udcfftml", "htmlé", "", "x" * 80, "html\x9b", "HTML"]
MIMETYPES = [
    "application/octet-stream",
    "text/plain",
    "text/html",
    "application/pdf",
    "image/png",
    "application/x\udcff",
    "application/é",
    "text/plain\r\nX-Injected: 1",
    "text/pl ain",
    "text/" + "x" * 80,
    "application/x;y=1",
    "APPLICATION/PDF",
    "text/plain; charset=latin-1",
    "application/x\u202e",
    "multipart/mixed",
    "message/rfc822",
]
FILENAMES: list[Any] = [
    "a.txt",
    "report.pdf",
    "my file.txt",
    "Grüße.txt",
    "a\udcff.txt",
    "../x",
    'a"b',
    "x" * 100,
    ("utf-8", "", "ä.txt"),
    "a\x9b.txt",
    "a\u202e.txt",
    "",
]
CONTENTS: list[Any] = [b"bytes", "text\n", "é\n", "\udcff", b"\xff\xfe", "", bytes(range(256)), b"Subject: x\n\nbody"]
ANYMAIL_VALUES: dict[str, list[Any]] = {
    "tags": [["welcome"], ["a\udcff"], ["\x9b"], ["Zoë"]],
    "metadata": [{"order": "42"}, {"k\udcff": "v"}, {"k": "x\udcff"}, {"k": ["a", {"b": "\u202e"}]}],
    "merge_global_data": [{"name": "Ann"}, {"name": "\udcff"}],
    "track_clicks": [True, False],
    "template_id": ["welcome", "t\udcff"],
    "esp_extra": [{"MessageStream": "outbound"}, {"x": "\udcff"}],
}


def pick(rng: random.Random, values: list[Any], usual: int = 1) -> Any:
    """Mostly one of the first ``usual`` values (the shapes real mail has), sometimes any of them."""
    return rng.choice(values[:usual] if rng.random() < 0.9 else values)


def address(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.03:
        return rng.choice(ODD_ADDRESSES)
    addr = f"{pick(rng, LOCALS, 2)}@{pick(rng, DOMAINS, 2)}"
    if roll < 0.5:
        return addr
    return f"{pick(rng, NAMES, 3)} <{addr}>"


def addresses(rng: random.Random, counts: list[int]) -> list[Any]:
    return [address(rng) for _ in range(rng.choice(counts))]


def hostile_message(rng: random.Random) -> EmailMessage:
    headers: dict[str, Any] = {}
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        headers[pick(rng, HEADER_NAMES, 2)] = pick(rng, HEADER_VALUES, 2)
    cls = AnymailMessage if rng.random() < 0.15 else EmailMultiAlternatives
    message = cls(
        subject=pick(rng, SUBJECTS, 2),
        body=pick(rng, BODIES, 2),
        from_email=address(rng),
        to=addresses(rng, [1, 1, 1, 2, 3]),
        cc=addresses(rng, [0, 0, 1]),
        bcc=addresses(rng, [0, 0, 1, 2]),
        reply_to=addresses(rng, [0, 0, 0, 1]),
        headers=headers,
    )
    if rng.random() < 0.15:
        message.content_subtype = pick(rng, SUBTYPES, 2)
    if rng.random() < 0.2:
        for _ in range(rng.choice([1, 2])):
            message.attach_alternative(pick(rng, CONTENTS, 2), pick(rng, MIMETYPES, 3))
    if rng.random() < 0.25:
        for _ in range(rng.choice([1, 1, 2])):
            # Straight into .attachments: attach() itself may refuse (or rewrite) some of these, as Django does.
            message.attachments.append((pick(rng, FILENAMES, 2), pick(rng, CONTENTS, 3), pick(rng, MIMETYPES, 4)))
    if isinstance(message, AnymailMessage):
        for name, values in ANYMAIL_VALUES.items():
            if rng.random() < 0.4:
                setattr(message, name, pick(rng, values, 1))
    return message


def through_the_queue(message: EmailMessage) -> tuple[EmailMessage, dict[str, Any]]:
    """What a worker rebuilds: validated, enveloped, encoded as Dramatiq's message, decoded, rebuilt."""
    validate_message(message)
    envelope = Envelope.from_message(message, queue="default", mailer="default")
    payload = MESSAGE_ENCODER.decode(encode(envelope).data)["args"][0]
    return Envelope.decode(payload).to_message(), dict(envelope.message["headers"])


def on_the_wire(backend: Any, message: EmailMessage, seed: int) -> tuple[str, list[str], bytes]:
    """(MAIL FROM, RCPT TO, DATA) as Django's SMTP backend computes them, the boundary drawn from ``seed``."""
    sender = backend.prep_address(message.from_email)
    recipients = [backend.prep_address(address) for address in message.recipients()]
    random.seed(seed)
    return sender, recipients, message.message(policy=email.policy.SMTP).as_bytes()


@pytest.fixture
def backends(settings: Any) -> tuple[Any, Any]:
    options = {"host": "127.0.0.1", "port": 25}
    settings.MAILERS = {
        "ours": {"BACKEND": "workers.smtp.EmailBackend", "OPTIONS": options},
        "django": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": options},
    }
    return mailers["ours"], mailers["django"]


def worker_wire(backend: Any, message: EmailMessage, seed: int) -> tuple[str, list[str], bytes]:
    """The worker's backend: its own render() shortcut where it applies, Django's rendering otherwise."""
    sender = backend.prep_address(message.from_email)
    recipients = [backend.prep_address(address) for address in message.recipients()]
    random.seed(seed)
    data = render(message)
    if data is None:
        random.seed(seed)
        data = message.message(policy=email.policy.SMTP).as_bytes()
    return sender, recipients, data


def test_every_message_is_refused_at_send_time_or_sent_exactly_as_django_sends_it(backends) -> None:
    ours, django = backends
    rng = random.Random(SEED)
    refused = accepted = 0
    stricter: dict[str, int] = {}
    for index in range(CASES):
        message = hostile_message(rng)
        if not message.recipients():
            continue
        try:
            queued, headers = through_the_queue(message)
        except InvalidMessage as error:
            refused += 1
            try:
                on_the_wire(django, message, index)
            except Exception:  # noqa: BLE001  (any failure: Django would not send it either)
                continue
            kind = str(error).split(" ", 1)[0]
            stricter[kind] = stricter.get(kind, 0) + 1
            continue
        accepted += 1
        # Django, sending the original with the Date and Message-ID the envelope fixed.
        pinned = {name: value for name, value in headers.items() if name not in message.extra_headers}
        message.extra_headers = {**pinned, **message.extra_headers}
        try:
            theirs = on_the_wire(django, message, index)
        except Exception as error:  # noqa: BLE001
            pytest.fail(f"case {index}: accepted, but Django refuses it ({error!r}): {message.__dict__!r}")
        try:
            mine = worker_wire(ours, queued, index)
        except Exception as error:  # noqa: BLE001
            pytest.fail(f"case {index}: accepted, but the worker cannot send it ({error!r}): {message.__dict__!r}")
        assert mine == theirs, f"case {index}: {message.__dict__!r}"
    # The corpus must exercise both sides, and the checks stay close to Django.
    # (``stricter`` counts, by field, the refusals Django would have sent: docs/guarantees.md says why each is refused.)
    assert refused > CASES // 10, (refused, accepted, stricter)
    assert accepted > CASES // 3, (refused, accepted, stricter)
