"""The envelope: a full-fidelity, versioned, JSON form of an EmailMessage.

It is what travels through Redis. ``Envelope.from_message()`` runs in the
request and never renders MIME; ``Envelope.to_message()`` runs in a worker and
rebuilds an EmailMessage that renders to what a synchronous send would have
sent. ``Date`` and ``Message-ID`` are fixed when the envelope is made, so
retries and failover resend the very same message; the ones mailqueue made
(not the caller) go out only where the message is rendered as MIME, so a
backend that sends fields (an anymail ESP's API) sends what a direct send
would. Never pickle: a payload is data, and a worker must be able to refuse
one it does not understand.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.message
import email.policy
import os
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.mime.base import MIMEBase
from email.utils import format_datetime
from types import MappingProxyType
from typing import Any, NamedTuple

from anymail.message import AnymailMessage
from django.core.mail import EmailAlternative, EmailAttachment, EmailMessage, EmailMultiAlternatives
from django.core.mail.utils import DNS_NAME
from django.utils.encoding import force_str
from django.utils.functional import Promise
from django.utils.timezone import get_current_timezone

from .anymail_attributes import capture_anymail, restore_anymail
from .conf import django_setting
from .exceptions import EnvelopeError, InvalidMessage, UnserializableMessage

ENVELOPE_VERSION = 1


_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def message_id(domain: str) -> str:
    """A Message-ID in ``email.utils.make_msgid``'s format, without its getpid() system call per message."""
    return f"<{int(time.time() * 100)}.{_pid}.{random.getrandbits(64)}@{domain}>"


def random_id() -> str:
    """32 random hex digits (128 bits): an envelope or Redis message id, at a fifth of uuid4's cost."""
    return os.urandom(16).hex()


def random_ids(count: int) -> list[str]:
    """``count`` ids like ``random_id()``'s, from one system call for a whole batch."""
    digits = os.urandom(16 * count).hex()
    return [digits[start : start + 32] for start in range(0, 32 * count, 32)]


_B64 = "b64"  # {"b64": "..."}: bytes content
_MIME = "mime"  # {"mime": "..."}: a whole MIME part, bytes as rendered
#: Message key listing the headers mailqueue generated, not the caller. Optional, so the format stays version 1:
#: a worker that predates it sends them as it always did, and an envelope without it has none.
_GENERATED = "generated"
#: What may be listed there: the headers Django would otherwise stamp at render time.
GENERATED_HEADERS = frozenset({"Date", "Message-ID"})


class Envelope(NamedTuple):
    """One message on its way: where it goes and everything needed to rebuild it.

    Immutable; a named tuple rather than a frozen dataclass because a batch builds
    thousands, and a frozen dataclass takes more than twice as long to build.
    """

    id: str
    queue: str
    mailer: str
    created_at: float
    message: Mapping[str, Any]
    version: int = ENVELOPE_VERSION

    @classmethod
    def from_message(cls, message: EmailMessage, *, queue: str, mailer: str, id: str | None = None) -> Envelope:
        """Capture ``message`` now; raise UnserializableMessage if a part cannot travel."""
        return cls(id or random_id(), queue, mailer, time.time(), serialize_message(message))

    def to_message(self) -> QueuedMessage:
        """Rebuild the message a worker hands to the provider's backend."""
        try:
            return rebuild_message(self.message)
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError, binascii.Error) as error:
            # ArithmeticError: decimal.InvalidOperation from a malformed "$decimal".
            raise EnvelopeError(
                f"envelope {self.id} has a malformed message: {error!r}", self.message, error
            ) from error

    def encode(self) -> dict[str, Any]:
        """The JSON-ready mapping stored in Redis."""
        return {
            "v": self.version,
            "id": self.id,
            "queue": self.queue,
            "mailer": self.mailer,
            "created_at": self.created_at,
            "message": self.message,
        }

    @classmethod
    def decode(cls, data: Any) -> Envelope:
        """Read what ``encode()`` wrote; anything else becomes one EnvelopeError."""
        if not isinstance(data, Mapping):
            raise EnvelopeError(f"envelope is a {type(data).__name__}, not a mapping", data)
        version = data.get("v")
        if version != ENVELOPE_VERSION:
            raise EnvelopeError(
                f"unknown envelope version {version!r}; this worker reads version {ENVELOPE_VERSION}", data
            )
        try:
            envelope = cls(
                id=str(data["id"]),
                queue=str(data["queue"]),
                mailer=str(data["mailer"]),
                created_at=float(data["created_at"]),
                message=data["message"],
            )
        except (KeyError, TypeError, ValueError) as error:
            raise EnvelopeError(f"envelope is missing or has a bad field: {error!r}", data, error) from error
        if not isinstance(envelope.message, Mapping):
            raise EnvelopeError("envelope 'message' is not a mapping", data)
        return envelope


# --- encoding helpers ---------------------------------------------------------


def _require_text(value: Any, where: str) -> str:
    """``value`` if it is text (a lazy translation is resolved now); UnserializableMessage naming ``where`` if not."""
    if isinstance(value, str):
        return value
    if isinstance(value, Promise):
        return str(value)
    raise UnserializableMessage(f"{where} must be text, not {type(value).__name__}.")


def _encode_content(value: Any, where: str) -> str | dict[str, str]:
    """A body, alternative or attachment content: text stays text, bytes-like becomes {"b64": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_B64: base64.b64encode(value).decode("ascii")}
    if isinstance(value, Promise):
        return str(value)
    raise UnserializableMessage(
        f"{where} is a {type(value).__name__}; only str or bytes can be queued. Read files before attaching them."
    )


def _decode_content(value: Any) -> str | bytes:
    """The inverse of ``_encode_content``."""
    if isinstance(value, str):
        return value
    return base64.b64decode(value[_B64], validate=True)


def _header_text(value: Any) -> str:
    """An extra header's value as Django renders it: a datetime in RFC 5322 form, anything else as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return format_datetime(value)
    return force_str(value)


_utc_date_cache: tuple[int, str] = (0, "")


def _now_header() -> str:
    """The Date header for now, as Django would write it (formatting is cached per second in UTC)."""
    global _utc_date_cache
    if django_setting("EMAIL_USE_LOCALTIME"):
        return format_datetime(datetime.now(get_current_timezone()))
    second = int(time.time())
    cached_second, header = _utc_date_cache
    if cached_second != second:
        header = format_datetime(datetime.fromtimestamp(second, UTC))
        _utc_date_cache = (second, header)
    return header


def _encode_filename(value: Any, where: str) -> Any:
    """An attachment filename: text, None, or an RFC 2231 (charset, language, name) triple as a list."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, tuple) and len(value) == 3:  # RFC 2231 (charset, language, name)
        return [_require_text(part, where) if part is not None else None for part in value]
    return _require_text(value, where)


def _mime_part(part: email.message.Message) -> dict[str, str]:
    data = part.as_bytes(policy=email.policy.default) if isinstance(part, email.message.MIMEPart) else part.as_bytes()
    return {_MIME: base64.b64encode(data).decode("ascii")}


def _attachment(attachment: Any, index: int) -> dict[str, Any]:
    where = f"attachments[{index}]"
    if isinstance(attachment, (email.message.MIMEPart, MIMEBase)):
        return _mime_part(attachment)
    try:
        filename, content, mimetype = attachment
    except (TypeError, ValueError):
        raise UnserializableMessage(
            f"{where} is a {type(attachment).__name__}; expected (filename, content, mimetype) or a MIMEPart."
        ) from None
    mimetype = _require_text(mimetype, f"{where} mimetype")
    if "/" not in mimetype:
        raise UnserializableMessage(f"{where} mimetype {mimetype!r} is not 'type/subtype'.")
    try:
        if isinstance(content, EmailMessage):
            content = content.message().as_bytes()
        elif isinstance(content, email.message.Message):
            content = content.as_bytes()
    except ValueError as error:  # UnicodeEncodeError too
        raise InvalidMessage(f"{where} content is a message that cannot be rendered: {error}") from error
    return {
        "filename": _encode_filename(filename, f"{where} filename"),
        "content": _encode_content(content, f"{where} content"),
        "mimetype": mimetype,
    }


def serialize_message(message: EmailMessage) -> dict[str, Any]:
    """The JSON-ready fields of ``message``; empty fields are left out."""
    # Date and Message-ID go first: that is where Django renders its own, so the
    # header order matches a synchronous send.
    if not message.extra_headers:
        # Most messages: no headers of their own, both generated.
        headers = {"Date": _now_header(), "Message-ID": message_id(str(DNS_NAME))}
        generated = ["Date", "Message-ID"]
    else:
        given = {
            _require_text(name, "header name"): _header_text(value) for name, value in message.extra_headers.items()
        }
        lowered = {name.lower() for name in given}
        headers = {}
        if "date" not in lowered:
            headers["Date"] = _now_header()
        if "message-id" not in lowered:
            headers["Message-ID"] = message_id(str(DNS_NAME))
        generated = list(headers)
        headers.update(given)

    fields: dict[str, Any] = {
        "subject": _require_text(message.subject, "subject"),
        "body": _encode_content(message.body, "body"),
        "from_email": _require_text(message.from_email, "from_email"),
        "headers": headers,
    }
    if generated:
        fields[_GENERATED] = generated
    for name in ("to", "cc", "bcc", "reply_to"):
        values = getattr(message, name)
        if values:
            fields[name] = [_require_text(value, name) for value in values]
    alternatives = getattr(message, "alternatives", None)
    if alternatives:
        fields["alternatives"] = [
            {
                "content": _encode_content(content, f"alternatives[{index}] content"),
                "mimetype": _require_text(mimetype, f"alternatives[{index}] mimetype"),
            }
            for index, (content, mimetype) in enumerate(alternatives)
        ]
    if message.attachments:
        fields["attachments"] = [_attachment(attachment, index) for index, attachment in enumerate(message.attachments)]
    if message.content_subtype != "plain":
        fields["content_subtype"] = _require_text(message.content_subtype, "content_subtype")
    if message.encoding is not None:
        fields["encoding"] = str(message.encoding)

    anymail = capture_anymail(message)
    if anymail is not None:
        fields["anymail"] = anymail
    return fields


def _rebuild_attachment(item: Mapping[str, Any]) -> Any:
    if _MIME in item:
        data = base64.b64decode(item[_MIME], validate=True)
        return email.message_from_bytes(data, _class=email.message.MIMEPart, policy=email.policy.default)  # type: ignore[arg-type]
    filename = item["filename"]
    if isinstance(filename, list):
        filename = tuple(filename)
    return EmailAttachment(filename, _decode_content(item["content"]), item["mimetype"])


class QueuedMessage(EmailMultiAlternatives):
    """A message rebuilt from an envelope: the Date and Message-ID mailqueue generated live only in its MIME.

    They are not in ``extra_headers``, which is what a backend that sends
    fields reads (anymail's ESP backends put it in their API's headers), so
    such a backend sends what a direct send of the caller's message would:
    nothing added, and each message of a batch send gets its own Message-ID
    from the ESP. Every rendering as MIME (``message()``, whoever calls it: the
    SMTP backend, anymail's Amazon SES, a console or file backend) carries the
    fixed ones, where Django would have stamped its own, so every attempt on
    such a backend sends the very same message.
    """

    #: The generated headers, by name (empty for an envelope that has none, or predates the marker).
    fixed_headers: Mapping[str, str] = MappingProxyType({})
    #: Set once a rendering carried ``fixed_headers`` (``rendered_headers()`` was asked); the worker clears it.
    fixed_headers_rendered: bool = False

    def rendered_headers(self) -> Mapping[str, Any]:
        """``extra_headers`` as a MIME rendering writes them: the fixed headers first, where Django stamps its own."""
        if not self.fixed_headers:
            return self.extra_headers
        self.fixed_headers_rendered = True
        return {**self.fixed_headers, **self.extra_headers}

    def message(self, *, policy: email.policy.Policy | None = email.policy.default) -> email.message.EmailMessage:
        if not self.fixed_headers:
            return super().message(policy=policy)
        headers = self.extra_headers
        self.extra_headers = dict(self.rendered_headers())
        try:
            return super().message(policy=policy)
        finally:
            self.extra_headers = headers

    def sent_message_id(self) -> str | None:
        """The Message-ID that went out: the caller's, or the fixed one if a MIME rendering carried it."""
        for name, value in self.extra_headers.items():
            if name.lower() == "message-id":
                return str(value)
        return self.fixed_headers.get("Message-ID") if self.fixed_headers_rendered else None


class QueuedAnymailMessage(QueuedMessage, AnymailMessage):  # type: ignore[misc]  # anymail has no type hints
    """An AnymailMessage rebuilt from an envelope (see QueuedMessage)."""


def _fixed_headers(headers: dict[str, Any], generated: Any) -> dict[str, str]:
    """Take the generated headers out of ``headers``; a name that cannot be one is a malformed envelope."""
    fixed = {}
    for name in generated:
        if name not in GENERATED_HEADERS:
            raise ValueError(f"{name!r} is not a header mailqueue generates")
        fixed[name] = headers.pop(name)
    return fixed


def rebuild_message(fields: Mapping[str, Any]) -> QueuedMessage:
    """The inverse of ``serialize_message``."""
    anymail = fields.get("anymail")
    cls = QueuedAnymailMessage if anymail is not None else QueuedMessage
    headers = dict(fields["headers"])
    fixed = _fixed_headers(headers, fields.get(_GENERATED, ()))
    # A bytes body is rendered by Django like text (it is decoded with surrogateescape).
    message = cls(
        subject=fields["subject"],
        body=_decode_content(fields["body"]),  # type: ignore[arg-type]
        from_email=fields["from_email"],
        to=fields.get("to"),
        cc=fields.get("cc"),
        bcc=fields.get("bcc"),
        reply_to=fields.get("reply_to"),
        headers=headers,
    )
    if fixed:
        message.fixed_headers = fixed
    message.alternatives = [
        EmailAlternative(_decode_content(item["content"]), item["mimetype"]) for item in fields.get("alternatives", ())
    ]
    message.attachments = [_rebuild_attachment(item) for item in fields.get("attachments", ())]
    if "content_subtype" in fields:
        message.content_subtype = fields["content_subtype"]
    if "encoding" in fields:
        message.encoding = fields["encoding"]
    if anymail is not None:
        restore_anymail(message, anymail)
    return message
