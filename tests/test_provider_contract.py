"""One contract for every provider kind: a message sent through the queue arrives as a direct send would.

As Django's tests/mail/test_backends.py shares one mixin across its backends, ``ProviderContract`` holds
the tests and each subclass names a provider kind: Django's SMTP backend and ``workers.smtp.EmailBackend``
against a real aiosmtpd server, anymail's Postmark backend against the real local HTTP API. Each test
sends through the queue (send_mail -> Redis -> a real Dramatiq worker -> the provider), then sends the
same messages directly through the same backend, with the Date and Message-ID the queue fixed at send
time (an ESP is sent neither, so its direct send is the message as it is), and asserts both arrive alike:
the parsed MIME and the SMTP envelope, or the API's JSON payload.
The SMTP kinds must also arrive as a direct send through Django's own SMTP backend does, so they are the
same as each other.
"""

from __future__ import annotations

import email.message
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives, mailers, send_mail

from tests.mime import structure
from tests.servers import PostmarkAPI, SMTPServer

#: The MAILERS alias every queue delivers through.
PROVIDER = "provider"
#: Django's stock SMTP backend on the same server: what every SMTP kind must match.
DJANGO_SMTP = "django_smtp"
DJANGO_SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"

# Most messages are ASCII-addressed, as most mail is: workers.smtp renders those itself (workers.rendering),
# the rest it leaves to Django, so both of its paths are under contract.
FROM = "Shop <shop@example.com>"
TO = ["Ann Smith <ann@example.com>", "bob@example.com"]
#: Bytes no text codec round-trips: NUL, 0xFF, a lone UTF-8 continuation byte.
BINARY = bytes(range(256)) + b"\x00\xff\x80"


@dataclass(frozen=True)
class Arrival:
    """One message as the provider received it."""

    subject: str
    #: The Date and Message-ID it carried, to give the direct send the same.
    fixed: dict[str, str]
    #: Everything that must be equal between a queued and a direct send.
    content: Any


class ProviderContract:
    """The tests every provider kind passes; subclasses provide the server and read what it received."""

    #: MAILERS aliases the direct sends go through; each must receive what the queue delivered.
    direct: ClassVar[tuple[str, ...]] = (PROVIDER,)

    def mailers(self, server: Any) -> dict[str, dict[str, Any]]:
        """MAILERS entries: PROVIDER, and any other alias in ``direct``."""
        raise NotImplementedError

    def arrivals(self, server: Any, count: int) -> list[Arrival]:
        """The first ``count`` messages the server received, in order; fails if fewer arrive."""
        raise NotImplementedError

    @pytest.fixture
    def server(self) -> Iterator[Any]:
        """The provider's real server, started before the test and stopped after it."""
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def _configured(self, configure: Callable[..., None], server: Any) -> None:
        entries = self.mailers(server)
        configure(providers={PROVIDER: entries.pop(PROVIDER)}, mailers=entries)

    @pytest.fixture
    def sends_alike(self, server: Any, run_worker: Callable[..., Any]) -> Callable[..., None]:
        """Queue ``messages`` (or run ``queue``), deliver, then send each directly and compare."""

        def check(messages: list[EmailMessage], queue: Callable[[], object] | None = None) -> None:
            if queue is not None:
                queue()
            elif len(messages) == 1:
                messages[0].send(using="transactional")
            else:
                mailers["bulk"].send_messages(messages)  # one batch, one round trip
            with run_worker() as worker:
                worker.drain()
            queued = {arrival.subject: arrival for arrival in self.arrivals(server, len(messages))}
            assert sorted(queued) == sorted(str(message.subject) for message in messages)
            for message in messages:
                message.extra_headers = {**queued[str(message.subject)].fixed, **message.extra_headers}
            for round_, alias in enumerate(self.direct, start=1):
                assert mailers[alias].send_messages(messages) == len(messages)
                received = self.arrivals(server, (round_ + 1) * len(messages))[round_ * len(messages) :]
                direct = {arrival.subject: arrival for arrival in received}
                for subject, arrival in queued.items():
                    assert arrival == direct[subject], f"{subject!r}: queued != direct through {alias}"

        return check

    # --- the contract ---------------------------------------------------------------------------------------

    def test_plain_text(self, sends_alike: Callable[..., None]) -> None:
        fields = ("Your receipt 42", "Thanks for your order.\nTotal: 42 EUR\n", FROM, TO)
        sends_alike([EmailMessage(*fields)], queue=lambda: send_mail(*fields, using="transactional"))

    def test_html_alternative(self, sends_alike: Callable[..., None]) -> None:
        message = EmailMultiAlternatives("Welcome", "Hello in text\n", FROM, TO)
        message.attach_alternative("<p>Hello in <b>HTML</b></p>\n", "text/html")
        sends_alike([message])

    def test_attachments_text_and_binary(self, sends_alike: Callable[..., None]) -> None:
        message = EmailMultiAlternatives("Your documents", "Three files attached.\n", FROM, TO)
        message.attach_alternative("<p>Three files attached.</p>", "text/html")
        message.attach("notes.txt", "first line\nsecond line\n", "text/plain")
        message.attach("report.bin", BINARY, "application/octet-stream")
        message.attach("invoice.pdf", b"%PDF-1.4 " + BINARY, "application/pdf")
        sends_alike([message])

    def test_an_attachment_with_a_non_ascii_filename(self, sends_alike: Callable[..., None]) -> None:
        message = EmailMessage("Your report", "Attached.\n", FROM, TO)
        message.attach("Grüße aus Köln.pdf", b"%PDF-1.4 " + BINARY, "application/pdf")
        sends_alike([message])

    def test_cc_bcc_and_reply_to(self, sends_alike: Callable[..., None]) -> None:
        message = EmailMessage(
            "Meeting notes",
            "See below.\n",
            FROM,
            ["ann@example.com"],
            cc=["Carl <carl@example.com>", "dora@example.com"],
            bcc=["audit@example.com"],
            reply_to=["Help Desk <help@example.com>"],
        )
        sends_alike([message])

    def test_non_ascii_subject_and_display_names(self, sends_alike: Callable[..., None]) -> None:
        message = EmailMessage(
            "Grüße aus Köln ✓ — café",
            "Ça va ? Ünïcödé body 📬\n",
            '"Zoë Straße" <zoe@example.com>',
            ["Ann Ünal <ann@example.com>"],
            cc=["Jürgen Groß <j@example.com>"],
            headers={"X-Note": "Grüße, and long enough to be folded by the SMTP policy " * 2},
        )
        sends_alike([message])

    def test_custom_headers(self, sends_alike: Callable[..., None]) -> None:
        headers = {
            "X-Kind": "receipt",
            "List-Unsubscribe": "<https://example.com/unsubscribe?u=42>",
        }
        sends_alike([EmailMessage("With headers", "Body\n", FROM, TO, headers=headers)])

    def test_a_batch_of_several_messages(self, sends_alike: Callable[..., None]) -> None:
        messages: list[EmailMessage] = []
        for i in range(5):
            message = EmailMultiAlternatives(f"Newsletter {i}", f"Issue {i}\n", FROM, [f"reader{i}@example.com"])
            if i % 2:
                message.attach_alternative(f"<h1>Issue {i}</h1>", "text/html")
            if i == 3:
                message.attach("issue.pdf", BINARY, "application/pdf")
            messages.append(message)
        sends_alike(messages)


# --- SMTP kinds -------------------------------------------------------------------------------------------------


def _smtp_arrival(mail: Any) -> Arrival:
    parsed: email.message.EmailMessage = mail.parsed
    fixed = {name: str(parsed[name]) for name in ("Date", "Message-ID")}
    return Arrival(str(parsed["Subject"]), fixed, (mail.mail_from, sorted(mail.rcpt_tos), structure(parsed)))


class SMTPContract(ProviderContract):
    backend: ClassVar[str]

    @pytest.fixture
    def server(self) -> Iterator[SMTPServer]:
        server = SMTPServer().start()
        yield server
        server.stop()

    def mailers(self, server: SMTPServer) -> dict[str, dict[str, Any]]:
        return {PROVIDER: server.mailer(self.backend), DJANGO_SMTP: server.mailer(DJANGO_SMTP_BACKEND)}

    def arrivals(self, server: SMTPServer, count: int) -> list[Arrival]:
        received = server.wait_for(count)
        assert len(received) >= count, f"{len(received)} of {count} messages arrived"
        return [_smtp_arrival(mail) for mail in received[:count]]


class TestDjangoSMTPBackend(SMTPContract):
    backend = DJANGO_SMTP_BACKEND


class TestMailqueueSMTPBackend(SMTPContract):
    """workers.smtp renders plain messages itself: they must arrive as Django's backend sends them."""

    backend = "workers.smtp.EmailBackend"
    direct = (PROVIDER, DJANGO_SMTP)


# --- anymail ESP over HTTP --------------------------------------------------------------------------------------


def _postmark_arrival(request: Any) -> Arrival:
    # An ESP is sent the caller's headers only: mailqueue's fixed Date and Message-ID go out in MIME renderings alone.
    headers = {header["Name"]: header["Value"] for header in request.body.get("Headers", [])}
    assert "Date" not in headers and "Message-ID" not in headers
    return Arrival(request.body["Subject"], {}, (request.path, request.body))


class TestAnymailPostmarkBackend(ProviderContract):
    @pytest.fixture
    def server(self) -> Iterator[PostmarkAPI]:
        api = PostmarkAPI().start()
        yield api
        api.stop()

    def mailers(self, server: PostmarkAPI) -> dict[str, dict[str, Any]]:
        return {PROVIDER: server.mailer()}

    def arrivals(self, server: PostmarkAPI, count: int) -> list[Arrival]:
        requests = server.wait_for(count)
        assert len(requests) >= count, f"{len(requests)} of {count} requests arrived"
        return [_postmark_arrival(request) for request in requests[:count]]
