"""Prometheus ``/metrics`` for the whole cluster: the workers' counters and histograms, and gauges read at scrape time.

One scrape of any web process (or of ``manage.py mailqueue metrics``) describes every worker: the counters live in
one Redis hash the workers add to (``mailqueue.counters``), read here in one HMGET; the gauges come from
``mailqueue.monitoring.overview()``, the dashboard's own reading, in its fixed number of round trips.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cache
from typing import Any

import redis
from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from . import counters, promtext
from .access import may_monitor
from .client import redis_client
from .conf import get_config
from .monitoring import overview
from .settings_values import MailQueueConfig

logger = logging.getLogger(__name__)

#: The queue states ``mailqueue_queue_messages`` counts, as the overview names them.
QUEUE_STATES = ("ready", "in_progress", "delayed", "dead")


def read_counters(config: MailQueueConfig) -> dict[str, float]:
    """Every counter field the configuration can have, in one HMGET; a field never written reads 0.

    The fields are built from the configuration, so a queue or provider removed from it is no longer reported
    (its fields stay in Redis: put it back and its counters carry on from where they were).
    """
    fields = _fields(config)
    if not fields:
        return {}
    values = redis_client().hmget(counters.counters_key(config.namespace), fields)
    return {field: float(value) if value is not None else 0.0 for field, value in zip(fields, values, strict=True)}


#: The field list of the configuration in use (by identity: a settings change makes a new one).
_held: list[tuple[MailQueueConfig, list[str]]] = []


def _fields(config: MailQueueConfig) -> list[str]:
    """``counter_fields`` without duplicates, built once per configuration rather than on every scrape."""
    held = _held[0] if _held else None
    if held is None or held[0] is not config:
        held = (config, list(dict.fromkeys(counter_fields(config))))
        _held[:] = [held]
    return held[1]


def _providers(config: MailQueueConfig) -> list[str]:
    return list(dict.fromkeys(provider for _, provider in counters.pairs(config)))


def counter_fields(config: MailQueueConfig) -> Iterator[str]:
    """Every field of the counters hash the configuration can have (a provider's repeat for each of its queues)."""
    for queue, provider in counters.pairs(config):
        for outcome in counters.OUTCOMES:
            yield counters.deliveries_field(queue, provider, outcome)
        for label in _labels(counters.LATENCY_BUCKETS):
            yield counters.latency_bucket_field(queue, provider, label)
        yield counters.latency_sum_field(queue, provider)
    for provider in _providers(config):
        for label in _labels(counters.SEND_BUCKETS):
            yield counters.send_bucket_field(provider, label)
        yield counters.send_sum_field(provider)
        yield counters.rate_limit_waits_field(provider)


def _labels(buckets: Sequence[float]) -> list[str]:
    """The ``le`` labels of a histogram, "+Inf" last."""
    return [counters.bucket_label(bound) for bound in buckets] + [counters.INF]


def cumulative(counts: Iterable[float], labels: Sequence[str]) -> list[tuple[str, float]]:
    """Redis keeps one count per bucket; Prometheus wants each bucket to count every sample at or below it."""
    total = 0.0
    buckets = []
    for label, count in zip(labels, counts, strict=True):
        total += count
        buckets.append((label, total))
    return buckets


def counter_families(config: MailQueueConfig, values: Mapping[str, float]) -> list[Metric]:
    """The counter and histogram families from the values ``read_counters`` returned.

    Every (queue, provider, outcome) is reported, zeros included: a series that appears only at its first
    failure makes ``rate()`` and ``increase()`` miss that failure.
    """
    deliveries = CounterMetricFamily(
        "mailqueue_deliveries",
        "Delivery attempts by outcome: sent; failed (transient); rejected (permanent); faulted (the message's fault).",
        labels=["queue", "provider", "outcome"],
    )
    latency = HistogramMetricFamily(
        "mailqueue_delivery_latency_seconds",
        "Seconds from send_mail() to the provider's acceptance: queueing, retries and rate-limit waits included.",
        labels=["queue", "provider"],
        unit="seconds",
    )
    latency_labels = _labels(counters.LATENCY_BUCKETS)
    for queue, provider in counters.pairs(config):
        for outcome in counters.OUTCOMES:
            deliveries.add_metric(
                [queue, provider, outcome], values[counters.deliveries_field(queue, provider, outcome)]
            )
        counts = (values[counters.latency_bucket_field(queue, provider, label)] for label in latency_labels)
        latency.add_metric(
            [queue, provider],
            cumulative(counts, latency_labels),
            values[counters.latency_sum_field(queue, provider)],
        )
    send = HistogramMetricFamily(
        "mailqueue_provider_send_duration_seconds",
        "Seconds a worker spent sending one message to the provider, in-attempt retries included.",
        labels=["provider"],
        unit="seconds",
    )
    waits = CounterMetricFamily(
        "mailqueue_rate_limit_waits",
        "Admissions that had to wait for a rate-limit token (slept in the worker, or re-scheduled for later).",
        labels=["provider"],
    )
    send_labels = _labels(counters.SEND_BUCKETS)
    for provider in _providers(config):
        counts = (values[counters.send_bucket_field(provider, label)] for label in send_labels)
        send.add_metric([provider], cumulative(counts, send_labels), values[counters.send_sum_field(provider)])
        waits.add_metric([provider], values[counters.rate_limit_waits_field(provider)])
    return [deliveries, send, latency, waits]


def gauge_families(overview: Mapping[str, Any]) -> list[Metric]:
    """The gauges, from the overview's dict (``Overview.as_dict()``, the dashboard JSON's shape).

    A timestamp with nothing to date (an empty queue, an empty outbox) is left out rather than reported as 0:
    ``time() - ...`` of a missing series raises no alert, of a 0 it raises one for 56 years of waiting.
    """
    messages = GaugeMetricFamily(
        "mailqueue_queue_messages", "Messages in a queue, by state.", labels=["queue", "state"]
    )
    oldest = GaugeMetricFamily(
        "mailqueue_queue_oldest_enqueued_timestamp_seconds",
        "When the oldest message waiting for a worker was enqueued (epoch seconds); absent when none waits.",
        labels=["queue"],
    )
    desired = GaugeMetricFamily(
        "mailqueue_queue_desired_workers",
        "Worker processes the queue's pool needs for this queue: clears the backlog within MONITOR SCALE_TARGET "
        "seconds, within what its providers' rate limits and concurrency can use; sum by (pool) for a pool.",
        labels=["queue", "pool"],
    )
    dead = GaugeMetricFamily(
        "mailqueue_dead_letters", "Dead letters waiting for an operator (requeue or purge).", labels=["queue"]
    )
    for queue in overview["queues"]:
        name = queue["queue"]
        for state in QUEUE_STATES:
            messages.add_metric([name, state], queue[state])
        if queue["oldest_enqueued_at"] is not None:
            oldest.add_metric([name], queue["oldest_enqueued_at"])
        desired.add_metric([name, queue["pool"] or ""], queue["desired_workers"])
        dead.add_metric([name], queue["dead"])
    circuit = GaugeMetricFamily(
        "mailqueue_circuit_open",
        "1 while the provider's circuit is open (skipped until a probe), else 0 (closed, or half-open: probing).",
        labels=["provider"],
    )
    in_flight = GaugeMetricFamily(
        "mailqueue_provider_in_flight",
        "Sends admitted to the provider and not yet settled, across all workers (waiting for their token included).",
        labels=["provider"],
    )
    quota = GaugeMetricFamily(
        "mailqueue_provider_quota_remaining",
        "Sends the provider's quota still allows in its current hour or UTC day (providers with a quota only).",
        labels=["provider"],
    )
    for provider in overview["providers"]:
        name = provider["provider"]
        circuit.add_metric([name], 1.0 if provider["state"] == "open" else 0.0)
        in_flight.add_metric([name], provider["in_flight"])
        if provider["quota_left"] is not None:
            quota.add_metric([name], provider["quota_left"])
    outbox = overview["outbox"]
    writer = overview["writer"]
    families: list[Metric] = [messages, oldest, desired, dead, circuit, in_flight, quota]
    waiting = GaugeMetricFamily(
        "mailqueue_outbox_messages",
        "Messages kept in the database outbox because Redis refused them, waiting for the relay.",
    )
    if outbox["waiting"] is not None:
        waiting.add_metric([], outbox["waiting"])
    families.append(waiting)
    outbox_oldest = GaugeMetricFamily(
        "mailqueue_outbox_oldest_timestamp_seconds",
        "When the oldest message in the outbox was kept (epoch seconds); absent when the outbox is empty.",
    )
    if outbox["oldest_at"] is not None:
        outbox_oldest.add_metric([], outbox["oldest_at"])
    families.append(outbox_oldest)
    families.append(
        GaugeMetricFamily(
            "mailqueue_log_writer_lag_seconds",
            "Age of the oldest message-log event not yet written to the database (0: nothing waits).",
            value=writer["oldest_age"] or 0.0,
        )
    )
    unwritten = GaugeMetricFamily(
        "mailqueue_log_writer_unwritten_events",
        "Message-log events not yet written to the database; absent when Redis cannot say (stream trimmed).",
    )
    if writer["unwritten"] is not None:
        unwritten.add_metric([], writer["unwritten"])
    families.append(unwritten)
    return families


class ClusterCollector(Collector):
    """Reads the cluster's figures from Redis on every scrape; keeps nothing between scrapes."""

    def collect(self) -> Iterator[Metric]:
        config = get_config()
        if config.monitor.counters:
            yield from counter_families(config, read_counters(config))
        yield from gauge_families(overview().as_dict())

    def describe(self) -> list[Metric]:
        # Registering must not read Redis (CollectorRegistry calls describe() then, collect() without one).
        return []


@cache
def registry() -> CollectorRegistry:
    """A registry holding only the cluster collector.

    No process or platform collectors: they would describe the one web process that answers the scrape, not
    the cluster, and change with whichever process the load balancer picked.
    """
    registry = CollectorRegistry()
    registry.register(ClusterCollector())
    return registry


def exposition(accept: str | None) -> tuple[bytes, str]:
    """One scrape, in the format the ``Accept`` header asks for (OpenMetrics or Prometheus text).

    The formats scrapers ask for (OpenMetrics 1.0.0, Prometheus' first choice, and the Prometheus text format)
    are written by ``encode``, byte for byte what prometheus_client writes (tests compare them) in a fraction of
    its time: it escapes every sample's name character by character and re-validates every label name of every
    line, which with 10 queues and 5 providers took longer than all the rest of a scrape (bench/monitor_cost.py).
    Any other negotiated format, or a prometheus_client ``mailqueue.promtext`` was not written against, goes
    through prometheus_client's own encoder.
    """
    encoder, content_type = choose_encoder(accept or "")
    openmetrics = promtext.writes(content_type)
    if openmetrics is not None:
        return promtext.encode(registry().collect(), openmetrics=openmetrics), content_type
    return encoder(registry()), content_type


#: What a scrape cannot do without: it answers 503 when one cannot be read.
UNAVAILABLE: tuple[type[Exception], ...] = (redis.RedisError, DatabaseError)


def unavailable(error: Exception) -> str:
    """The short text a scrape answers when Redis (or the outbox's database) cannot be read: no traceback, no URL."""
    what = "Redis" if isinstance(error, redis.RedisError) else "the database"
    logger.warning("metrics: %s cannot be read: %s: %s", what, type(error).__name__, error)
    return f"metrics unavailable: {what} cannot be read ({type(error).__name__})\n"


#: Why a scrape was refused, by status: said without any metric data.
REFUSALS = {
    401: "authentication required: a bearer token or a session with the monitoring permission\n",
    403: "this user may not see the metrics\n",
}


def token_matches(header: str | None, token: str | None) -> bool | None:
    """Whether an ``Authorization`` header carries ``token`` (None: it carries no bearer token at all).

    Compared in constant time; with no token configured, every bearer token is wrong.
    """
    scheme, _, presented = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    if token is None:
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def _text(status: int, text: str) -> HttpResponse:
    response = HttpResponse(text, status=status, content_type="text/plain; charset=utf-8")
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="mailqueue metrics"'
    return response


def _no_store(view: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    def wrapped(request: HttpRequest) -> HttpResponse:
        response = view(request)
        # A scrape (or its refusal) is for the one who asked, now: no cache may keep or serve it again.
        response["Cache-Control"] = "no-store"
        patch_vary_headers(response, ("Accept", "Authorization", "Cookie"))
        return response

    wrapped.__doc__ = view.__doc__
    wrapped.__name__ = view.__name__
    return wrapped


@login_not_required  # a scraper brings a token, not a session: LoginRequiredMiddleware must let it through
@_no_store
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: for a scraper with MONITOR["METRICS_TOKEN"] as a bearer token, or a user may_monitor lets in.

    401 for no credentials or a wrong token, 403 for a signed-in user without the permission; 503 when Redis
    cannot be read.
    """
    matched = token_matches(request.headers.get("Authorization"), get_config().monitor.metrics_token)
    if matched is False:
        return _text(401, REFUSALS[401])
    if matched is None:
        user: Any = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return _text(401, REFUSALS[401])
        if not may_monitor(user):
            return _text(403, REFUSALS[403])
    try:
        body, content_type = exposition(request.headers.get("Accept"))
    except UNAVAILABLE as error:
        return _text(503, unavailable(error))
    return HttpResponse(body, content_type=content_type)


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The same scrape as a bare WSGI app, for ``manage.py mailqueue metrics`` (no Django request stack).

    Sessions mean nothing here: with MONITOR["METRICS_TOKEN"] set, only a request bearing it is answered.
    """
    token = get_config().monitor.metrics_token
    if environ.get("REQUEST_METHOD") != "GET":
        status, text, headers = 405, "use GET\n", [("Allow", "GET")]
    elif environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
        status, text, headers = 404, "not found: the metrics are at /metrics\n", []
    elif token is not None and not token_matches(environ.get("HTTP_AUTHORIZATION"), token):
        status, text, headers = 401, REFUSALS[401], [("WWW-Authenticate", 'Bearer realm="mailqueue metrics"')]
    else:
        try:
            body, content_type = exposition(environ.get("HTTP_ACCEPT"))
        except UNAVAILABLE as error:
            status, text, headers = 503, unavailable(error), []
        else:
            start_response("200 OK", [("Content-Type", content_type), ("Cache-Control", "no-store")])
            return [body]
    reason = {401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
    headers += [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
    start_response(f"{status} {reason}", headers)
    return [text.encode()]
