"""The anymail attributes an envelope carries (tags, metadata, send_at, ...), and their JSON form.

The list is anymail's own: every attribute its backends read from a message
(``BasePayload.anymail_message_attrs``), so an attribute a new anymail release
adds travels without a change here. Values that JSON cannot hold (datetimes,
dates, decimals) travel as one-key tagged dicts and come back as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from anymail.backends.base import BasePayload
from anymail.message import AnymailMessageMixin
from anymail.utils import UNSET
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.utils.functional import Promise

from .exceptions import UnserializableMessage

#: Every attribute anymail reads from a message, in anymail's order; carried when set.
ANYMAIL_ATTRIBUTES: tuple[str, ...] = tuple(name for name, _combiner, _converter in BasePayload.anymail_message_attrs)

_ANYMAIL_SET = frozenset(ANYMAIL_ATTRIBUTES)
_DJANGO_CLASSES = (EmailMessage, EmailMultiAlternatives)


def capture_anymail(message: EmailMessage) -> dict[str, Any] | None:
    """The anymail attributes set on ``message``, JSON-ready; None for a plain message that sets none.

    An AnymailMessage always gets a (possibly empty) mapping, so the worker rebuilds an AnymailMessage.
    """
    captured: dict[str, Any] = {}
    # Django's own classes can only carry anymail attributes set on the instance: one set lookup, not twelve.
    if type(message) not in _DJANGO_CLASSES or not _ANYMAIL_SET.isdisjoint(message.__dict__):
        for name in ANYMAIL_ATTRIBUTES:
            value = getattr(message, name, UNSET)
            if value is not UNSET:
                captured[name] = to_json(value, name)
    if captured or isinstance(message, AnymailMessageMixin):
        return captured
    return None


def restore_anymail(message: EmailMessage, captured: Mapping[str, Any]) -> None:
    """Set on ``message`` what ``capture_anymail`` captured; ValueError for an attribute anymail does not read."""
    for name, value in captured.items():
        if name not in _ANYMAIL_SET:
            raise ValueError(f"unknown anymail attribute {name!r}")
        setattr(message, name, from_json(value))


def to_json(value: Any, where: str) -> Any:
    """A JSON-ready copy of an anymail attribute's value; UnserializableMessage naming ``where`` if it has none.

    Datetimes, dates and decimals become one-key dicts tagged "$datetime",
    "$date" or "$decimal"; a user dict with a key starting with "$" is wrapped
    as {"$dict": ...} so it can never be mistaken for a tag.
    """
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Promise):
        return str(value)
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnserializableMessage(f"{where} has a non-text key {key!r}.")
            result[key] = to_json(item, f"{where}[{key!r}]")
        if any(key.startswith("$") for key in result):
            return {"$dict": result}  # escape: the user's keys must not read as type tags
        return result
    if isinstance(value, (list, tuple)):
        return [to_json(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise UnserializableMessage(f"{where} is a {type(value).__name__}, which cannot be queued as JSON.")


def from_json(value: Any) -> Any:
    """The value ``to_json`` was given (a tuple comes back as a list, as JSON has no tuples)."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, item),) = value.items()
            if tag == "$datetime":
                return datetime.fromisoformat(item)
            if tag == "$date":
                return date.fromisoformat(item)
            if tag == "$decimal":
                return Decimal(item)
            if tag == "$dict":
                return {key: from_json(value) for key, value in item.items()}
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value
