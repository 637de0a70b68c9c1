"""What an ESP receives through the queue is what a direct send would have sent (issue 10 §5).

Each case builds the same message twice. One copy is queued and delivered by a real worker through anymail's
Postmark backend; the other is sent directly through the same backend. The local Postmark API records both HTTP
requests, which must be equal: path, JSON body, and every header that carries meaning. mailqueue fixes Date and
Message-ID at send time, but only a MIME rendering carries them (SMTP, anymail's Amazon SES, a console or file
backend, Django's locmem): the tests below check both sides of that rule, and what ``message_sent`` reports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from anymail.message import AnymailMessage
from django.core import mail
from django.core.mail import EmailMessage, EmailMultiAlternatives, mailers

from mailqueue.envelope import Envelope, QueuedMessage
from mailqueue.exceptions import EnvelopeError
from mailqueue.keys import QueueKeys
from mailqueue.signals import MessageSent
from tests.servers import PostmarkAPI, RecordedRequest, SMTPServer

PROVIDER = "provider"
FROM = "Shop <shop@example.com>"
TO = ["Ann Smith <ann@example.com>"]
#: HTTP headers that depend on the connection, not on what was sent.
TRANSPORT_HEADERS = frozenset({"host", "connection", "accept-encoding"})

CALLER_HEADERS = {
    "Message-ID": "<order-42@shop.example.com>",
    "Date": "Tue, 01 Dec 2026 09:30:00 +0000",
    "X-Kind": "receipt",
}


def _batch() -> AnymailMessage:
    # merge_data: one message per recipient (Postmark's batch-with-templates API).
    return AnymailMessage(
        from_email=FROM,
        to=["ann@example.com", "Bo <bo@example.com>", "cy@example.com"],
        template_id=4242,
        merge_data={
            "ann@example.com": {"name": "Ann", "code": "A-1"},
            "bo@example.com": {"name": "Bo", "code": "B-2"},
            "cy@example.com": {"name": "Cy", "code": "C-3"},
        },
        merge_global_data={"product": "mailqueue", "price": "9.90"},
        merge_metadata={"ann@example.com": {"order": "1"}},
        tags=["welcome"],
        metadata={"campaign": "spring"},
    )


def _everything() -> AnymailMessage:
    message = AnymailMessage(
        "Everything at once",
        "Text body\n",
        FROM,
        TO,
        cc=["carl@example.com"],
        bcc=["audit@example.com"],
        reply_to=["Help <help@example.com>"],
        headers={"X-Kind": "receipt", "List-Unsubscribe": "<https://example.com/u?42>"},
        tags=["receipt"],
        metadata={"order": 42, "due": "2026-12-24"},
        esp_extra={"MessageStream": "outbound"},
        track_clicks=True,
        track_opens=False,
    )
    message.attach_alternative("<p>HTML body</p>", "text/html")
    message.attach("invoice.pdf", b"%PDF-1.4 \x00\xff", "application/pdf")
    return message


CASES: dict[str, Callable[[], EmailMessage]] = {
    "plain-django-message": lambda: EmailMessage("Plain", "Body\n", FROM, TO),
    "tags-and-metadata": lambda: AnymailMessage(
        "Tagged", "Body\n", FROM, TO, tags=["welcome"], metadata={"user_id": "42", "plan": "pro"}
    ),
    "template-with-merge-global-data": lambda: AnymailMessage(
        from_email=FROM, to=TO, template_id=4242, merge_global_data={"name": "Ann", "when": "today"}
    ),
    "merge-data-batch": _batch,
    "esp-extra": lambda: AnymailMessage("Stream", "Body\n", FROM, TO, esp_extra={"MessageStream": "broadcast"}),
    "tracking": lambda: AnymailMessage("Tracked", "Body\n", FROM, TO, track_clicks=True, track_opens=True),
    "tracking-off": lambda: AnymailMessage("Untracked", "Body\n", FROM, TO, track_clicks=False, track_opens=False),
    "caller-set-message-id-and-date": lambda: AnymailMessage("Own ids", "Body\n", FROM, TO, headers=CALLER_HEADERS),
    "caller-set-message-id-only": lambda: EmailMessage(
        "Own id", "Body\n", FROM, TO, headers={"Message-ID": "<only-id@shop.example.com>"}
    ),
    "everything": _everything,
}


def _meaningful(request: RecordedRequest) -> tuple[str, dict[str, str], Any]:
    headers = {name.lower(): value for name, value in request.headers.items() if name.lower() not in TRANSPORT_HEADERS}
    return request.path, headers, request.body


def _messages_sent(request: RecordedRequest) -> list[dict[str, Any]]:
    body = request.body
    return body.get("Messages", [body])


def _header_names(sent: dict[str, Any]) -> list[str]:
    return [header["Name"] for header in sent.get("Headers", [])]


@pytest.fixture
def postmark(configure: Callable[..., None], postmark_api: PostmarkAPI) -> PostmarkAPI:
    configure(providers={PROVIDER: postmark_api.mailer()})
    return postmark_api


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_queued_send_makes_the_same_request_as_a_direct_send(
    case: str, postmark: PostmarkAPI, run_worker: Callable[..., Any], recorder: Any
) -> None:
    make = CASES[case]
    make().send(using="transactional")
    with run_worker() as worker:
        worker.drain()
    (queued,) = postmark.wait_for(1)
    direct_message = make()
    assert mailers[PROVIDER].send_messages([direct_message]) == 1
    queued, direct = postmark.wait_for(2)
    assert _meaningful(queued) == _meaningful(direct)

    # Nothing added: the headers sent are the caller's own, on every message of a batch too.
    given = list(make().extra_headers)
    for sent in _messages_sent(queued):
        assert _header_names(sent) == given
    (sent_event,) = recorder.of(MessageSent)
    assert sent_event.provider == PROVIDER
    # No Message-ID went out unless the caller set one; the ESP's own id is the provider's message id.
    assert sent_event.message_id == make().extra_headers.get("Message-ID")
    assert sent_event.provider_message_id is not None


def test_each_message_of_a_batch_send_is_its_own(postmark: PostmarkAPI, run_worker: Callable[..., Any]) -> None:
    _batch().send(using="transactional")
    with run_worker() as worker:
        worker.drain()
    (request,) = postmark.wait_for(1)
    assert request.path == "/email/batchWithTemplates"
    sent = _messages_sent(request)
    assert [one["To"] for one in sent] == ["ann@example.com", "Bo <bo@example.com>", "cy@example.com"]
    assert [one["TemplateModel"]["code"] for one in sent] == ["A-1", "B-2", "C-3"]
    # Postmark gives each one its own Message-ID: none is set for it, let alone one shared by all three.
    assert all("Headers" not in one for one in sent)


def test_smtp_still_gets_the_date_and_message_id_fixed_at_send_time(
    configure: Callable[..., None],
    smtp_server: SMTPServer,
    run_worker: Callable[..., Any],
    recorder: Any,
    redis_client: Any,
    namespace: str,
) -> None:
    configure(providers={PROVIDER: smtp_server.mailer()})
    EmailMessage("Fixed", "Body\n", FROM, TO).send(using="transactional")
    (stored,) = redis_client.hvals(QueueKeys.of(namespace, "critical").messages)
    fixed = json.loads(stored)["args"][0]["message"]["headers"]
    with run_worker() as worker:
        worker.drain()
    (received,) = smtp_server.wait_for(1)
    parsed = received.parsed
    assert (parsed["Date"], parsed["Message-ID"]) == (fixed["Date"], fixed["Message-ID"])
    (sent_event,) = recorder.of(MessageSent)
    assert sent_event.message_id == fixed["Message-ID"]


def test_an_esp_after_an_smtp_failure_reports_no_message_id(
    configure: Callable[..., None],
    smtp_server: SMTPServer,
    postmark_api: PostmarkAPI,
    run_worker: Callable[..., Any],
    recorder: Any,
) -> None:
    # SMTP renders the message (with the fixed Message-ID) and then refuses it at DATA; Postmark takes it.
    configure(providers={"smtp": smtp_server.mailer(), "postmark": postmark_api.mailer()})
    smtp_server.handler.replies.extend(["451 4.3.0 try again later"] * 2)  # both of its in-attempt tries
    EmailMessage("Failed over", "Body\n", FROM, TO).send(using="transactional")
    with run_worker() as worker:
        worker.drain()
    (request,) = postmark_api.wait_for(1)
    assert "Headers" not in request.body
    (sent_event,) = recorder.of(MessageSent)
    assert (sent_event.provider, sent_event.message_id) == ("postmark", None)
    assert smtp_server.received == []


def test_any_django_backend_gets_the_fixed_headers_only_in_its_mime(
    configure: Callable[..., None], run_worker: Callable[..., Any], recorder: Any
) -> None:
    # Django's locmem backend renders the message (to check it can be) and keeps a copy: the copy's fields are the
    # caller's, as after a direct send; every rendering of it carries the same fixed Date and Message-ID.
    configure(providers={PROVIDER: {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}})
    EmailMultiAlternatives("Kept", "Body\n", FROM, TO, headers={"X-Kind": "kept"}).send(using="transactional")
    with run_worker() as worker:
        worker.drain()
    (kept,) = mail.outbox
    assert kept.extra_headers == {"X-Kind": "kept"}
    first, second = kept.message(), kept.message()
    assert first["Message-ID"] == second["Message-ID"]
    assert first["Date"] == second["Date"]
    (sent_event,) = recorder.of(MessageSent)
    assert sent_event.message_id == first["Message-ID"]


# --- the envelope: the marker, and envelopes queued before it -------------------------------------------------------


def _envelope(message: EmailMessage) -> Envelope:
    return Envelope.decode(Envelope.from_message(message, queue="critical", mailer="transactional").encode())


def test_the_envelope_says_which_headers_mailqueue_generated() -> None:
    assert list(_envelope(EmailMessage("s", "b", FROM, TO)).message["generated"]) == ["Date", "Message-ID"]
    own_id = _envelope(EmailMessage("s", "b", FROM, TO, headers={"message-id": "<x@example.com>"}))
    assert list(own_id.message["generated"]) == ["Date"]
    assert "generated" not in _envelope(EmailMessage("s", "b", FROM, TO, headers=CALLER_HEADERS)).message


def test_an_envelope_queued_before_the_marker_is_sent_as_it_was() -> None:
    # An envelope without "generated" (queued by an older sender): its headers are all sent, as before.
    envelope = _envelope(AnymailMessage("s", "b", FROM, TO, tags=["t"]))
    old_fields = {name: value for name, value in envelope.message.items() if name != "generated"}
    old = Envelope(envelope.id, envelope.queue, envelope.mailer, envelope.created_at, old_fields)
    rebuilt = Envelope.decode(old.encode()).to_message()
    assert list(rebuilt.extra_headers) == ["Date", "Message-ID"]
    assert rebuilt.extra_headers["Message-ID"] == envelope.message["headers"]["Message-ID"]


def test_a_queued_message_renders_its_fixed_headers_where_django_puts_its_own() -> None:
    original = EmailMessage("s", "b", FROM, TO, headers={"X-Kind": "k"})
    envelope = _envelope(original)
    rebuilt = envelope.to_message()
    assert isinstance(rebuilt, QueuedMessage)
    assert rebuilt.extra_headers == {"X-Kind": "k"}
    assert rebuilt.sent_message_id() is None  # not rendered yet: nothing went out
    names = [name for name, _ in rebuilt.message().items()]
    original.extra_headers = {**envelope.message["headers"]}
    assert names == [name for name, _ in original.message().items()]
    assert rebuilt.sent_message_id() == envelope.message["headers"]["Message-ID"]
    assert rebuilt.extra_headers == {"X-Kind": "k"}  # rendering left the fields as they were


@pytest.mark.parametrize(
    "generated",
    [["X-Other"], ["From"], "Date", [["Date"]], ["Message-ID", "Message-ID"], 7],
    ids=["unknown-header", "from", "a-string", "nested", "listed-twice", "a-number"],
)
def test_a_bad_generated_list_is_a_malformed_envelope(generated: Any) -> None:
    envelope = _envelope(EmailMessage("s", "b", FROM, TO))
    fields = {**envelope.message, "generated": generated}
    broken = Envelope(envelope.id, envelope.queue, envelope.mailer, envelope.created_at, fields)
    with pytest.raises(EnvelopeError):
        Envelope.decode(broken.encode()).to_message()
