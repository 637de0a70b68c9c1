"""Credentials, ACL permissions and TLS: not outages, errors that say what to fix, and mail that waits meanwhile.

The ACL a deployment needs (docs/operating.md) is tried with real ACL users on a
private redis-server: each role's user gets exactly the rule documented for it
(web processes enqueue, relay and read status; workers deliver, retry and
dead-letter). A narrower user, a wrong password or a certificate that cannot be
verified fails with the error that says what to fix, and nothing is lost.
"""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
import redis
from django.core.mail import EmailMessage, send_mail
from django.core.management import call_command
from django.core.management.base import CommandError
from dramatiq import Message

from mailqueue.envelope import Envelope
from mailqueue.keys import QueueKeys, heartbeats_key, in_progress_key, sending_key
from mailqueue.models import OutboxMessage
from tests.redis_server import RedisServer, server_binary
from tests.servers import free_port
from workers.admission import new_claim

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "acl-test-password"

#: The rules of docs/operating.md, with <ns> for the namespace (the test checks the document says exactly this).
WEB_RULE = (
    "+ping +evalsha +script|load +hset +rpush +set +hexists +llen +hlen +zcard +hmget "
    "+zrangebyscore +multi +exec +zrem +hdel +publish +xadd +xlen +xpending +xrange +xreadgroup +xack +xautoclaim "
    "+xgroup|create +xgroup|delconsumer +xinfo|groups +xinfo|consumers +get +hget +eval +lindex +time +zcount +zrange +zscore "
    "~<ns>:* &<ns>:wake:*"
)
WORKER_RULE = (
    "+ping +evalsha +script|load +multi +exec +time +get +set +del +expire +pttl +keys "
    "+hget +hmget +hset +hdel +hexists +hlen +hincrby +hincrbyfloat +rpush +lpush +lpop +sadd +srem +scard +smembers "
    "+zadd +zrem +zcard +zscore +zrangebyscore +zremrangebyscore +subscribe +xadd +exists ~<ns> ~<ns>:* &<ns>:wake:*"
)


@pytest.fixture
def acl_redis(tmp_path):
    server = RedisServer(tmp_path, appendonly=True).start()  # keeps its data when a test restarts it
    yield server
    server.stop()


def add_user(server: RedisServer, name: str, rule: str, namespace: str) -> str:
    """Create ACL user ``name`` with ``rule`` (``<ns>`` filled in); return a BROKER_URL that logs in as it."""
    admin = redis.Redis.from_url(server.url)
    admin.execute_command(
        "ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rule.replace("<ns>", namespace).split()
    )
    admin.close()
    return f"redis://{name}:{PASSWORD}@127.0.0.1:{server.port}/0"


def admin_client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def run(*args: str) -> str:
    out = StringIO()
    call_command("mailqueue", *args, stdout=out)
    return out.getvalue()


def test_the_documented_rules_are_the_ones_tested() -> None:
    operating = (ROOT / "docs" / "operating.md").read_text()
    for rule in (WEB_RULE, WORKER_RULE):
        assert f"ACL SETUSER mailqueue-{'web' if rule is WEB_RULE else 'worker'} on >PASSWORD {rule}" in operating


@pytest.mark.django_db(transaction=True)
def test_users_with_exactly_the_documented_rules_enqueue_relay_deliver_and_operate(
    configure, smtp_server, acl_redis, namespace, run_worker
) -> None:
    web = add_user(acl_redis, "mailqueue-web", WEB_RULE, namespace)
    worker = add_user(acl_redis, "mailqueue-worker", WORKER_RULE, namespace)
    smtp_server.handler.rcpt_replies["gone@example.com"] = "550 no such user"
    smtp_server.handler.rcpt_replies["later@example.com"] = "451 try again later"
    providers = {"smtp": smtp_server.mailer()}
    limits = {"rate_limit": "100/s", "max_concurrency": 2}  # the limiter's keys and scripts too

    configure(providers=providers, BROKER_URL=web, ON_COMMIT=False, PROVIDERS={"smtp": limits})
    send_mail("plain", "b", None, ["a@example.com"])
    keyed = EmailMessage("keyed", "b", None, ["a@example.com"])
    keyed.idempotency_key = "order-1"  # the guarded push: SET NX inside the script
    keyed.send()
    send_mail("dead", "b", None, ["gone@example.com"])
    send_mail("retried", "b", None, ["later@example.com"])  # retried through the delay queue, then dead
    acl_redis.stop()
    send_mail("kept", "b", None, ["a@example.com"])  # Redis away: the outbox
    acl_redis.start()  # users are not persisted (no ACL file): create them again
    add_user(acl_redis, "mailqueue-web", WEB_RULE, namespace)
    add_user(acl_redis, "mailqueue-worker", WORKER_RULE, namespace)
    assert "relayed 1 message(s) in all" in run("relay", "--once")
    assert "default   5" in run("status")
    assert OutboxMessage.objects.count() == 0

    configure(providers=providers, BROKER_URL=worker, ON_COMMIT=False, PROVIDERS={"smtp": limits})
    with run_worker(threads=2) as running:
        running.drain()

    configure(providers=providers, BROKER_URL=web, ON_COMMIT=False, PROVIDERS={"smtp": limits})
    assert sorted(message.parsed["Subject"] for message in smtp_server.received) == ["kept", "keyed", "plain"]
    dead = run("dead")
    assert "550 no such user" in dead and "451 try again later" in dead
    assert "requeued 2 message(s)" in run("requeue", "--all")
    assert "purged 0 message(s)" in run("purge", "--all")
    assert not admin_client(acl_redis).acl_log()  # nothing was refused along the way


@pytest.mark.django_db(transaction=True)
def test_the_worker_user_recovers_a_dead_workers_message_and_a_copy_waits_for_a_live_claim(
    configure, smtp_server, acl_redis, namespace, run_worker
) -> None:
    web = add_user(acl_redis, "mailqueue-web", WEB_RULE, namespace)
    worker = add_user(acl_redis, "mailqueue-worker", WORKER_RULE, namespace)
    providers = {"smtp": smtp_server.mailer()}
    configure(providers=providers, BROKER_URL=web, ON_COMMIT=False)
    send_mail("stranded", "b", None, ["a@example.com"])
    send_mail("claimed", "b", None, ["a@example.com"])

    admin = admin_client(acl_redis)
    keys = QueueKeys.of(namespace, "default")
    stored = {}  # subject -> (Redis id, envelope id)
    for redis_id, data in admin.hgetall(keys.messages).items():
        envelope = Envelope.decode(Message.decode(data).args[0])
        stored[envelope.message["subject"]] = (redis_id, envelope.id)
    dead, live = uuid.uuid4().hex, uuid.uuid4().hex
    now_ms = int(time.time() * 1000)
    admin.zadd(heartbeats_key(namespace), {dead: now_ms - 60_000, live: now_ms})
    # A dead worker had fetched "stranded": only the keepalive's recovery (its LPUSH) puts it back.
    admin.lrem(keys.ready, 0, stored["stranded"][0])
    admin.sadd(in_progress_key(namespace, dead, "default"), stored["stranded"][0])
    # A live worker is sending "claimed": the admission script reads its heartbeat (ZSCORE) and the copy waits.
    claimed_at = time.time()
    admin.set(sending_key(namespace, stored["claimed"][1]), new_claim(live), px=1500)

    configure(providers=providers, BROKER_URL=worker, ON_COMMIT=False)
    with run_worker(threads=2) as running:
        running.drain()
    arrived = {mail.parsed["Subject"]: mail.received_at for mail in smtp_server.received}
    assert sorted(arrived) == ["claimed", "stranded"]
    assert arrived["claimed"] >= claimed_at + 1.4  # it waited for the live claim to expire
    assert not admin.exists(in_progress_key(namespace, dead, "default"))
    assert not admin.acl_log()  # nothing was refused along the way


@pytest.mark.parametrize(
    ("removed", "refusal"),
    [
        ("+evalsha ", "no permissions to run the 'evalsha' command"),
        # Refused inside the enqueue script: Redis words it differently, as an error of the script.
        ("+rpush ", "can't run this command or subcommand script"),
    ],
    ids=["evalsha", "a-command-the-script-runs"],
)
@pytest.mark.django_db(transaction=True)
def test_a_web_user_without_a_command_keeps_mail_in_the_outbox_and_logs_what_to_fix(
    configure, smtp_server, acl_redis, namespace, caplog, removed, refusal
) -> None:
    narrower = add_user(acl_redis, "narrow-web", WEB_RULE.replace(removed, ""), namespace)
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=narrower, ON_COMMIT=False)
    caplog.set_level(logging.ERROR, logger="mailqueue.outbox")
    assert send_mail("s", "b", None, ["a@example.com"]) == 1  # accepted: it waits in the outbox
    assert OutboxMessage.objects.count() == 1
    (record,) = [record for record in caplog.records if record.name == "mailqueue.outbox"]
    assert record.levelno == logging.ERROR
    text = record.getMessage()
    assert refusal in text
    assert "the Redis user lacks a permission mailqueue needs" in text
    assert "A Redis user for mailqueue" in text
    # status reads fine with this user, and shows why mail waits.
    assert "outbox: latest reason: Redis did not accept 1 message(s)" in run("status")


@pytest.mark.django_db(transaction=True)
def test_a_user_with_a_wrong_password_is_an_error_that_says_so_everywhere(
    configure, smtp_server, acl_redis, namespace, caplog
) -> None:
    good = add_user(acl_redis, "mailqueue-web", WEB_RULE, namespace)
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=good.replace(PASSWORD, "wrong"), ON_COMMIT=False)
    caplog.set_level(logging.ERROR, logger="mailqueue.outbox")
    assert send_mail("s", "b", None, ["a@example.com"]) == 1
    assert OutboxMessage.objects.count() == 1
    assert any(
        record.levelno == logging.ERROR and "Redis refused the credentials" in record.getMessage()
        for record in caplog.records
    )
    with pytest.raises(CommandError, match=r"invalid username-password pair.*Not an outage: Redis refused the"):
        run("status")


@pytest.mark.django_db(transaction=True)
def test_key_patterns_must_include_the_bare_namespace_dramatiq_uses(
    configure, smtp_server, acl_redis, namespace, run_worker
) -> None:
    web = add_user(acl_redis, "mailqueue-web", WEB_RULE, namespace)
    narrower = add_user(acl_redis, "narrow-worker", WORKER_RULE.replace("~<ns> ", ""), namespace)  # only ~<ns>:*
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=web, ON_COMMIT=False)
    send_mail("s", "b", None, ["a@example.com"])
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=narrower, ON_COMMIT=False)
    admin = admin_client(acl_redis)
    refused: list[dict] = []
    with run_worker(threads=1):
        deadline = time.monotonic() + 10
        while not refused and time.monotonic() < deadline:
            time.sleep(0.05)
            refused = [entry for entry in admin.acl_log() if entry["username"] == "narrow-worker"]
    # Dramatiq's fetch passes the bare namespace as a key, which ~<ns>:* does not cover: nothing is fetched.
    assert {(entry["reason"], entry["object"]) for entry in refused} == {("key", namespace)}
    assert smtp_server.received == []
    assert admin.llen(f"{namespace}:default") == 1  # still queued, not lost


@pytest.fixture
def tls_redis(tmp_path) -> Iterator[tuple[int, Path]]:
    """A private redis-server that speaks only TLS, with a self-signed certificate; yields (port, certificate)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)]
        + ["--tls-auth-clients", "no", "--dir", str(tmp_path), "--logfile", str(tmp_path / "redis.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        probe.close()
        yield port, cert
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
def test_a_certificate_redis_py_cannot_verify_is_an_error_that_says_so_and_mail_waits(
    configure, smtp_server, tls_redis, caplog
) -> None:
    port, cert = tls_redis
    url = f"rediss://127.0.0.1:{port}/0"
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=url, ON_COMMIT=False)
    caplog.set_level(logging.ERROR, logger="mailqueue.outbox")
    assert send_mail("s", "b", None, ["a@example.com"]) == 1
    assert OutboxMessage.objects.count() == 1
    (record,) = [record for record in caplog.records if record.name == "mailqueue.outbox"]
    assert record.levelno == logging.ERROR
    assert "the TLS connection to Redis failed" in record.getMessage()
    assert "CERTIFICATE_VERIFY_FAILED" in record.getMessage()
    with pytest.raises(CommandError, match="Not an outage: the TLS connection to Redis failed"):
        run("status")
    # With the CA configured, the same URL works and the relay pushes what waited.
    configure(
        providers={"smtp": smtp_server.mailer()},
        BROKER_URL=url,
        BROKER_OPTIONS={"ssl_ca_certs": str(cert)},
        ON_COMMIT=False,
    )
    assert "relayed 1 message(s) in all" in run("relay", "--once")
    assert "default   1" in run("status")
