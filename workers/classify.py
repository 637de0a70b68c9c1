"""Sorting provider failures by what can still help, and by whose fault they are.

- **Permanent**: no provider will take the message: every recipient refused
  with a 5xx, or the message itself is at fault. Dead-lettered at once.
- **Refused by this provider**: the provider's account or policy is the
  problem (sender not allowed, content refused with a 5xx, an HTTP 4xx API
  error about the request, a feature it lacks). Not retried on that provider;
  the next one in the chain is tried.
- **Transient**: everything else, including errors we do not recognise, so a
  surprise costs a retry rather than a lost message. Timeouts, connection
  errors, SMTP 4xx, HTTP 5xx/408/409/425/429, and 401/403/404 (credentials,
  account, API URL: about the provider, so failing over helps). A provider's
  configuration error is transient too, and logged loudly (see delivery.py).

**Message faults** (``DeliveryError.message_fault``) are failures of the
message, not of the provider, and never count against the provider's circuit
or failure counters: a message that cannot be rendered, encoded or addressed
(whatever error class the backend raised: ``message_fault`` confirms it by
doing the same step again outside the provider, and names the field), anymail
refusing an address or a value before sending, an ESP's validation of this
one message (Postmark's ErrorCode 300 and 411), and a feature the provider
lacks (``AnymailUnsupportedFeature``). All are permanent, except the missing
feature: another provider of the chain may have it, so it is a refusal by this
provider, and the message is dead-lettered only when no provider takes it.
"""

from __future__ import annotations

import email.errors
import email.policy
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

from mailqueue.exceptions import (
    DeliveryError,
    InvalidMessage,
    PermanentDeliveryError,
    ProviderRefused,
    TransientDeliveryError,
)
from mailqueue.validation import validate_message

#: HTTP 4xx statuses that are about the provider, not the request: try again
#: later (408, 409, 425, 429) or fail over (401, 403, 404).
TRANSIENT_HTTP_STATUSES = frozenset({401, 403, 404, 408, 409, 425, 429})

_PERMANENT_ANYMAIL = (AnymailRecipientsRefused, AnymailInvalidAddress, AnymailSerializationError)
#: What anymail raises about the message while building the request, before anything is sent.
_ANYMAIL_MESSAGE_FAULTS = (AnymailInvalidAddress, AnymailSerializationError, AnymailUnsupportedFeature)

#: Per ESP (anymail's ``esp_name``), the API error codes that refuse this one message after validating it:
#: Postmark's 300 "Invalid email request" (a bad From or Reply-To, no body, over 50 recipients, bad
#: metadata...) and 411 "Forbidden attachment type". (Its 406, every recipient inactive, is anymail's
#: AnymailRecipientsRefused.) Other codes (sender signature, account) are about the account: refusals.
ESP_MESSAGE_ERROR_CODES: dict[str, frozenset[int]] = {"Postmark": frozenset({300, 411})}

#: What rendering a message or preparing its addresses raises when the message itself is at fault.
MESSAGE_ERRORS = (ValueError, TypeError, LookupError, AttributeError, email.errors.MessageError)


def _is_5xx(code: int) -> bool:
    return 500 <= code < 600


def _esp_error_code(error: AnymailAPIError) -> int | None:
    """The ESP's own error code in the JSON body of its answer (Postmark's "ErrorCode"), if any."""
    response = getattr(error, "response", None)
    try:
        code = response.json().get("ErrorCode") if response is not None else None
    except (ValueError, AttributeError):  # not JSON, or JSON that is not an object
        return None
    return code if isinstance(code, int) else None


def is_message_fault(error: BaseException) -> bool:
    """Whether ``error`` is the provider's verdict on this message's content, not a failure of the provider."""
    if isinstance(error, _ANYMAIL_MESSAGE_FAULTS):
        return True
    if isinstance(error, AnymailAPIError) and error.status_code is not None and 400 <= error.status_code < 500:
        codes = ESP_MESSAGE_ERROR_CODES.get(getattr(error, "esp_name", None) or "")
        return codes is not None and _esp_error_code(error) in codes
    return False


def kind_of(error: BaseException) -> type[DeliveryError]:
    """Which DeliveryError class ``error`` amounts to."""
    if isinstance(error, _PERMANENT_ANYMAIL):
        return PermanentDeliveryError
    if isinstance(error, AnymailUnsupportedFeature):
        return ProviderRefused
    if is_message_fault(error):
        return PermanentDeliveryError
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
    return kind_of(error)(
        describe(error),
        envelope_id=envelope_id,
        provider=provider,
        cause=error,
        message_fault=is_message_fault(error),
    )


def found_before_sending(failure: DeliveryError) -> bool:
    """Whether ``failure`` is a message fault found before any exchange with the provider about the message.

    anymail's own checks, rendering and preparing the addresses all run before
    a request or a DATA command: the provider never saw the message, so it must
    not count against the provider's quota either. An ESP's validation (an
    ``AnymailAPIError`` in its answer) came after the provider had it.
    """
    return failure.message_fault and not isinstance(failure.cause, AnymailAPIError)


def invalid_field(message: EmailMessage) -> str | None:
    """What send_mail()'s checks say is wrong with ``message`` (naming the field), or None if they pass.

    An envelope queued by an older version, or written to Redis by other code, has not been through them.
    """
    try:
        validate_message(message)
    except InvalidMessage as error:
        return f"{type(error).__name__}: {error}"
    return None


def message_fault(message: EmailMessage, backend: Any = None) -> str | None:
    """Why the message itself cannot be sent (rendering it, or ``backend`` preparing its addresses); else None.

    Run after a send failed with one of MESSAGE_ERRORS: if the message passes
    send_mail()'s checks, renders (as Django's SMTP backend renders it) and
    its addresses can be prepared here, the failure came from the provider.
    The reason names the field where it can.
    """
    invalid = invalid_field(message)
    if invalid is not None:
        return f"the message is invalid: {invalid}"
    try:
        message.message(policy=email.policy.SMTP).as_bytes()
    except MESSAGE_ERRORS as error:
        return f"the message cannot be rendered: {type(error).__name__}: {error}"
    prepare = getattr(backend, "prep_address", None)
    if prepare is not None:
        fields = [("from_email", message.from_email)]
        fields += [
            (f"{field}[{index}]", address)
            for field in ("to", "cc", "bcc")
            for index, address in enumerate(getattr(message, field) or ())
        ]
        for field, address in fields:
            try:
                prepare(address)
            except MESSAGE_ERRORS as error:
                # Named by field and position, not by value: the reason is logged, and logs carry no addresses.
                return f"{field} address cannot be used by the provider: {type(error).__name__}: {error}"
    return None
