"""End to end: send_mail() -> Redis -> a real Dramatiq worker -> a real provider."""

from __future__ import annotations

import base64
import json
import logging
import time

import pytest
from anymail.message import AnymailMessage
from django.core.mail import EmailMessage, EmailMultiAlternatives, mailers, send_mail

from mailqueue import deadletters
from mailqueue.broker import actor_name
from mailqueue.client import redis_client
from mailqueue.conf import get_config
from mailqueue.enqueue import encode, push
from mailqueue.envelope import Envelope
from mailqueue.keys import QueueKeys
from mailqueue.monitoring import queue_depths
from mailqueue.signals import AttemptFailed
from tests.mime import structure
from tests.servers import SMTPServer, free_port
from workers.admission import admit, settle


def unreachable_smtp() -> dict:
    """An SMTP provider on a loopback port nothing listens on: connection refused."""
    return {
        "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "OPTIONS": {"host": "127.0.0.1", "port": free_port(), "timeout": 2},
    }


def depth(queue: str):
    return next(d for d in queue_depths() if d.queue == queue)


def test_smtp_receives_what_a_synchronous_send_would_have_sent(smtp_setup, run_worker) -> None:
    message = EmailMultiAlternatives(
        "Grüße ✓",
        "Text body äöü",
        '"Zoë" <zoe@example.com>',
        ["Ann <ann@example.com>"],
        cc=["cc@example.com"],
        bcc=["bcc@example.com"],
        reply_to=["r@example.com"],
        headers={"X-Kind": "test"},
    )
    message.attach_alternative("<p>HTML</p>", "text/html")
    message.attach("report.pdf", b"%PDF\x00\xff binary", "application/pdf")
    message.send(using="transactional")
    with run_worker() as worker:
        worker.drain()
    (queued,) = smtp_setup.wait_for(1)
    # The same message sent synchronously through the same provider, with the same Date/Message-ID.
    fixed = {"Date": queued.parsed["Date"], "Message-ID": queued.parsed["Message-ID"]}
    message.extra_headers = {**fixed, **message.extra_headers}
    assert mailers["smtp"].send_messages([message]) == 1
    queued, synchronous = smtp_setup.wait_for(2)
    assert structure(queued.parsed) == structure(synchronous.parsed)
    assert (
        sorted(queued.rcpt_tos)
        == sorted(synchronous.rcpt_tos)
        == ["ann@example.com", "bcc@example.com", "cc@example.com"]
    )
    assert queued.mail_from == synchronous.mail_from == "zoe@example.com"


def test_one_smtp_session_is_reused_across_messages(smtp_setup, run_worker) -> None:
    mailers["bulk"].send_messages([EmailMessage(f"m{i}", "b", None, [f"r{i}@example.com"]) for i in range(30)])
    with run_worker(threads=1) as worker:
        worker.drain()
    assert len(smtp_setup.wait_for(30)) == 30
    assert smtp_setup.handler.sessions == 1


def test_anymail_esp_receives_the_message_over_one_keep_alive_connection(configure, postmark_api, run_worker) -> None:
    configure(providers={"postmark": postmark_api.mailer()})
    for i in range(5):
        AnymailMessage(
            f"Welcome {i}",
            "body",
            "from@example.com",
            [f"user{i}@example.com"],
            tags=["welcome"],
            metadata={"user": i},
            track_opens=True,
            headers={"X-Kind": "welcome"},
        ).send(using="transactional")
    with run_worker(threads=1) as worker:
        worker.drain()
    requests = postmark_api.wait_for(5)
    assert len(requests) == 5
    first = requests[0].body
    assert first["Subject"] == "Welcome 0"
    assert first["Tag"] == "welcome"
    assert first["Metadata"] == {"user": "0"} or first["Metadata"] == {"user": 0}
    assert first["TrackOpens"] is True
    headers = {h["Name"]: h["Value"] for h in first["Headers"]}
    assert headers["X-Kind"] == "welcome"
    assert "Message-ID" not in headers and "Date" not in headers  # as a direct send: the ESP stamps its own
    assert requests[0].headers["X-Postmark-Server-Token"] == "test-token"
    assert len(postmark_api.connections) == 1


def test_transient_smtp_failures_are_retried_inside_the_attempt(configure, smtp_server, run_worker) -> None:
    queues = {name: {"providers": ["smtp"], "max_retries": 0} for name in ("critical", "default", "bulk")}
    configure(providers={"smtp": smtp_server.mailer()}, queues=queues)  # no Dramatiq retry: only tenacity can help
    smtp_setup = smtp_server
    smtp_setup.handler.replies.extend(["451 4.3.0 try again later"])
    send_mail("retry me", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    assert [m.parsed["Subject"] for m in smtp_setup.wait_for(1)] == ["retry me"]
    assert depth("default").dead == 0


def test_failover_to_the_next_provider_when_the_primary_is_down(configure, smtp_server, run_worker) -> None:
    down = unreachable_smtp()
    configure(providers={"primary": down, "secondary": smtp_server.mailer()})
    send_mail("failover", "b", None, ["a@example.com"], using="transactional")
    with run_worker() as worker:
        worker.drain()
    assert [m.parsed["Subject"] for m in smtp_server.wait_for(1)] == ["failover"]


def test_failover_from_an_esp_answering_5xx_to_smtp(configure, postmark_api, smtp_server, run_worker) -> None:
    configure(providers={"postmark": postmark_api.mailer(), "smtp": smtp_server.mailer()})
    postmark_api.responses.extend([(503, {"ErrorCode": 0, "Message": "down"})] * 2)
    send_mail("via smtp", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    assert len(postmark_api.requests) == 2  # the in-attempt retries
    assert [m.parsed["Subject"] for m in smtp_server.wait_for(1)] == ["via smtp"]


def test_dramatiq_retries_later_when_every_provider_fails(configure, smtp_server, run_worker, caplog) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, PROVIDERS={"smtp": {"attempts": 1}})  # no tenacity retry
    smtp_server.handler.replies.append("451 busy")
    caplog.set_level(logging.INFO, logger="workers.outcomes")
    send_mail("second attempt", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    assert [m.parsed["Subject"] for m in smtp_server.wait_for(1)] == ["second attempt"]
    assert depth("default").dead == 0
    assert "via smtp (attempt 2)" in caplog.text


def test_permanent_rejection_is_not_retried_and_is_dead_lettered(smtp_setup, run_worker) -> None:
    smtp_setup.handler.rcpt_replies["gone@example.com"] = "550 5.1.1 no such user"
    send_mail("bounce", "b", None, ["gone@example.com"])
    with run_worker() as worker:
        worker.drain()
    (letter,) = deadletters.iter_dead("default")
    assert letter.attempts == 1
    assert letter.error_type == "PermanentDeliveryError"
    assert "550" in letter.reason and "SMTPRecipientsRefused" in letter.reason
    assert letter.provider == "smtp"
    assert smtp_setup.received == []
    assert depth("default").dead == 1


def test_esp_recipient_refusal_is_permanent(configure, postmark_api, run_worker) -> None:
    configure(providers={"postmark": postmark_api.mailer()})
    postmark_api.responses.append(
        (
            422,
            {
                "ErrorCode": 406,
                "Message": "You tried to send to a recipient that has been marked as inactive.\n"
                "Found inactive addresses: gone@example.com.\nInactive recipients are ones that have generated a hard bounce.",
            },
        )
    )
    send_mail("inactive", "b", None, ["gone@example.com"])
    with run_worker() as worker:
        worker.drain()
    (letter,) = deadletters.iter_dead("default")
    assert "AnymailRecipientsRefused" in letter.reason
    assert len(postmark_api.requests) == 1


def test_exhausted_retries_end_in_the_dead_letter_queue_with_the_last_error(configure, run_worker) -> None:
    down = unreachable_smtp()
    configure(providers={"down": down})
    send_mail("never", "b", None, ["a@example.com"], using="bulk")  # bulk: max_retries=1
    with run_worker() as worker:
        worker.drain()
    (letter,) = deadletters.iter_dead("bulk")
    assert letter.attempts == 2
    assert letter.error_type == "AllProvidersFailed"
    assert "Connection refused" in letter.reason or "ConnectionRefusedError" in letter.reason
    assert letter.subject == "never"
    assert depth("bulk").dead == 1 and depth("bulk").ready == 0


def test_a_poison_payload_is_dead_lettered_and_the_worker_keeps_going(smtp_setup, run_worker, namespace) -> None:
    keys = QueueKeys.of(namespace, "default")
    poison = {
        "queue_name": "default",
        "actor_name": actor_name("default"),
        "args": [{"v": 99}],
        "kwargs": {},
        "options": {"redis_message_id": "poison-1"},
        "message_id": "poison-1",
        "message_timestamp": 0,
    }
    redis_client().hset(keys.messages, "poison-1", json.dumps(poison))
    redis_client().rpush(keys.ready, "poison-1")
    send_mail("after poison", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    (letter,) = deadletters.iter_dead("default")
    assert "unknown envelope version 99" in letter.reason
    assert [m.parsed["Subject"] for m in smtp_setup.wait_for(1)] == ["after poison"]


def test_requeued_dead_letters_are_delivered(smtp_setup, run_worker) -> None:
    smtp_setup.handler.rcpt_replies["later@example.com"] = "550 not yet"
    send_mail("second chance", "b", None, ["later@example.com"])
    with run_worker() as worker:
        worker.drain()
        assert depth("default").dead == 1
        del smtp_setup.handler.rcpt_replies["later@example.com"]
        assert deadletters.requeue(deadletters.iter_dead("default")) == 1
        worker.drain()
    assert [m.parsed["Subject"] for m in smtp_setup.wait_for(1)] == ["second chance"]
    assert depth("default").dead == 0


@pytest.mark.parametrize("queue", ["critical", "default", "bulk"])
def test_each_queue_is_drained_by_its_own_actor(smtp_setup, run_worker, queue) -> None:
    message = EmailMessage(f"to {queue}", "b", None, ["a@example.com"])
    message.queue = queue
    message.send()
    assert depth(queue).ready == 1
    with run_worker() as worker:
        worker.drain()
    assert depth(queue).ready == 0
    assert [m.parsed["Subject"] for m in smtp_setup.wait_for(1)] == [f"to {queue}"]


def test_an_esp_refusing_our_credentials_fails_over_instead_of_dead_lettering(
    configure, postmark_api, smtp_server, run_worker
) -> None:
    configure(providers={"postmark": postmark_api.mailer(), "smtp": smtp_server.mailer()})
    postmark_api.responses.extend([(401, {"ErrorCode": 10, "Message": "Bad or missing server token."})] * 2)
    send_mail("token revoked", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    assert [m.parsed["Subject"] for m in smtp_server.wait_for(1)] == ["token revoked"]
    assert depth("default").dead == 0


def test_a_stalled_last_attempt_is_dead_lettered_by_mailqueue_not_lost_to_dramatiq(
    configure, smtp_server, run_worker, redis_client, namespace
) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        queues={
            "critical": {"providers": ["smtp"]},
            "default": {"providers": ["smtp"], "max_retries": 0, "time_limit": 200},
            "bulk": {"providers": ["smtp"]},
        },
    )
    smtp_server.handler.stall_seconds = 3
    smtp_server.handler.replies.append("451 too late anyway")  # the server does not take it: no duplicate
    send_mail("too slow", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    (letter,) = deadletters.iter_dead("default")
    assert letter.error_type == "TimeLimitExceeded"
    assert "time_limit (200 ms)" in letter.reason
    assert not redis_client.exists(f"{namespace}:default.XQ")  # nothing in Dramatiq's expiring set


@pytest.mark.parametrize("polite", [False, True], ids=["silent-close", "421-then-close"])
def test_a_connection_the_server_closed_while_idle_is_reopened_without_failing_over(
    configure, run_worker, polite
) -> None:
    server = SMTPServer(idle_timeout=0.5, polite_idle_close=polite).start()
    try:
        queues = {name: {"providers": ["smtp"], "max_retries": 0} for name in ("critical", "default", "bulk")}
        configure(providers={"smtp": server.mailer()}, queues=queues, PROVIDERS={"smtp": {"attempts": 1}})
        with run_worker(threads=1) as worker:
            send_mail("before idle", "b", None, ["a@example.com"])
            worker.drain()
            time.sleep(1.5)  # the server drops the idle session
            send_mail("after idle", "b", None, ["a@example.com"])
            worker.drain()
        assert [m.parsed["Subject"] for m in server.wait_for(2)] == ["before idle", "after idle"]
        assert server.handler.sessions == 2
        assert depth("default").dead == 0
    finally:
        server.stop()


def test_a_provider_refusing_the_sender_fails_over(configure, smtp_server, backup_smtp, run_worker) -> None:
    configure(providers={"primary": smtp_server.mailer(), "backup": backup_smtp.mailer()})
    smtp_server.handler.mail_reply = "550 5.7.1 sender not allowed to relay"
    send_mail("relay", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    assert [m.parsed["Subject"] for m in backup_smtp.wait_for(1)] == ["relay"]


def test_every_provider_refusing_dead_letters_at_once(configure, smtp_server, postmark_api, run_worker) -> None:
    configure(providers={"smtp": smtp_server.mailer(), "postmark": postmark_api.mailer()})
    smtp_server.handler.mail_reply = "550 5.7.1 sender not allowed"
    # Postmark's 400 (no sender signature) is about the account; its 300 would be a message fault, permanent at once.
    postmark_api.responses.append((422, {"ErrorCode": 400, "Message": "Sender signature not found."}))
    send_mail("nobody wants it", "b", None, ["a@example.com"])
    with run_worker() as worker:
        worker.drain()
    (letter,) = deadletters.iter_dead("default")
    assert letter.error_type == "AllProvidersRefused"
    assert letter.attempts == 1
    assert "smtp: SMTPSenderRefused: 550" in letter.reason and "postmark: AnymailRequestsAPIError" in letter.reason
    assert len(postmark_api.requests) == 1  # a refusal is not retried on the same provider


def test_a_message_that_cannot_be_rendered_is_dead_lettered_at_once(smtp_setup, run_worker) -> None:
    # Bypass send-time validation, as an older client or a hand-made payload could.
    envelope = Envelope.from_message(
        EmailMessage("ok", "b", None, ["a@example.com"]), queue="default", mailer="default"
    )
    broken = Envelope(
        id=envelope.id,
        queue="default",
        mailer="default",
        created_at=envelope.created_at,
        message={**envelope.message, "headers": {**envelope.message["headers"], "X-Bad": "a\nb"}},
    )
    push([encode(broken)])
    with run_worker() as worker:
        worker.drain()
    (letter,) = deadletters.iter_dead("default")
    assert letter.error_type == "PermanentDeliveryError"
    assert letter.reason.startswith("the message is invalid: HeaderInjection: Header 'X-Bad' contains a line break")
    assert letter.attempts == 1
    assert smtp_setup.received == []


# --- logs: ids, providers and reasons, never the message ---------------------------------------------------------

SECRET_SUBJECT = "Secret subject 7f3a"
SECRET_BODY = "Secret body 9c1e"
SECRET_ADDRESS = "hidden.rcpt@example.org"
SECRET_ATTACHMENT = b"attachment content 5d2b"
#: What no log record may contain: the message's subject, body, recipient (address, local part, display name),
#: attachment name and content (raw and as the envelope carries it, base64).
SECRETS = (
    SECRET_SUBJECT,
    SECRET_BODY,
    SECRET_ADDRESS,
    "hidden.rcpt",
    "Hidden Name",
    "report-5d2b.pdf",
    SECRET_ATTACHMENT.decode(),
    base64.b64encode(SECRET_ATTACHMENT).decode(),
)


def secret_message() -> EmailMultiAlternatives:
    message = EmailMultiAlternatives(SECRET_SUBJECT, SECRET_BODY, None, [f"Hidden Name <{SECRET_ADDRESS}>"])
    message.attach_alternative(f"<p>{SECRET_BODY}</p>", "text/html")
    message.attach("report-5d2b.pdf", SECRET_ATTACHMENT, "application/pdf")
    return message


def record_text(record: logging.LogRecord) -> str:
    """Everything a log handler could write for ``record``: the message, the traceback, the stack."""
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    return text + "\n" + (record.exc_text or "") + (record.stack_info or "")


def assert_no_leak(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "nothing was logged: the test did not look at anything"
    for record in caplog.records:
        text = record_text(record)
        leaked = [secret for secret in SECRETS if secret in text]
        assert not leaked, f"{record.name} logged {leaked}: {text!r}"


def lines_about(caplog: pytest.LogCaptureFixture, envelope_id: str) -> list[logging.LogRecord]:
    """The WARNING-or-worse records that name ``envelope_id``."""
    return [r for r in caplog.records if r.levelno >= logging.WARNING and envelope_id in r.getMessage()]


class RefuseOnce(dict):
    """RCPT replies that are given once, then the recipient is accepted."""

    def get(self, key, default=None):
        return self.pop(key, default)


def test_a_transient_failure_logs_one_line_with_id_provider_and_error_never_the_message(
    configure, smtp_server, run_worker, caplog, recorder
) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, PROVIDERS={"smtp": {"attempts": 1}})
    smtp_server.handler.rcpt_replies = RefuseOnce({SECRET_ADDRESS: f"451 4.2.1 <{SECRET_ADDRESS}>: mailbox busy"})
    caplog.set_level(logging.DEBUG)  # Dramatiq names every message it receives at DEBUG
    message = secret_message()
    message.send()
    with run_worker() as worker:
        worker.drain()
    assert [m.parsed["Subject"] for m in smtp_server.wait_for(1)] == [SECRET_SUBJECT]
    (line,) = lines_about(caplog, message.mailqueue_id)
    text = line.getMessage()
    assert line.levelno == logging.WARNING
    assert "smtp: SMTPRecipientsRefused" in text and "451 4.2.1" in text and "***@example.org" in text
    assert_no_leak(caplog)
    # The signal (in-process, for the application) keeps the refused address: it says who was refused.
    (failed,) = recorder.of(AttemptFailed)
    assert SECRET_ADDRESS in failed.error


def test_a_permanent_failure_is_logged_without_the_message_and_its_dead_letter_keeps_the_address(
    smtp_setup, run_worker, caplog
) -> None:
    smtp_setup.handler.rcpt_replies[SECRET_ADDRESS] = f"550 5.1.1 <{SECRET_ADDRESS}>: no such user"
    caplog.set_level(logging.DEBUG)
    message = secret_message()
    message.send()
    with run_worker() as worker:
        worker.drain()
    (letter,) = deadletters.iter_dead("default")
    assert SECRET_ADDRESS in letter.reason  # what an operator acts on, beside the payload that holds it anyway
    (line,) = lines_about(caplog, message.mailqueue_id)
    assert line.levelno == logging.ERROR and "dead-lettered" in line.getMessage()
    assert "550 5.1.1 <***@example.org>" in line.getMessage()
    assert_no_leak(caplog)


def test_a_time_limit_is_logged_without_the_message(configure, smtp_server, run_worker, caplog) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        queues={
            "critical": {"providers": ["smtp"]},
            "default": {"providers": ["smtp"], "max_retries": 0, "time_limit": 200},
            "bulk": {"providers": ["smtp"]},
        },
    )
    smtp_server.handler.stall_seconds = 2
    smtp_server.handler.replies.append("451 too late anyway")
    caplog.set_level(logging.DEBUG)
    message = secret_message()
    message.send()
    with run_worker() as worker:
        worker.drain()
    (letter,) = deadletters.iter_dead("default")
    assert letter.error_type == "TimeLimitExceeded"
    assert any("Time limit exceeded" in r.getMessage() for r in caplog.records)  # Dramatiq's own line
    assert_no_leak(caplog)


def test_an_error_escaping_the_actor_is_logged_by_dramatiq_without_the_message(
    smtp_setup, run_worker, caplog, redis_client, namespace
) -> None:
    smtp_setup.handler.rcpt_replies[SECRET_ADDRESS] = "550 5.1.1 no such user"
    dead = QueueKeys.of(namespace, "default").dead
    redis_client.set(dead, "not a sorted set")  # recording the dead letter fails with WRONGTYPE: not an outage
    caplog.set_level(logging.DEBUG)
    message = secret_message()
    message.send()
    with run_worker() as worker:
        deadline = time.monotonic() + 10
        while not any("unhandled exception" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the error never escaped the actor"
            time.sleep(0.02)
        redis_client.delete(dead)  # Dramatiq's Retries attempts it again: now the dead letter is recorded
        worker.drain()
    (letter,) = deadletters.iter_dead("default")
    assert letter.attempts == 2
    escaped = next(r for r in caplog.records if "unhandled exception" in r.getMessage())
    assert escaped.exc_info is not None and "WRONGTYPE" in record_text(escaped)
    assert message.mailqueue_id in escaped.getMessage()  # named by its id
    assert_no_leak(caplog)


def test_failing_over_names_the_provider_that_is_tried_next(configure, smtp_server, run_worker, caplog) -> None:
    configure(providers={"down": unreachable_smtp(), "smtp": smtp_server.mailer()})
    caplog.set_level(logging.INFO)
    message = secret_message()
    message.send()
    with run_worker() as worker:
        worker.drain()
    assert [m.parsed["Subject"] for m in smtp_server.wait_for(1)] == [SECRET_SUBJECT]
    (line,) = lines_about(caplog, message.mailqueue_id)
    assert line.getMessage().startswith(f"provider down failed for {message.mailqueue_id}, trying smtp: ")
    assert_no_leak(caplog)


def test_no_next_provider_is_announced_when_none_will_be_tried(configure, smtp_server, run_worker, caplog) -> None:
    # The second provider's circuit is open: it is skipped, so nothing may say it is being tried.
    queues = {name: {"providers": ["down", "smtp"], "max_retries": 0} for name in ("critical", "default", "bulk")}
    providers = {"down": {"attempts": 1}, "smtp": {"failure_threshold": 1, "cooldown": 30}}
    configure(providers={"down": unreachable_smtp(), "smtp": smtp_server.mailer()}, queues=queues, PROVIDERS=providers)
    config = get_config()
    smtp, default = config.provider("smtp"), config.queues["default"]
    settle(admit("earlier", smtp, default, config), "earlier", smtp, "failed", config)
    caplog.set_level(logging.INFO)
    message = secret_message()
    message.send()
    with run_worker() as worker:
        worker.drain()
    (letter,) = deadletters.iter_dead("default")
    assert letter.error_type == "AllProvidersFailed"
    assert "trying" not in caplog.text
    (line,) = lines_about(caplog, message.mailqueue_id)
    assert "dead-lettered" in line.getMessage() and "down: " in line.getMessage()
    assert f"provider smtp is skipped for {message.mailqueue_id}: its circuit is open" in caplog.text
    assert_no_leak(caplog)
