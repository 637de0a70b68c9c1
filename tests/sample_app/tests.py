"""The sample application's tests in Django's style (TestCase, SimpleTestCase), as docs/testing.md shows them.

Run by Django's own test runner (tests/test_testing.py starts it), which swaps every MAILERS alias for locmem.
"""

from django.core import mail
from django.core.mail import send_mail
from django.test import SimpleTestCase, TestCase

import workers.testing  # noqa: F401  (gives CapturedMail.deliver() the workers' pipeline)
from mailqueue.exceptions import InvalidAddress
from mailqueue.testing import capture_mail


class SignupTests(TestCase):
    def test_signup_queues_a_welcome_mail(self):
        with capture_mail() as captured:
            self.client.post("/signup/", {"email": "ann@example.com"})
        captured.assert_queued(to="ann@example.com", queue="critical", mailer="transactional", count=1)
        captured.assert_not_queued(queue="bulk")

        captured.deliver()  # the real delivery pipeline, in this thread; providers are locmem stand-ins
        self.assertEqual(captured.delivered[0].provider, "postmark")
        self.assertEqual(mail.outbox[0].sent_using, "postmark")
        self.assertEqual(mail.outbox[0].subject, "Welcome to Sample")

    @capture_mail()
    def test_password_reset_goes_through_critical(self, captured):
        self.client.post("/signup/", {"email": "bob@example.com"})
        self.client.post("/accounts/password_reset/", {"email": "bob@example.com"})
        (reset,) = captured.assert_queued(queue="critical", mailer="default")
        self.assertIn("/accounts/reset/", reset.message.body)

    def test_failover_when_postmark_is_down(self):
        captured = self.enterContext(capture_mail())
        captured.fail_provider("postmark", times=3)  # one attempt's three tries
        self.client.post("/signup/", {"email": "cy@example.com"})
        captured.deliver()
        self.assertEqual(captured.delivered[0].provider, "ses")
        self.assertEqual([call.provider for call in captured.provider_calls], ["postmark"] * 3 + ["ses"])


class NoDatabaseTests(SimpleTestCase):
    def test_a_bad_address_fails_at_send_time(self):
        with capture_mail() as captured, self.assertRaises(InvalidAddress):
            send_mail("Hi", "Hello", None, ["not an address"], using="transactional")
        captured.assert_not_queued()
