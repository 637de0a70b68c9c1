"""``python -m bench.driver OP``: one measurement of one system, in that system's own virtual environment.

The harness runs it with ``DJANGO_SETTINGS_MODULE=bench.settings`` and ``BENCH_SYSTEM`` naming the system,
so mailqueue, every peer and the floors are measured by the same code on the same messages. It prints one
JSON object on its last line. It imports nothing from mailqueue at module level (only the ``rendering`` and
``log*`` ops do, and only mailqueue runs them): peers run it on their own Django.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import smtplib
import statistics
import time
import urllib.request
import warnings
from collections.abc import Callable
from email.policy import SMTP as SMTP_POLICY
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
# The peers that predate Django 6.1 use its deprecated email API on purpose; their warnings are noise here.
warnings.simplefilter("ignore", DeprecationWarning)
warnings.simplefilter("ignore", PendingDeprecationWarning)
django.setup()

from django.conf import settings  # noqa: E402  (after setup)
from django.core import mail  # noqa: E402
from django.core.mail import EmailMessage, get_connection, send_mail  # noqa: E402
from django.core.mail.backends.base import BaseEmailBackend  # noqa: E402
from django.core.management import call_command  # noqa: E402

try:
    from django.core.mail import mailers  # Django >= 6.1
except ImportError:  # the peers that need Django 5.2
    mailers = None

if settings.SYSTEM == "django-celery-email":
    import bench.celery_app  # noqa: F401  (send_emails.delay() must publish through this app's broker)

BODY = "Thanks for your order.\n" * 8
#: 100 KB that do not compress, the same bytes in every run.
ATTACHMENT = random.Random(4).randbytes(100 * 1024)


def message(run: str, index: int, size: str) -> EmailMessage:
    """Message ``index`` of a run: its Message-ID is how the sink counts it."""
    email = EmailMessage(
        subject=f"Your receipt {index}",
        body=BODY,
        from_email="shop@example.com",
        to=[f"customer{index}@example.com"],
        headers={"Message-ID": f"<{run}.{index}@bench.invalid>"},
    )
    if size == "large":
        email.attach("report.bin", ATTACHMENT, "application/octet-stream")
    return email


def default_backend(alias: str | None = None) -> BaseEmailBackend:
    if mailers is not None and hasattr(settings, "MAILERS"):
        return mailers[alias or "default"]
    return get_connection()


def latency(args: argparse.Namespace) -> dict[str, Any]:
    """One send_mail() call as a view makes it: median and p99 in microseconds."""

    def call() -> None:
        send_mail("Your receipt", "Thanks for your order.", "shop@example.com", ["ann@example.com"])
        if settings.SYSTEM == "locmem":
            mail.outbox.clear()

    def timings(count: int) -> list[float]:
        samples = []
        for _ in range(count):
            started = time.perf_counter_ns()
            call()
            samples.append((time.perf_counter_ns() - started) / 1000)
        return samples

    timings(args.warmup)  # connections, caches, imports
    ordered = sorted(timings(args.count))
    return {
        "median_us": statistics.median(ordered),
        "p99_us": ordered[max(int(len(ordered) * 0.99) - 1, 0)],
        "count": args.count,
    }


def fill(args: argparse.Namespace) -> dict[str, Any]:
    """send_messages() of ``count`` messages through the default mailer, in chunks: queues them (or sends them)."""
    backend = default_backend(args.mailer)
    if args.warmup_batch:
        # Not timed, like the latency warm-up: connections, caches, imports, the first Redis script load.
        backend.send_messages([message(f"{args.run}-warmup", index, args.size) for index in range(args.warmup_batch)])
    elapsed = 0.0
    for start in range(args.start, args.start + args.count, args.chunk):
        stop = min(start + args.chunk, args.start + args.count)
        batch = [message(args.run, index, args.size) for index in range(start, stop)]
        began = time.perf_counter()
        backend.send_messages(batch)
        elapsed += time.perf_counter() - began
    if hasattr(backend, "close"):
        backend.close()
    return {"seconds": elapsed, "rate": args.count / elapsed if elapsed else 0.0, "count": args.count}


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[max(-(-len(ordered) * 99 // 100) - 1, 0)],
        "max_ms": ordered[-1],
        "count": len(ordered),
    }


def _arrivals() -> dict[str, float]:
    """When the sink accepted each Message-ID (its time.monotonic(): one clock for every process here)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.HTTP_PORT}/_arrivals", timeout=10) as response:
        return dict(json.load(response))


def _sink_stats() -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{settings.HTTP_PORT}/_stats", timeout=10) as response:
        return dict(json.load(response))


def _await_arrival(ids: list[str], timeout: float = 30.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        arrived = _arrivals()
        if all(message_id in arrived for message_id in ids) or time.monotonic() > deadline:
            return arrived
        time.sleep(0.05)


def idle(args: argparse.Namespace) -> dict[str, Any]:
    """Idle end-to-end latency: from just before ``send()`` to the sink accepting the message, in ms.

    Phases: ``steady``, one send every ``--interval`` s; ``quiet``, ``--spells`` sends each after ``--quiet`` s
    of silence; ``minute``, one send after ``--long-quiet`` s of silence. Each message is waited for before the
    next silence starts, so a silence is one for the workers too. ``--warmup`` sends come first, untimed.
    """
    sent: dict[str, float] = {}
    phases: dict[str, list[str]] = {"steady": [], "quiet": [], "minute": []}
    counter = iter(range(1_000_000))

    def send(phase: str | None) -> str:
        index = next(counter)
        began = time.monotonic()
        message(args.run, index, "small").send(using=args.mailer)
        message_id = f"<{args.run}.{index}@bench.invalid>"
        sent[message_id] = began
        if phase is not None:
            phases[phase].append(message_id)
        return message_id

    _await_arrival([send(None) for _ in range(args.warmup)])
    due = time.monotonic()
    for _ in range(args.count):
        time.sleep(max(due - time.monotonic(), 0.0))
        due = max(due + args.interval, time.monotonic())
        send("steady")
    _await_arrival(phases["steady"])
    for _ in range(args.spells):
        time.sleep(args.quiet)
        _await_arrival([send("quiet")])
    if args.long_quiet:
        time.sleep(args.long_quiet)
        _await_arrival([send("minute")])
    arrived = _arrivals()
    result: dict[str, Any] = {"mailer": args.mailer or "default", "interval": args.interval, "quiet_s": args.quiet}
    for phase, ids in phases.items():
        missing = [message_id for message_id in ids if message_id not in arrived]
        if missing:
            raise SystemExit(f"idle: {len(missing)} of {len(ids)} {phase} message(s) never reached the sink")
        if ids:
            result[phase] = _percentiles([(arrived[message_id] - sent[message_id]) * 1000 for message_id in ids])
    result["long_quiet_s"] = args.long_quiet
    return result


def smtplib_floor(args: argparse.Namespace) -> dict[str, Any]:
    """Raw smtplib over one reused connection, with bytes rendered beforehand: the SMTP floor."""
    messages = [message(args.run, index, args.size) for index in range(args.count)]
    began = time.perf_counter()
    rendered = [(item.from_email, item.recipients(), item.message(policy=SMTP_POLICY).as_bytes()) for item in messages]
    render_seconds = time.perf_counter() - began
    with smtplib.SMTP("127.0.0.1", settings.SMTP_PORT, timeout=30) as session:
        began = time.perf_counter()
        for sender, recipients, data in rendered:
            session.sendmail(sender, recipients, data)
        elapsed = time.perf_counter() - began
    return {
        "seconds": elapsed,
        "rate": args.count / elapsed,
        "render_us": render_seconds / args.count * 1e6,
        "message_bytes": len(rendered[0][2]),
        "count": args.count,
    }


def rendering(args: argparse.Namespace) -> dict[str, Any]:
    """The worker's rendering (``workers.rendering``) beside Django's, on the messages a worker rebuilds."""
    from mailqueue.envelope import Envelope  # noqa: PLC0415  (mailqueue's environment only)
    from workers.rendering import render  # noqa: PLC0415

    envelopes = [Envelope.from_message(message(args.run, index, args.size), queue="q", mailer="m") for index in
                 range(args.count)]  # fmt: skip
    queued = [envelope.to_message() for envelope in envelopes]
    began = time.perf_counter()
    for item in queued:
        item.message(policy=SMTP_POLICY).as_bytes()
    django_seconds = time.perf_counter() - began
    began = time.perf_counter()
    ours = [render(item) for item in queued]
    our_seconds = time.perf_counter() - began
    identical = 0
    for index, item in enumerate(queued):
        # Untimed: with random seeded alike, a multipart boundary is the same draw in both renderings.
        random.seed(index)
        data = render(item)
        random.seed(index)
        identical += data == item.message(policy=SMTP_POLICY).as_bytes()
    return {
        "django_us": django_seconds / args.count * 1e6,
        "ours_us": our_seconds / args.count * 1e6,
        "shortcut": sum(data is not None for data in ours),
        "identical": identical,
        "count": args.count,
    }


def log_lag(args: argparse.Namespace) -> dict[str, Any]:
    """Sample the log writer's lag through ``mailqueue status``'s reader until every event of the drain is written.

    Prints ``ready`` first (the harness waits for it). Each sample: [monotonic time, messages the sink received,
    events unwritten, pending, age of the oldest unwritten (s), stream length]. Done when the sink has ``--count``
    messages, the stream holds ``--events`` and none is unwritten; gives up after ``--stall`` s without change.
    Samples every ``--interval`` s, and every 20 ms from when the last message is due at the sink (by the rate
    so far), so that the writer's catch-up after the last delivery is timed to a few tens of ms.
    """
    from mailqueue.monitoring import writer_lag  # noqa: PLC0415  (mailqueue's environment only)

    print("ready", flush=True)  # noqa: T201
    samples: list[list[Any]] = []
    caught_up = None
    last_change, last_state = time.monotonic(), None
    while True:
        lag = writer_lag()
        now = time.monotonic()
        stats = _sink_stats()
        received = stats["received"]
        samples.append([now, received, lag.unwritten, lag.pending, lag.oldest_age, lag.stream_length])
        if received >= args.count and lag.group_exists and lag.unwritten == 0 and lag.stream_length >= args.events:
            caught_up = now
            break
        state = (received, lag.unwritten, lag.stream_length)
        if state != last_state:
            last_change, last_state = now, state
        elif now - last_change > args.stall:
            break
        rate = (
            (received - 1) / (stats["last"] - stats["first"]) if received > 1 and stats["last"] > stats["first"] else 0
        )
        due = (args.count - received) / rate if rate else float("inf")
        time.sleep(0.02 if due < args.interval else args.interval)
    return {"samples": samples, "caught_up": caught_up}


def log_rows(args: argparse.Namespace) -> dict[str, Any]:
    """What the log writer wrote: message rows, how many of them are sent, event rows."""
    from mailqueue.models import Message, MessageEvent, Status  # noqa: PLC0415  (mailqueue's environment only)

    return {
        "messages": Message.objects.count(),
        "sent": Message.objects.filter(status=Status.SENT).count(),
        "events": MessageEvent.objects.count(),
    }


def log_clear(args: argparse.Namespace) -> dict[str, Any]:
    """Empty the message log's tables, so the next run's rows can be counted."""
    from django.db import connection, transaction  # noqa: PLC0415

    from mailqueue.models import Message, MessageEvent, MessageRecipient  # noqa: PLC0415  (mailqueue's only)

    with transaction.atomic(), connection.cursor() as cursor:
        for model in (MessageEvent, MessageRecipient, Message):  # the rows that point first
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)}")
    return {"cleared": True}


def clear(args: argparse.Namespace) -> dict[str, Any]:
    """Forget what this system queued in its database (Redis is flushed by the harness)."""
    deleted = 0
    if settings.SYSTEM == "django-post-office":
        from post_office.models import Email  # noqa: PLC0415  (only in the peers' environment)

        deleted = Email.objects.all().delete()[0]
    elif settings.SYSTEM == "django-mailer":
        from mailer.models import Message, MessageLog  # noqa: PLC0415  (only in the peers' environment)

        deleted = Message.objects.all().delete()[0] + MessageLog.objects.all().delete()[0]
    return {"deleted": deleted}


def queued(args: argparse.Namespace) -> dict[str, Any]:
    """How many messages this system's database still holds unsent."""
    remaining = 0
    if settings.SYSTEM == "django-post-office":
        from post_office.models import STATUS, Email  # noqa: PLC0415  (only in the peers' environment)

        remaining = Email.objects.exclude(status=STATUS.sent).count()
    elif settings.SYSTEM == "django-mailer":
        from mailer.models import Message  # noqa: PLC0415  (only in the peers' environment)

        remaining = Message.objects.count()
    return {"remaining": remaining}


def migrate(args: argparse.Namespace) -> dict[str, Any]:
    call_command("migrate", verbosity=0, interactive=False)
    return {"migrated": True}


OPS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "latency": latency,
    "fill": fill,
    "idle": idle,
    "smtplib": smtplib_floor,
    "rendering": rendering,
    "clear": clear,
    "queued": queued,
    "migrate": migrate,
    "loglag": log_lag,
    "logrows": log_rows,
    "logclear": log_clear,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.driver", description=__doc__)
    parser.add_argument("op", choices=OPS)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--warmup-batch", type=int, default=0, help="fill: send this many first, untimed")
    parser.add_argument("--size", choices=("small", "large"), default="small")
    parser.add_argument("--run", default="bench")
    parser.add_argument("--mailer", help="fill, idle: the MAILERS alias to send through (default: the default)")
    parser.add_argument("--interval", type=float, default=0.25, help="idle: seconds between steady sends")
    parser.add_argument("--spells", type=int, default=0, help="idle: sends after a quiet spell each")
    parser.add_argument("--quiet", type=float, default=2.0, help="idle: seconds of each quiet spell")
    parser.add_argument("--long-quiet", type=float, default=0.0, help="idle: one more send after this long")
    parser.add_argument("--events", type=int, default=0, help="loglag: events the stream must hold when done")
    parser.add_argument("--stall", type=float, default=45.0, help="loglag: give up after this long without change")
    args = parser.parse_args()
    result = OPS[args.op](args)
    print(json.dumps({"system": settings.SYSTEM, "django": django.get_version(), **result}), flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
