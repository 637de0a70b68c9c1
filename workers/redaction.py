"""Addresses taken out of the text that goes into log lines.

Providers name recipients in their errors (``SMTPRecipientsRefused`` is a
mapping of addresses, an ESP answers "Found inactive addresses: ..."), and
those errors become the reasons the worker logs. Logs are read, shipped and
kept far more widely than the queue's own records, so every address in a
logged reason is cut down to its domain: ``***@example.com`` still says which
mailbox provider refused, not who. The dead letter in Redis keeps the reason
whole, beside the payload that holds the addresses anyway.

``ActorArguments`` keeps Dramatiq's own DEBUG line about each call from
writing out the envelope.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

_ATOM = r"[^\s<>()\[\]{}\"',;:@\\]+"
#: An addr-spec as errors quote it, bare, in <...>, in quotes or in a repr; a quoted local part too.
ADDRESS = re.compile(rf"(?:\"[^\"\r\n]*\"|{_ATOM})@({_ATOM})")


#: A display name (bare words or quoted) just before an address in angle brackets, where a quoted or listed
#: address starts: ``'Bob Hidden <bob@x>'``, ``, "Bob" <bob@x>``; not an SMTP reply's ``451 4.2.1 <bob@x>``.
NAMED = re.compile(
    rf"(?:(?<=['\"(\[,])|^)([ \t]*)(?:\"[^\"\r\n]*\"|{_ATOM}(?:[ \t]+{_ATOM})*)[ \t]*<"
    rf"(?=(?:\"[^\"\r\n]*\"|{_ATOM})@{_ATOM}>)"
)


def redact_addresses(text: str) -> str:
    """``text`` with each email address's local part replaced by ``***``, and a display name before it dropped.

    A name may take a word or two of the sentence before it with it: a log
    line that says too little is the safe side.
    """
    if "@" not in text:
        return text
    return ADDRESS.sub(r"***@\1", NAMED.sub(r"\1<", text))


class _Shown(str):
    """Text that ``%r`` writes as it is."""

    def __repr__(self) -> str:
        return str(self)


def _argument(value: object) -> _Shown:
    if isinstance(value, Mapping) and "id" in value:
        return _Shown(f"<envelope {value['id']}>")
    return _Shown(f"<{type(value).__name__}>")


class ActorArguments(logging.Filter):
    """On a delivery actor's logger: the arguments Dramatiq logs for every call, as envelope ids.

    Dramatiq's ``Actor.__call__`` logs ``args`` and ``kwargs`` with ``%r`` at
    DEBUG, and the argument is the envelope: subject, body, recipients,
    attachments. The record is recognised by its arguments, not its wording.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        arguments = record.args
        if isinstance(arguments, tuple) and len(arguments) == 2:
            args, kwargs = arguments
            if isinstance(args, tuple) and isinstance(kwargs, dict):
                record.args = (tuple(map(_argument, args)), {name: _argument(value) for name, value in kwargs.items()})
        return True


#: The one instance every delivery actor's logger carries (adding it twice keeps one).
actor_arguments = ActorArguments()
