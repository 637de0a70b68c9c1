"""Cheap checks that make bad input fail at send_mail() time, not in a worker.

The request path must not render MIME, so instead of calling
``EmailMessage.message()`` we check what rendering would reject: addresses
that are not one mailbox, CR/LF in headers, and invalid header names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.headerregistry import HeaderRegistry
from functools import lru_cache
from typing import Any

from django.core.mail import EmailMessage
from django.utils.encoding import force_str

from .exceptions import HeaderInjection, InvalidAddress, InvalidMessage

# A plain, all-ASCII "local@domain.tld": the overwhelmingly common case,
# accepted without running the full RFC 5322 parser.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 5322 field names: printable US-ASCII except colon.
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to", "sender"})
_header_factory = HeaderRegistry()


@lru_cache(maxsize=4096)
def _parse_mailbox(value: str) -> str | None:
    """Return why ``value`` is not exactly one mailbox, or None when it is."""
    try:
        header = _header_factory("To", value)
    except (ValueError, IndexError, TypeError) as error:
        return f"cannot be parsed ({error})"
    addresses = header.addresses  # type: ignore[attr-defined]
    if len(addresses) != 1:
        return f"holds {len(addresses)} addresses; give one address per list item"
    address = addresses[0]
    if not address.username or not address.domain:
        return "needs both a local part and a domain"
    if header.defects:
        return str(header.defects[0])
    return None


@lru_cache(maxsize=1024)
def _parse_address_list(value: str) -> str | None:
    """Return why ``value`` is not a list of valid mailboxes, or None when it is."""
    if _CONTROL.search(value):
        return "contains a control character"
    try:
        header = _header_factory("To", value)
    except (ValueError, IndexError, TypeError) as error:
        return f"cannot be parsed ({error})"
    if header.defects:
        return str(header.defects[0])
    for address in header.addresses:  # type: ignore[attr-defined]
        if not address.username or not address.domain:
            return f"has {address!s}, which lacks a local part or domain"
    return None


def validate_address(value: Any, field: str) -> str:
    """Return ``value`` as text if it is one valid mailbox, else raise InvalidAddress."""
    text: str = value if isinstance(value, str) else str(force_str(value))
    if _PLAIN_ADDRESS.fullmatch(text):
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
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        raise HeaderInjection(f"Header {name!r} contains a newline: {value!r}.")
    if lowered in _ADDRESS_HEADERS:
        reason = _parse_address_list(force_str(value))
        if reason is not None:
            raise InvalidAddress(f"Header {name!r} value {value!r} is invalid: it {reason}.")


def validate_message(message: EmailMessage) -> None:
    """Raise an InvalidMessage subclass naming the first problem in ``message``."""
    subject = message.subject if isinstance(message.subject, str) else force_str(message.subject)
    if "\n" in subject or "\r" in subject:
        raise HeaderInjection(f"Subject contains a newline: {subject!r}.")
    validate_address(message.from_email, "from_email")
    validate_addresses(message.to, "to")
    validate_addresses(message.cc, "cc")
    validate_addresses(message.bcc, "bcc")
    validate_addresses(message.reply_to, "reply_to")
    for name, value in message.extra_headers.items():
        validate_header(name, value)
