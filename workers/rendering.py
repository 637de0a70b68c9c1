"""The SMTP bytes of a plain message, written directly, byte for byte what Django renders.

Django 6.1 renders every message through Python's modern ``email`` API, which
parses each header into a tree and folds it back: about 0.7 ms for a small
message, more than the rest of a worker's work on it. For the shape most mail
has (one text body, no attachments or alternatives, short printable ASCII
headers) that round trip gives back what went in, so ``render`` writes those
bytes itself. Anything outside that shape returns None, and the caller lets
Django render it: the shortcut is only ever taken where its output is proven
identical (``tests/test_rendering.py`` compares the two over a generated corpus).
"""

from __future__ import annotations

import re
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache

from django.core.mail import EmailMessage, EmailMultiAlternatives

from mailqueue.conf import django_setting

#: SMTP's policy (``email.policy.SMTP``): lines the renderer would fold or re-encode beyond this.
MAX_LINE_LENGTH = 78

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_ADDR_SPEC = rf"{_DOT_ATOM}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_ADDRESS = rf"(?:{_ADDR_SPEC}|{_ATEXT}+(?: {_ATEXT}+)* <{_ADDR_SPEC}>)"
#: A list of plain or named addresses that the address parser gives back unchanged.
ADDRESS_LIST = re.compile(rf"{_ADDRESS}(?:, {_ADDRESS})*")
#: Printable ASCII words with single spaces: an unstructured value folded back as it came.
UNSTRUCTURED = re.compile(r"[!-~]+(?: [!-~]+)*")
MESSAGE_ID = re.compile(rf"<{_DOT_ATOM}@{_DOT_ATOM}>")
#: One plain or named address, capturing its addr-spec.
ONE_ADDRESS = re.compile(rf"({_ADDR_SPEC})|{_ATEXT}+(?: {_ATEXT}+)* <({_ADDR_SPEC})>")
FIELD_NAME = re.compile(r"[!-9;-~]+")
SUBTYPE = re.compile(r"[a-z0-9]+(?:[.+-][a-z0-9]+)*")

#: Django's own rendering steps: a subclass that overrides any of them renders its own way.
_RENDERING_STEPS = (
    "message",
    "_add_attachments",
    "_set_list_header_if_not_empty",
    "_idna_encode_address_header_domains",
)
_DJANGO_RENDERING = {name: getattr(EmailMessage, name) for name in _RENDERING_STEPS}
_DJANGO_BODIES = tuple(getattr(cls, "_add_bodies", None) for cls in (EmailMessage, EmailMultiAlternatives))
#: Headers Django sets from the message's fields, never from extra_headers.
_FROM_FIELDS = frozenset({"from", "to", "cc", "reply-to"})
#: Headers the email package parses with a grammar of its own (beyond Date and Message-ID, checked apart).
_STRUCTURED = frozenset(
    {
        "subject",
        "resent-date",
        "orig-date",
        "sender",
        "resent-sender",
        "resent-to",
        "resent-cc",
        "bcc",
        "resent-bcc",
        "resent-from",
        "mime-version",
        "content-type",
        "content-disposition",
        "content-transfer-encoding",
    }
)


def _renders_like_django(message: EmailMessage) -> bool:
    cls = type(message)
    if any(getattr(cls, name, None) is not method for name, method in _DJANGO_RENDERING.items()):
        return False
    return getattr(cls, "_add_bodies", None) in _DJANGO_BODIES


def _header(name: str, value: object, pattern: re.Pattern[str]) -> str | None:
    """``Name: value`` when the email package would write it back unchanged on one line."""
    if not isinstance(value, str) or len(name) + 2 + len(value) > MAX_LINE_LENGTH or "=?" in value:
        return None
    if pattern.fullmatch(value) is None:
        return None
    return f"{name}: {value}\r\n"


@lru_cache(maxsize=64)
def _is_canonical_date(value: str) -> bool:
    # Cached: a worker sees the same Date (a second's resolution) on many messages in a row.
    try:
        return format_datetime(parsedate_to_datetime(value)) == value
    except (TypeError, ValueError):
        return False


def _date(value: object) -> str | None:
    """A Date header already in the form the email package writes (RFC 5322, as format_datetime)."""
    if not isinstance(value, str) or not _is_canonical_date(value):
        return None
    return f"Date: {value}\r\n"


def _body(message: EmailMessage) -> tuple[str, bytes] | None:
    """(Content-Transfer-Encoding, payload): the 7bit or 8bit text that needs no encoding."""
    body = message.body
    if not isinstance(body, str):
        return None
    try:
        lines = body.encode("utf-8").splitlines()
    except UnicodeEncodeError:
        # Lone surrogates: Django's surrogateescape path.
        return None
    if any(len(line) > MAX_LINE_LENGTH for line in lines):
        # Quoted-printable or base64, whichever the email package finds shorter.
        return None
    payload = b"\r\n".join(lines) + b"\r\n"
    return ("7bit" if payload.isascii() else "8bit"), payload


def _extra_headers(message: EmailMessage) -> list[str] | None:
    """extra_headers as Django adds them, after Subject, From, To, Cc and Reply-To."""
    lines = []
    names = set()
    for name, value in message.extra_headers.items():
        if not isinstance(name, str) or FIELD_NAME.fullmatch(name) is None:
            return None
        lowered = name.lower()
        if lowered in _FROM_FIELDS:
            continue
        if lowered in names or lowered in _STRUCTURED:
            return None
        names.add(lowered)
        if lowered == "date":
            line = _date(value) if name == "Date" else None
        elif lowered == "message-id":
            line = _header(name, value, MESSAGE_ID)
        else:
            line = _header(name, value, UNSTRUCTURED)
        if line is None:
            return None
        lines.append(line)
    if "date" not in names or "message-id" not in names:
        # Django would stamp them now; the envelope always carries both.
        return None
    return lines


def plain_addr_spec(address: object) -> str | None:
    """The addr-spec of a plain address (``a@example.com``, ``Ann <a@example.com>``), as the email parser finds it.

    None for anything else: quoted or dotted names, comments, non-ASCII, encoded words.
    """
    if not isinstance(address, str) or "=?" in address:
        return None
    match = ONE_ADDRESS.fullmatch(address)
    if match is None:
        return None
    return match[1] or match[2]


def render(message: EmailMessage) -> bytes | None:
    """``message.message(policy=email.policy.SMTP).as_bytes()``, or None where only Django can render it."""
    if not _renders_like_django(message) or message.attachments or getattr(message, "alternatives", None):
        return None
    if (message.encoding or django_setting("DEFAULT_CHARSET")) != "utf-8":
        return None
    subtype = message.content_subtype
    if not isinstance(subtype, str) or SUBTYPE.fullmatch(subtype) is None:
        return None
    body = _body(message)
    extra = _extra_headers(message)
    if body is None or extra is None:
        return None
    cte, payload = body
    subject = _header("Subject", str(message.subject), UNSTRUCTURED)
    sender = _header("From", message.extra_headers.get("From", message.from_email), ADDRESS_LIST)
    if subject is None or sender is None:
        return None
    lines = [
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n',
        f"Content-Transfer-Encoding: {cte}\r\n",
        "MIME-Version: 1.0\r\n",
        subject,
        sender,
    ]
    for name, values in (("To", message.to), ("Cc", message.cc), ("Reply-To", message.reply_to)):
        if name in message.extra_headers:
            value = message.extra_headers[name]
        elif values:
            value = ", ".join(str(address) for address in values)
        else:
            continue
        line = _header(name, value, ADDRESS_LIST)
        if line is None:
            return None
        lines.append(line)
    lines.extend(extra)
    lines.append("\r\n")
    return "".join(lines).encode("ascii") + payload
