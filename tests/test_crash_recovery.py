"""A worker process killed with SIGKILL, with the default settings: its mail is back within seconds, its pool
replaces it, and the only duplicates are the sends its provider was still answering."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from django.core.mail import EmailMessage, send_mass_mail
from dramatiq import Message

from mailqueue.broker import new_broker
from mailqueue.conf import get_config
from mailqueue.deadletters import iter_dead, requeue
from mailqueue.envelope import Envelope
from mailqueue.keys import QueueKeys, heartbeats_key, in_progress_key, sending_key
from mailqueue.monitoring import queue_depths
from mailqueue.signals import MessageDeadLettered
from tests.redis_server import RedisServer
from tests.servers import ReceivedMail, RecordingSMTPHandler, SMTPServer
from tests.worker_processes import WorkerPool
from workers import admission
from workers.delivery import deliver_envelope
from workers.dramatiq_redis import Keepalive

#: What the issue promises: a killed worker's messages are delivered within this many seconds of the kill.
RECOVERY_BOUND = 20.0
#: How long the test's provider takes to answer a send it has already accepted.
PROVIDER_REPLY = 0.02
DEFAULTS = {name: {"providers": ["smtp"]} for name in ("critical", "default", "bulk")}


class AcceptThenAnswerLater(RecordingSMTPHandler):
    """A provider that takes the message as soon as it has it, and answers PROVIDER_REPLY seconds later.

    As a real one does: a client that dies while waiting for the answer has sent the message all the same.
    """

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.received.append(
                ReceivedMail(
                    envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, session.peer, time.time()
                )
            )
        await asyncio.sleep(PROVIDER_REPLY)
        return "250 Message accepted"


@pytest.fixture
def slow_answering_smtp():
    server = SMTPServer()
    server.handler = AcceptThenAnswerLater()
    server.controller = server._controller()
    server.start()
    yield server
    server.stop()


def queued() -> int:
    return sum(depth.ready + depth.in_progress + depth.delayed for depth in queue_depths())


def held_by(client: redis.Redis, namespace: str, broker_id: str) -> dict[str, str]:
    """Subject by envelope id of every message the worker ``broker_id`` has fetched and not acknowledged."""
    held = {}
    for queue in ("default", "default.DQ"):
        ids = sorted(client.smembers(in_progress_key(namespace, broker_id, queue)))
        if not ids:
            continue
        messages = QueueKeys.of(namespace, queue).messages if queue == "default" else f"{namespace}:default.DQ.msgs"
        for data in client.hmget(messages, ids):
            if data is not None:
                envelope = Envelope.decode(Message.decode(data).args[0])
                held[envelope.id] = envelope.message["subject"]
    return held


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


@pytest.mark.django_db(transaction=True)
def test_a_sigkilled_worker_process_mail_is_delivered_within_20_s_and_the_pool_replaces_it(
    configure, slow_answering_smtp, redis_client, namespace, tmp_path: Path
) -> None:
    count, threads = 2000, 8  # 8: a pool's default threads
    smtp = slow_answering_smtp
    configure(providers={"smtp": smtp.mailer()}, queues=DEFAULTS, PROVIDERS={})
    config = get_config()
    assert (config.heartbeat_timeout, config.recovery_interval, config.queues["default"].time_limit) == (
        10_000,
        1_000,
        300_000,
    )  # the defaults: nothing here is tuned for the test
    for start in range(0, count, 500):
        send_mass_mail([(f"m{i}", "b", None, ["a@example.com"]) for i in range(start, start + 500)])

    pool = WorkerPool(["default"], processes=2, log=tmp_path / "pool.log").start()
    try:
        assert wait_until(lambda: len(pool.broker_ids()) == 2, 30), pool.log()
        assert wait_until(lambda: len(smtp.received) >= count * 0.3, 60), "the pool is not delivering"
        victim = pool.workers()[0]
        broker_id = pool.broker_ids()[victim]
        signal_sent = time.time()
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        held = held_by(redis_client, namespace, broker_id)  # nothing changes them until recovery (10 s)
        claimed = [eid for eid in held if redis_client.get(sending_key(namespace, eid))]

        assert wait_until(lambda: queued() == 0 and len({m.parsed["Subject"] for m in smtp.received}) == count, 60)
        assert wait_until(lambda: len(pool.workers()) == 2, 10), "the pool did not replace the killed process"
        replaced = pool.workers()
        log = pool.log()
    finally:
        returncode = pool.stop()
    assert returncode == 0, pool.log()
    assert victim not in replaced
    assert f"(pid {victim}) died (killed by SIGKILL); starting a replacement" in log

    arrivals: defaultdict[str, list[float]] = defaultdict(list)
    by_message_id: defaultdict[str, list[float]] = defaultdict(list)
    for mail in smtp.received:
        arrivals[mail.parsed["Subject"]].append(mail.received_at)
        by_message_id[mail.parsed["Message-ID"]].append(mail.received_at)
    assert set(arrivals) == {f"m{i}" for i in range(count)}, "every message was delivered"

    # Every message the killed process held is delivered, its last copy within the bound.
    assert held, "the kill came while the process held no message: not mid-drain"
    late = {s: max(arrivals[s]) - killed_at for s in held.values() if max(arrivals[s]) - killed_at > RECOVERY_BOUND}
    assert not late, f"delivered more than {RECOVERY_BOUND} s after the kill: {late}"
    recovered_after = max(max(arrivals[s]) for s in held.values()) - killed_at

    # Duplicates: only sends the provider had taken and was still answering when the process died.
    duplicates = {mid: times for mid, times in by_message_id.items() if len(times) > 1}
    window = PROVIDER_REPLY + 0.25  # the reply time, one round trip, and generous slack for a busy machine
    unexplained = {mid: t for mid, t in duplicates.items() if not signal_sent - window <= min(t) <= killed_at + 0.25}
    print(  # noqa: T201  (the run's figures, shown with -s)
        f"held by the killed process: {len(held)} ({len(claimed)} being sent); all delivered "
        f"{recovered_after:.1f} s after the kill; {len(duplicates)} duplicate(s) by Message-ID"
    )
    assert not unexplained, f"duplicates outside the window: {unexplained}, kill at {killed_at}"
    assert len(duplicates) <= threads
    assert all(len(times) == 2 for times in duplicates.values())
    assert Counter(len(t) for t in arrivals.values())[1] >= count - threads


# --- the pieces, each on its own ---------------------------------------------------------------------------------


def test_a_claim_held_by_a_dead_worker_is_taken_over_and_a_live_ones_is_not(smtp_setup, redis_client, namespace):
    config = get_config()
    queue = config.queues["default"]
    envelope = Envelope.from_message(EmailMessage("s", "b", None, ["a@example.com"]), queue="default", mailer="d")
    claim_key = sending_key(namespace, envelope.id)
    now_ms = int(time.time() * 1000)
    live, dead = uuid.uuid4().hex, uuid.uuid4().hex
    redis_client.zadd(heartbeats_key(namespace), {live: now_ms, dead: now_ms - config.heartbeat_timeout - 1})

    # A live worker is sending it: another copy waits.
    redis_client.set(claim_key, admission.new_claim(live), px=300_000)
    assert admission.admit(envelope.id, config.provider("smtp"), queue, config, "other").outcome == "claimed"

    # Its heartbeat expired: the claim no longer holds the copy back, which is sent at once.
    redis_client.set(claim_key, admission.new_claim(dead), px=300_000)
    delivered = deliver_envelope(envelope, queue, config)
    assert (delivered.provider, delivered.earlier, len(smtp_setup.received)) == ("smtp", False, 1)

    # A worker gone from the heartbeats (recovery forgot it) is dead too.
    gone = Envelope.from_message(EmailMessage("s", "b", None, ["a@example.com"]), queue="default", mailer="d")
    redis_client.set(sending_key(namespace, gone.id), admission.new_claim(uuid.uuid4().hex), px=300_000)
    assert admission.admit(gone.id, config.provider("smtp"), queue, config, "mine").outcome == "go"

    # A claim that names no worker (an attempt made outside a worker) holds until it expires, as before.
    other = Envelope.from_message(EmailMessage("s", "b", None, ["a@example.com"]), queue="default", mailer="d")
    redis_client.set(sending_key(namespace, other.id), admission.new_claim(), px=300_000)
    assert admission.admit(other.id, config.provider("smtp"), queue, config, "mine").outcome == "claimed"


def test_recovery_puts_a_dead_workers_messages_back_at_the_head_of_their_queues(
    smtp_setup, redis_client, namespace
) -> None:
    config = get_config()
    keepalive = Keepalive(config.queues, interval=1000, timeout=config.heartbeat_timeout)

    class Broker:  # what Keepalive reads of a broker
        broker_id = uuid.uuid4().hex

    Broker.namespace = namespace  # type: ignore[attr-defined]
    keys = QueueKeys.of(namespace, "default")
    dead, alive = uuid.uuid4().hex, uuid.uuid4().hex
    now_ms = int(time.time() * 1000)
    redis_client.zadd(heartbeats_key(namespace), {dead: now_ms - config.heartbeat_timeout - 1, alive: now_ms})
    for worker, ids in ((dead, ["d1", "d2"]), (alive, ["a1"])):
        for redis_id in ids:
            redis_client.hset(keys.messages, redis_id, json.dumps({"id": redis_id}))
        redis_client.sadd(in_progress_key(namespace, worker, "default"), *ids)
    redis_client.hset(keys.delayed_messages, "d3", "{}")
    redis_client.sadd(in_progress_key(namespace, dead, "default.DQ"), "d3")
    redis_client.sadd(in_progress_key(namespace, dead, "default"), "acked-meanwhile")  # no message any more
    redis_client.rpush(keys.ready, "waiting")

    assert keepalive.beat(Broker) == (1, 3)
    assert redis_client.lrange(keys.ready, 0, -1)[-1] == b"waiting"  # the recovered ones go first
    assert sorted(redis_client.lrange(keys.ready, 0, 1)) == [b"d1", b"d2"]
    assert redis_client.lrange(keys.delayed, 0, -1) == [b"d3"]
    assert not redis_client.exists(in_progress_key(namespace, dead, "default"))
    assert redis_client.smembers(in_progress_key(namespace, alive, "default")) == {b"a1"}  # a live one's stay
    assert redis_client.zscore(heartbeats_key(namespace), Broker.broker_id) is not None  # it heartbeat too
    assert keepalive.beat(Broker) == (1, 0)  # idempotent: nothing twice

    # Remembered for REMEMBER_DEAD heartbeat timeouts (a worker with other queues may still need it), then forgotten.
    redis_client.zadd(heartbeats_key(namespace), {dead: now_ms - config.heartbeat_timeout * 11})
    assert keepalive.beat(Broker) == (1, 0)
    assert redis_client.zscore(heartbeats_key(namespace), dead) is None


@pytest.mark.django_db(transaction=True)
def test_a_message_for_an_actor_no_worker_declares_goes_to_mailqueues_dead_letters(
    smtp_setup, run_worker, redis_client, namespace, recorder
) -> None:
    broker = new_broker()
    foreign = broker.enqueue(
        Message(queue_name="default", actor_name="billing.charge", args=(42,), kwargs={}, options={})
    )
    envelope = Envelope.from_message(EmailMessage("s", "b", None, ["a@example.com"]), queue="default", mailer="d")
    misrouted = broker.enqueue(
        Message(
            queue_name="default", actor_name="mailqueue.deliver.gone", args=(envelope.encode(),), kwargs={}, options={}
        )
    )
    with run_worker() as worker:
        worker.drain()
    letters = {letter.id: letter for letter in iter_dead("default")}
    assert set(letters) == {foreign.message_id, misrouted.message_id}
    assert letters[foreign.message_id].reason == (
        "ActorNotFound: no worker here declares actor 'billing.charge' "
        "(queue 'default' is delivered by 'mailqueue.deliver.default')"
    )
    assert letters[foreign.message_id].payload["args"] == [42]
    assert letters[misrouted.message_id].error_type == "ActorNotFound"
    assert not redis_client.exists(f"{namespace}:default.XQ")  # not Dramatiq's own, expiring set
    assert queued() == 0
    assert {event.envelope_id for event in recorder.of(MessageDeadLettered)} == set(letters)
    requeue([letters[misrouted.message_id]])  # a mailqueue envelope: once requeued, its queue's actor delivers it
    with run_worker() as worker:
        worker.drain()
    assert [m.parsed["Subject"] for m in smtp_setup.received] == ["s"]


def test_a_redis_pause_longer_than_the_heartbeat_timeout_declares_no_live_worker_dead(
    configure, smtp_server, tmp_path, namespace
) -> None:
    server = RedisServer(tmp_path).start()
    assert server.process is not None
    try:
        timeout, interval = 2000, 200
        configure(
            providers={"smtp": smtp_server.mailer()},
            queues=DEFAULTS,
            BROKER_URL=server.url,
            HEARTBEAT_TIMEOUT=timeout,
            RECOVERY_INTERVAL=interval,
        )
        config = get_config()
        client = redis.Redis.from_url(server.url)
        sending_one = Keepalive(config.queues, interval=interval, timeout=timeout)
        other_one = Keepalive(config.queues, interval=interval, timeout=timeout)

        class A:  # a worker sending a message, slowly
            namespace = ""
            broker_id = uuid.uuid4().hex

        class B:  # another worker
            namespace = ""
            broker_id = uuid.uuid4().hex

        A.namespace = B.namespace = namespace
        keys = QueueKeys.of(namespace, "default")
        client.hset(keys.messages, "m1", "{}")
        client.sadd(in_progress_key(namespace, A.broker_id, "default"), "m1")
        envelope = Envelope.from_message(EmailMessage("s", "b", None, ["a@example.com"]), queue="default", mailer="d")
        client.set(sending_key(namespace, envelope.id), admission.new_claim(A.broker_id), px=300_000)

        def copy_admission() -> admission.Admission:
            claim = admission.new_claim(B.broker_id)
            return admission.admit(envelope.id, config.provider("smtp"), config.queues["default"], config, claim)

        def copy_admitted() -> str:
            return copy_admission().outcome

        assert (sending_one.beat(A), other_one.beat(B)) == ((0, 0), (0, 0))
        os.kill(server.process.pid, signal.SIGSTOP)  # nobody can heartbeat
        time.sleep(timeout / 1000 * 1.5)
        os.kill(server.process.pid, signal.SIGCONT)

        # B gets through first: A's heartbeat is older than the timeout, but A is alive, only Redis was away.
        assert copy_admitted() == "claimed"  # even before any keepalive got through
        assert other_one.beat(B) == (0, 0)
        waiting = copy_admission()
        assert waiting.outcome == "claimed"
        assert waiting.wait <= timeout * 2 / 1000  # asks again after the grace, not when the 300 s claim expires
        assert client.smembers(in_progress_key(namespace, A.broker_id, "default")) == {b"m1"}
        # Both keep beating on their timers; the grace ends, and A is alive: nothing of A's is taken.
        for _ in range(int(timeout * 1.2 / interval)):
            assert (sending_one.beat(A), other_one.beat(B)) == ((0, 0), (0, 0))
            time.sleep(interval / 1000)
        assert copy_admitted() == "claimed"
        # Then A dies for real: after the timeout its message is put back and its claim taken over, as before.
        deadline = time.monotonic() + timeout / 1000 * 3
        while (recovered := other_one.beat(B)) == (0, 0) and time.monotonic() < deadline:
            time.sleep(interval / 1000)
        assert recovered == (1, 1)
        assert copy_admitted() == "go"
        client.close()
    finally:
        server.stop()


class AcceptThenAnswerMuchLater(AcceptThenAnswerLater):
    """A provider that takes each message at once and answers SLOW_REPLY seconds later."""

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.received.append(
                ReceivedMail(
                    envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, session.peer, time.time()
                )
            )
        await asyncio.sleep(SLOW_REPLY)
        return "250 Message accepted"


#: How long the slow provider takes to answer: longer than the Redis pause, so every send spans it.
SLOW_REPLY = 8.0


@pytest.mark.django_db(transaction=True)
def test_workers_busy_in_slow_sends_through_a_redis_pause_longer_than_the_heartbeat_timeout_send_nothing_twice(
    configure, namespace, tmp_path: Path
) -> None:
    smtp = SMTPServer()
    smtp.handler = AcceptThenAnswerMuchLater()
    smtp.controller = smtp._controller()
    smtp.start()
    server = RedisServer(tmp_path).start()
    assert server.process is not None
    count = 6
    mailer = smtp.mailer()
    mailer["OPTIONS"]["timeout"] = 30
    configure(
        providers={"smtp": mailer},
        queues=DEFAULTS,
        BROKER_URL=server.url,
        HEARTBEAT_TIMEOUT=4000,
        RECOVERY_INTERVAL=500,
        ON_COMMIT=False,
    )
    send_mass_mail([(f"m{i}", "b", None, ["a@example.com"]) for i in range(count)])
    pool = WorkerPool(["default"], processes=2, threads=4, log=tmp_path / "pool.log").start()
    try:
        assert wait_until(lambda: len(pool.broker_ids()) == 2, 30), pool.log()
        assert wait_until(lambda: len(smtp.received) >= count, 30), "the workers are not sending"
        os.kill(server.process.pid, signal.SIGSTOP)  # every send still waits for its answer
        time.sleep(6.0)  # 1.5 heartbeat timeouts
        os.kill(server.process.pid, signal.SIGCONT)
        assert wait_until(lambda: queued() == 0, 40), pool.log()
        time.sleep(4.5)  # past the grace: a worker wrongly taken for dead would have its mail sent again by now
        assert queued() == 0
        log = pool.log()
    finally:
        pool.stop()
        server.stop()
        smtp.stop()
    subjects = Counter(mail.parsed["Subject"] for mail in smtp.received)
    assert subjects == {f"m{i}": 1 for i in range(count)}, log
    # Nobody took the busy workers for dead: their messages stayed theirs (before the grace, the first keepalive
    # through put them back, and only the claims and delivery records kept most copies from being sent again).
    assert "put back" not in log
    assert "nobody is declared dead for" in log
