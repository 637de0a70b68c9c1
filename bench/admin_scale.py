"""``python -m bench.admin_scale``: the message log's admin changelist at a million messages, on PostgreSQL.

Creates a database of its own on the local PostgreSQL (``MAILQUEUE_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), migrates it, fills it with ``generate_series``
(N messages, 2 recipients and 3 events each), then renders each changelist page with Django's test
Client logged in as a superuser and prints milliseconds and queries per page. Drops the database after.
``--messages`` may be given several times: the same pages at each size (the query counts must not change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

SERVER = os.environ.get("MAILQUEUE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET_MS = 300

#: Messages: queue, status, provider by the number; 1,000 recipient domains plus one every message has (bcc).
FILL = [
    """
    INSERT INTO mailqueue_message (envelope_id, queue, mailer, subject, from_email, recipient_count, size, status,
        status_at, attempts, provider, provider_message_id, composed_at, queued_at, first_attempt_at, sent_at,
        updated_at, last_error)
    SELECT lpad(to_hex(i), 32, '0'), (ARRAY['critical', 'default', 'bulk'])[i %% 3 + 1], 'default',
        'Subject ' || i, 'noreply@example.com', 2, 2000,
        CASE WHEN i %% 100 < 90 THEN 'sent' WHEN i %% 100 < 95 THEN 'queued' WHEN i %% 100 < 98 THEN 'deferred'
             WHEN i %% 100 < 99 THEN 'failed' ELSE 'dead' END,
        t, 1 + i %% 3, CASE WHEN i %% 100 < 90 THEN (ARRAY['smtp', 'backup'])[i %% 2 + 1] ELSE '' END,
        CASE WHEN i %% 100 < 90 THEN '<' || i || '@mail.example.com>' ELSE '' END,
        t, t, t, t, t, ''
    FROM generate_series(1, %(n)s) AS i, LATERAL (SELECT now() - (%(n)s - i) * interval '1 second' AS t) AS ts
    """,
    """
    INSERT INTO mailqueue_messagerecipient (message_id, kind, address, domain)
    SELECT lpad(to_hex(i), 32, '0'), 'to', 'user' || i || '@d' || (i %% 1000) || '.example',
        'd' || (i %% 1000) || '.example'
    FROM generate_series(1, %(n)s) AS i
    UNION ALL
    SELECT lpad(to_hex(i), 32, '0'), 'bcc', 'audit@corp.test', 'corp.test' FROM generate_series(1, %(n)s) AS i
    """,
    """
    INSERT INTO mailqueue_messageevent (message_id, stream_id, kind, at, provider, attempt, detail)
    SELECT lpad(to_hex(i), 32, '0'), i || '-' || k, (ARRAY['queued', 'attempt_failed', 'sent'])[k + 1],
        now() - (%(n)s - i) * interval '1 second' + k * interval '1 second', 'smtp', NULLIF(k, 0), ''
    FROM generate_series(1, %(n)s) AS i, generate_series(0, 2) AS k
    """,
]
TABLES = "mailqueue_messageevent, mailqueue_messagerecipient, mailqueue_message"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def pages(messages: int) -> list[tuple[str, dict[str, str]]]:
    """The changelist pages the issue names: default, each filter, the searches, a deep page."""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    deep = max(1, min(1000, messages // 100))
    return [
        ("default", {}),
        ("status=dead", {"status__exact": "dead"}),
        ("status=sent", {"status__exact": "sent"}),
        ("queue=bulk", {"queue": "bulk"}),
        ("provider=backup", {"provider": "backup"}),
        ("queued today", {"queued_at__gte": today}),
        ("search address", {"q": f"user{messages // 2}@d{messages // 2 % 1000}.example"}),
        ("search domain (0.1%)", {"q": "@d7.example"}),
        ("search domain (all)", {"q": "@corp.test"}),
        ("search envelope id", {"q": f"{messages // 3:032x}"}),
        ("search provider id", {"q": f"<{messages // 10 * 10}@mail.example.com>"}),
        ("search subject prefix", {"q": f"Subject {messages // 2}"}),
        (f"page {deep}", {"p": str(deep)}),
    ]


@contextmanager
def database() -> Iterator[str]:
    admin = psycopg.connect(SERVER, autocommit=True, connect_timeout=2)
    name = f"mqbench_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield SERVER.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


def fill(url: str, messages: int) -> float:
    """Replace the log with ``messages`` messages; returns the seconds it took (VACUUM ANALYZE included)."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"TRUNCATE {TABLES}")
        for statement in FILL:
            connection.execute(statement, {"n": messages})  # type: ignore[arg-type]
        connection.execute("VACUUM ANALYZE mailqueue_message, mailqueue_messagerecipient, mailqueue_messageevent")
    return time.perf_counter() - started


def measure(messages: int, repeats: int) -> list[dict[str, Any]]:
    """Each page: the median render time over ``repeats`` (after one warm-up) and its query count."""
    from django.contrib.auth import get_user_model  # noqa: PLC0415  (after django.setup())
    from django.db import connection  # noqa: PLC0415
    from django.test import Client  # noqa: PLC0415
    from django.test.utils import CaptureQueriesContext  # noqa: PLC0415
    from django.urls import reverse  # noqa: PLC0415

    user, _ = get_user_model().objects.get_or_create(
        username="bench", defaults={"is_staff": True, "is_superuser": True, "email": "bench@example.com"}
    )
    client = Client()
    client.force_login(user)
    url = reverse("admin:mailqueue_message_changelist")
    results = []
    for name, params in pages(messages):
        response = client.get(url, params)
        if response.status_code != 200:
            raise SystemExit(f"{name}: HTTP {response.status_code} for {url}?{params}")
        rows = len(response.context["cl"].result_list)
        times = []
        for _ in range(repeats):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                client.get(url, params)
                times.append((time.perf_counter() - started) * 1000)
        results.append({"page": name, "ms": round(statistics.median(times), 1), "queries": len(captured), "rows": rows})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, action="append", help="log size (repeatable; default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed renders per page (median reported)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    sizes = args.messages or [1_000_000]
    with database() as url:
        os.environ["DATABASE_URL"] = url
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
        import django  # noqa: PLC0415  (settings read DATABASE_URL at import)
        from django.core.management import call_command  # noqa: PLC0415
        from django.db import connections  # noqa: PLC0415
        from django.test.utils import setup_test_environment  # noqa: PLC0415

        django.setup()
        setup_test_environment()  # the test Client's host, and templates' context for the query count
        call_command("migrate", verbosity=0)
        report = []
        for size in sizes:
            seconds = fill(url, size)
            results = measure(size, args.repeats)
            report.append(
                {
                    "messages": size,
                    "events": 3 * size,
                    "recipients": 2 * size,
                    "fill_s": round(seconds, 1),
                    "pages": results,
                }
            )
            if not args.json:
                say(f"\n{size:,} messages, {3 * size:,} events, {2 * size:,} recipients (built in {seconds:.0f} s)")
                say(f"{'page':<24} {'ms':>8} {'queries':>8} {'rows':>5}")
                for row in results:
                    flag = "" if row["ms"] < TARGET_MS else f"  over {TARGET_MS} ms"
                    say(f"{row['page']:<24} {row['ms']:>8.1f} {row['queries']:>8} {row['rows']:>5}{flag}")
        connections.close_all()
    if args.json:
        say(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
