"""Redis refusing writes, or pausing, under a running worker: no message stays stuck in the live worker.

A private redis-server is made to refuse every write (full with ``noeviction``: OOM; a replica of a master
that is not there: READONLY) or is paused (SIGSTOP) for a few seconds mid-drain, then set right. Dramatiq's
consumer thread makes a new consumer after such an error and drops what the old one had prefetched; those
messages sat in this live, heartbeating worker's in-progress set for good, where no recovery looks.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis
from django.core.mail import send_mass_mail

from mailqueue.monitoring import queue_depths
from tests.redis_server import RedisServer
from tests.servers import SMTPServer, free_port

COUNT = 300
OUTAGE = 3.0


@pytest.fixture
def private_redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def refuse_writes_full(client: redis.Redis, server: RedisServer) -> Callable[[], None]:
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)  # every write: "OOM command not allowed when used memory > 'maxmemory'"
    return lambda: client.config_set("maxmemory", 0)


def refuse_writes_read_only(client: redis.Redis, server: RedisServer) -> Callable[[], None]:
    client.replicaof("127.0.0.1", free_port())  # a failover made it a replica; its master is not there
    return lambda: client.replicaof("NO", "ONE")


def pause(client: redis.Redis, server: RedisServer) -> Callable[[], None]:
    assert server.process is not None
    pid = server.process.pid
    os.kill(pid, signal.SIGSTOP)
    return lambda: os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("breakage", [refuse_writes_full, refuse_writes_read_only, pause])
@pytest.mark.django_db(transaction=True)
def test_mail_a_live_worker_held_when_redis_refused_is_delivered_once_redis_accepts(
    configure, smtp_server: SMTPServer, private_redis: RedisServer, run_worker, breakage, caplog
) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        BROKER_URL=private_redis.url,
        # A pause longer than the socket timeout: a command times out, and Redis runs it when it resumes.
        BROKER_OPTIONS={"socket_timeout": 1.0},
        ON_COMMIT=False,
    )
    smtp_server.handler.stall_seconds = 0.005  # slow enough that the outage lands mid-drain
    send_mass_mail([(f"m{i}", "b", None, ["a@example.com"]) for i in range(COUNT)])
    admin = redis.Redis.from_url(private_redis.url)
    with run_worker(threads=4) as worker:
        deadline = time.monotonic() + 30
        while len(smtp_server.received) < COUNT // 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        set_right = breakage(admin, private_redis)
        time.sleep(OUTAGE)
        set_right()
        worker.drain(timeout=30)  # raises QueueJoinTimeout while a message is stuck in progress
    admin.close()
    subjects = Counter(m.parsed["Subject"] for m in smtp_server.received)
    assert set(subjects) == {f"m{i}" for i in range(COUNT)}
    assert sum(depth.ready + depth.in_progress + depth.delayed for depth in queue_depths()) == 0
    assert sum(depth.dead for depth in queue_depths()) == 0
    duplicates = {subject: n for subject, n in subjects.items() if n > 1}
    print(f"{breakage.__name__}: {len(duplicates)} duplicate(s)")  # noqa: T201  (shown with -s)
    assert not duplicates
