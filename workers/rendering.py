"""The SMTP bytes of a plain message, written directly, byte for byte what Django renders.

Django 6.1 renders every message through Python's modern ``email`` API, which
parses each header into a tree and folds it back, and writes base64 a line at
a time: about 0.7 ms for a small message and 5 ms for one with a 100 KB
attachment, more than the rest of a worker's work on it. For the shapes most
mail has (a text body, HTML alternatives, attachments with plain names; short
printable ASCII headers) that round trip gives back what went in, so ``render``
writes those bytes itself. Anything else returns None, and the caller lets
Django render it: the shortcut is only ever taken where its output is proven
identical (``tests/test_rendering.py`` compares the two over a generated corpus).
"""

from __future__ import annotations

import base64
import random
import re
import sys
from collections.abc import Sequence
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache

from django.core.mail import EmailAlternative, EmailMessage, EmailMultiAlternatives

from mailqueue.conf import django_setting
from mailqueue.envelope import QueuedMessage

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
MIMETYPE = re.compile(r"([a-z0-9]+)/([a-z0-9]+(?:[.+-][a-z0-9]+)*)")
FILENAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
#: Content-Disposition: attachment; filename="..." stays on one line up to this length of name.
MAX_FILENAME = MAX_LINE_LENGTH - len('Content-Disposition: attachment; filename=""')

#: Django's own rendering steps: a subclass that overrides any of them renders its own way.
_RENDERING_STEPS = (
    "message",
    "_add_attachments",
    "_add_attachment",
    "_set_list_header_if_not_empty",
    "_idna_encode_address_header_domains",
)
_DJANGO_RENDERING = {name: getattr(EmailMessage, name) for name in _RENDERING_STEPS}
#: A queued message's ``message()`` is Django's, with its fixed Date and Message-ID among the extra headers.
_FIXED_HEADERS_MESSAGE = QueuedMessage.message
_DJANGO_BODIES = tuple(getattr(cls, "_add_bodies", None) for cls in (EmailMessage, EmailMultiAlternatives))
#: The one of them that renders ``alternatives``.
_ALTERNATIVES_BODIES = _DJANGO_BODIES[1]
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
    for name, method in _DJANGO_RENDERING.items():
        step = getattr(cls, name, None)
        if step is not method and not (name == "message" and step is _FIXED_HEADERS_MESSAGE):
            return False
    return getattr(cls, "_add_bodies", None) in _DJANGO_BODIES


def _contents(value: object) -> str | None:
    """A str's own characters, as the email package reads them: a subclass's __str__ or __format__ is not asked."""
    return str.__str__(value) if isinstance(value, str) else None


def _header(name: str, value: object, pattern: re.Pattern[str]) -> str | None:
    """``Name: value`` when the email package would write it back unchanged on one line."""
    text = _contents(value)
    if text is None or len(name) + 2 + len(text) > MAX_LINE_LENGTH or "=?" in text:
        return None
    if pattern.fullmatch(text) is None:
        return None
    return f"{name}: {text}\r\n"


@lru_cache(maxsize=64)
def _is_canonical_date(value: str) -> bool:
    # Cached: a worker sees the same Date (a second's resolution) on many messages in a row.
    try:
        return format_datetime(parsedate_to_datetime(value)) == value
    except (TypeError, ValueError):
        return False


def _date(value: object) -> str | None:
    """A Date header already in the form the email package writes (RFC 5322, as format_datetime)."""
    text = _contents(value)
    if text is None or not _is_canonical_date(text):
        return None
    return f"Date: {text}\r\n"


def _encoded_text_payload(text: object) -> tuple[str, bytes] | None:
    """(Content-Transfer-Encoding, payload): text that needs no encoding, 7bit or 8bit as the email package picks."""
    if not isinstance(text, str):
        return None
    try:
        lines = text.encode("utf-8").splitlines()
    except UnicodeEncodeError:
        # Lone surrogates: Django's surrogateescape path.
        return None
    if any(len(line) > MAX_LINE_LENGTH for line in lines):
        # Quoted-printable or base64, whichever the email package finds shorter.
        return None
    payload = b"\r\n".join(lines) + b"\r\n"
    return ("7bit" if payload.isascii() else "8bit"), payload


def _text_part(text: object, subtype: object, *, filename: str | None = None, mime_version: bool) -> bytes | None:
    """A text/* part as ``set_content()`` writes it: Content-Type, -Transfer-Encoding, -Disposition, MIME-Version."""
    subtype = _contents(subtype)
    if subtype is None or SUBTYPE.fullmatch(subtype) is None:
        return None
    content_type = f'Content-Type: text/{subtype}; charset="utf-8"'
    encoded = _encoded_text_payload(text)
    if encoded is None or len(content_type) > MAX_LINE_LENGTH:
        return None  # a long subtype folds the line
    cte, payload = encoded
    head = f"{content_type}\r\nContent-Transfer-Encoding: {cte}\r\n"
    if filename is not None:
        head += f'Content-Disposition: attachment; filename="{filename}"\r\n'
    if mime_version:
        head += "MIME-Version: 1.0\r\n"
    return (head + "\r\n").encode("ascii") + payload


def _bytes_part(content: bytes, mimetype: str, filename: str) -> bytes | None:
    """A base64 attachment, in the email package's 76-character lines (57 bytes each, as base64.encodebytes)."""
    if not content or len(f"Content-Type: {mimetype}") > MAX_LINE_LENGTH:
        return None
    head = (
        f"Content-Type: {mimetype}\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{filename}"\r\nMIME-Version: 1.0\r\n\r\n'
    )
    return head.encode("ascii") + base64.encodebytes(content).replace(b"\n", b"\r\n")


def _attachment_part(attachment: object) -> bytes | None:
    """An attachment as Django's ``_add_attachment`` adds it, for plain names and types; None otherwise."""
    if not isinstance(attachment, tuple) or len(attachment) != 3:
        return None  # a MIME part of its own
    filename, content, mimetype = (_contents(item) if isinstance(item, str) else item for item in attachment)
    if not isinstance(filename, str) or len(filename) > MAX_FILENAME or FILENAME.fullmatch(filename) is None:
        return None
    match = MIMETYPE.fullmatch(mimetype) if isinstance(mimetype, str) else None
    if match is None:
        return None
    maintype, subtype = match.groups()
    mimetype = f"{maintype}/{subtype}"
    if maintype == "text" and isinstance(content, bytes):
        try:
            decoded = content.decode()
        except UnicodeDecodeError:
            # As Django does: undecodable text is sent as application/octet-stream.
            return _bytes_part(content, "application/octet-stream", filename)
        content = decoded
    if maintype == "text":
        return _text_part(content, subtype, filename=filename, mime_version=True)
    if maintype in ("message", "multipart") or not isinstance(content, bytes):
        return None  # (a multipart/* attachment is written by the generator's multipart handler, raw)
    return _bytes_part(content, mimetype, filename)


def _new_boundary() -> str:
    # email.generator.Generator._make_boundary: the same random draw, the same format.
    return "=" * 15 + f"{random.randrange(sys.maxsize):019d}" + "=="


def _multipart(subtype: str, parts: Sequence[bytes]) -> tuple[str, bytes] | None:
    """(Content-Type header, body) of a multipart; None if the new boundary occurs in a part (Django picks another)."""
    boundary = _new_boundary()
    delimiter = f"--{boundary}".encode("ascii")
    if any(delimiter in part for part in parts):
        return None
    body = delimiter + b"\r\n" + (b"\r\n" + delimiter + b"\r\n").join(parts) + b"\r\n" + delimiter + b"--\r\n"
    header = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n'
    if len(header) - 2 > MAX_LINE_LENGTH:
        header = f'Content-Type: multipart/{subtype};\r\n boundary="{boundary}"\r\n'
    return header, body


def _content(message: EmailMessage) -> tuple[str, bytes] | None:
    """(content headers, body) of the whole message: one text part, or multipart/alternative and /mixed around it."""
    subtype = message.content_subtype
    if getattr(type(message), "_add_bodies", None) is _ALTERNATIVES_BODIES:
        alternatives = getattr(message, "alternatives", None)
        if alternatives is None:
            return None  # Django's _add_bodies would fail on it
    else:
        alternatives = []  # EmailMessage._add_bodies ignores an alternatives attribute
    attachments = message.attachments
    if not alternatives and not attachments:
        part = _text_part(message.body, subtype, mime_version=True)
        if part is None:
            return None
        head, _, body = part.partition(b"\r\n\r\n")
        return head.decode("ascii") + "\r\n", body
    if not message.body:
        return None  # Django leaves the body part out: another structure
    part = _text_part(message.body, subtype, mime_version=False)
    if part is None:
        return None
    if alternatives:
        parts = [part]
        for alternative in alternatives:
            if not isinstance(alternative, EmailAlternative):
                return None  # Django reads .content and .mimetype
            content, mimetype = alternative
            match = MIMETYPE.fullmatch(mimetype) if isinstance(mimetype, str) else None
            if match is None or match[1] != "text":
                return None
            if isinstance(content, bytes):
                try:
                    content = content.decode()
                except UnicodeDecodeError:
                    return None  # Django raises
            alternative_part = _text_part(content, match[2], mime_version=True)
            if alternative_part is None:
                return None
            parts.append(alternative_part)
        inner = _multipart("alternative", parts)
        if inner is None:
            return None
        if not attachments:
            return inner
        part = (inner[0] + "\r\n").encode("ascii") + inner[1]
    parts = [part]
    for attachment in attachments:
        attachment_part = _attachment_part(attachment)
        if attachment_part is None:
            return None
        parts.append(attachment_part)
    return _multipart("mixed", parts)


def _extra_headers(message: EmailMessage) -> list[str] | None:
    """extra_headers as Django adds them, after Subject, From, To, Cc and Reply-To."""
    lines = []
    names = set()
    headers = message.rendered_headers() if isinstance(message, QueuedMessage) else message.extra_headers
    for name, value in headers.items():
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
    """``message.message(policy=email.policy.SMTP).as_bytes()``, or None where only Django can render it.

    A multipart message gets a random boundary drawn as the email package draws it, so with ``random``
    seeded alike, the two renderings are the same bytes (which is how the tests compare them).
    """
    encoding = message.encoding or django_setting("DEFAULT_CHARSET")
    if not _renders_like_django(message) or not isinstance(encoding, str) or encoding != "utf-8":
        return None  # (an email.charset.Charset compares equal to its name, but Django cannot encode with it)
    extra = _extra_headers(message)
    subject = _header("Subject", str(message.subject), UNSTRUCTURED)
    sender = _header("From", str(message.extra_headers.get("From", message.from_email)), ADDRESS_LIST)
    if extra is None or subject is None or sender is None:
        return None
    lines = [subject, sender]
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
    content = _content(message)
    if content is None:
        return None
    content_headers, body = content
    if content_headers.startswith("Content-Type: multipart/"):
        # make_mixed() / make_alternative() keep MIME-Version on top and add the multipart Content-Type after it.
        content_headers = "MIME-Version: 1.0\r\n" + content_headers
    return (content_headers + "".join(lines)).encode("ascii") + body
