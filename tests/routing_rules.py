"""A routing callable used by the routing tests."""

from django.core.mail import EmailMessage


def by_subject(message: EmailMessage) -> str | None:
    if message.subject.startswith("[urgent]"):
        return "critical"
    if message.subject.startswith("[nowhere]"):
        return "nosuchqueue"
    return None
