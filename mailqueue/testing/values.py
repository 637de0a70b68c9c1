"""What a capture hands a test: the messages it saw queued, handed to providers and delivered, as frozen values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from django.core.mail import EmailMessage

from mailqueue.envelope import Envelope

#: What ``deliver()`` hands each provider alias to: a locmem stand-in, or the backend configured in MAILERS.
Providers = Literal["locmem", "configured"]


@dataclass(frozen=True, kw_only=True)
class QueuedMail:
    """One message that reached a queue: where it went, and enough of it to assert on."""

    envelope_id: str
    queue: str
    #: The MAILERS alias the application sent through (``using=``).
    mailer: str
    subject: str
    from_email: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    envelope: Envelope = field(repr=False)

    @classmethod
    def of(cls, envelope: Envelope) -> QueuedMail:
        fields = envelope.message
        return cls(
            envelope_id=envelope.id,
            queue=envelope.queue,
            mailer=envelope.mailer,
            subject=str(fields.get("subject", "")),
            from_email=str(fields.get("from_email", "")),
            to=tuple(fields.get("to", ())),
            cc=tuple(fields.get("cc", ())),
            bcc=tuple(fields.get("bcc", ())),
            envelope=envelope,
        )

    @property
    def recipients(self) -> tuple[str, ...]:
        return self.to + self.cc + self.bcc

    @property
    def message(self) -> EmailMessage:
        """The message as a worker rebuilds it from the envelope (body, alternatives, attachments, headers)."""
        return self.envelope.to_message()

    def describe(self) -> str:
        """One line for a failure message: queue, mailer, recipients and subject (a test's own data)."""
        return f"queue={self.queue!r} mailer={self.mailer!r} to={list(self.to)!r} subject={self.subject!r}"


@dataclass(frozen=True, kw_only=True)
class ProviderCall:
    """One hand-off of a message to a provider during ``deliver()``, whether it took it or not."""

    provider: str
    envelope_id: str | None
    #: The message exactly as the provider received it (a copy).
    message: EmailMessage
    #: What the provider raised (a ``fail_provider`` error), or None when it took the message.
    error: BaseException | None


@dataclass(frozen=True, kw_only=True)
class DeliveredMail:
    """A message a provider accepted during ``deliver()``."""

    envelope_id: str
    queue: str
    mailer: str
    #: The MAILERS alias of the provider that took it.
    provider: str
    #: 1 for the first attempt; a failover inside one attempt does not count, a retry does.
    attempt: int
    #: The message as that provider received it.
    message: EmailMessage
