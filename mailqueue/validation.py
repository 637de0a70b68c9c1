"""Cheap checks that make bad input fail at send_mail() time, not in a worker.

The request path must not render MIME, so instead of calling
``EmailMessage.message()`` we check what rendering would reject: addresses
that are not one mailbox, line breaks in headers and filenames, invalid
header names and mimetypes, and text that cannot be encoded as UTF-8.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable
from email.headerregistry import AddressHeader
from email.message import Message
from functools import lru_cache
from typing import Any

from django.core.mail import EmailMessage
from django.utils.encoding import force_str

from .conf import django_setting
from .exceptions import HeaderInjection, InvalidAddress, InvalidMessage

_PLAIN = (
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
# The overwhelmingly common cases, accepted without the full RFC 5322 parser:
# "local@domain.tld", and the same after a display name free of specials,
# dots and encoded-word markers ("Ann Smith <ann@example.com>",
# '"Smith, Ann" <ann@example.com>'). Everything else takes the slow path.
_PLAIN_ADDRESS = re.compile(_PLAIN)
_NAMED_PLAIN_ADDRESS = re.compile(
    r'(?:"[^"\\=\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]*"'
    r"|[^\"<>()\[\]\\,;:@.=?\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff]*) ?<" + _PLAIN + ">"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# Everything Python's email package treats as a line break in a header value.
_LINE_BREAK = re.compile(r"[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# RFC 5322 field names: printable US-ASCII except colon.
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to", "sender"})
_ENCODED_WORD = re.compile(r"=\?.*\?=")


def _defects(parsed: Any) -> list[str]:
    # Django's SMTP backend (prep_address) refuses every defect; so do we, here, before a worker would.
    return [str(defect) for defect in parsed.all_defects]


@lru_cache(maxsize=4096)
def _parse_mailbox(value: str) -> str | None:
    """Return why ``value`` is not exactly one mailbox, or None when it is."""
    if _ENCODED_WORD.search(value):
        return "contains an RFC 2047 encoded-word; pass the display name as plain (Unicode) text"
    try:
        parsed = AddressHeader.value_parser(value)
    except (ValueError, IndexError, TypeError) as error:
        return f"cannot be parsed ({error})"
    mailboxes = parsed.all_mailboxes
    if len(mailboxes) != 1:
        return f"holds {len(mailboxes)} addresses; give one address per list item"
    mailbox = mailboxes[0]
    if not mailbox.local_part or not mailbox.domain:
        return "needs both a local part and a domain"
    defects = _defects(parsed)
    if defects:
        hint = " (quote a display name that has dots or commas)" if "phrase" in defects[0] else ""
        return f"has {'; '.join(defects)}{hint}"
    return None


@lru_cache(maxsize=1024)
def _parse_address_list(value: str) -> str | None:
    """Return why ``value`` is not a list of valid mailboxes, or None when it is."""
    if _CONTROL.search(value):
        return "contains a control character"
    if _ENCODED_WORD.search(value):
        return "contains an RFC 2047 encoded-word; pass display names as plain (Unicode) text"
    try:
        parsed = AddressHeader.value_parser(value)
    except (ValueError, IndexError, TypeError) as error:
        return f"cannot be parsed ({error})"
    defects = _defects(parsed)
    if defects:
        return f"has {'; '.join(defects)}"
    for mailbox in parsed.all_mailboxes:
        if not mailbox.local_part or not mailbox.domain:
            return f"has {mailbox.addr_spec!r}, which lacks a local part or domain"
    return None


def _as_rendered_text(value: Any) -> str:
    """Any value as the text Django's rendering makes of it (``force_str``): what the checks must look at."""
    return value if isinstance(value, str) else str(force_str(value))


def _check_encodable(text: str, where: str, charset: str = "utf-8") -> None:
    if not text.isascii():
        try:
            text.encode(charset)
        except UnicodeEncodeError as error:
            raise InvalidMessage(f"{where} cannot be encoded as {charset} ({error.reason} at {error.start}).") from None


_known_charsets: set[str] = set()


def _body_charset(message: EmailMessage) -> str:
    """The charset Django will encode text bodies and text attachments with; refused if unknown."""
    charset = str(message.encoding or django_setting("DEFAULT_CHARSET"))
    if charset not in _known_charsets:
        try:
            codecs.lookup(charset)
        except LookupError:
            raise InvalidMessage(f"Message encoding {charset!r} is not a known charset.") from None
        _known_charsets.add(charset)
    return charset


def validate_address(value: Any, field: str) -> str:
    """Return ``value`` as text if it is one valid mailbox, else raise InvalidAddress."""
    text = _as_rendered_text(value)
    if _PLAIN_ADDRESS.fullmatch(text) or _NAMED_PLAIN_ADDRESS.fullmatch(text):
        return text
    if _CONTROL.search(text):
        raise InvalidAddress(f"{field} address {text!r} contains a control character (CR, LF, NUL, ...).")
    reason = _parse_mailbox(text)
    if reason is not None:
        raise InvalidAddress(f"{field} address {text!r} is invalid: it {reason}.")
    return text


def validate_addresses(values: Iterable[Any], field: str) -> list[str]:
    """Validate a to/cc/bcc/reply_to list, returning the addresses as text."""
    if isinstance(values, str):
        raise InvalidAddress(f"{field} must be a list or tuple of addresses, not a string.")
    return [validate_address(value, field) for value in values]


def validate_header(name: Any, value: Any) -> None:
    """Reject header names and values that would break or forge the MIME header block."""
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise HeaderInjection(f"Header name {name!r} is not valid (printable ASCII, no spaces or colon).")
    lowered = name.lower()
    if lowered == "bcc":
        raise InvalidMessage(
            'Bcc is not a valid email header. Use the "bcc" argument for blind carbon copy recipients.'
        )
    text = _as_rendered_text(value)
    if _LINE_BREAK.search(text):
        raise HeaderInjection(f"Header {name!r} contains a line break: {text!r}.")
    _check_encodable(text, f"Header {name!r}")
    if lowered in _ADDRESS_HEADERS:
        reason = _parse_address_list(text)
        if reason is not None:
            raise InvalidAddress(f"Header {name!r} value {text!r} is invalid: it {reason}.")


def _validate_mimetype(mimetype: Any, where: str) -> None:
    if not isinstance(mimetype, str) or "/" not in mimetype or _LINE_BREAK.search(mimetype):
        raise InvalidMessage(f"{where} mimetype {mimetype!r} is not 'type/subtype'.")


def _validate_filename(filename: Any, where: str) -> None:
    parts = filename if isinstance(filename, tuple) else (filename,)  # RFC 2231 (charset, language, name)
    for part in parts:
        if part is not None:
            text = _as_rendered_text(part)
            if _LINE_BREAK.search(text):
                raise HeaderInjection(f"{where} filename {filename!r} contains a line break.")
            _check_encodable(text, f"{where} filename")


def _validate_text_content(content: Any, mimetype: str, where: str, charset: str, *, alternative: bool) -> None:
    """Text content must encode in ``charset``; ``text/*`` bytes of an alternative must be UTF-8."""
    if not mimetype.startswith("text/"):
        return
    if isinstance(content, bytes):
        try:
            content = content.decode()  # Django decodes text/* bytes as UTF-8 before encoding them again
        except UnicodeDecodeError:
            if alternative:  # an attachment falls back to application/octet-stream; an alternative fails
                raise InvalidMessage(f"{where} content is bytes that are not UTF-8 text.") from None
            return
    if isinstance(content, str):
        _check_encodable(content, f"{where} content", charset)


def _validate_attachments(message: EmailMessage, charset: str) -> None:
    for index, attachment in enumerate(message.attachments):
        if isinstance(attachment, Message):
            continue  # a MIME part: its headers were checked when it was built
        if isinstance(attachment, tuple) and len(attachment) == 3:
            filename, content, mimetype = attachment
            where = f"attachments[{index}]"
            _validate_filename(filename, where)
            _validate_mimetype(mimetype, where)
            if mimetype.lower().replace(" ", "") == "message/partial":
                raise InvalidMessage(f"{where} mimetype 'message/partial' cannot be attached (Python cannot build it).")
            if isinstance(content, EmailMessage):
                _validate_attached_message(content, where)
            _validate_text_content(content, mimetype, where, charset, alternative=False)
    for index, (content, mimetype) in enumerate(getattr(message, "alternatives", None) or ()):
        where = f"alternatives[{index}]"
        _validate_mimetype(mimetype, where)
        _validate_text_content(content, mimetype, where, charset, alternative=True)


def _validate_attached_message(message: EmailMessage, where: str) -> None:
    """An attached (forwarded) message is rendered into this one: it must be valid too."""
    try:
        validate_message(message)
    except InvalidMessage as error:
        raise type(error)(f"{where} (an attached message): {error}") from None


def validate_message(message: EmailMessage) -> None:
    """Raise an InvalidMessage subclass naming the first problem in ``message``."""
    subject = _as_rendered_text(message.subject)
    if _LINE_BREAK.search(subject):
        raise HeaderInjection(f"Subject contains a line break: {subject!r}.")
    _check_encodable(subject, "Subject")
    charset = _body_charset(message)
    if isinstance(message.body, str):
        _check_encodable(message.body, "Body", charset)
    validate_address(message.from_email, "from_email")
    for values, field in ((message.to, "to"), (message.cc, "cc"), (message.bcc, "bcc"), (message.reply_to, "reply_to")):
        if values or isinstance(values, str):  # an empty string is still the wrong type
            validate_addresses(values, field)
    for name, value in message.extra_headers.items():
        validate_header(name, value)
    if message.attachments or getattr(message, "alternatives", None):
        _validate_attachments(message, charset)
