"""A message's own fault never counts against its provider: end to end, with a real worker and real providers.

send_mail() now refuses every message below (tests/test_validation.py), so they are enqueued as an older
version or other code would have queued them: straight into Redis with the real enqueue, past the checks.
Before issue 10 each of them failed in the worker with an error taken as the provider's, was retried, and
counted towards opening the provider's circuit: five of them held up all mail on the provider for the
cooldown. Now each is dead-lettered at once with a reason that names the field, the provider's circuit
stays closed with no failure counted, and good mail sent behind them arrives at once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from anymail.message import AnymailMessage
from django.core.mail import EmailMessage

from mailqueue import deadletters
from mailqueue.client import redis_client
from mailqueue.conf import get_config
from mailqueue.enqueue import encode, push
from mailqueue.envelope import Envelope
from mailqueue.keys import ProviderKeys
from mailqueue.monitoring import provider_health, queue_depths
from tests.servers import PostmarkAPI, SMTPServer

FROM = "shop@example.com"
#: A cooldown no test waits out: a message held up by an open circuit would miss every deadline below.
COOLDOWN = 120.0


def ordinary(subject: str, **changes: object) -> EmailMessage:
    message = EmailMessage(subject, "body", FROM, ["ann@example.com"])
    for name, value in changes.items():
        setattr(message, name, value)
    return message


def with_headers(subject: str, headers: dict[str, str]) -> EmailMessage:
    return EmailMessage(subject, "body", FROM, ["ann@example.com"], headers=headers)


#: (subject, message, a regex the dead letter's reason must match: the field at fault).
HOSTILE: list[tuple[str, Callable[[], EmailMessage], str]] = [
    ("idna-bcc", lambda: ordinary("idna-bcc", bcc=["x@" + "ä" * 70 + ".com"]), r"bcc address 'x@ä+\.com'"),
    ("unicode-message-id", lambda: with_headers("unicode-message-id", {"Message-ID": "<ä@example.com>"}), "Message-ID"),
    ("long-header-name", lambda: with_headers("long-header-name", {"X" * 79: ""}), "Header 'X{79}'"),
    ("group-recipient", lambda: ordinary("group-recipient", to=["x:; <y@z.com>"]), r"to address 'x:; <y@z\.com>'"),
    ("second-content-type", lambda: with_headers("second-content-type", {"Content-Type": "text/html"}), "Content-Type"),
]


def enqueue_unchecked(message: EmailMessage) -> str:
    """Queue ``message`` as send_mail() would, minus its checks; return the envelope id."""
    envelope = Envelope.from_message(message, queue="default", mailer="default")
    assert push([encode(envelope)]) == 1
    return envelope.id


def minute_counters(alias: str) -> dict[str, int]:
    key = ProviderKeys.of(get_config().namespace, alias).stats(int(time.time() // 60))
    return {name.decode(): int(count) for name, count in redis_client().hgetall(key).items()}


def test_five_hostile_messages_are_dead_lettered_and_good_mail_behind_them_arrives_at_once(
    configure, smtp_server: SMTPServer, run_worker
) -> None:
    configure(
        providers={"smtp": smtp_server.mailer()},
        # Two failures open the circuit: before issue 10 the first two hostile messages did.
        PROVIDERS={"smtp": {"failure_threshold": 2, "cooldown": COOLDOWN, "attempts": 2, "wait_min": 0.01}},
    )
    for _, build, _ in HOSTILE:
        enqueue_unchecked(build())
    for n in range(3):
        assert ordinary(f"good-{n}").send() == 1

    started = time.monotonic()
    with run_worker(threads=1) as worker:  # one thread: the good mail really is behind the hostile mail
        received = smtp_server.wait_for(3, timeout=10)
        arrived = time.monotonic() - started
        worker.drain(timeout=10)

    assert sorted(mail.data.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for mail in received) == [
        "good-0",
        "good-1",
        "good-2",
    ]
    assert arrived < 10  # an open circuit would have held them for COOLDOWN seconds
    letters = {letter.reason: letter for letter in deadletters.iter_dead("default")}
    assert len(letters) == len(HOSTILE)
    for subject, _, field in HOSTILE:
        (reason,) = [reason for reason, letter in letters.items() if subject in str(letter.payload)]
        letter = letters[reason]
        assert letter.attempts == 1, (subject, reason)  # at once: no retry
        assert letter.error_type == "PermanentDeliveryError"
        assert letter.provider == "smtp"
        assert re.search(field, reason), (subject, reason)
    (health,) = provider_health()
    assert (health.state, health.failures, health.failed_5m, health.sent_5m) == ("closed", 0, 0, 3)
    assert minute_counters("smtp") == {"sent": 3, "sent:default": 3, "faulted": len(HOSTILE)}
    depth = next(d for d in queue_depths() if d.queue == "default")
    assert (depth.ready, depth.in_progress, depth.delayed, depth.dead) == (0, 0, 0, len(HOSTILE))


@pytest.mark.parametrize(
    "code, text",
    [(300, "Invalid 'From' address: 'shop@example'."), (411, "Forbidden attachment type: 'a.exe'.")],
)
def test_an_esps_per_message_rejection_is_dead_lettered_without_counting_against_it(
    configure, postmark_api: PostmarkAPI, run_worker, code: int, text: str
) -> None:
    configure(
        providers={"postmark": postmark_api.mailer()},
        PROVIDERS={"postmark": {"failure_threshold": 2, "cooldown": COOLDOWN, "attempts": 3, "wait_min": 0.01}},
    )
    for _ in range(3):
        postmark_api.responses.append((422, {"ErrorCode": code, "Message": text}))
    for n in range(3):
        assert AnymailMessage(f"refused-{n}", "body", FROM, ["ann@example.com"]).send() == 1
    with run_worker(threads=1) as worker:
        worker.drain(timeout=10)
    assert AnymailMessage("good", "body", FROM, ["ann@example.com"]).send() == 1
    with run_worker(threads=1) as worker:
        worker.drain(timeout=10)

    assert len(postmark_api.requests) == 4  # each refused message was asked once: no in-attempt retry
    letters = list(deadletters.iter_dead("default"))
    assert len(letters) == 3
    assert all(letter.attempts == 1 and text in letter.reason for letter in letters)
    (health,) = provider_health()
    assert (health.state, health.failures, health.failed_5m, health.sent_5m) == ("closed", 0, 0, 1)
    assert minute_counters("postmark") == {"sent": 1, "sent:default": 1, "faulted": 3}


def test_a_feature_one_provider_lacks_fails_over_without_counting_against_it(
    configure, postmark_api: PostmarkAPI, smtp_server: SMTPServer, run_worker
) -> None:
    # Postmark cannot schedule (send_at); the SMTP provider next in the chain ignores it and sends.
    configure(
        providers={"postmark": postmark_api.mailer(), "smtp": smtp_server.mailer()},
        PROVIDERS={"postmark": {"failure_threshold": 1, "cooldown": COOLDOWN}, "smtp": {}},
    )
    for n in range(3):
        message = AnymailMessage(f"scheduled-{n}", "body", FROM, ["ann@example.com"])
        message.send_at = "2030-01-01T00:00:00Z"
        assert message.send() == 1
    with run_worker(threads=1) as worker:
        worker.drain(timeout=10)
    assert len(smtp_server.wait_for(3)) == 3
    assert postmark_api.requests == []
    health = {row.provider: row for row in provider_health()}
    assert (health["postmark"].state, health["postmark"].failures, health["postmark"].failed_5m) == ("closed", 0, 0)
    assert minute_counters("postmark") == {"faulted": 3}
    assert list(deadletters.iter_dead("default")) == []
