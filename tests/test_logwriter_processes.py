"""``manage.py mailqueue log`` as a process: SIGKILLed mid-run and restarted, every message has its row once.

Runs the demo project's settings in subprocesses, on a SQLite file and on the
real PostgreSQL of this machine (a database of this test's own; skipped when
no PostgreSQL answers).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
import redis

from mailqueue.keys import events_key
from mailqueue.logwriter import GROUP

ROOT = Path(__file__).resolve().parent.parent
SERVER = os.environ.get("MAILQUEUE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MESSAGES = 2000


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Callable[[str], list[tuple]]]]:
    """A database URL and a function running one query on it."""
    if request.param == "sqlite":
        path = tmp_path / "log.sqlite3"

        def query_sqlite(sql: str) -> list[tuple]:
            with sqlite3.connect(path) as connection:
                return connection.execute(sql).fetchall()

        yield f"sqlite:///{path}", query_sqlite
        return
    try:
        admin = psycopg.connect(SERVER, autocommit=True, connect_timeout=2)
    except psycopg.OperationalError as error:
        pytest.skip(f"no PostgreSQL at {SERVER}: {error}")
    name = f"mqtest_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = SERVER.rsplit("/", 1)[0] + f"/{name}"

    def query_postgres(sql: str) -> list[tuple]:
        with psycopg.connect(url) as connection:
            return connection.execute(sql).fetchall()

    try:
        yield url, query_postgres
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


def writer_env(url: str, namespace: str, redis_url: str) -> dict[str, str]:
    """The demo project's settings on ``url``, migrated."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DATABASE_URL": url,
        "MAILQUEUE_NAMESPACE": namespace,
        "REDIS_URL": redis_url,
        "PYTHONPATH": str(ROOT),
    }
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr
    return env


def test_writer_killed_mid_run_then_restarted_writes_every_message_once(database, namespace, redis_url) -> None:
    url, query = database
    env = writer_env(url, namespace, redis_url)
    client = redis.Redis.from_url(redis_url)
    key = events_key(namespace)
    now = int(time.time() * 1000)
    with client.pipeline(transaction=False) as pipe:
        for i in range(MESSAGES):
            queued = {
                "k": "queued",
                "id": f"e{i}",
                "t": now + i,
                "q": "default",
                "m": "default",
                "s": "hi",
                "f": "a@example.com",
                "to": [f"user{i}@example.com"],
                "cc": [],
                "bcc": [],
                "z": 100,
                "c": now,
            }
            pipe.xadd(key, {"e": orjson.dumps(queued)})
            pipe.xadd(key, {"e": orjson.dumps({"k": "sent", "id": f"e{i}", "t": now + i + 5, "p": "smtp", "n": 1})})
        pipe.execute()

    command = [sys.executable, "manage.py", "mailqueue", "log", "--batch", "50", "--claim-idle", "0.5"]
    killed = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        (events,) = query("SELECT count(*) FROM mailqueue_messageevent")[0]
        if events >= 500:
            break
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    assert 0 < events < 2 * MESSAGES, "kill the writer mid-run"

    time.sleep(0.6)  # the killed writer's pending entries are now idle long enough to be claimed
    restarted = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and query("SELECT count(*) FROM mailqueue_messageevent")[0][0] < 2 * MESSAGES:
        time.sleep(0.05)
    restarted.send_signal(signal.SIGTERM)
    out, err = restarted.communicate(timeout=30)
    assert restarted.returncode == 0, err  # a clean shutdown on SIGTERM
    assert "wrote " in out

    assert query("SELECT count(*), count(DISTINCT stream_id) FROM mailqueue_messageevent")[0] == (2 * MESSAGES,) * 2
    assert query("SELECT status, count(*) FROM mailqueue_message GROUP BY status") == [("sent", MESSAGES)]
    assert query("SELECT count(*) FROM mailqueue_messagerecipient")[0] == (MESSAGES,)
    assert client.xpending(key, GROUP)["pending"] == 0
    client.close()


def test_two_writers_at_once_and_a_locked_database_leave_every_row_as_one_writer_would(
    database, namespace, redis_url
) -> None:
    """Each message's five events go to the stream in rounds (every message's first, then every second, ...), so
    two writers hold events of the same message in different batches and write them in any order; on SQLite the
    database is also locked mid-run."""
    url, query = database
    env = writer_env(url, namespace, redis_url)
    client = redis.Redis.from_url(redis_url)
    key = events_key(namespace)
    now = int(time.time() * 1000)
    rounds = [
        lambda i: {"k": "queued", "id": f"w{i}", "t": now, "q": "default", "m": "default", "to": [f"u{i}@x.org"]},
        lambda i: {"k": "attempt_failed", "id": f"w{i}", "t": now + 10, "p": "ses", "n": 1, "r": "503 busy"},
        lambda i: {"k": "deferred", "id": f"w{i}", "t": now + 20, "n": 1, "r": "retry in 15s"},
        lambda i: {"k": "requeued", "id": f"w{i}", "t": now + 25, "q": "bulk"},
        lambda i: {"k": "sent", "id": f"w{i}", "t": now + 30, "p": "smtp", "n": 2, "pid": f"<{i}@x>"},
    ]
    with client.pipeline(transaction=False) as pipe:
        for event in rounds:
            for i in range(MESSAGES):
                pipe.xadd(key, {"e": orjson.dumps(event(i))})
        pipe.execute()

    command = [sys.executable, "manage.py", "mailqueue", "log", "--batch", "30"]
    writers = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    locked_for = 0.0
    if url.startswith("sqlite"):
        while query("SELECT count(*) FROM mailqueue_messageevent")[0][0] < 300:
            time.sleep(0.02)
        # Longer than the writers' 5-s lock timeout: their transactions fail, and nothing is lost or doubled.
        lock = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        time.sleep(7)
        lock.execute("COMMIT")
        lock.close()
        locked_for = time.monotonic() - started
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and query("SELECT count(*) FROM mailqueue_messageevent")[0][0] < 5 * MESSAGES:
        time.sleep(0.05)
    outputs = []
    for writer in writers:
        writer.send_signal(signal.SIGTERM)
        outputs.append(writer.communicate(timeout=30))
        assert writer.returncode == 0, outputs[-1][1]

    assert all("wrote " in out and "wrote 0 " not in out for out, _ in outputs), "both writers wrote"
    if locked_for:
        assert any("database is locked" in err for _, err in outputs)
    assert query("SELECT count(*), count(DISTINCT stream_id) FROM mailqueue_messageevent")[0] == (5 * MESSAGES,) * 2
    shape = (
        "status, attempts, provider, provider_message_id <> '', last_error, queue, mailer, "
        "status_at = sent_at, provider_at = sent_at, updated_at = sent_at, queue_at < sent_at, "
        "last_error_at < queue_at, first_attempt_at < last_error_at, queued_at < first_attempt_at"
    )
    rows = query(f"SELECT {shape}, count(*) FROM mailqueue_message GROUP BY {shape}")
    assert [tuple(row) for row in rows] == [
        ("sent", 2, "smtp", True, "retry in 15s", "bulk", "default", *([True] * 7), MESSAGES)
    ]
    assert query("SELECT count(*) FROM mailqueue_messagerecipient")[0] == (MESSAGES,)
    assert client.xpending(key, GROUP)["pending"] == 0
    client.close()
