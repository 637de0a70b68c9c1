"""``manage.py mailqueue``: status, dead, requeue, purge."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from io import StringIO

import pytest
from django.core.mail import send_mail, send_mass_mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from mailqueue import deadletters
from mailqueue.client import redacted_url
from mailqueue.management.commands import mailqueue as mailqueue_command
from mailqueue.models import OutboxMessage
from mailqueue.monitoring import queue_depths
from tests.worker_processes import settings_env


def run(*args: str) -> str:
    out = StringIO()
    call_command("mailqueue", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_status_table_shows_every_queue_provider_and_the_outbox(smtp_setup) -> None:
    send_mail("s", "b", None, ["a@example.com"], using="bulk")
    sent_at = time.time()
    send_mail("s", "b", None, ["a@example.com"], using="bulk")
    queues, providers, distribution, outbox = run("status").split("\n\n")
    waited = time.time() - sent_at
    lines = queues.splitlines()
    assert lines[0].split() == ["queue", "ready", "in_progress", "delayed", "dead", "oldest", "sent_1m", "sent_1h"]
    rows = [line.split() for line in lines[1:]]
    assert rows[:2] == [
        ["critical", "0", "0", "0", "0", "-", "0", "0"],
        ["default", "0", "0", "0", "0", "-", "0", "0"],
    ]
    assert rows[2][:5] == ["bulk", "2", "0", "0", "0"] and rows[2][6:] == ["0", "0"]
    oldest = rows[2][5]
    assert re.fullmatch(r"\d+\.\ds", oldest) and float(oldest[:-1]) <= waited + 0.1, oldest
    lines = providers.splitlines()
    assert lines[0].split() == [
        "provider", "state", "failures", "probe_in", "sent_5m", "failed_5m", "sent_1h", "failed_1h", "quota_left"
    ]  # fmt: skip
    assert lines[1].split() == ["smtp", "closed", "0", "-", "0", "0", "0", "0", "-"]
    lines = distribution.splitlines()
    assert [line.split() for line in lines] == [
        ["queue", "strategy", "provider", "target", "share_5m"],
        ["critical", "failover", "smtp", "-", "-"],
        ["default", "failover", "smtp", "-", "-"],
        ["bulk", "failover", "smtp", "-", "-"],
    ]
    assert outbox.strip().splitlines() == [
        "outbox: 0 message(s) waiting for Redis",
        "log: no writer has run yet; 2 event(s) in the stream",
    ]


@pytest.mark.django_db(transaction=True)
def test_status_with_the_outbox_database_unreadable_still_shows_the_queues_in_full(smtp_setup) -> None:
    send_mail("s", "b", None, ["a@example.com"], using="bulk")
    table = OutboxMessage._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        queues, *_, outbox = run("status").split("\n\n")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
    bulk = next(line.split() for line in queues.splitlines() if line.startswith("bulk"))
    assert bulk[:5] == ["bulk", "1", "0", "0", "0"] and re.fullmatch(r"\d+\.\ds", bulk[5]), bulk
    assert outbox.startswith("outbox: unknown (")


@pytest.mark.django_db(transaction=True)
def test_status_shows_each_queues_throughput(smtp_setup, run_worker) -> None:
    send_mass_mail([(f"m{i}", "b", None, ["a@example.com"]) for i in range(3)])
    send_mail("s", "b", None, ["a@example.com"], using="transactional")
    with run_worker() as worker:
        worker.drain()
    queues = run("status").split("\n\n")[0]
    rows = {line.split()[0]: line.split()[5:] for line in queues.splitlines()[1:]}
    assert rows == {"critical": ["-", "1", "1"], "default": ["-", "3", "3"], "bulk": ["-", "0", "0"]}


def test_a_long_wait_reads_in_minutes_or_hours() -> None:
    assert [mailqueue_command._age(seconds) for seconds in (None, 0.04, 99.94, 150, 7199, 7200, 90061)] == [
        "-", "0.0s", "99.9s", "2m30s", "119m59s", "2h00m", "25h01m"
    ]  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_status_shows_what_is_left_of_a_quota(configure, smtp_server, run_worker) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, PROVIDERS={"smtp": {"quota": "50/d"}})
    send_mail("s", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    _, providers, _, _ = run("status").split("\n\n")
    header, row = providers.splitlines()
    assert header.split()[-1] == "quota_left"
    assert row.split()[0] == "smtp" and row.endswith("  49 of 50/d")


@pytest.mark.django_db(transaction=True)
def test_status_json(smtp_setup, run_worker) -> None:
    send_mail("s", "b", None, ["a@example.com"], using="transactional")
    with run_worker() as worker:
        worker.drain()
    send_mail("s", "b", None, ["a@example.com"], using="transactional")
    data = json.loads(run("status", "--json"))
    oldest_age = data["queues"][0].pop("oldest_age")
    assert data["queues"][0] == {
        "queue": "critical", "ready": 1, "in_progress": 0, "delayed": 0, "dead": 0, "sent_1m": 1, "sent_1h": 1
    }  # fmt: skip
    assert 0 <= oldest_age < 5
    assert data["queues"][1] == {
        "queue": "default", "ready": 0, "in_progress": 0, "delayed": 0, "dead": 0, "oldest_age": None, "sent_1m": 0,
        "sent_1h": 0,
    }  # fmt: skip
    assert data["providers"] == [
        {
            "provider": "smtp",
            "state": "closed",
            "failures": 0,
            "probe_in": None,
            "sent_5m": 1,
            "failed_5m": 0,
            "sent_1h": 1,
            "failed_1h": 0,
            "quota": None,
            "quota_used": None,
            "quota_left": None,
            "quota_resets_in": None,
        }
    ]
    assert data["distribution"][0] == {
        "queue": "critical",
        "strategy": "failover",
        "latency_budget": None,
        "providers": [{"provider": "smtp", "weight": None, "target": None, "sent_5m": 1, "share_5m": 1.0}],
    }
    assert data["outbox"] == 0


@pytest.fixture
def two_dead(smtp_setup, run_worker):
    smtp_setup.handler.rcpt_replies["gone@example.com"] = "550 no such user"
    send_mail("dead one", "b", None, ["gone@example.com"])
    send_mail("dead two", "b", None, ["gone@example.com"], using="bulk")
    with run_worker() as worker:
        worker.drain()
    return smtp_setup


def test_dead_lists_reason_and_subject(two_dead) -> None:
    output = run("dead")
    assert "dead one" in output and "dead two" in output
    assert "550 no such user" in output
    data = json.loads(run("dead", "--queue", "bulk", "--json"))
    assert [letter["queue"] for letter in data] == ["bulk"]
    assert data[0]["payload"]["message"]["subject"] == "dead two"


def test_requeue_needs_a_selector(two_dead) -> None:
    with pytest.raises(CommandError, match="say which dead letters"):
        run("requeue")


def test_requeue_by_queue_and_purge_by_id(two_dead) -> None:
    assert "requeued 1 message(s)" in run("requeue", "--queue", "bulk")
    depths = {d.queue: d for d in queue_depths()}
    assert depths["bulk"].ready == 1 and depths["bulk"].dead == 0
    (letter,) = deadletters.iter_dead("default")
    assert "purged 1 message(s)" in run("purge", "--id", letter.id)
    assert {d.queue: d.dead for d in queue_depths()}["default"] == 0


def test_requeue_older_than_leaves_recent_letters(two_dead) -> None:
    assert "requeued 0 message(s)" in run("requeue", "--older-than", "3600")
    assert "requeued 2 message(s)" in run("requeue", "--all")


def test_unknown_queue_is_refused(smtp_setup) -> None:
    with pytest.raises(CommandError, match="unknown queue 'nope'"):
        run("dead", "--queue", "nope")


def closed_port_url() -> str:
    """A Redis URL with a password, on a port nothing listens on."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    return f"redis://mailer:s3cret@127.0.0.1:{port}/0"


@pytest.mark.django_db(transaction=True)
def test_status_with_redis_unreachable_names_the_url_and_the_error_and_counts_the_outbox(
    configure, smtp_server
) -> None:
    url = closed_port_url()
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=url, ON_COMMIT=False)
    send_mail("kept", "b", None, ["a@example.com"])
    send_mail("kept", "b", None, ["a@example.com"])
    redacted = url.replace("s3cret", "***")

    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("mailqueue", "status", stdout=out)
    message = str(raised.value)
    assert message.startswith(f"Redis at {redacted} cannot be read: Error 111 connecting to 127.0.0.1:")
    assert "Connection refused" in message and "Not an outage" not in message
    assert raised.value.returncode != 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "outbox: 2 message(s) waiting for Redis"
    assert lines[1].startswith("outbox: latest reason: Redis did not accept 1 message(s) (Error 111 connecting")
    assert "s3cret" not in out.getvalue() + message

    out = StringIO()
    with pytest.raises(CommandError):
        call_command("mailqueue", "status", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["redis"]["url"] == redacted
    assert data["redis"]["error"].startswith("Error 111 connecting to 127.0.0.1:")
    assert data["redis"]["fix"] is None
    assert (data["queues"], data["providers"], data["outbox"]) == (None, None, 2)
    assert "s3cret" not in out.getvalue()


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_status_with_redis_unreachable_exits_non_zero_without_a_traceback(configure, smtp_server, as_json) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=closed_port_url())
    command = [sys.executable, "-m", "django", "mailqueue", "status", *(["--json"] if as_json else [])]
    done = subprocess.run(command, env=settings_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert "s3cret" not in done.stderr + done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith("CommandError: Redis at redis://mailer:***@127.0.0.1:")
    assert "Connection refused" in line
    if as_json:
        assert json.loads(done.stdout)["redis"]["error"].startswith("Error 111")
    else:
        # A process of its own, on the test settings' in-memory database: the outbox table is not there.
        assert done.stdout.startswith("outbox: unknown (no such table")


def test_redacted_url_hides_every_password() -> None:
    assert redacted_url("redis://u:p%40ss@h:6379/0") == "redis://u:***@h:6379/0"
    assert redacted_url("rediss://:pw@h/1") == "rediss://:***@h/1"
    assert redacted_url("redis://h:6379/0?password=pw&db=2") == "redis://h:6379/0?password=***&db=2"
    assert redacted_url("redis://h:6379/0") == "redis://h:6379/0"
    assert redacted_url("unix:///run/redis.sock?password=pw") == "unix:///run/redis.sock?password=***"
