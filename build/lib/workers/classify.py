"""Sorting provider failures into transient (retry, fail over) and permanent (stop).

Only failures that retrying can never fix are permanent: the provider refused
every recipient or the message content with a 5xx, or anymail judged the
message invalid. Everything else, including errors we do not recognise, is
transient, so a surprise costs a retry rather than a lost message. A
provider's configuration error is transient too: the next provider in the
chain can still deliver, and the error is logged loudly (see delivery.py).
"""

from __future__ import annotations

import smtplib

from anymail.exceptions import (
    AnymailAPIError,
    AnymailInvalidAddress,
    AnymailRecipientsRefused,
    AnymailSerializationError,
    AnymailUnsupportedFeature,
)

from mailqueue.exceptions import DeliveryError, PermanentDeliveryError, TransientDeliveryError

#: HTTP 4xx statuses that are about the provider, not the message: try again
#: later (408, 409, 425, 429) or fail over (401, 403, 404: credentials, account, API URL).
TRANSIENT_HTTP_STATUSES = frozenset({401, 403, 404, 408, 409, 425, 429})

_PERMANENT_ANYMAIL = (
    AnymailRecipientsRefused,
    AnymailInvalidAddress,
    AnymailSerializationError,
    AnymailUnsupportedFeature,
)


def _smtp_is_permanent(error: smtplib.SMTPException) -> bool:
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in error.recipients.values()]
        return bool(codes) and all(500 <= code < 600 for code in codes)
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return False  # the provider's credentials, not the message: fail over
    if isinstance(error, (smtplib.SMTPSenderRefused, smtplib.SMTPDataError)):
        return 500 <= error.smtp_code < 600
    return False


def _http_is_permanent(error: AnymailAPIError) -> bool:
    status = error.status_code
    if status is None:  # no response at all: connection refused, timeout, DNS
        return False
    return 400 <= status < 500 and status not in TRANSIENT_HTTP_STATUSES


def is_permanent(error: BaseException) -> bool:
    """True when sending the same message again cannot succeed."""
    if isinstance(error, _PERMANENT_ANYMAIL):
        return True
    if isinstance(error, AnymailAPIError):
        return _http_is_permanent(error)
    if isinstance(error, smtplib.SMTPException):
        return _smtp_is_permanent(error)
    return False


def _smtp_text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)


def describe(error: BaseException) -> str:
    """A one-line reason an operator can read in the dead-letter list."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        refused = "; ".join(f"{rcpt}: {code} {_smtp_text(text)}" for rcpt, (code, text) in error.recipients.items())
        return f"SMTPRecipientsRefused: {refused}"
    if isinstance(error, smtplib.SMTPResponseException):
        return f"{type(error).__name__}: {error.smtp_code} {_smtp_text(error.smtp_error)}"
    return f"{type(error).__name__}: {error}"


def classify(error: BaseException, *, provider: str, envelope_id: str) -> DeliveryError:
    """Wrap a provider's exception as a Transient- or PermanentDeliveryError."""
    kind = PermanentDeliveryError if is_permanent(error) else TransientDeliveryError
    return kind(
        describe(error),
        envelope_id=envelope_id,
        provider=provider,
        cause=error,
    )
