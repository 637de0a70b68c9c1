"""Queue choice: per-message override > routing rules > mailer option > DEFAULT_QUEUE.

What an application sees, so asserted with the helpers an application uses (mailqueue.testing):
the real backend and ENQUEUE script, on the capture's in-memory Redis.
"""

from __future__ import annotations

import pytest
from anymail.message import AnymailMessage
from django.core.mail import EmailMessage, send_mail

from mailqueue.exceptions import MailQueueImproperlyConfigured
from mailqueue.testing import CapturedMail, capture_mail

ROUTES = [
    {"tag": "newsletter", "queue": "bulk"},
    {"header": "X-Priority-Class", "value": "urgent", "queue": "critical"},
    {"header": "X-Digest", "queue": "bulk"},
    "tests.routing_rules.by_subject",
]


@pytest.fixture
def routed(configure, smtp_server):
    configure(providers={"smtp": smtp_server.mailer()}, ROUTES=ROUTES)
    with capture_mail() as captured:
        yield captured


def where(captured: CapturedMail) -> dict[str, int]:
    """How many messages each queue received."""
    counts: dict[str, int] = {}
    for queued in captured.queued:
        counts[queued.queue] = counts.get(queued.queue, 0) + 1
    return counts


def test_the_mailer_option_picks_the_queue(routed) -> None:
    send_mail("s", "b", None, ["a@example.com"], using="transactional")
    assert where(routed) == {"critical": 1}


def test_without_a_rule_plain_send_mail_uses_the_default_mailers_queue(routed) -> None:
    send_mail("s", "b", None, ["a@example.com"])
    assert where(routed) == {"default": 1}


def test_an_anymail_tag_routes(routed) -> None:
    AnymailMessage("s", "b", None, ["a@example.com"], tags=["newsletter"]).send(using="transactional")
    assert where(routed) == {"bulk": 1}


def test_a_header_value_routes(routed) -> None:
    EmailMessage("s", "b", None, ["a@example.com"], headers={"x-priority-class": "urgent"}).send()
    EmailMessage("s", "b", None, ["a@example.com"], headers={"X-Priority-Class": "low"}).send()
    assert where(routed) == {"critical": 1, "default": 1}


def test_a_header_presence_routes(routed) -> None:
    EmailMessage("s", "b", None, ["a@example.com"], headers={"X-Digest": "weekly"}).send()
    assert where(routed) == {"bulk": 1}


def test_a_callable_routes(routed) -> None:
    send_mail("[urgent] disk full", "b", None, ["a@example.com"], using="bulk")
    assert where(routed) == {"critical": 1}


def test_a_callable_naming_an_unknown_queue_is_a_configuration_error(routed) -> None:
    with pytest.raises(MailQueueImproperlyConfigured, match="by_subject chose queue 'nosuchqueue'"):
        send_mail("[nowhere] x", "b", None, ["a@example.com"])


def test_the_per_message_override_wins_over_rules(routed) -> None:
    message = AnymailMessage("s", "b", None, ["a@example.com"], tags=["newsletter"])
    message.queue = "critical"
    message.send()
    assert where(routed) == {"critical": 1}


def test_first_matching_rule_wins(routed) -> None:
    AnymailMessage("[urgent] news", "b", None, ["a@example.com"], tags=["newsletter"]).send()
    assert where(routed) == {"bulk": 1}


def test_default_queue_setting_for_a_mailer_without_a_queue(configure, smtp_server) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        mailers={"plain": {"BACKEND": "mailqueue.backend.EmailBackend"}},
        DEFAULT_QUEUE="bulk",
    )
    with capture_mail() as captured:
        send_mail("s", "b", None, ["a@example.com"], using="plain")
    assert where(captured) == {"bulk": 1}
