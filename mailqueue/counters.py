"""The cluster's delivery counters and histograms in Redis: their key, fields and buckets.

The workers add to them inside the script calls that already record each
attempt (``workers.admission``: no extra round trip per message); ``/metrics``
reads them in one round trip (``mailqueue.metrics``). They live in one hash
per namespace that never expires, so they never go down across worker
restarts, and one scrape of any web process sees the whole cluster.

Histograms keep one count per bucket (not cumulative: a send adds one to the
single bucket it falls in) and a sum; the reader accumulates them the way
Prometheus expects. Field names join their labels with "|": queue names
cannot hold one, and the reader builds every field it asks for from the
configuration, so it never has to split one.
"""

from __future__ import annotations

import bisect
import math

from .settings_values import MailQueueConfig

#: The attempt outcomes counted per (queue, provider): as ``workers.admission.settle`` names them ("aborted",
#: a send that never started, is not counted).
OUTCOMES = ("sent", "failed", "rejected", "faulted")

#: Seconds a worker spent sending one message to a provider: its API call or SMTP transaction, with the quick
#: in-attempt retries of a transient failure and their waits (the time a worker thread was busy with it).
SEND_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Seconds from send_mail() to the provider's acceptance: queueing, retries and rate-limit waits included.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4 * 3600.0,
    86400.0,
)
INF = "+Inf"


def counters_key(namespace: str) -> str:
    """The hash holding every counter and histogram of the namespace."""
    return f"{namespace}:metrics"


def _field(*labels: str) -> str:
    return "|".join(labels)


def bucket_label(bound: float) -> str:
    """A bucket's upper bound as Prometheus prints it in ``le`` ("0.005", "1.0", "+Inf")."""
    return INF if math.isinf(bound) else repr(float(bound))


def bucket_of(buckets: tuple[float, ...], seconds: float) -> str:
    """The label of the smallest bucket holding ``seconds`` (``le``: the bound is inclusive)."""
    index = bisect.bisect_left(buckets, seconds)
    return INF if index == len(buckets) else bucket_label(buckets[index])


def deliveries_field(queue: str, provider: str, outcome: str) -> str:
    return _field("deliveries", queue, provider, outcome)


def send_bucket_field(provider: str, label: str) -> str:
    return _field("send", provider, label)


def send_sum_field(provider: str) -> str:
    return _field("send_sum", provider)


def latency_bucket_field(queue: str, provider: str, label: str) -> str:
    return _field("latency", queue, provider, label)


def latency_sum_field(queue: str, provider: str) -> str:
    return _field("latency_sum", queue, provider)


def rate_limit_waits_field(provider: str) -> str:
    return _field("rate_limit_waits", provider)


def pairs(config: MailQueueConfig) -> list[tuple[str, str]]:
    """Every (queue, provider) a counter may exist for, in configuration order."""
    return [(queue.name, alias) for queue in config.queues.values() for alias in queue.providers]
