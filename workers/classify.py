"""Sorting provider failures by what can still help.

- **Permanent**: the message itself is the problem and no provider will take
  it: every recipient refused with a 5xx, or anymail judged an address invalid
  or the message unserializable. Dead-lettered at once.
- **Refused by this provider**: the provider's account or policy is the
  problem (sender not allowed, content refused with a 5xx, an HTTP 4xx API
  error about the request, a feature it lacks). Not retried on that provider;
  the next one in the chain is tried.
- **Transient**: everything else, including errors we do not recognise, so a
  surprise costs a retry rather than a lost message. Timeouts, connection
  errors, SMTP 4xx, HTTP 5xx/408/409/425/429, and 401/403/404 (credentials,
  account, API URL: about the provider, so failing over helps). A provider's
  configuration error is transient too, and logged loudly (see delivery.py).

A provider backend may also fail on the message itself (Django's SMTP backend
refusing an address it cannot prepare, a message that cannot be rendered).
``message_fault`` tells those apart by type, by doing the same step again
outside the provider: such a failure is permanent, whatever error class it had.
"""

from __future__ import annotations

import smtplib
from typing import Any

from anymail.exceptions import (
    AnymailAPIError,
    AnymailInvalidAddress,
    AnymailRecipientsRefused,
    AnymailSerializationError,
    AnymailUnsupportedFeature,
)
from django.core.mail import EmailMessage

from mailqueue.exceptions import DeliveryError, PermanentDeliveryError, ProviderRefused, TransientDeliveryError

#: HTTP 4xx statuses that are about the provider, not the request: try again
#: later (408, 409, 425, 429) or fail over (401, 403, 404).
TRANSIENT_HTTP_STATUSES = frozenset({401, 403, 404, 408, 409, 425, 429})

_PERMANENT_ANYMAIL = (AnymailRecipientsRefused, AnymailInvalidAddress, AnymailSerializationError)

#: What rendering a message or preparing its addresses raises when the message itself is at fault.
MESSAGE_ERRORS = (ValueError, TypeError, LookupError)


def _is_5xx(code: int) -> bool:
    return 500 <= code < 600


def kind_of(error: BaseException) -> type[DeliveryError]:
    """Which DeliveryError class ``error`` amounts to."""
    if isinstance(error, _PERMANENT_ANYMAIL):
        return PermanentDeliveryError
    if isinstance(error, AnymailUnsupportedFeature):
        return ProviderRefused
    if isinstance(error, AnymailAPIError):
        status = error.status_code
        if status is not None and 400 <= status < 500 and status not in TRANSIENT_HTTP_STATUSES:
            return ProviderRefused
        return TransientDeliveryError
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in error.recipients.values()]
        return PermanentDeliveryError if codes and all(map(_is_5xx, codes)) else TransientDeliveryError
    if isinstance(error, (smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) and _is_5xx(error.smtp_code):
        return ProviderRefused
    return TransientDeliveryError


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
    """Wrap a provider's exception in the DeliveryError subclass that says what to do next."""
    return kind_of(error)(describe(error), envelope_id=envelope_id, provider=provider, cause=error)


def message_fault(message: EmailMessage, backend: Any = None) -> str | None:
    """Why the message itself cannot be sent (rendering it, or ``backend`` preparing its addresses); else None.

    Run after a send failed with one of MESSAGE_ERRORS: if rendering and
    address preparation succeed here, the failure came from the provider.
    """
    try:
        message.message()
    except MESSAGE_ERRORS as error:
        return f"message cannot be rendered: {type(error).__name__}: {error}"
    prepare = getattr(backend, "prep_address", None)
    if prepare is not None:
        for address in (message.from_email, *message.recipients()):
            try:
                prepare(address)
            except MESSAGE_ERRORS as error:
                return f"message has an address the provider cannot use: {type(error).__name__}: {error}"
    return None
