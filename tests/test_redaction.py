"""workers.redaction: what the logged reasons keep of an address, and Dramatiq's per-call DEBUG line."""

from __future__ import annotations

import logging

import pytest

from workers.redaction import actor_arguments, redact_addresses


@pytest.mark.parametrize(
    ("reason", "logged"),
    [
        (
            "SMTPRecipientsRefused: ann.smith@example.com: 451 4.2.1 <ann.smith@example.com>: busy",
            "SMTPRecipientsRefused: ***@example.com: 451 4.2.1 <***@example.com>: busy",
        ),
        ("{'bo+tag@mail.example.org': (550, b'no such user')}", "{'***@mail.example.org': (550, b'no such user')}"),
        (
            "Found inactive addresses: gone@example.com, x@b.example.",
            "Found inactive addresses: ***@example.com, ***@b.example.",
        ),
        ('rejected "john doe"@example.com', "rejected ***@example.com"),
        ("bcc address 'Bob Hidden <bob@example.com>' is invalid", "bcc address '<***@example.com>' is invalid"),
        ('to: ann@example.com, "Smith, Bob" <bob@example.com>', "to: ***@example.com, <***@example.com>"),
        ("Bob Hidden <bob@example.com>", "<***@example.com>"),
        (
            "ConnectionRefusedError: [Errno 111] Connection refused",
            "ConnectionRefusedError: [Errno 111] Connection refused",
        ),
    ],
)
def test_addresses_keep_only_their_domain(reason: str, logged: str) -> None:
    assert redact_addresses(reason) == logged


def test_dramatiq_s_per_call_line_names_the_envelope_not_its_content() -> None:
    envelope = {"v": 1, "id": "4cd786eb", "message": {"subject": "Secret", "to": ["ann@example.com"]}}
    record = logging.LogRecord("a", logging.DEBUG, __file__, 1, "Received args=%r kwargs=%r.", ((envelope,), {}), None)
    assert actor_arguments.filter(record)
    assert record.getMessage() == "Received args=(<envelope 4cd786eb>,) kwargs={}."
    other = logging.LogRecord("a", logging.DEBUG, __file__, 1, "Completed after %.02fms.", (1.5,), None)
    assert actor_arguments.filter(other) and other.getMessage() == "Completed after 1.50ms."
