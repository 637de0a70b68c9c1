"""The demo site as a person uses it: Django's own password reset, the newsletter, the queue table."""

from __future__ import annotations

import pytest
from django.core import mail
from django.urls import reverse

from project import settings as project_settings
from workers.testing import deliver_queued


@pytest.fixture
def demo(settings, namespace, redis_url, smtp_server):
    """The demo project's own MAILERS/MAILQUEUE, with its SMTP provider on the test server."""
    settings.MAILERS = {**project_settings.MAILERS, "smtp": smtp_server.mailer()}
    settings.MAILQUEUE = {**project_settings.MAILQUEUE, "BROKER_URL": redis_url, "NAMESPACE": namespace}
    return smtp_server


@pytest.mark.django_db(transaction=True)
def test_djangos_password_reset_goes_through_the_critical_queue(client, django_user_model, demo) -> None:
    django_user_model.objects.create_user("ann", "ann@example.com", "pw")
    response = client.post(reverse("password_reset"), {"email": "ann@example.com"})
    assert response.status_code == 302
    page = client.get(reverse("index")).content.decode()
    assert "<tr><td>critical</td><td>1</td>" in page
    deliver_queued()
    (received,) = demo.wait_for(1)
    assert received.rcpt_tos == ["ann@example.com"]
    assert "/accounts/reset/" in received.parsed.get_content()
    assert not hasattr(mail, "outbox") or mail.outbox == []  # really went through SMTP, not locmem


@pytest.mark.django_db(transaction=True)
def test_the_newsletter_is_one_batch_on_the_bulk_queue(client, demo) -> None:
    client.post(reverse("send-newsletter"))
    assert client.get(reverse("status-json")).json()["queues"][2] == {
        "queue": "bulk",
        "ready": 50,
        "in_progress": 0,
        "delayed": 0,
        "dead": 0,
    }
    deliver_queued(threads=4)
    received = demo.wait_for(50)
    assert len(received) == 50
    assert {m.parsed["Subject"] for m in received} == {f"Our November newsletter (#{n})" for n in range(1, 51)}


@pytest.mark.django_db(transaction=True)
def test_a_notification_uses_the_default_queue(client, demo) -> None:
    client.post(reverse("send-notification"), {"to": "bob@example.com"})
    assert [q["ready"] for q in client.get(reverse("status-json")).json()["queues"]] == [0, 1, 0]
    deliver_queued()
    assert demo.wait_for(1)[0].rcpt_tos == ["bob@example.com"]


@pytest.mark.django_db
def test_the_password_reset_with_the_helpers_an_application_uses(client, django_user_model, captured_mail) -> None:
    # No MAILERS override: the capture puts back the demo's queued mailers, which the test runner swapped for locmem.
    django_user_model.objects.create_user("ann", "ann@example.com", "pw")
    client.post(reverse("password_reset"), {"email": "ann@example.com"})
    captured_mail.assert_queued(to="ann@example.com", queue="critical", mailer="default", count=1)
    assert client.get(reverse("status-json")).json()["queues"][0] == {
        "queue": "critical",
        "ready": 1,
        "in_progress": 0,
        "delayed": 0,
        "dead": 0,
    }
    (delivered,) = captured_mail.deliver()
    assert delivered.provider == mail.outbox[0].sent_using == "smtp"
    assert "/accounts/reset/" in mail.outbox[0].body
