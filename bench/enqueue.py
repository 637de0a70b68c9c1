"""Enqueue cost on the request path, against Django's own locmem backend in the same process.

The baseline, Django 6.1's locmem ``send_mail``, renders MIME; ours must not,
so it should cost a fraction of it even though it includes a Redis round trip.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from django.core import mail
from django.core.mail import EmailMessage, mailers, send_mail
from django.test.utils import override_settings


def _timings(call: Callable[[], Any], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def _summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def run(redis_url: str, count: int, batch: int) -> list[str]:
    namespace = f"mqbench-{uuid.uuid4().hex[:8]}"
    queued = {
        "default": {"BACKEND": "mailqueue.backend.EmailBackend", "OPTIONS": {"queue": "default"}},
        "locmem": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"},
    }
    config = {
        "BROKER_URL": redis_url,
        "NAMESPACE": namespace,
        "QUEUES": {"default": {"providers": ["locmem"]}},
        "ON_COMMIT": False,
    }
    lines = []
    try:
        with override_settings(MAILERS=queued, MAILQUEUE=config):

            def ours() -> None:
                send_mail("Your receipt", "Thanks for your order.", "shop@example.com", ["ann@example.com"])

            def locmem() -> None:
                send_mail("Your receipt", "Thanks for your order.", "shop@example.com", ["ann@example.com"], using="locmem")
                mail.outbox.clear()

            for call in (ours, locmem):  # warm up: connections, caches, imports
                _timings(call, 50)
            ours_median, ours_p99 = _summary(_timings(ours, count))
            base_median, base_p99 = _summary(_timings(locmem, count))
            lines.append(f"single send_mail, N={count}")
            lines.append(f"  mailqueue enqueue   median {ours_median:8.1f} us   p99 {ours_p99:8.1f} us")
            lines.append(f"  Django locmem       median {base_median:8.1f} us   p99 {base_p99:8.1f} us")
            lines.append(f"  ratio (ours/locmem) median {ours_median / base_median:8.2f}x")

            messages = [
                EmailMessage(f"Newsletter {i}", "Hello!", "news@example.com", [f"reader{i}@example.com"])
                for i in range(batch)
            ]
            started = time.perf_counter()
            mailers["default"].send_messages(messages)
            elapsed = time.perf_counter() - started
            per_message_us = elapsed / batch * 1e6
            lines.append(f"batch send_messages, N={batch}")
            lines.append(f"  {batch / elapsed:10.0f} messages/s   {per_message_us:.1f} us/message")
            lines.append(f"  ratio (single median / batch per message) {ours_median / per_message_us:.1f}x")
    finally:
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    return lines
