"""mailqueue.validation: what rendering or Django's SMTP backend would reject is refused at send time.

What is accepted is checked against Django itself: an accepted address passes
Django's SMTP backend, an accepted message renders.
"""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime

import pytest
from anymail.message import AnymailMessage
from django.core.mail import EmailMessage, EmailMultiAlternatives, mailers
from django.utils.translation import gettext_lazy

from mailqueue.exceptions import HeaderInjection, InvalidAddress, InvalidHeader, InvalidMessage
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
    validate_header("Date", datetime(2026, 12, 1, tzinfo=UTC))
    validate_header("X-Note", gettext_lazy("lazy text"))
    with pytest.raises(InvalidMessage, match="cannot be encoded"):
        validate_header("X-Note", "lone \ud800 surrogate")


@pytest.mark.parametrize("value", [42, 1.5, True, datetime(2026, 12, 1, tzinfo=UTC)])
def test_a_header_value_django_cannot_render_is_refused_naming_the_header(value: object) -> None:
    # Django renders a header from text, or a Date from a datetime; anything else fails in its rendering.
    with pytest.raises(InvalidHeader, match="Header 'X-When' value .* Django cannot render"):
        validate_header("X-When", value)
    assert isinstance(django_fails(message(headers={"X-When": value})), TypeError)


def django_fails(bad: EmailMessage) -> Exception | None:
    """What Django raises when it renders ``bad`` as its SMTP backend does (None: it renders)."""
    try:
        bad.message(policy=email.policy.SMTP).as_bytes()
    except Exception as error:  # noqa: BLE001  (any error: the point is that Django fails)
        return error
    return None


@pytest.mark.parametrize(
    ("build", "error", "fragment"),
    [
        # The examples of issue 10: each was accepted, then failed in the worker.
        (lambda: message(bcc=["x@" + "ä" * 70 + ".com"]), InvalidAddress, "bcc address .* cannot be IDNA-encoded"),
        (lambda: message(to=["x@exa\x9bmple.com"]), InvalidAddress, "to address .* cannot be IDNA-encoded"),
        (lambda: message(cc=["x@exa\u202emple.com"]), InvalidAddress, "cc address .* cannot be IDNA-encoded"),
        (lambda: message(headers={"Message-ID": "<ä@example.com>"}), InvalidHeader, "Header 'Message-ID'"),
        (lambda: message(headers={"X" * 79: ""}), InvalidHeader, "Header 'X{79}' value '' cannot be rendered"),
        (lambda: message(headers={"X" * 80: ""}), InvalidHeader, "Header 'X{80}' value '' cannot be rendered"),
        (lambda: message(headers={"Sender": "s@" + "ä" * 70 + ".com"}), InvalidAddress, "Header 'Sender'"),
        # One non-ASCII domain in To makes rendering IDNA-encode every domain of it, and a 70-character label fails.
        (
            lambda: message(to=["a@" + "a" * 70 + ".com", "b@exämple.de"]),
            InvalidAddress,
            "to addresses cannot be rendered as one To header",
        ),
    ],
)
def test_what_failed_in_the_worker_is_refused_at_send_time_naming_the_field(
    build, error: type[Exception], fragment: str
) -> None:
    bad = build()
    with pytest.raises(error, match=fragment):
        validate_message(bad)
    assert issubclass(error, ValueError)


@pytest.mark.parametrize("name", ["Content-Type", "Subject", "MIME-Version", "Content-Transfer-Encoding"])
def test_a_second_value_for_a_header_django_sets_itself_is_refused(name: str) -> None:
    bad = message(headers={name: "x"})
    with pytest.raises(InvalidHeader, match=f"Header '{name}' may appear only once.*beside the one Django sets"):
        validate_message(bad)
    assert isinstance(django_fails(bad), ValueError)


@pytest.mark.parametrize("name", ["Date", "Message-ID", "Sender", "Content-Disposition", "In-Reply-To"])
def test_a_header_that_appears_once_may_be_given_once_but_not_in_two_spellings(name: str) -> None:
    value = {"Date": "Tue, 24 Nov 2026 01:22:29 +0000", "Sender": "s@example.com"}.get(name, "<a@example.com>")
    validate_message(message(headers={name: value}))
    twice = message(headers={name: value, name.lower(): value})
    if name == "In-Reply-To":  # no limit in the email package: Django writes both
        validate_message(twice)
        assert django_fails(twice) is None
        return
    with pytest.raises(InvalidHeader, match="may appear only once"):
        validate_message(twice)
    assert isinstance(django_fails(twice), ValueError)


def test_a_group_is_not_one_mailbox() -> None:
    # Today an AttributeError from inside the check; Django's SMTP backend refuses it as an invalid address.
    with pytest.raises(InvalidAddress, match="to address 'x:; <y@z.com>' is invalid"):
        validate_message(message(to=["x:; <y@z.com>"]))


def test_a_bare_local_mailbox_is_accepted_as_from_email_as_django_accepts_it(settings) -> None:
    settings.MAILERS = {
        "smtp": {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": {"host": "localhost"}}
    }
    for sender in ("webmaster", "Webmaster <webmaster>"):
        validate_message(message(from_email=sender))
        assert mailers["smtp"].prep_address(sender) == "webmaster"
    validate_header("From", "Webmaster <webmaster>")
    # Not as a recipient: mailqueue's providers are mostly ESPs, which cannot deliver to a bare name.
    with pytest.raises(InvalidAddress, match="to address 'webmaster' .*only from_email may be a bare local"):
        validate_message(message(to=["webmaster"]))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda m: setattr(m, "content_subtype", "html\nX-Injected: 1"), "content_subtype .* line break"),
        (lambda m: setattr(m, "content_subtype", "h\udcfftml"), "content_subtype .* lone surrogate"),
        (lambda m: m.attach("a.bin", b"x", "application/x\udcff"), r"attachments\[0\] mimetype .* lone surrogate"),
        (lambda m: m.attach_alternative("x", "text/h\udcfftml"), r"alternatives\[0\] mimetype .* lone surrogate"),
        (lambda m: m.attach("a.bin", "\udcff", "application/octet-stream"), r"attachments\[0\] content cannot"),
    ],
)
def test_content_types_with_line_breaks_or_lone_surrogates_are_refused(change, fragment: str) -> None:
    bad = message()
    change(bad)
    with pytest.raises(InvalidMessage, match=fragment):
        validate_message(bad)


@pytest.mark.parametrize(
    ("name", "value", "where"),
    [
        ("tags", ["ok", "bad \udcff"], r"tags\[1\]"),
        ("metadata", {"order\udcff": "42"}, "metadata key 'order.udcff'"),
        ("metadata", {"order": {"nested": ["\ud800"]}}, r"metadata\['order'\]\['nested'\]\[0\]"),
        ("merge_global_data", {"name": "\udcff"}, r"merge_global_data\['name'\]"),
        ("template_id", "t\udcff", "template_id"),
    ],
)
def test_lone_surrogates_in_anymail_attributes_are_refused_naming_the_attribute(name: str, value, where: str) -> None:
    # They cannot travel as JSON: the worker could not even decode the message.
    bad = AnymailMessage("s", "b", "from@example.com", ["a@example.com"])
    setattr(bad, name, value)
    with pytest.raises(InvalidMessage, match=f"{where} contains a lone surrogate"):
        validate_message(bad)
    plain = message()
    setattr(plain, name, value)  # anymail reads these attributes from any message
    with pytest.raises(InvalidMessage, match="lone surrogate"):
        validate_message(plain)


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
        (lambda: message(from_email="nobody@"), InvalidAddress, "from_email address"),
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
