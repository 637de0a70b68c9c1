"""The sample application's tests in pytest's style, as docs/testing.md shows them (the captured_mail fixture)."""

import pytest
from django.core import mail

from mailqueue.exceptions import PermanentDeliveryError

pytestmark = pytest.mark.django_db


def test_signup_queues_a_welcome_mail(client, captured_mail):
    client.post("/signup/", {"email": "ann@example.com"})
    captured_mail.assert_queued(to="ann@example.com", queue="critical", mailer="transactional", count=1)
    captured_mail.assert_not_queued(queue="bulk")

    captured_mail.deliver()
    assert captured_mail.delivered[0].provider == "postmark"
    assert mail.outbox[0].sent_using == "postmark"


def test_failover(client, captured_mail):
    captured_mail.fail_provider("postmark", times=3)
    client.post("/signup/", {"email": "ann@example.com"})
    captured_mail.deliver()
    assert captured_mail.delivered[0].provider == "ses"


def test_retried_then_delivered(client, captured_mail):
    captured_mail.fail_provider("postmark", times=None)
    captured_mail.fail_provider("ses", times=3)  # the first attempt fails everywhere; the retry gets through
    client.post("/signup/", {"email": "ann@example.com"})
    (delivered,) = captured_mail.deliver()
    assert (delivered.provider, delivered.attempt) == ("ses", 2)


def test_a_refused_message_is_dead_lettered(client, captured_mail):
    captured_mail.fail_provider("postmark", error=PermanentDeliveryError("550 no such user"))
    client.post("/signup/", {"email": "nobody@example.com"})
    assert captured_mail.deliver() == []
    (letter,) = captured_mail.dead_letters
    assert letter.queue == "critical" and "550 no such user" in letter.reason
