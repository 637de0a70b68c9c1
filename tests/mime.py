"""Comparing messages by their parsed MIME, not their bytes (boundaries are random)."""

from __future__ import annotations

import email
import email.policy
from typing import Any

from django.core.mail import EmailMessage

IGNORED_PARAMS = {"boundary"}


def _headers(part: email.message.EmailMessage) -> list[tuple[str, str]]:
    headers = []
    for name, value in part.items():
        if name.lower() == "content-type":
            params = sorted((key, val) for key, val in part.get_params() or [] if key not in IGNORED_PARAMS)
            value = f"{part.get_content_type()};{params}"
        headers.append((name.lower(), str(value)))
    return headers


def structure(message: email.message.EmailMessage) -> list[Any]:
    """Every part's headers and decoded payload, in order."""
    parts = []
    for part in message.walk():
        payload = None if part.is_multipart() else part.get_payload(decode=True)
        parts.append((_headers(part), payload))
    return parts


def parsed(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def rendered(message: EmailMessage) -> list[Any]:
    """What a synchronous send of ``message`` would put on the wire, parsed."""
    return structure(parsed(message.message().as_bytes()))
