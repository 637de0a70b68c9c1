"""``manage.py mailqueue``: status, dead, requeue, purge."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.mail import send_mail
from django.core.management import call_command
from django.core.management.base import CommandError

from mailqueue import deadletters
from mailqueue.monitoring import queue_depths


def run(*args: str) -> str:
    out = StringIO()
    call_command("mailqueue", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_status_table_shows_every_queue_provider_and_the_outbox(smtp_setup) -> None:
    send_mail("s", "b", None, ["a@example.com"], using="bulk")
    send_mail("s", "b", None, ["a@example.com"], using="bulk")
    queues, providers, outbox = run("status").split("\n\n")
    lines = queues.splitlines()
    assert lines[0].split() == ["queue", "ready", "in_progress", "delayed", "dead"]
    assert [line.split() for line in lines[1:]] == [
        ["critical", "0", "0", "0", "0"],
        ["default", "0", "0", "0", "0"],
        ["bulk", "2", "0", "0", "0"],
    ]
    lines = providers.splitlines()
    assert lines[0].split() == [
        "provider", "state", "failures", "probe_in", "sent_5m", "failed_5m", "sent_1h", "failed_1h"
    ]  # fmt: skip
    assert lines[1].split() == ["smtp", "closed", "0", "-", "0", "0", "0", "0"]
    assert outbox.strip() == "outbox: 0 message(s) waiting for Redis"


@pytest.mark.django_db(transaction=True)
def test_status_json(smtp_setup, run_worker) -> None:
    send_mail("s", "b", None, ["a@example.com"], using="transactional")
    with run_worker() as worker:
        worker.drain()
    send_mail("s", "b", None, ["a@example.com"], using="transactional")
    data = json.loads(run("status", "--json"))
    assert data["queues"][0] == {"queue": "critical", "ready": 1, "in_progress": 0, "delayed": 0, "dead": 0}
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
        }
    ]
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
