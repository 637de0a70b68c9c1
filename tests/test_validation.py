"""mailqueue.validation: what rendering or Django's SMTP backend would reject is refused at send time.

What is accepted is checked against Django itself: an accepted address passes
Django's SMTP backend, an accepted message renders.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives, mailers
from django.utils.translation import gettext_lazy

from mailqueue.exceptions import HeaderInjection, InvalidAddress, InvalidMessage
from mailqueue.validation import validate_address, validate_addresses, validate_header, validate_message

ACCEPTED_ADDRESSES = [
    "ann@example.com",  # the plain fast path
    "Ann Smith <ann@example.com>",  # the display-name fast path
    '"Smith, Ann" <ann@example.com>',
    '"Ann A. Smith" <ann@example.com>',  # dots need quotes: the parser's path
    "Zoë <zoe@exämple.de>",  # non-ASCII name and IDN domain: the parser's path
    "o'brien+tag@sub.example.co.uk",
]

REFUSED_ADDRESSES = [
    ("ann@example.com\nBcc: victim@example.com", "control character"),
    ("ann@example.com\x00", "control character"),
    ("ann@example.com, bo@example.com", "holds 2 addresses"),
    ("=?utf-8?q?Ann?= <ann@example.com>", "encoded-word"),
    ("ann", "lacks|needs both a local part and a domain"),
    ("Ann A. Smith <ann@example.com>", "quote a display name"),
    ("<>", "invalid"),
]


@pytest.mark.parametrize("address", ACCEPTED_ADDRESSES)
def test_an_accepted_address_is_returned_as_text_and_djangos_smtp_backend_takes_it(address: str, settings) -> None:
    settings.MAILERS = {
        "smtp": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": {"host": "localhost"}}
    }
    assert validate_address(address, "to") == address
    mailers["smtp"].prep_address(address)  # raises ValueError for what Django would not send to


@pytest.mark.parametrize(("address", "reason"), REFUSED_ADDRESSES)
def test_an_address_that_is_not_one_mailbox_is_refused_with_its_reason(address: str, reason: str) -> None:
    with pytest.raises(InvalidAddress, match=reason) as caught:
        validate_address(address, "to")
    assert "to address" in str(caught.value)


def test_a_lazy_address_is_forced_to_text() -> None:
    assert validate_address(gettext_lazy("ann@example.com"), "from_email") == "ann@example.com"


def test_an_address_list_must_be_a_list_not_a_string() -> None:
    with pytest.raises(InvalidAddress, match="must be a list or tuple"):
        validate_addresses("ann@example.com", "to")
    assert validate_addresses(("ann@example.com", "bo@example.com"), "cc") == ["ann@example.com", "bo@example.com"]


@pytest.mark.parametrize("name", ["X Campaign", "X:Campaign", "", "X-Ünicode", 42])
def test_a_header_name_that_would_break_the_header_block_is_refused(name: object) -> None:
    with pytest.raises(HeaderInjection, match="Header name"):
        validate_header(name, "value")


@pytest.mark.parametrize("brk", ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
def test_every_line_break_the_email_package_knows_is_refused_in_a_header(brk: str) -> None:
    with pytest.raises(HeaderInjection, match="line break"):
        validate_header("X-Campaign", f"spring{brk}Bcc: victim@example.com")


def test_a_bcc_header_is_refused_with_the_argument_to_use() -> None:
    with pytest.raises(InvalidMessage, match='Use the "bcc" argument'):
        validate_header("BCC", "hidden@example.com")


def test_address_headers_are_checked_as_address_lists() -> None:
    validate_header("Reply-To", "Ann <ann@example.com>, bo@example.com")
    with pytest.raises(InvalidAddress, match="Header 'Reply-To'"):
        validate_header("Reply-To", "ann@")


def test_header_values_are_checked_as_rendered_text() -> None:
    validate_header("X-When", datetime(2026, 12, 1, tzinfo=UTC))
    with pytest.raises(InvalidMessage, match="cannot be encoded"):
        validate_header("X-Note", "lone \ud800 surrogate")


def message(**overrides: object) -> EmailMultiAlternatives:
    fields: dict[str, object] = {"subject": "s", "body": "b", "from_email": "from@example.com", "to": ["a@example.com"]}
    return EmailMultiAlternatives(**(fields | overrides))  # type: ignore[arg-type]


def reply_to_as_a_string() -> EmailMultiAlternatives:
    bad = message()
    bad.reply_to = "a@example.com"  # Django's constructor refuses a string; the attribute can still be set
    return bad


def test_a_valid_message_passes_and_renders() -> None:
    valid = message(cc=["cc@example.com"], reply_to=["r@example.com"], headers={"X-Campaign": "spring"})
    valid.attach_alternative("<p>hi</p>", "text/html")
    valid.attach("notes.txt", "text", "text/plain")
    validate_message(valid)
    valid.message().as_bytes()


@pytest.mark.parametrize(
    ("build", "error", "fragment"),
    [
        (lambda: message(subject="Hi\nBcc: victim@example.com"), HeaderInjection, "Subject contains a line break"),
        (lambda: message(subject="\ud800"), InvalidMessage, "Subject cannot be encoded"),
        (lambda: message(body="\udcff"), InvalidMessage, "Body cannot be encoded"),
        (reply_to_as_a_string, InvalidAddress, "reply_to must be a list"),
        (lambda: message(from_email="nobody"), InvalidAddress, "from_email address"),
        (lambda: message(bcc=["a@example.com", "b@"]), InvalidAddress, "bcc address"),
    ],
)
def test_a_bad_field_is_refused_naming_it(build, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        validate_message(build())


def test_an_unknown_encoding_is_refused() -> None:
    bad = message()
    bad.encoding = "no-such-charset"
    with pytest.raises(InvalidMessage, match="'no-such-charset' is not a known charset"):
        validate_message(bad)


def test_text_must_encode_in_the_messages_own_charset() -> None:
    latin = message(body="café")
    latin.encoding = "iso-8859-1"
    validate_message(latin)
    latin.attach_alternative("<p>☃</p>", "text/html")
    with pytest.raises(InvalidMessage, match="alternatives\\[0\\] content cannot be encoded as iso-8859-1"):
        validate_message(latin)


def test_non_utf8_text_bytes_fail_as_an_alternative_but_not_as_an_attachment() -> None:
    latin1 = "café".encode("latin-1")
    as_attachment = message()
    as_attachment.attach("menu.txt", latin1, "text/plain")  # Django sends it as application/octet-stream
    validate_message(as_attachment)
    as_attachment.message().as_bytes()
    as_alternative = message()
    as_alternative.attach_alternative(latin1, "text/html")
    with pytest.raises(InvalidMessage, match="alternatives\\[0\\] content is bytes that are not UTF-8 text"):
        validate_message(as_alternative)
    with pytest.raises(UnicodeDecodeError):
        as_alternative.message().as_bytes()


@pytest.mark.parametrize(
    ("attachment", "error", "fragment"),
    [
        (("a.txt", "x", "textplain"), InvalidMessage, "mimetype 'textplain' is not 'type/subtype'"),
        (("a.txt", "x", "text/plain\nX-Injected: 1"), InvalidMessage, "is not 'type/subtype'"),
        (("a\r\n.txt", "x", "text/plain"), HeaderInjection, "filename 'a\\\\r\\\\n.txt' contains a line break"),
        ((("utf-8", "", "a\n.txt"), "x", "text/plain"), HeaderInjection, "contains a line break"),
        (("part", "x", "message/partial"), InvalidMessage, "'message/partial' cannot be attached"),
    ],
)
def test_a_bad_attachment_is_refused_naming_it(attachment: tuple, error: type[Exception], fragment: str) -> None:
    bad = message()
    bad.attachments.append(attachment)
    with pytest.raises(error, match=fragment):
        validate_message(bad)


def test_an_attached_message_is_validated_too_keeping_the_error_type() -> None:
    forwarded = EmailMessage("fwd", "b", "from@example.com", ["not an address"])
    outer = message()
    outer.attach("fwd.eml", forwarded, "message/rfc822")
    with pytest.raises(InvalidAddress, match="attachments\\[0\\] \\(an attached message\\): to address"):
        validate_message(outer)
