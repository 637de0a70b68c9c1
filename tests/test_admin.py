"""The message log's admin: search by recipient, filters, the timeline, requeue and purge; fixed queries per page.

Rows are made with the ORM (the log writer is tested on its own); the dead letters are real ones, from a
real worker and a real SMTP server that refuses the recipient.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from io import StringIO
from pathlib import Path

import psycopg
import pytest
from django.contrib.auth.models import Permission
from django.core.mail import EmailMessage
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from bench import admin_scale
from mailqueue import deadletters
from mailqueue.admin import EstimatedCountPaginator, recipient_key
from mailqueue.models import EventKind, Message, MessageEvent, MessageRecipient, RecipientKind, Status
from mailqueue.settings_values import MailQueueConfig

ROOT = Path(__file__).resolve().parent.parent
CHANGELIST = reverse("admin:mailqueue_message_changelist")
START = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)


def log_messages(count: int, *, start: int = 0, **fields: object) -> list[Message]:
    """``count`` logged messages, each with two recipients and three events, as the writer would leave them."""
    rows = [
        Message(
            envelope_id=f"{number:032x}",
            queue=["critical", "default", "bulk"][number % 3],
            mailer="default",
            subject=f"Subject {number}",
            from_email="noreply@example.com",
            recipient_count=2,
            status=Status.SENT,
            attempts=1,
            provider="smtp",
            provider_message_id=f"<{number}@mail.example.com>",
            queued_at=START + datetime.timedelta(seconds=number),
            **fields,
        )
        for number in range(start, start + count)
    ]
    Message.objects.bulk_create(rows)
    MessageRecipient.objects.bulk_create(
        MessageRecipient(message=row, kind=kind, address=f"{who}{number}@{domain}", domain=domain)
        for number, row in enumerate(rows, start)
        for kind, who, domain in ((RecipientKind.TO, "user", "example.org"), (RecipientKind.BCC, "audit", "corp.test"))
    )
    MessageEvent.objects.bulk_create(
        MessageEvent(message=row, stream_id=f"{number}-{step}", kind=kind, at=row.queued_at, provider="smtp")
        for number, row in enumerate(rows, start)
        for step, kind in enumerate((EventKind.QUEUED, EventKind.ATTEMPT_FAILED, EventKind.SENT))
    )
    return rows


@pytest.fixture
def log(smtp_setup) -> Callable[..., list[Message]]:
    return log_messages


def shown(response) -> list[str]:
    return [row.envelope_id for row in response.context["cl"].result_list]


PAGES = [
    {},
    {"status__exact": "sent"},
    {"queue": "bulk"},
    {"provider": "smtp"},
    {"queued_at__gte": "2026-11-01", "queued_at__lt": "2026-11-02"},
    {"q": "user3@example.org"},
    {"q": "@example.org"},
    {"q": "Subject 1"},
    {"q": f"{5:032x}"},
]


@pytest.mark.django_db
def test_every_changelist_page_takes_the_same_queries_for_10_and_100_rows(admin_client, log) -> None:
    def queries(size: int) -> list[int]:
        Message.objects.all().delete()
        log(size)
        counts = []
        for params in PAGES:
            with CaptureQueriesContext(connection) as captured:
                response = admin_client.get(CHANGELIST, params)
            assert response.status_code == 200, (params, response.status_code)
            assert not any("DISTINCT" in query["sql"] for query in captured.captured_queries)
            counts.append(len(captured))
        return counts

    small = queries(10)
    big = queries(100)
    assert small == big
    assert max(big) <= 6  # session, user, count, rows (+ savepoints): nothing per row


@pytest.mark.django_db
def test_a_filtered_count_is_capped_not_exact(admin_client, log, monkeypatch) -> None:
    monkeypatch.setattr(EstimatedCountPaginator, "cap", 30)
    log(50)
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(CHANGELIST, {"queue": "bulk"})
    assert response.context["cl"].result_count == 16  # under the cap: exact
    response = admin_client.get(CHANGELIST)
    assert response.context["cl"].result_count == 30  # 50 rows, counted up to the cap
    assert not any(q["sql"].startswith("SELECT COUNT(*) AS") and "LIMIT" not in q["sql"] for q in captured)


@pytest.mark.django_db
def test_search_reads_the_shape_of_the_term(admin_client, log) -> None:
    log(30)
    assert shown(admin_client.get(CHANGELIST, {"q": "User7@Example.ORG"})) == [f"{7:032x}"]
    assert shown(admin_client.get(CHANGELIST, {"q": "audit12@corp.test"})) == [f"{12:032x}"]
    assert len(shown(admin_client.get(CHANGELIST, {"q": "@Corp.Test"}))) == 30
    assert shown(admin_client.get(CHANGELIST, {"q": "@nowhere.test"})) == []
    assert shown(admin_client.get(CHANGELIST, {"q": f"{21:032X}"})) == [f"{21:032x}"]
    assert shown(admin_client.get(CHANGELIST, {"q": "subject 2"})) == [
        f"{n:032x}" for n in (29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 2)
    ]
    assert shown(admin_client.get(CHANGELIST, {"q": "<9@mail.example.com>"})) == [f"{9:032x}"]
    Message.objects.filter(pk=f"{8:032x}").update(provider_message_id="8a7c-postmark-id")
    assert shown(admin_client.get(CHANGELIST, {"q": "8a7c-postmark-id"})) == [f"{8:032x}"]
    # Newest first, and the filters combine with a search.
    assert shown(admin_client.get(CHANGELIST, {"q": "@example.org", "queue": "critical"}))[:2] == [
        f"{27:032x}",
        f"{24:032x}",
    ]


@pytest.mark.django_db
def test_a_hashed_log_is_searched_by_the_hash_of_the_address(admin_client, log, settings) -> None:
    if "log" not in {field.name for field in dataclasses.fields(MailQueueConfig)}:
        pytest.skip("MAILQUEUE['LOG'] (the producer's branch) is not on this branch yet")
    (row,) = log(1)
    digest = hashlib.sha256(b"secret@example.net").hexdigest()
    MessageRecipient.objects.create(message=row, kind="cc", address=digest, domain="example.net")
    settings.MAILQUEUE = {**settings.MAILQUEUE, "LOG": {"RECIPIENTS": "hash"}}
    assert recipient_key("Secret@Example.net") == digest
    assert shown(admin_client.get(CHANGELIST, {"q": "Secret@Example.net"})) == [row.envelope_id]


@pytest.mark.django_db
def test_the_detail_page_shows_the_timeline_in_order_and_the_recipients(admin_client, log) -> None:
    (row,) = log(1)
    page = admin_client.get(reverse("admin:mailqueue_message_change", args=[row.envelope_id])).content.decode()
    assert page.index("<p>Queued</p>") < page.index("<p>Attempt Failed</p>") < page.index("<p>Sent</p>")
    assert "user0@example.org" in page and "audit0@corp.test" in page
    assert "Save" not in page  # read-only


@pytest.mark.django_db
def test_staff_without_permission_cannot_see_the_log_and_view_only_staff_cannot_act(client, django_user_model, log):
    log(3)
    staff = django_user_model.objects.create_user("staff", "staff@example.com", "pw", is_staff=True)
    client.force_login(staff)
    assert client.get(CHANGELIST).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_message"))
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert "requeue_dead" not in response.content.decode() and "purge" not in response.content.decode()
    assert client.post(CHANGELIST, {"action": "purge", "_selected_action": [f"{0:032x}"], "confirmed": "yes"})
    assert Message.objects.count() == 3


def send_dead(smtp_setup, run_worker, subjects: list[str]) -> list[str]:
    smtp_setup.handler.rcpt_replies["gone@example.com"] = "550 no such user"
    ids = []
    for subject in subjects:
        message = EmailMessage(subject, "b", None, ["gone@example.com"])
        message.send()
        ids.append(message.mailqueue_id)  # type: ignore[attr-defined]
    with run_worker() as worker:
        worker.drain()
    Message.objects.bulk_create(
        Message(
            envelope_id=envelope_id, queue="default", mailer="default", status=Status.DEAD, queued_at=timezone.now()
        )
        for envelope_id in ids
    )
    return ids


@pytest.mark.django_db(transaction=True)
def test_requeue_puts_back_the_dead_letters_that_still_exist_and_names_the_others(
    admin_client, smtp_setup, run_worker
) -> None:
    first, second, third = send_dead(smtp_setup, run_worker, ["one", "two", "three"])
    log_messages(1)  # a sent message, selected too: skipped
    (letter,) = [lt for lt in deadletters.iter_dead("default") if lt.subject == "three"]
    deadletters.purge([letter])

    response = admin_client.post(
        CHANGELIST, {"action": "requeue_dead", "_selected_action": [first, second, third, f"{0:032x}"]}, follow=True
    )
    notes = [str(m) for m in response.context["messages"]]
    assert any("Requeued 2 message(s)" in n and first in n and second in n for n in notes), notes
    assert any("No dead letter any more" in n and third in n for n in notes), notes
    assert any("Skipped 1 message(s) that are not dead" in n for n in notes), notes
    assert list(deadletters.iter_dead()) == []
    smtp_setup.handler.rcpt_replies.clear()
    with run_worker() as worker:
        worker.drain()
    assert sorted(m.parsed["Subject"] for m in smtp_setup.wait_for(2)) == ["one", "two"]


@pytest.mark.django_db(transaction=True)
def test_purge_asks_first_then_deletes_the_rows_their_timeline_and_dead_letters(
    admin_client, smtp_setup, run_worker
) -> None:
    (dead,) = send_dead(smtp_setup, run_worker, ["dead"])
    kept, purged = log_messages(2)
    selected = [dead, purged.envelope_id]

    page = admin_client.post(CHANGELIST, {"action": "purge", "_selected_action": selected})
    assert page.status_code == 200 and b"Yes, purge" in page.content
    assert Message.objects.count() == 3 and len(list(deadletters.iter_dead())) == 1

    response = admin_client.post(
        CHANGELIST, {"action": "purge", "_selected_action": selected, "confirmed": "yes"}, follow=True
    )
    assert any("Purged 2 message(s) from the log and 1 dead letter(s)" in str(m) for m in response.context["messages"])
    assert list(Message.objects.values_list("envelope_id", flat=True)) == [kept.envelope_id]
    assert set(MessageEvent.objects.values_list("message_id", flat=True)) == {kept.envelope_id}
    assert set(MessageRecipient.objects.values_list("message_id", flat=True)) == {kept.envelope_id}
    assert list(deadletters.iter_dead()) == []


@pytest.mark.django_db
def test_the_demo_page_lists_the_last_logged_messages_with_their_status_and_links_to_the_admin(client, log) -> None:
    rows = log(20)
    Message.objects.filter(pk=rows[-1].pk).update(status=Status.DEAD)
    page = client.get(reverse("index")).content.decode()
    assert reverse("admin:index") in page
    newest = reverse("admin:mailqueue_message_change", args=[rows[-1].pk])
    assert f'<td>dead</td><td>default</td><td><a href="{newest}">Subject 19</a>' in page
    assert "Subject 5<" in page and "Subject 4<" not in page  # the last 15 only


@pytest.mark.django_db
def test_demo_admin_makes_a_staff_login_with_a_new_password_each_run_on_the_demo_settings_only(
    client, settings
) -> None:
    with pytest.raises(CommandError, match="only with DJANGO_SETTINGS_MODULE=project.settings"):
        call_command("demo_admin", stdout=StringIO())
    settings.SETTINGS_MODULE = "project.settings"
    passwords = []
    for _ in range(2):
        out = StringIO()
        call_command("demo_admin", stdout=out)
        passwords.append(re.search(r"user admin\s+password (\S+)", out.getvalue()).group(1))  # type: ignore[union-attr]
    assert passwords[0] != passwords[1]
    assert not client.login(username="admin", password=passwords[0])
    assert client.login(username="admin", password=passwords[1])
    assert client.get(CHANGELIST).status_code == 200
    recipe = (ROOT / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "manage.py demo_admin" in recipe
    settings.DATABASES = {**settings.DATABASES, "default": {**settings.DATABASES["default"], "ENGINE": "x.postgresql"}}
    settings.SETTINGS_MODULE = "project.settings"
    with pytest.raises(CommandError, match="local SQLite"):
        call_command("demo_admin", stdout=StringIO())


def test_on_postgresql_every_changelist_page_takes_the_same_queries_for_10_and_100_rows() -> None:
    try:
        psycopg.connect(admin_scale.SERVER, connect_timeout=2).close()
    except psycopg.OperationalError as error:
        pytest.skip(f"no PostgreSQL at {admin_scale.SERVER}: {error}")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.admin_scale",
            "--messages",
            "10",
            "--messages",
            "100",
            "--repeats",
            "1",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    small, big = json.loads(run.stdout.splitlines()[-1])
    assert [page["page"] for page in small["pages"]][:-1] == [page["page"] for page in big["pages"]][:-1]
    assert [page["queries"] for page in small["pages"]] == [page["queries"] for page in big["pages"]]
    assert max(page["queries"] for page in big["pages"]) <= 5
    assert [page["rows"] for page in big["pages"]][0] == 100  # a full page was rendered
