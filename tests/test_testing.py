"""mailqueue.testing and workers.testing's deliver(): the helpers an application tests with.

The sample application (tests/sample_app) runs under Django's runner and under pytest in processes of its
own, as an application's suite would; the rest checks each promise of docs/testing.md here.
"""

from __future__ import annotations

import importlib
import os
import re
import smtplib
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import django
import pytest
from django.conf import settings
from django.core import mail
from django.core.mail import EmailMessage, send_mail
from django.db import transaction

from mailqueue.exceptions import InvalidAddress, UnknownQueue
from mailqueue.testing import capture_mail, django_internals

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "sample_app"


def _run(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env={**environment, **env}, capture_output=True, text=True, timeout=110
    )


# --- the sample application, as its own suite -------------------------------------------------------


def test_the_sample_app_passes_under_djangos_test_runner() -> None:
    # Django's runner swaps every MAILERS alias for locmem: the capture must put the queued ones back.
    done = _run("-m", "django", "test", "tests.sample_app.tests", "--settings=tests.sample_app.settings", "-v", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ran 4 tests" in done.stderr and "\nOK" in done.stderr


def test_the_sample_app_passes_under_pytest_with_the_plugin() -> None:
    done = _run(
        "-m",
        "pytest",
        "tests/sample_app",
        "-p",
        "workers.pytest_plugin",
        "--ds=tests.sample_app.settings",
        "-q",
        "-p",
        "no:cacheprovider",
        MAILQUEUE_SAMPLE_APP="1",
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert re.search(r"^4 passed", done.stdout, re.MULTILINE), done.stdout[-3000:]


def _doc_examples() -> list[tuple[str, str]]:
    """Each code block of docs/testing.md that names a sample-app file on its first line: (file, code)."""
    text = (ROOT / "docs" / "testing.md").read_text()
    examples = []
    for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL):
        first, _, code = block.partition("\n")
        if first.startswith("# tests/sample_app/"):
            examples.append((first.removeprefix("# ").strip(), code))
    return examples


def test_the_docs_examples_are_the_sample_apps_code() -> None:
    examples = _doc_examples()
    assert {name for name, _ in examples} >= {
        "tests/sample_app/settings.py",
        "tests/sample_app/tests.py",
        "tests/sample_app/test_signup.py",
    }
    for name, code in examples:
        assert code.strip() in (ROOT / name).read_text(), f"docs/testing.md's example of {name} is not in that file"


def test_the_pytest_plugin_is_declared_as_an_entry_point() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '[project.entry-points.pytest11]\nmailqueue = "workers.pytest_plugin"' in text
    assert 'testing = ["fakeredis[lua]' in text


def test_mailqueue_testing_never_imports_workers_and_says_what_deliver_needs() -> None:
    code = """
import sys
import django
django.setup()
from django.core.mail import send_mail
from mailqueue.testing import capture_mail, django_internals
with capture_mail() as captured:
    send_mail("Hi", "body", None, ["ann@example.com"], using="bulk")
assert not [name for name in sys.modules if name == "workers" or name.startswith("workers.")]
captured.assert_queued(queue="bulk", count=1)
try:
    captured.deliver()
except Exception as error:
    print(type(error).__name__, error)
"""
    done = _run("-c", code, DJANGO_SETTINGS_MODULE="tests.sample_app.settings")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("MailQueueImproperlyConfigured")
    assert "import workers.testing" in done.stdout


# --- the MAILERS the test runner replaced: Django 6.1's record, else the settings module ---------------

QUEUED = "mailqueue.backend.EmailBackend"
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture
def module_routes_notifications_to_bulk(monkeypatch):
    """The settings module's MAILERS differ from what Django recorded: which one a capture read shows in the queue.

    Django's record (setup_test_environment, run by pytest-django) has project.settings' "notifications" ->
    "default"; the module now says "bulk". The runner's locmem swap is still in place (no configure()).
    """
    assert settings.MAILERS["notifications"] == {"BACKEND": LOCMEM}
    module = importlib.import_module(settings.SETTINGS_MODULE)
    mailers = {**module.MAILERS, "notifications": {"BACKEND": QUEUED, "OPTIONS": {"queue": "bulk"}}}
    monkeypatch.setattr(module, "MAILERS", mailers)
    # The fallback is announced once per process: start this test as a fresh process would.
    monkeypatch.setattr(django_internals, "_fallback_announced", False)


def _runtime_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(warning.message) for warning in caught if issubclass(warning.category, RuntimeWarning)]


def test_on_django_6_1_the_capture_puts_back_what_the_runner_recorded(module_routes_notifications_to_bulk) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with capture_mail() as captured:
            send_mail("Hi", "body", None, ["ann@example.com"], using="notifications")
    captured.assert_queued(mailer="notifications", queue="default", count=1)
    assert _runtime_warnings(caught) == []


@pytest.mark.parametrize("django_differs", ["another version", "6.1 moved its record"])
def test_otherwise_the_settings_modules_mailers_are_put_back_and_it_says_so_once(
    module_routes_notifications_to_bulk, monkeypatch, django_differs
) -> None:
    if django_differs == "another version":
        monkeypatch.setattr(django, "VERSION", (6, 2, 0, "final", 0))
        reason = "Django 6.2 is installed"
    else:
        monkeypatch.delattr(django.test.utils._TestState.saved_data, "mailers")
        reason = "this Django keeps no MAILERS there"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with capture_mail() as captured:
                send_mail("Hi", "body", None, ["ann@example.com"], using="notifications")
            captured.assert_queued(mailer="notifications", queue="bulk", count=1)
    (said,) = _runtime_warnings(caught)
    assert reason in said and "settings.SETTINGS_MODULE" in said and "capture_mail(mailers=...)" in said


def test_mailers_given_to_the_capture_are_what_it_puts_back(module_routes_notifications_to_bulk) -> None:
    given = {"notifications": {"BACKEND": QUEUED, "OPTIONS": {"queue": "critical"}}}
    with capture_mail(mailers=given) as captured:
        send_mail("Hi", "body", None, ["ann@example.com"], using="notifications")
    captured.assert_queued(mailer="notifications", queue="critical", count=1)

    @capture_mail(mailers=given)
    def decorated(captured):
        send_mail("Hi", "body", None, ["ann@example.com"], using="notifications")
        return captured.queued

    assert [queued.queue for queued in decorated()] == ["critical"]


# --- capture: the production path, on an in-memory Redis ---------------------------------------------


@pytest.fixture
def captured(configure, smtp_server, redis_client, namespace):
    """A capture over the usual test configuration, whose BROKER_URL is the real test Redis."""
    configure(providers={"smtp": smtp_server.mailer()})
    with capture_mail() as captured:
        yield captured
    # Nothing reached the configured Redis: the capture's queues are its own.
    assert list(redis_client.scan_iter(match=f"{namespace}:*")) == []


def test_a_capture_queues_on_its_own_redis(captured) -> None:
    send_mail("Hi", "body", None, ["Ann <ANN@example.com>"], using="transactional")
    (queued,) = captured.assert_queued(to="ann@example.com", queue="critical", mailer="transactional", count=1)
    assert queued.subject == "Hi"
    assert queued.message.body == "body"
    # The Message-ID fixed at send time goes out in MIME renderings (SMTP), not in extra_headers (ESP APIs).
    assert "Message-ID" in queued.message.fixed_headers
    assert "Message-ID" not in queued.message.extra_headers


def test_an_idempotency_key_is_queued_once_as_the_enqueue_script_decides(captured) -> None:
    for _ in range(2):
        message = EmailMessage("Receipt", "body", None, ["ann@example.com"])
        message.idempotency_key = "order-42"
        message.send()
    captured.assert_queued(subject="Receipt", count=1)


def test_validation_and_routing_errors_surface_at_send_time(captured) -> None:
    with pytest.raises(InvalidAddress):
        send_mail("Hi", "body", None, ["not an address"])
    message = EmailMessage("Hi", "body", None, ["ann@example.com"])
    message.queue = "nosuchqueue"
    with pytest.raises(UnknownQueue):
        message.send()
    captured.assert_not_queued()


def test_a_failed_assertion_lists_what_was_queued(captured) -> None:
    send_mail("Welcome", "body", None, ["ann@example.com"], using="transactional")
    send_mail("Digest", "body", None, ["bob@example.com"], using="bulk")
    with pytest.raises(AssertionError) as failure:
        captured.assert_queued(to="ann@example.com", queue="bulk")
    assert str(failure.value) == (
        "Expected at least 1 queued message(s) matching to='ann@example.com', queue='bulk', found 0.\n"
        "Queued (2):\n"
        "  1. queue='critical' mailer='transactional' to=['ann@example.com'] subject='Welcome'\n"
        "  2. queue='bulk' mailer='bulk' to=['bob@example.com'] subject='Digest'"
    )
    with pytest.raises(AssertionError, match=r"Expected no queued message matching queue='bulk', found 1"):
        captured.assert_not_queued(queue="bulk")
    with pytest.raises(AssertionError, match=r"Expected 2 queued message\(s\) matching mailer='bulk', found 1"):
        captured.assert_queued(count=2, mailer="bulk")


@pytest.mark.django_db
def test_mail_sent_in_a_test_transaction_is_queued_and_a_rolled_back_savepoint_is_not(captured) -> None:
    # The test's transaction never commits: the capture treats reading as the commit.
    send_mail("Kept", "body", None, ["ann@example.com"])
    try:
        with transaction.atomic():
            send_mail("Rolled back", "body", None, ["ann@example.com"])
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert [queued.subject for queued in captured.queued] == ["Kept"]


@pytest.mark.django_db(transaction=True)
def test_a_commit_after_the_capture_does_not_queue_the_mail_again(configure, smtp_server, redis_client, namespace):
    configure(providers={"smtp": smtp_server.mailer()})
    with transaction.atomic():
        with capture_mail() as captured:
            send_mail("Once", "body", None, ["ann@example.com"])
        captured.assert_queued(subject="Once", count=1)
    # The real commit ran mailqueue's on-commit push again; the capture had emptied its batch.
    assert list(redis_client.scan_iter(match=f"{namespace}:*")) == []


# --- deliver: the real pipeline, in the test's thread -------------------------------------------------


def test_deliver_uses_locmem_stand_ins_named_by_sent_using(captured) -> None:
    send_mail("Hi", "body", None, ["ann@example.com"], using="transactional")
    (delivered,) = captured.deliver()
    assert (delivered.provider, delivered.queue, delivered.mailer, delivered.attempt) == (
        "smtp",
        "critical",
        "transactional",
        1,
    )
    assert [(message.subject, message.sent_using) for message in mail.outbox] == [("Hi", "smtp")]
    assert captured.pending == []


def test_deliver_leaves_no_thread_behind(captured) -> None:
    def wakeup_threads() -> set[threading.Thread]:
        return {thread for thread in threading.enumerate() if thread.name.startswith("mailqueue-wakeups")}

    before = wakeup_threads()  # other tests' in-process workers may still have theirs
    for n in range(3):
        send_mail(f"Hi {n}", "body", None, ["ann@example.com"], using="transactional")
        captured.deliver()
    # Each subscriber thread stops within its read timeout once told to.
    deadline = time.monotonic() + 3
    while (left := wakeup_threads() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left


def test_retries_run_at_once_then_the_message_is_dead_lettered(captured) -> None:
    captured.fail_provider("smtp", times=None)
    send_mail("Doomed", "body", None, ["ann@example.com"], using="bulk")  # bulk: max_retries 1
    assert captured.deliver(timeout=30) == []
    (letter,) = captured.dead_letters
    assert (letter.queue, letter.attempts, letter.provider) == ("bulk", 2, "smtp")
    assert "smtp is down" in letter.reason
    # Two attempts of two tries each (PROVIDERS attempts: 2).
    assert [call.provider for call in captured.provider_calls] == ["smtp"] * 4
    assert captured.pending == []


def test_a_permanent_failure_is_dead_lettered_without_a_retry(captured) -> None:
    captured.fail_provider("smtp", error=smtplib.SMTPRecipientsRefused({"ann@example.com": (550, b"no such user")}))
    send_mail("Bounce", "body", None, ["ann@example.com"])
    captured.deliver()
    (letter,) = captured.dead_letters
    assert (letter.attempts, letter.error_type) == (1, "PermanentDeliveryError")


def test_a_deferral_past_the_timeout_stays_pending(configure, smtp_server) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        PROVIDERS={"smtp": {"attempts": 1, "failure_threshold": 1, "cooldown": 60}},
    )
    with capture_mail() as captured:
        captured.fail_provider("smtp", times=1)
        send_mail("Later", "body", None, ["ann@example.com"])
        # The failure opens the circuit for 60 s: the retry finds it open and is deferred past the timeout.
        assert captured.deliver(timeout=0.5) == []
    assert [queued.subject for queued in captured.pending] == ["Later"]
    assert captured.dead_letters == []


def test_a_short_deferral_is_waited_out(configure, smtp_server) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        PROVIDERS={"smtp": {"attempts": 1, "failure_threshold": 1, "cooldown": 0.3}},
    )
    with capture_mail() as captured:
        captured.fail_provider("smtp", times=1)
        send_mail("Soon", "body", None, ["ann@example.com"])
        (delivered,) = captured.deliver(timeout=5)
    assert (delivered.provider, delivered.attempt) == ("smtp", 2)


def test_deliver_can_use_the_configured_providers(captured, smtp_server) -> None:
    send_mail("Real", "body", None, ["ann@example.com"])
    (delivered,) = captured.deliver(providers="configured")
    (received,) = smtp_server.wait_for(1)
    assert received.rcpt_tos == ["ann@example.com"]
    assert received.parsed["Message-ID"] == delivered.message.fixed_headers["Message-ID"]
    assert not getattr(mail, "outbox", [])


def test_fail_provider_refuses_an_alias_no_queue_delivers_through(captured) -> None:
    with pytest.raises(ValueError, match=r"'postmark' is in no queue's provider chain; the chains name \['smtp'\]"):
        captured.fail_provider("postmark")


def test_clear_forgets_what_was_seen(captured) -> None:
    send_mail("One", "body", None, ["ann@example.com"])
    captured.deliver()
    captured.clear()
    send_mail("Two", "body", None, ["ann@example.com"])
    assert [queued.subject for queued in captured.queued] == ["Two"]
    assert captured.delivered == []


def test_deliver_after_the_capture_ended_still_uses_its_queues(configure, smtp_server) -> None:
    configure(providers={"smtp": smtp_server.mailer()})
    with capture_mail() as captured:
        send_mail("Hi", "body", None, ["ann@example.com"])
    assert [delivered.provider for delivered in captured.deliver()] == ["smtp"]
