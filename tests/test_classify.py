"""workers.classify: one test per rule of its docstring, on the exceptions real providers raise.

SMTP errors come from Django's SMTP backend talking to a real aiosmtpd server that answers as scripted,
anymail errors from anymail's Postmark backend talking to the real local HTTP API of tests/servers.py.
A few errors no local server can provoke (a TimeoutError, a configuration error) are built directly.
"""

from __future__ import annotations

import datetime
import decimal
import re
import smtplib
from collections.abc import Callable
from typing import Any

import pytest
from anymail.exceptions import (
    AnymailAPIError,
    AnymailConfigurationError,
    AnymailInvalidAddress,
    AnymailRecipientsRefused,
    AnymailSerializationError,
    AnymailUnsupportedFeature,
)
from anymail.message import AnymailMessage
from django.core.mail import EmailMessage, mailers

from mailqueue.exceptions import DeliveryError, PermanentDeliveryError, ProviderRefused, TransientDeliveryError
from tests.servers import PostmarkAPI, SMTPServer, free_port
from workers.classify import TRANSIENT_HTTP_STATUSES, classify, describe, is_message_fault, kind_of, message_fault

DJANGO_SMTP = "django.core.mail.backends.smtp.EmailBackend"
INACTIVE = (
    "You tried to send to a recipient that has been marked as inactive.\n"
    "Found inactive addresses: {}.\n"
    "Inactive recipients are ones that have generated a hard bounce or a spam complaint."
)


def raised(send: Callable[[], object]) -> BaseException:
    """The exception ``send`` raises; the test fails if it raises none."""
    with pytest.raises(BaseException) as info:  # any type: which one the provider raises is the question
        send()
    return info.value


@pytest.fixture
def smtp(settings: Any, smtp_server: SMTPServer) -> SMTPServer:
    settings.MAILERS = {"smtp": smtp_server.mailer(DJANGO_SMTP)}
    return smtp_server


@pytest.fixture
def postmark(settings: Any, postmark_api: PostmarkAPI) -> PostmarkAPI:
    settings.MAILERS = {"postmark": postmark_api.mailer()}
    return postmark_api


def smtp_error(to: list[str] | None = None) -> BaseException:
    message = EmailMessage("Hi", "Body", "shop@example.com", to or ["ann@example.com"])
    return raised(lambda: mailers["smtp"].send_messages([message]))


def postmark_error(**attributes: Any) -> BaseException:
    message = AnymailMessage("Hi", "Body", "shop@example.com", ["ann@example.com"])
    for name, value in attributes.items():
        setattr(message, name, value)
    return raised(lambda: mailers["postmark"].send_messages([message]))


# --- SMTP: recipients ---------------------------------------------------------------------------------------


def test_every_recipient_refused_with_a_5xx_is_permanent(smtp: SMTPServer) -> None:
    smtp.handler.rcpt_replies = {"ann@example.com": "550 5.1.1 no such user", "bob@example.com": "553 5.1.3 bad"}
    error = smtp_error(["ann@example.com", "bob@example.com"])
    assert isinstance(error, smtplib.SMTPRecipientsRefused)
    assert kind_of(error) is PermanentDeliveryError


def test_recipients_refused_with_a_4xx_among_the_5xx_are_transient(smtp: SMTPServer) -> None:
    # The mailbox that is full today may take the message tomorrow: no recipient is lost by waiting.
    smtp.handler.rcpt_replies = {"ann@example.com": "550 5.1.1 no such user", "bob@example.com": "452 4.2.2 full"}
    error = smtp_error(["ann@example.com", "bob@example.com"])
    assert isinstance(error, smtplib.SMTPRecipientsRefused)
    assert kind_of(error) is TransientDeliveryError


def test_recipients_refused_with_no_codes_at_all_are_transient() -> None:
    assert kind_of(smtplib.SMTPRecipientsRefused({})) is TransientDeliveryError


# --- SMTP: sender and data ----------------------------------------------------------------------------------


def test_sender_refused_with_a_5xx_is_refused_by_this_provider(smtp: SMTPServer) -> None:
    smtp.handler.mail_reply = "553 5.7.1 sender not allowed"
    error = smtp_error()
    assert isinstance(error, smtplib.SMTPSenderRefused)
    assert kind_of(error) is ProviderRefused


def test_sender_refused_with_a_4xx_is_transient(smtp: SMTPServer) -> None:
    smtp.handler.mail_reply = "451 4.3.0 try again later"
    error = smtp_error()
    assert isinstance(error, smtplib.SMTPSenderRefused)
    assert kind_of(error) is TransientDeliveryError


def test_data_refused_with_a_5xx_is_refused_by_this_provider(smtp: SMTPServer) -> None:
    smtp.handler.replies.append("554 5.7.1 content rejected")
    error = smtp_error()
    assert isinstance(error, smtplib.SMTPDataError)
    assert kind_of(error) is ProviderRefused


def test_data_refused_with_a_4xx_is_transient(smtp: SMTPServer) -> None:
    smtp.handler.replies.append("451 4.3.0 local error")
    error = smtp_error()
    assert isinstance(error, smtplib.SMTPDataError)
    assert kind_of(error) is TransientDeliveryError


def test_other_smtp_replies_are_transient_even_with_a_5xx() -> None:
    # Only the sender and the content are this provider's verdict on the message; a 5xx at login is
    # about our account with the provider, which an operator fixes while the message waits.
    assert kind_of(smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials")) is TransientDeliveryError
    assert kind_of(smtplib.SMTPHeloError(554, b"go away")) is TransientDeliveryError


# --- anymail: API errors by HTTP status -----------------------------------------------------------------------


SIGNATURE = "The 'From' address you supplied (shop@example.com) is not a Sender Signature on your account."


@pytest.mark.parametrize("status", [400, 413, 415, 422])
def test_an_api_4xx_about_the_request_is_refused_by_this_provider(postmark: PostmarkAPI, status: int) -> None:
    # Postmark's 400 "Sender signature not found": about the account, another provider may send it.
    postmark.responses.append((status, {"ErrorCode": 400, "Message": SIGNATURE}))
    error = postmark_error()
    assert isinstance(error, AnymailAPIError)
    assert error.status_code == status
    assert kind_of(error) is ProviderRefused
    assert not is_message_fault(error)


@pytest.mark.parametrize(
    "code, text",
    [
        (300, "Invalid 'From' address: 'shop@example.com'."),
        (300, "Provide either email TextBody or HtmlBody or both."),
        (411, "Forbidden attachment type: 'evil.exe'."),
    ],
)
def test_an_esp_validating_this_message_and_refusing_it_is_a_permanent_message_fault(
    postmark: PostmarkAPI, code: int, text: str
) -> None:
    postmark.responses.append((422, {"ErrorCode": code, "Message": text}))
    error = postmark_error()
    assert isinstance(error, AnymailAPIError)
    assert kind_of(error) is PermanentDeliveryError
    wrapped = classify(error, provider="postmark", envelope_id="env-1")
    assert wrapped.message_fault
    assert text in str(wrapped)  # Postmark's own words name the field


def test_an_esp_error_code_counts_only_for_its_own_esp(postmark: PostmarkAPI) -> None:
    # ErrorCode 300 in the answer of an ESP that is not Postmark means nothing to us: a refusal.
    postmark.responses.append((422, {"ErrorCode": 300, "Message": "x"}))
    error = postmark_error()
    assert isinstance(error, AnymailAPIError)
    error.esp_name = "SomeOtherESP"
    assert not is_message_fault(error)
    assert kind_of(error) is ProviderRefused


@pytest.mark.parametrize("status", sorted(TRANSIENT_HTTP_STATUSES))
def test_an_api_4xx_about_the_provider_is_transient(postmark: PostmarkAPI, status: int) -> None:
    # 408/409/425/429: try again later; 401/403/404: credentials, account or URL, so failing over helps.
    postmark.responses.append((status, {"ErrorCode": 10, "Message": "not now"}))
    error = postmark_error()
    assert isinstance(error, AnymailAPIError)
    assert error.status_code == status
    assert kind_of(error) is TransientDeliveryError


def test_the_transient_4xx_statuses_are_exactly_the_documented_ones() -> None:
    assert frozenset({401, 403, 404, 408, 409, 425, 429}) == TRANSIENT_HTTP_STATUSES


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_an_api_5xx_is_transient(postmark: PostmarkAPI, status: int) -> None:
    postmark.responses.append((status, {"ErrorCode": 0, "Message": "server error"}))
    error = postmark_error()
    assert isinstance(error, AnymailAPIError)
    assert kind_of(error) is TransientDeliveryError


def test_an_api_error_without_a_status_is_transient(postmark: PostmarkAPI) -> None:
    # A 200 whose body anymail cannot read: the provider may or may not have the message.
    postmark.responses.append((200, {"unexpected": "shape"}))
    error = postmark_error()
    assert isinstance(error, AnymailAPIError)
    assert kind_of(error) is TransientDeliveryError
    assert kind_of(AnymailAPIError("no response at all")) is TransientDeliveryError


# --- anymail: the message itself ------------------------------------------------------------------------------


def test_every_recipient_refused_by_the_api_is_permanent(postmark: PostmarkAPI) -> None:
    postmark.responses.append((422, {"ErrorCode": 406, "Message": INACTIVE.format("ann@example.com")}))
    error = postmark_error()
    assert isinstance(error, AnymailRecipientsRefused)
    assert kind_of(error) is PermanentDeliveryError


@pytest.mark.parametrize("field, value", [("to", ["not an address"]), ("from_email", "a@b@c")])
def test_an_address_anymail_cannot_parse_is_permanent(postmark: PostmarkAPI, field: str, value: Any) -> None:
    error = postmark_error(**{field: value})
    assert isinstance(error, AnymailInvalidAddress)
    assert kind_of(error) is PermanentDeliveryError
    assert postmark.requests == []  # refused before anything was sent


@pytest.mark.parametrize("value", [decimal.Decimal("1.5"), object()])
def test_a_message_anymail_cannot_serialize_is_permanent(postmark: PostmarkAPI, value: Any) -> None:
    error = postmark_error(metadata={"order": value})
    assert isinstance(error, AnymailSerializationError)
    assert kind_of(error) is PermanentDeliveryError


def test_a_feature_the_provider_lacks_is_refused_by_this_provider_as_a_message_fault(postmark: PostmarkAPI) -> None:
    # Postmark cannot schedule; a provider further down the chain may. Postmark itself is not at fault.
    error = postmark_error(send_at=datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
    assert isinstance(error, AnymailUnsupportedFeature)
    assert kind_of(error) is ProviderRefused
    assert classify(error, provider="postmark", envelope_id="env-1").message_fault
    assert postmark.requests == []


def test_anymails_own_refusals_of_the_message_are_message_faults(postmark: PostmarkAPI) -> None:
    for error in (postmark_error(to=["not an address"]), postmark_error(metadata={"order": object()})):
        assert isinstance(error, (AnymailInvalidAddress, AnymailSerializationError))
        assert classify(error, provider="postmark", envelope_id="env-1").message_fault


def test_a_provider_fault_is_not_a_message_fault(postmark: PostmarkAPI) -> None:
    postmark.responses.append((503, {"ErrorCode": 0, "Message": "down"}))
    postmark.responses.append((422, {"ErrorCode": 406, "Message": INACTIVE.format("ann@example.com")}))
    for error in (postmark_error(), postmark_error(), TimeoutError("timed out")):
        assert not classify(error, provider="postmark", envelope_id="env-1").message_fault


# --- message faults the backend raises while rendering or addressing ------------------------------------------


@pytest.mark.parametrize(
    "change, field",
    [
        # The examples of issue 10, as they reach a worker that did not check them (an older envelope).
        (lambda m: setattr(m, "bcc", ["x@" + "ä" * 70 + ".com"]), "bcc address"),
        (lambda m: m.extra_headers.update({"Message-ID": "<ä@example.com>"}), "Header 'Message-ID'"),
        (lambda m: m.extra_headers.update({"X" * 79: ""}), "Header 'X{79}'"),
        (lambda m: setattr(m, "to", ["x:; <y@z.com>"]), "to address"),
    ],
)
def test_message_fault_names_the_field_django_cannot_send(smtp: SMTPServer, change, field: str) -> None:
    message = EmailMessage("Hi", "Body", "shop@example.com", ["ann@example.com"])
    change(message)
    error = raised(lambda: mailers["smtp"].send_messages([message]))
    assert not isinstance(error, (OSError, AnymailAPIError))  # Django fails before talking to the server
    reason = message_fault(message, mailers["smtp"])
    assert reason is not None
    assert re.search(field, reason), reason
    assert smtp.received == []


def test_message_fault_is_none_for_a_message_that_can_be_sent(smtp: SMTPServer) -> None:
    message = EmailMessage("Hi", "Body", "Zoë <shop@exämple.de>", ["ann@example.com"])
    assert message_fault(message, mailers["smtp"]) is None


# --- everything else ------------------------------------------------------------------------------------------


def test_a_provider_nobody_answers_for_is_transient(settings: Any) -> None:
    settings.MAILERS = {"smtp": {"BACKEND": DJANGO_SMTP, "OPTIONS": {"host": "127.0.0.1", "port": free_port()}}}
    error = smtp_error()
    assert isinstance(error, ConnectionRefusedError)
    assert kind_of(error) is TransientDeliveryError


@pytest.mark.parametrize(
    "error",
    [
        TimeoutError("timed out"),
        smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
        AnymailConfigurationError("Postmark needs a server_token"),  # loud in the log, but never loses mail
        RuntimeError("something nobody planned for"),
        KeyError("surprise"),
    ],
)
def test_errors_we_do_not_recognise_are_transient(error: BaseException) -> None:
    # A surprise costs a retry, never a message.
    assert kind_of(error) is TransientDeliveryError


# --- describe and classify ------------------------------------------------------------------------------------


def test_describe_names_each_refused_recipient_with_its_reply(smtp: SMTPServer) -> None:
    smtp.handler.rcpt_replies = {"ann@example.com": "550 5.1.1 no such user", "bob@example.com": "452 4.2.2 full"}
    error = smtp_error(["ann@example.com", "bob@example.com"])
    assert describe(error) == (
        "SMTPRecipientsRefused: ann@example.com: 550 5.1.1 no such user; bob@example.com: 452 4.2.2 full"
    )


def test_describe_gives_an_smtp_reply_its_code_and_decoded_text(smtp: SMTPServer) -> None:
    smtp.handler.mail_reply = "553 5.7.1 sender not allowed"
    assert describe(smtp_error()) == "SMTPSenderRefused: 553 5.7.1 sender not allowed"
    # Servers may send bytes that are not UTF-8: the reason is still one readable line.
    assert describe(smtplib.SMTPDataError(554, b"5.6.0 caf\xe9")) == "SMTPDataError: 554 5.6.0 caf\ufffd"


def test_describe_gives_any_other_error_its_type_and_text(postmark: PostmarkAPI) -> None:
    assert describe(TimeoutError("timed out")) == "TimeoutError: timed out"
    postmark.responses.append((503, {"ErrorCode": 0, "Message": "down for maintenance"}))
    reason = describe(postmark_error())
    assert reason.startswith("AnymailRequestsAPIError: ")
    assert "503" in reason and "down for maintenance" in reason


@pytest.mark.parametrize(
    "error, kind",
    [
        (smtplib.SMTPRecipientsRefused({"ann@example.com": (550, b"5.1.1 no such user")}), PermanentDeliveryError),
        (smtplib.SMTPSenderRefused(553, b"5.7.1 not allowed", "shop@example.com"), ProviderRefused),
        (ConnectionResetError("reset by peer"), TransientDeliveryError),
    ],
)
def test_classify_wraps_the_error_in_its_kind_with_what_an_operator_needs(
    error: BaseException, kind: type[DeliveryError]
) -> None:
    wrapped = classify(error, provider="smtp", envelope_id="env-1")
    assert type(wrapped) is kind
    assert str(wrapped) == describe(error)
    assert (wrapped.provider, wrapped.envelope_id, wrapped.cause) == ("smtp", "env-1", error)
