"""The outbox on PostgreSQL, as in production: relays running at the same time push each message once.

Runs the demo project's settings in subprocesses against a database of this
test's own, created and dropped here. Skipped when no PostgreSQL answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from mailqueue.keys import QueueKeys

ROOT = Path(__file__).resolve().parent.parent
SERVER = os.environ.get("MAILQUEUE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

SEND_WHILE_REDIS_IS_AWAY = """
import django
django.setup()
from django.core.mail import send_mass_mail
for start in range(0, 1000, 100):
    send_mass_mail([(f"m{i}", "b", None, ["a@example.com"]) for i in range(start, start + 100)], using="bulk")
"""


@pytest.fixture
def database() -> Iterator[str]:
    try:
        admin = psycopg.connect(SERVER, autocommit=True, connect_timeout=2)
    except psycopg.OperationalError as error:
        pytest.skip(f"no PostgreSQL at {SERVER}: {error}")
    name = f"mqtest_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield SERVER.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_two_relays_at_once_push_each_kept_message_exactly_once(database, namespace, redis_url) -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DATABASE_URL": database,
        "MAILQUEUE_NAMESPACE": namespace,
        "PYTHONPATH": str(ROOT),
    }
    assert run({**env, "REDIS_URL": redis_url}, "manage.py", "migrate", "--verbosity", "0").returncode == 0
    sent = run({**env, "REDIS_URL": "redis://127.0.0.1:1/0"}, "-c", SEND_WHILE_REDIS_IS_AWAY)
    assert sent.returncode == 0, sent.stderr
    with psycopg.connect(database) as connection:
        assert connection.execute("SELECT count(*) FROM mailqueue_outboxmessage").fetchone() == (1000,)

    relays = [
        subprocess.Popen(
            [sys.executable, "manage.py", "mailqueue", "relay", "--once"],
            cwd=ROOT,
            env={**env, "REDIS_URL": redis_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [relay.communicate(timeout=120) for relay in relays]
    assert [relay.returncode for relay in relays] == [0, 0], outputs
    relayed = [int(out.rsplit("relayed ", 1)[1].split()[0]) for out, _ in outputs]
    assert sum(relayed) == 1000

    with psycopg.connect(database) as connection:
        assert connection.execute("SELECT count(*) FROM mailqueue_outboxmessage").fetchone() == (0,)
    client = redis.Redis.from_url(redis_url)
    keys = QueueKeys.of(namespace, "bulk")
    assert client.llen(keys.ready) == 1000
    assert client.hlen(keys.messages) == 1000
    client.close()
