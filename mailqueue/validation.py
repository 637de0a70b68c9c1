"""Cheap checks that make bad input fail at send_mail() time, not in a worker.

The request path must not render MIME, so instead of calling
``EmailMessage.message()`` we check what rendering (or Django's SMTP backend)
would reject: addresses that are not one mailbox or whose domain cannot be
IDNA-encoded, line breaks in headers and filenames, invalid header names and
mimetypes, a second value for a header that appears once, header values the
email package cannot fold, and text that cannot be encoded (or travel as JSON:
lone surrogates). The usual shapes of each field are recognised by a regular
expression; only what falls outside them is given to the email package's own
header code, one header at a time (``tests/test_send_parity.py`` holds the
checks to Django's behaviour).
"""

from __future__ import annotations

import codecs
import email.errors
import email.message
import email.policy
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from email.headerregistry import AddressHeader, DateHeader, HeaderRegistry
from email.message import Message
from functools import lru_cache
from typing import Any, cast

from django.core.mail import EmailMessage
from django.utils.encoding import force_str
from django.utils.functional import Promise

from .anymail_attributes import ANYMAIL_ATTRIBUTES
from .conf import django_setting
from .exceptions import HeaderInjection, InvalidAddress, InvalidHeader, InvalidMessage

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
_ENCODED_WORD = re.compile(r"=\?.*\?=")
_SURROGATE = re.compile(r"[\ud800-\udfff]")

#: The policy Django's SMTP backend renders with: its header classes, folding and limits are the ones checked here.
_SMTP = email.policy.SMTP
_HEADER_CLASSES: Mapping[str, type] = cast(HeaderRegistry, _SMTP.header_factory).registry
#: Headers the email package parses with a grammar of its own; every other header is unstructured text.
_STRUCTURED = frozenset(_HEADER_CLASSES)
#: Headers holding addresses: rendering IDNA-encodes their domains.
_ADDRESS_HEADERS = frozenset(name for name, cls in _HEADER_CLASSES.items() if issubclass(cls, AddressHeader))
#: How often each header with a grammar may appear (the policy's header_max_count, without building a class per call).
_MAX_COUNT: Mapping[str, int | None] = {name: getattr(cls, "max_count", None) for name, cls in _HEADER_CLASSES.items()}
#: Headers whose value may be a datetime (Django renders it with the Date header's class).
_DATE_HEADERS = frozenset(name for name, cls in _HEADER_CLASSES.items() if issubclass(cls, DateHeader))
#: Headers Django sets on every message whatever ``headers=`` holds (Date and Message-ID only when absent).
_ALWAYS_SET = frozenset({"subject", "mime-version", "content-type", "content-transfer-encoding"})
#: Headers Django takes from ``headers=`` in place of its own, never adding both.
_REPLACED = frozenset({"from", "to", "cc", "reply-to"})
#: "Name: value" that the email package writes back as it came, on one line: no need to ask it.
_PLAIN_UNSTRUCTURED = re.compile(r"[ -~]*")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
#: A Message-ID (``<dot-atom@dot-atom>``) and a Date (RFC 5322, as email.utils writes it) that render as given.
_PLAIN_STRUCTURED = {
    "message-id": re.compile(rf"<{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*>"),
    "date": re.compile(
        r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3]?[0-9] (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
        r"[0-9]{4} [0-2][0-9]:[0-5][0-9]:[0-6][0-9] [+-][0-9]{4}"
    ),
}
_PLAIN_SUBTYPES = frozenset({"plain", "html"})
_PLAIN_MIMETYPE = re.compile(r"[a-z]+/[a-z0-9]+(?:[.+-][a-z0-9]+)*")
#: Filenames of letters, digits, spaces and common punctuation (any script): written as Django writes them.
_PLAIN_FILENAME = re.compile(r"[\w .,()\[\]+-]{1,200}")
#: What the email package raises when it cannot build or write a header or part.
_RENDERING_ERRORS = (ValueError, TypeError, LookupError, AttributeError, email.errors.MessageError)


#: Django's SMTP backend accepts this one defect: a bare local mailbox such as "webmaster" (Django ticket #15042).
_BARE_LOCAL = "addr-spec local part with no domain"


def _defects(parsed: Any) -> list[str]:
    # Django's SMTP backend (prep_address) refuses every defect; so do we, here, before a worker would.
    return [str(defect) for defect in parsed.all_defects]


@lru_cache(maxsize=1024)
def _idna_problem(domain: str, every: bool = False) -> str | None:
    """Why rendering and Django's SMTP backend cannot IDNA-encode ``domain`` (as they do), or None.

    They encode non-ASCII domains only; but once one domain of a rendered address header is not
    ASCII, rendering encodes ``every`` domain of that header, and an ASCII label over 63 characters fails.
    """
    if domain.isascii() and not every:
        return None
    try:
        domain.encode("idna")
    except UnicodeError as error:
        return f"has a domain that cannot be IDNA-encoded ({error})"
    return None


@lru_cache(maxsize=4096)
def _parse_mailbox(value: str, bare_local: bool = False) -> str | None:
    """Return why ``value`` is not exactly one mailbox, or None when it is.

    ``bare_local`` accepts a mailbox without a domain ("webmaster"), as Django's SMTP backend does.
    """
    if _ENCODED_WORD.search(value):
        return "contains an RFC 2047 encoded-word; pass the display name as plain (Unicode) text"
    if _SURROGATE.search(value):
        return "contains a lone surrogate (text that is not Unicode)"
    try:
        parsed = AddressHeader.value_parser(value)
    except (ValueError, IndexError, TypeError) as error:
        return f"cannot be parsed ({error})"
    defects = _defects(parsed)
    bare = _BARE_LOCAL in defects
    if bare:
        defects.remove(_BARE_LOCAL)
    if defects:
        hint = " (quote a display name that has dots or commas)" if "phrase" in defects[0] else ""
        return f"has {'; '.join(defects)}{hint}"
    mailboxes = parsed.all_mailboxes
    if len(mailboxes) != 1:
        return f"holds {len(mailboxes)} addresses; give one address per list item"
    if bare and not bare_local:
        return "needs both a local part and a domain (only from_email may be a bare local mailbox)"
    mailbox = mailboxes[0]
    local_part, domain = getattr(mailbox, "local_part", None), getattr(mailbox, "domain", None)
    if not local_part or not (domain or bare_local):
        return "needs both a local part and a domain"
    return _idna_problem(domain) if domain else None


@lru_cache(maxsize=1024)
def _parse_address_list(value: str, bare_local: bool = False) -> str | None:
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
    if bare_local:
        defects = [defect for defect in defects if defect != _BARE_LOCAL]
    if defects:
        return f"has {'; '.join(defects)}"
    mailboxes = parsed.all_mailboxes
    every = not all((getattr(mailbox, "domain", None) or "").isascii() for mailbox in mailboxes)
    for mailbox in mailboxes:
        local_part, domain = getattr(mailbox, "local_part", None), getattr(mailbox, "domain", None)
        if not local_part or not (domain or bare_local):
            return f"has {str(mailbox)!r}, which lacks a local part or domain"
        problem = _idna_problem(domain, every) if domain else None
        if problem is not None:
            return f"has {str(mailbox)!r}, which {problem}"
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
    """Return ``value`` as text if it is one valid mailbox, else raise InvalidAddress.

    ``from_email`` may be a bare local mailbox ("webmaster"), as Django allows; a recipient may not.
    """
    text = _as_rendered_text(value)
    if _PLAIN_ADDRESS.fullmatch(text) or _NAMED_PLAIN_ADDRESS.fullmatch(text):
        return text
    if _CONTROL.search(text):
        raise InvalidAddress(f"{field} address {text!r} contains a control character (CR, LF, NUL, ...).")
    reason = _parse_mailbox(text, field == "from_email")
    if reason is not None:
        raise InvalidAddress(f"{field} address {text!r} is invalid: it {reason}.")
    return text


def validate_addresses(values: Iterable[Any], field: str) -> list[str]:
    """Validate a to/cc/bcc/reply_to list, returning the addresses as text."""
    if isinstance(values, str):
        raise InvalidAddress(f"{field} must be a list or tuple of addresses, not a string.")
    return [validate_address(value, field) for value in values]


@lru_cache(maxsize=256)
def _header_class(lowered: str) -> Any:
    # The policy's header_factory(name, value) builds this class anew on every call (a tenth of a millisecond).
    return cast(HeaderRegistry, _SMTP.header_factory)[lowered]


@lru_cache(maxsize=1024)
def _fold_problem(name: str, text: str) -> str | None:
    """Why the email package cannot write header ``name: text`` as Django's SMTP backend does, or None."""
    try:
        _SMTP.fold_binary(name, _header_class(name.lower())(name, text))
    except _RENDERING_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None


def _header_text(name: str, lowered: str, value: Any) -> str:
    """The text a header value renders as; InvalidHeader for a type Django's rendering refuses."""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime) and lowered in _DATE_HEADERS:
        return str(_header_class(lowered)(name, value))
    if value is None or isinstance(value, (bytes, Promise)):
        return _as_rendered_text(value)
    kind = "a datetime outside a Date header" if isinstance(value, datetime) else f"a {type(value).__name__}"
    raise InvalidHeader(f"Header {name!r} value {value!r} is {kind}, which Django cannot render; give it as text.")


def validate_header(name: Any, value: Any) -> None:
    """Reject header names and values that would break or forge the MIME header block, or fail to render."""
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise HeaderInjection(f"Header name {name!r} is not valid (printable ASCII, no spaces or colon).")
    lowered = name.lower()
    if lowered == "bcc":
        raise InvalidMessage(
            'Bcc is not a valid email header. Use the "bcc" argument for blind carbon copy recipients.'
        )
    text = _header_text(name, lowered, value)
    if _LINE_BREAK.search(text):
        raise HeaderInjection(f"Header {name!r} contains a line break: {text!r}.")
    _check_encodable(text, f"Header {name!r}")
    if lowered in _ADDRESS_HEADERS:
        reason = _parse_address_list(text, lowered == "from")
        if reason is not None:
            raise InvalidAddress(f"Header {name!r} value {text!r} is invalid: it {reason}.")
    short = len(name) + 2 + len(text) <= MAX_PLAIN_HEADER
    if lowered in _STRUCTURED:
        pattern = _PLAIN_STRUCTURED.get(lowered)
        plain = short and pattern is not None and pattern.fullmatch(text)
    else:
        plain = short and _PLAIN_UNSTRUCTURED.fullmatch(text)
    if not plain:
        problem = _fold_problem(name, text)
        if problem is not None:
            raise InvalidHeader(f"Header {name!r} value {text!r} cannot be rendered ({problem}).")


#: Longest "Name: value" line the email package is known to write back unfolded (email.policy.SMTP.max_line_length).
MAX_PLAIN_HEADER = 78


def _validate_header_counts(headers: list[str]) -> None:
    """A header that may appear once must not be given twice (in two spellings), nor beside Django's own."""
    counts = Counter(name.lower() for name in headers)
    for lowered, count in counts.items():
        if lowered in _REPLACED:
            continue  # Django uses headers["To"] (exact spelling) in place of its own and skips the rest
        limit = _MAX_COUNT.get(lowered)
        total = count + (lowered in _ALWAYS_SET)
        if limit is not None and total > limit:
            given = [name for name in headers if name.lower() == lowered]
            also = ", beside the one Django sets itself" if lowered in _ALWAYS_SET else ""
            raise InvalidHeader(
                f"Header {given[0]!r} may appear only once in a message, but headers= gives {given!r}{also}."
            )


def _validate_mimetype(mimetype: Any, where: str) -> None:
    if not isinstance(mimetype, str) or "/" not in mimetype or _LINE_BREAK.search(mimetype):
        raise InvalidMessage(f"{where} mimetype {mimetype!r} is not 'type/subtype'.")
    if _SURROGATE.search(mimetype):
        raise InvalidHeader(f"{where} mimetype {mimetype!r} contains a lone surrogate (text that is not Unicode).")


@lru_cache(maxsize=1024)
def _part_problem(maintype: str, subtype: str, filename: Any, charset: str | None) -> str | None:
    """Why the email package cannot write the headers of a part Django would build so, or None.

    An empty part built as Django builds a body, alternative or attachment
    (``set_content``: Content-Type, -Transfer-Encoding, -Disposition), then written.
    """
    part = email.message.EmailMessage(policy=_SMTP)
    disposition = "attachment" if filename is not None else None
    try:
        if maintype == "text":
            part.set_content("", subtype=subtype, charset=charset, disposition=disposition, filename=filename)
        else:
            part.set_content(b"", maintype=maintype, subtype=subtype, disposition=disposition, filename=filename)
        part.as_bytes()
    except _RENDERING_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None


def _check_part(mimetype: str, filename: Any, charset: str, where: str) -> None:
    """Unusual mimetypes and filenames: the part's headers must render."""
    plain_name = filename is None or (isinstance(filename, str) and _PLAIN_FILENAME.fullmatch(filename))
    if plain_name and _PLAIN_MIMETYPE.fullmatch(mimetype):
        return
    maintype, subtype = mimetype.split("/", 1)
    if maintype.lower() in ("message", "multipart"):
        return  # the content is a whole message: built by the generator's own handlers
    if isinstance(filename, tuple):
        filename = tuple(None if part is None else _as_rendered_text(part) for part in filename)
    elif filename is not None:
        filename = _as_rendered_text(filename)
    problem = _part_problem(maintype, subtype, filename, charset if maintype == "text" else None)
    if problem is not None:
        raise InvalidHeader(f"{where} (mimetype {mimetype!r}, filename {filename!r}) cannot be rendered ({problem}).")


def _validate_filename(filename: Any, where: str) -> None:
    parts = filename if isinstance(filename, tuple) else (filename,)  # RFC 2231 (charset, language, name)
    for part in parts:
        if part is not None:
            text = _as_rendered_text(part)
            if _LINE_BREAK.search(text):
                raise HeaderInjection(f"{where} filename {filename!r} contains a line break.")
            _check_encodable(text, f"{where} filename")


def _validate_content(content: Any, mimetype: str, where: str, charset: str, *, alternative: bool) -> None:
    """Text content must encode in ``charset``; ``text/*`` bytes of an alternative must be UTF-8.

    Other str content is encoded by Django as UTF-8 (an alternative: in ``charset``).
    """
    if not mimetype.startswith("text/"):
        if isinstance(content, str):
            _check_encodable(content, f"{where} content", charset if alternative else "utf-8")
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
            _validate_content(content, mimetype, where, charset, alternative=False)
            if mimetype.startswith("text/") and isinstance(content, bytes) and not _decodes(content):
                mimetype = "application/octet-stream"  # as Django sends it
            _check_part(mimetype, filename, charset, where)
    for index, (content, mimetype) in enumerate(getattr(message, "alternatives", None) or ()):
        where = f"alternatives[{index}]"
        _validate_mimetype(mimetype, where)
        _validate_content(content, mimetype, where, charset, alternative=True)
        _check_part(mimetype, None, charset, where)


def _decodes(content: bytes) -> bool:
    try:
        content.decode()
    except UnicodeDecodeError:
        return False
    return True


def _validate_attached_message(message: EmailMessage, where: str) -> None:
    """An attached (forwarded) message is rendered into this one: it must be valid too."""
    try:
        validate_message(message)
    except InvalidMessage as error:
        raise type(error)(f"{where} (an attached message): {error}") from None


def _validate_content_subtype(subtype: Any, charset: str) -> None:
    if subtype in _PLAIN_SUBTYPES:
        return
    if not isinstance(subtype, str):
        raise InvalidHeader(f"content_subtype {subtype!r} is not text.")
    if _LINE_BREAK.search(subtype):
        raise HeaderInjection(f"content_subtype {subtype!r} contains a line break.")
    if _SURROGATE.search(subtype):
        raise InvalidHeader(f"content_subtype {subtype!r} contains a lone surrogate (text that is not Unicode).")
    problem = _part_problem("text", subtype, None, charset)
    if problem is not None:
        raise InvalidHeader(f"content_subtype {subtype!r} cannot be rendered as text/{subtype} ({problem}).")


def _validate_json_text(value: Any, where: str) -> None:
    """Every string in an anymail attribute's value must be Unicode text, or it cannot travel as JSON."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise InvalidMessage(f"{where} contains a lone surrogate (text that is not Unicode).")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _validate_json_text(key, f"{where} key {key!r}")
            _validate_json_text(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _validate_json_text(item, f"{where}[{index}]")


_DJANGO_CLASSES = frozenset(cls for cls in EmailMessage.__subclasses__() if cls.__module__ == EmailMessage.__module__)
_ANYMAIL_SET = frozenset(ANYMAIL_ATTRIBUTES)


def _validate_anymail(message: EmailMessage) -> None:
    # Django's own classes carry anymail attributes only when set on the instance: one set lookup, not twelve.
    if (type(message) is EmailMessage or type(message) in _DJANGO_CLASSES) and _ANYMAIL_SET.isdisjoint(
        message.__dict__
    ):
        return
    for name in ANYMAIL_ATTRIBUTES:
        value = getattr(message, name, None)
        if value is not None:
            _validate_json_text(value, name)


#: The header each address list is rendered as (unless headers= gives one by that exact name).
_RENDERED_FIELDS = {"to": "To", "cc": "Cc", "reply_to": "Reply-To"}


def _validate_rendered_domains(addresses: list[str], field: str) -> None:
    """One non-ASCII domain in a rendered header makes rendering IDNA-encode every domain of that header."""
    reason = _parse_address_list(", ".join(addresses))
    if reason is not None:
        header = _RENDERED_FIELDS[field]
        raise InvalidAddress(f"{field} addresses cannot be rendered as one {header} header: it {reason}.")


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
    headers = message.extra_headers
    for values, field in ((message.to, "to"), (message.cc, "cc"), (message.bcc, "bcc"), (message.reply_to, "reply_to")):
        if values or isinstance(values, str):  # an empty string is still the wrong type
            texts = validate_addresses(values, field)
            if field != "bcc" and _RENDERED_FIELDS[field] not in headers and not all(map(str.isascii, texts)):
                _validate_rendered_domains(texts, field)
    limited = []  # names of headers that may appear only once: usually none
    for name, value in headers.items():
        validate_header(name, value)
        if name.lower() in _MAX_COUNT:
            limited.append(name)
    if len(limited) > 1 or (limited and limited[0].lower() in _ALWAYS_SET):
        _validate_header_counts(limited)
    _validate_content_subtype(message.content_subtype, charset)
    if message.attachments or getattr(message, "alternatives", None):
        _validate_attachments(message, charset)
    _validate_anymail(message)
