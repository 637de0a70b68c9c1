"""Provider backends for tests that must control timing exactly (a Redis outage at a given moment).

Where the provider itself is under test, tests use the real aiosmtpd server
(tests/servers.py) instead.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import redis
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend

#: Subjects accepted by RecordingBackend and SlowBackend, in order.
SENT: list[str] = []
#: Set when SlowBackend starts a send.
STARTED = threading.Event()


class RecordingBackend(BaseEmailBackend):
    """Accepts at once, then runs ``after_send`` (e.g. to stop Redis right after a provider took mail)."""

    after_send: ClassVar[Callable[[], None] | None] = None

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        SENT.extend(str(message.subject) for message in email_messages)
        if RecordingBackend.after_send is not None:
            RecordingBackend.after_send()
        return len(email_messages)


class BouncingBackend(BaseEmailBackend):
    """Refuses every recipient with a 550 (a permanent failure), after running ``after_send``."""

    after_send: ClassVar[Callable[[], None] | None] = None

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        SENT.extend(str(message.subject) for message in email_messages)
        if BouncingBackend.after_send is not None:
            BouncingBackend.after_send()
        refused = {address: (550, b"5.1.1 no such user") for address in email_messages[0].recipients()}
        raise smtplib.SMTPRecipientsRefused(refused)


class SlowBackend(BaseEmailBackend):
    """Takes ``seconds`` per message, then accepts it."""

    seconds: ClassVar[float] = 2.0

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        for message in email_messages:
            STARTED.set()
            time.sleep(SlowBackend.seconds)
            SENT.append(str(message.subject))
        return len(email_messages)


class TimedSMTPBackend(SMTPBackend):
    """Django's SMTP backend that records, in a Redis list, when each send starts.

    What a rate limit governs is when workers release sends; arrival times at
    the server also carry each process's scheduling delays on a loaded machine.
    """

    def __init__(self, *, timing_url: str, timing_key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timing = redis.Redis.from_url(timing_url)
        self.timing_key = timing_key

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        self.timing.rpush(self.timing_key, *[time.time()] * len(email_messages))
        return super().send_messages(email_messages)


class RefusingBackend(BaseEmailBackend):
    """Refuses the sender (a 5xx that another provider may not give)."""

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        raise smtplib.SMTPSenderRefused(550, b"5.7.1 sender not allowed here", "from@example.com")
