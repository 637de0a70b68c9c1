"""Redis refusing writes, or pausing, under a running worker: no message stays stuck in the live worker.

A private redis-server is made to refuse every write (full with ``noeviction``: OOM; a replica of a master
that is not there: READONLY) or is paused (SIGSTOP) for a few seconds mid-drain, then set right. Dramatiq's
consumer thread makes a new consumer after such an error and drops what the old one had prefetched; those
messages sat in this live, heartbeating worker's in-progress set for good, where no recovery looks.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis
from django.core.mail import send_mass_mail

from mailqueue.broker import new_broker
from mailqueue.keys import heartbeats_key
from mailqueue.monitoring import queue_depths
from tests.redis_server import RedisServer
from tests.servers import SMTPServer, free_port
from workers.dramatiq_redis import Keepalive
from workers.patience import is_outage

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


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_keepalive_thread_outlives_redis_refusing_it_for_any_reason(
    configure, smtp_server: SMTPServer, tmp_path, namespace, caplog
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    server = RedisServer(data).start()
    admin = redis.Redis.from_url(server.url)
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=server.url)
    broker = new_broker()  # what the keepalive reads of it: the namespace and the worker's id
    keepalive = Keepalive(["default"], interval=50, timeout=10_000)
    caplog.set_level(logging.WARNING, logger="workers.dramatiq_redis")

    def beat() -> float:
        return admin.zscore(heartbeats_key(namespace), broker.broker_id) or 0.0

    def beats_again() -> bool:
        before = beat()
        return wait_for(lambda: beat() > before)

    keepalive.after_worker_boot(broker, None)  # type: ignore[arg-type]
    try:
        assert beats_again()
        # A permission taken away (an ACL change): not an outage, an error to fix, logged with its traceback.
        admin.execute_command("ACL", "SETUSER", "default", "-zadd")
        time.sleep(0.6)  # a dozen refused beats
        admin.execute_command("ACL", "SETUSER", "default", "+zadd")
        assert beats_again(), "the keepalive thread died on a refused permission"
        # MISCONF: Redis cannot persist (its directory is gone) and refuses writes, a plain ResponseError.
        admin.config_set("save", "3600 1")
        shutil.rmtree(data)
        admin.bgsave()
        assert wait_for(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err")
        with pytest.raises(redis.ResponseError, match="^MISCONF") as refused:
            admin.set(f"{namespace}:probe", 1)
        assert is_outage(refused.value)
        time.sleep(0.6)
        admin.config_set("stop-writes-on-bgsave-error", "no")
        assert beats_again(), "the keepalive thread died on MISCONF"
        assert keepalive._thread is not None and keepalive._thread.is_alive()
    finally:
        keepalive.after_worker_shutdown(broker, None)  # type: ignore[arg-type]
        admin.config_set("save", "")  # or it refuses to shut down without a last save
        admin.close()
        server.stop()
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and "heartbeat and recovery" in r.getMessage()]
    unexpected = [r for r in failures if "heartbeat and recovery failed" in r.getMessage()]
    outage = [r for r in failures if "could not reach Redis" in r.getMessage()]
    assert len(unexpected) == 1 and unexpected[0].exc_info is not None  # once a minute at most, with its traceback
    assert "can't run this command" in unexpected[0].getMessage()
    assert len(outage) == 1 and "MISCONF" in outage[0].getMessage()


@pytest.mark.django_db(transaction=True)
def test_a_deferral_held_by_the_delay_queue_consumer_through_redis_refusing_writes_is_delivered(
    configure, smtp_server: SMTPServer, private_redis: RedisServer, run_worker, namespace
) -> None:
    backoff = {"min_backoff": 8000, "max_backoff": 8000}  # the retry is due 4 to 8 s later: after the outage
    configure(
        providers={"smtp": smtp_server.mailer()},
        queues={name: {"providers": ["smtp"], **backoff} for name in ("critical", "default", "bulk")},
        BROKER_URL=private_redis.url,
        ON_COMMIT=False,
    )
    smtp_server.handler.rcpt_replies["a@example.com"] = "451 try again later"
    send_mass_mail([("deferred", "b", None, ["a@example.com"])])
    admin = redis.Redis.from_url(private_redis.url)

    def held_in_memory() -> bool:  # fetched from the delay queue by this worker, waiting for its time
        return any(admin.scard(key) for key in admin.scan_iter(f"{namespace}:__acks__.*.default.DQ"))

    with run_worker(threads=2) as worker:
        assert wait_for(held_in_memory)
        del smtp_server.handler.rcpt_replies["a@example.com"]
        set_right = refuse_writes_full(admin, private_redis)
        time.sleep(OUTAGE)  # the delay queue consumer's fetches are refused while it holds the deferral
        set_right()
        worker.drain(timeout=30)  # raises QueueJoinTimeout while the deferral is stuck in progress
    admin.close()
    assert [m.parsed["Subject"] for m in smtp_server.received] == ["deferred"]
    assert sum(depth.ready + depth.in_progress + depth.delayed + depth.dead for depth in queue_depths()) == 0
