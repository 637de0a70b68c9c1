"""The demo site as a person uses it: Django's own password reset, the newsletter, the queue table.

And as someone else might: from another machine, with a chosen recipient, or reading a debug page.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from project import environment
from project import settings as project_settings
from tests.servers import free_port
from workers.testing import deliver_queued

ROOT = Path(__file__).resolve().parent.parent


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
def test_a_notification_goes_to_the_chosen_demo_recipient_on_the_default_queue(client, demo) -> None:
    client.post(reverse("send-notification"), {"recipient": "bob"})
    assert [q["ready"] for q in client.get(reverse("status-json")).json()["queues"]] == [0, 1, 0]
    deliver_queued()
    (received,) = demo.wait_for(1)
    assert received.rcpt_tos == ["bob@example.com"]
    assert received.parsed["To"] == "Bob Example <bob@example.com>"


@pytest.mark.django_db(transaction=True)
def test_the_notification_form_cannot_send_to_an_address_or_name_from_the_request(client, demo) -> None:
    # What the form used to accept: an address (and with it a display name) of the sender's choosing.
    assert (
        client.post(reverse("send-notification"), {"recipient": "Boss <victim@elsewhere.example>"}).status_code == 400
    )
    assert client.post(reverse("send-notification"), {"recipient": "victim@elsewhere.example"}).status_code == 400
    # A "to" field is not read at all: the default demo recipient gets it.
    assert client.post(reverse("send-notification"), {"to": "victim@elsewhere.example"}).status_code == 302
    deliver_queued()
    received = demo.wait_for(1)
    assert [m.rcpt_tos for m in received] == [["ann@example.com"]]


REMOTE = "203.0.113.7"


@pytest.mark.django_db(transaction=True)
def test_the_queue_table_mailbox_and_buttons_answer_only_this_machine(demo) -> None:
    remote = Client(REMOTE_ADDR=REMOTE)
    assert remote.get(reverse("status-json")).status_code == 403
    page = remote.get(reverse("index"))
    assert page.status_code == 403
    assert b"only to requests from this machine" in page.content
    assert remote.post(reverse("send-notification"), {"recipient": "ann"}).status_code == 403
    assert remote.post(reverse("send-newsletter")).status_code == 403
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        local = Client(REMOTE_ADDR=address)
        assert local.get(reverse("status-json")).json()["queues"][0]["ready"] == 0, address
        assert local.get(reverse("index")).status_code == 200, address
    # Nothing the remote requests asked for was queued.
    assert [q["ready"] for q in Client().get(reverse("status-json")).json()["queues"]] == [0, 0, 0]
    # Django's own password-reset flow is not a demo page: it stays reachable.
    assert remote.get(reverse("password_reset")).status_code == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("accept", ["text/html", "text/plain"])
def test_a_debug_500_page_never_shows_the_redis_password(settings, namespace, accept) -> None:
    # A real failure with the password in play: the Redis behind the URL does not answer.
    password = "s3cret-Pa55word"
    url = f"redis://mailqueue:{password}@127.0.0.1:{free_port()}/0"
    settings.DEBUG = True
    settings.MAILQUEUE = {**project_settings.MAILQUEUE, "BROKER_URL": url, "NAMESPACE": namespace}
    client = Client(raise_request_exception=False)
    # runserver copies the environment into request.META, REDIS_URL included.
    response = client.get(reverse("status-json"), HTTP_ACCEPT=accept, REDIS_URL=url, DATABASE_URL=url)
    assert response.status_code == 500
    page = response.content.decode()
    assert "ConnectionError" in page  # it is Django's technical 500 page, with the failure
    assert "BROKER_URL" in page and "REDIS_URL" in page  # with the settings dump and request.META
    assert "redis://********@127.0.0.1:" in page
    assert password not in page
    assert "s3cret" not in page


def test_project_wsgi_warns_once_when_the_security_settings_come_from_defaults() -> None:
    def start_web(**environ: str) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SECRET_KEY", "DJANGO_DEBUG"}}
        env.update(DJANGO_SETTINGS_MODULE="project.settings", PYTHONPATH=str(ROOT), **environ)
        code = "import project.wsgi; from django.conf import settings; print(settings.DEBUG, settings.SECRET_KEY)"
        return subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
        out, err = process.communicate(timeout=60)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    starting = [start_web(), start_web(DJANGO_SECRET_KEY="k" * 60, DJANGO_DEBUG="1")]  # side by side: 2x faster
    defaulted, given = (finish(process) for process in starting)
    assert defaulted.returncode == 0, defaulted.stderr
    assert defaulted.stderr.count("mailqueue demo: security settings not taken from the environment") == 1
    assert "DJANGO_SECRET_KEY is unset" in defaulted.stderr and "DJANGO_DEBUG is unset" in defaulted.stderr
    debug, key = defaulted.stdout.split()
    assert debug == "False"
    # A random key of its own (token_urlsafe(50)), not one in the repository: this test process has another.
    assert len(key) == 67 and key not in Path(project_settings.__file__).read_text()
    if "DJANGO_SECRET_KEY" not in os.environ:
        assert key != project_settings.SECRET_KEY

    assert given.returncode == 0, given.stderr
    assert given.stdout.split() == ["True", "k" * 60]
    assert "security settings" not in given.stderr


def test_the_redis_url_comes_from_the_environment_then_make_runs_file_then_the_default(tmp_path) -> None:
    assert environment.redis_url({}, tmp_path) == "redis://127.0.0.1:6379/0"
    (tmp_path / "redis-url").write_text("redis://127.0.0.1:6399/0\n")
    assert environment.redis_url({}, tmp_path) == "redis://127.0.0.1:6399/0"
    assert environment.redis_url({"REDIS_URL": ""}, tmp_path) == "redis://127.0.0.1:6399/0"
    assert environment.redis_url({"REDIS_URL": "redis://elsewhere:6379/2"}, tmp_path) == "redis://elsewhere:6379/2"
    (tmp_path / "redis-url").write_text("")
    assert environment.redis_url({}, tmp_path) == "redis://127.0.0.1:6379/0"


def test_make_run_writes_the_redis_url_where_the_settings_read_it_and_prints_the_web_port() -> None:
    recipe = (ROOT / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    (written,) = re.findall(r"> ([^\s;)]+)", recipe)
    assert ROOT / written == project_settings.VAR_DIR / environment.REDIS_URL_FILE
    assert f"trap 'rm -f {written}' EXIT" in recipe  # only while make run runs: never a stale Redis
    assert "Open http://127.0.0.1:$$WEB_PORT/" in recipe
    procfile = (ROOT / "Procfile").read_text()
    assert "runserver 127.0.0.1:${WEB_PORT:-8000}" in procfile


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
