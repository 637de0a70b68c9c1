"""Prometheus /metrics (mailqueue/metrics.py) and ``manage.py mailqueue metrics``, scraped for real.

Real Redis, real workers delivering through a real aiosmtpd; every scrape is parsed with prometheus_client's
own parser and its values are checked against what the test did.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.core.mail import send_mass_mail
from django.urls import path, reverse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from mailqueue import counters, metrics, promtext
from mailqueue.client import redis_client
from mailqueue.conf import get_config
from mailqueue.metrics import metrics_view
from tests.test_commands import closed_port_url
from tests.worker_processes import ROOT, settings_env
from workers.admission import admit, settle

urlpatterns = [path("metrics", metrics_view)]
pytestmark = pytest.mark.urls(__name__)

TOKEN = "scrape-token-7f3a"
QUEUES = ("critical", "default", "bulk")

#: (sample name, sorted labels) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def scrape(client: Any, **headers: str) -> Samples:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}", **headers})
    assert response.status_code == 200, response.content
    assert response["Cache-Control"] == "no-store"
    return parse(response.content.decode())


@pytest.fixture
def monitored(configure, smtp_server):
    """Every queue delivers through one real SMTP server; /metrics takes TOKEN."""
    configure(providers={"smtp": smtp_server.mailer()}, MONITOR={"METRICS_TOKEN": TOKEN})
    return smtp_server


def buckets(samples: Samples, name: str, **labels: str) -> list[tuple[float, float]]:
    """A histogram's (le, cumulative count) pairs, in bound order."""
    rows = [
        (float(dict(key)["le"]), value)
        for key, value in named(samples, f"{name}_bucket").items()
        if all(dict(key).get(label) == wanted for label, wanted in labels.items())
    ]
    return sorted(rows)


# -- the counters and histograms ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_redis_buckets_are_reported_cumulative_with_count_and_sum(monitored, client) -> None:
    """What the workers write (one bucket per sample) becomes Prometheus' cumulative buckets, _count and _sum."""
    namespace = get_config().namespace
    send_seconds = [0.003, 0.02, 0.02, 0.7, 0.7, 0.7, 75.0]
    latencies = [0.04, 1.5, 1.5, 90000.0]
    key = counters.counters_key(namespace)
    client_ = redis_client()
    for seconds in send_seconds:
        client_.hincrby(key, counters.send_bucket_field("smtp", counters.bucket_of(counters.SEND_BUCKETS, seconds)))
        client_.hincrbyfloat(key, counters.send_sum_field("smtp"), seconds)
    for seconds in latencies:
        label = counters.bucket_of(counters.LATENCY_BUCKETS, seconds)
        client_.hincrby(key, counters.latency_bucket_field("bulk", "smtp", label))
        client_.hincrbyfloat(key, counters.latency_sum_field("bulk", "smtp"), seconds)
    client_.hincrby(key, counters.deliveries_field("bulk", "smtp", "sent"), 4)
    client_.hincrby(key, counters.deliveries_field("default", "smtp", "rejected"), 2)
    client_.hincrby(key, counters.rate_limit_waits_field("smtp"), 3)

    samples = scrape(client)
    send = buckets(samples, "mailqueue_provider_send_duration_seconds", provider="smtp")
    assert [bound for bound, _ in send] == [*counters.SEND_BUCKETS, float("inf")]
    assert send == [(bound, sum(1 for s in send_seconds if s <= bound)) for bound, _ in send]
    assert get(samples, "mailqueue_provider_send_duration_seconds_count", provider="smtp") == len(send_seconds)
    assert get(samples, "mailqueue_provider_send_duration_seconds_sum", provider="smtp") == pytest.approx(
        sum(send_seconds)
    )
    latency = buckets(samples, "mailqueue_delivery_latency_seconds", queue="bulk", provider="smtp")
    assert latency == [(bound, sum(1 for s in latencies if s <= bound)) for bound, _ in latency]
    assert get(samples, "mailqueue_delivery_latency_seconds_count", queue="bulk", provider="smtp") == 4
    assert get(samples, "mailqueue_delivery_latency_seconds_count", queue="default", provider="smtp") == 0
    deliveries = named(samples, "mailqueue_deliveries_total")
    # Every (queue, provider, outcome) is there from the start, zeros included.
    assert len(deliveries) == len(QUEUES) * len(counters.OUTCOMES)
    assert {dict(labels)["queue"] + "/" + dict(labels)["outcome"]: v for labels, v in deliveries.items() if v} == {
        "bulk/sent": 4,
        "default/rejected": 2,
    }
    assert get(samples, "mailqueue_rate_limit_waits_total", provider="smtp") == 3


@pytest.mark.django_db
def test_no_counters_are_reported_when_they_are_off(configure, smtp_server, client) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, MONITOR={"METRICS_TOKEN": TOKEN, "COUNTERS": False})
    redis_client().hincrby(counters.counters_key(get_config().namespace), counters.rate_limit_waits_field("smtp"))
    samples = scrape(client)
    assert not named(samples, "mailqueue_rate_limit_waits_total")
    assert not named(samples, "mailqueue_deliveries_total")
    assert named(samples, "mailqueue_queue_messages"), "the gauges are still there"


@pytest.mark.django_db(transaction=True)
def test_a_scrape_counts_what_a_real_worker_delivered(monitored, client, run_worker, django_user_model) -> None:
    count = 6
    send_mass_mail([(f"m{i}", "b", None, ["a@example.com"]) for i in range(count)])
    with run_worker() as worker:
        worker.drain()
    assert len(monitored.received) == count
    staff = django_user_model.objects.create_user("staff", "staff@example.com", "pw", is_staff=True)
    by_token = scrape(client)
    client.force_login(staff)
    by_session = client.get("/metrics")
    assert by_session.status_code == 200
    for samples in (by_token, parse(by_session.content.decode())):
        assert get(samples, "mailqueue_deliveries_total", queue="default", provider="smtp", outcome="sent") == count
        assert sum(named(samples, "mailqueue_deliveries_total").values()) == count
        send = buckets(samples, "mailqueue_provider_send_duration_seconds", provider="smtp")
        assert all(low <= high for (_, low), (_, high) in zip(send, send[1:], strict=False)), "cumulative"
        assert send[-1] == (float("inf"), count)
        assert get(samples, "mailqueue_provider_send_duration_seconds_count", provider="smtp") == count
        assert get(samples, "mailqueue_provider_send_duration_seconds_sum", provider="smtp") > 0
        latency = buckets(samples, "mailqueue_delivery_latency_seconds", queue="default", provider="smtp")
        assert latency[-1] == (float("inf"), count)
        assert all(low <= high for (_, low), (_, high) in zip(latency, latency[1:], strict=False))
        assert get(samples, "mailqueue_queue_messages", queue="default", state="ready") == 0


# -- the gauges ----------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_gauges_show_waiting_mail_its_age_dead_letters_and_an_open_circuit(monitored, client, run_worker) -> None:
    monitored.handler.rcpt_replies["gone@example.com"] = "550 no such user"
    send_mass_mail([("dead", "b", None, ["gone@example.com"])])
    with run_worker() as worker:
        worker.drain()
    before = time.time()
    bulk(3)
    after = time.time()
    config = get_config()
    provider, queue = config.provider("smtp"), config.queues["default"]
    for n in range(provider.failure_threshold):
        settle(admit(f"f{n}", provider, queue, config), f"f{n}", provider, "failed", config)

    samples = scrape(client)
    ready = {dict(labels)["queue"]: value for labels, value in named(samples, "mailqueue_queue_messages").items()
             if dict(labels)["state"] == "ready"}  # fmt: skip
    assert ready == {"critical": 0, "default": 0, "bulk": 3}
    oldest = named(samples, "mailqueue_queue_oldest_enqueued_timestamp_seconds")
    assert list(oldest) == [(("queue", "bulk"),)], "only a queue with mail waiting has an oldest message"
    assert before - 0.05 <= oldest[(("queue", "bulk"),)] <= after + 0.05
    assert get(samples, "mailqueue_dead_letters", queue="default") == 1
    assert get(samples, "mailqueue_queue_messages", queue="default", state="dead") == 1
    assert get(samples, "mailqueue_dead_letters", queue="bulk") == 0
    assert get(samples, "mailqueue_circuit_open", provider="smtp") == 1
    assert get(samples, "mailqueue_queue_desired_workers", queue="bulk", pool=_pool_of("bulk")) >= 1
    assert get(samples, "mailqueue_queue_desired_workers", queue="critical", pool=_pool_of("critical")) == 0
    assert not named(samples, "mailqueue_provider_quota_remaining"), "smtp has no quota"
    assert get(samples, "mailqueue_outbox_messages") == 0


def bulk(count: int, start: int = 0) -> None:
    """Queue ``count`` messages on the bulk queue in one batch (nothing delivers them: no worker runs)."""
    send_mass_mail([(f"w{i}", "b", None, ["a@example.com"]) for i in range(start, start + count)], using="bulk")


def _pool_of(queue: str) -> str:
    return next((pool.name for pool in get_config().pools.values() if queue in pool.queues), "")


@pytest.mark.django_db
def test_the_fast_encoder_writes_what_prometheus_client_writes(configure, smtp_server, backup_smtp) -> None:
    """Byte for byte, in both formats the view writes itself, on a registry with every kind of family and sample."""
    configure(
        providers={"smtp": smtp_server.mailer(), "backup": backup_smtp.mailer()},
        queues={name: {"providers": ["smtp", "backup"]} for name in QUEUES},
        PROVIDERS={"backup": {"quota": "50/d", "failure_threshold": 1}},
    )
    namespace = get_config().namespace
    # Counts are integers (HINCRBY), sums are not (HINCRBYFLOAT).
    values = {
        field: n + 0.25 if field.partition("|")[0].endswith("_sum") else n
        for n, field in enumerate(metrics.counter_fields(get_config()))
    }
    redis_client().hset(counters.counters_key(namespace), mapping=values)
    bulk(2)
    config = get_config()
    provider, queue = config.provider("backup"), config.queues["default"]
    settle(admit("f0", provider, queue, config), "f0", provider, "failed", config)
    odd = GaugeMetricFamily("mailqueue_odd", 'doc with "quotes", a \\ and a\nnewline', labels=["queue"])
    odd.add_metric(['a "quoted" \\ value\nover two lines'], 1e-9)
    odd.add_metric(["big"], 123456789.0)
    families = [*metrics.registry().collect(), odd]
    assert any(family.unit for family in families) and any(family.type == "counter" for family in families)
    by_us = {
        format: promtext.encode(families, openmetrics=format == "openmetrics") for format in ("text", "openmetrics")
    }

    class Fixed:
        def collect(self) -> list[Any]:
            return families

    fixed = CollectorRegistry()
    fixed.register(Fixed())
    assert by_us["text"] == generate_latest(fixed)
    assert by_us["openmetrics"] == openmetrics_latest(fixed)
    assert b'mailqueue_circuit_open{provider="backup"} 1.0' in by_us["text"]


# -- who may scrape ------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_refusals_carry_no_metric_data(monitored, client, django_user_model) -> None:
    anonymous = client.get("/metrics")
    wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    basic = client.get("/metrics", headers={"Authorization": "Basic dXNlcjpwdw=="})
    for response in (anonymous, wrong, basic):
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
    user = django_user_model.objects.create_user("clerk", "clerk@example.com", "pw")
    client.force_login(user)
    forbidden = client.get("/metrics")
    assert forbidden.status_code == 403
    wrong_with_session = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong_with_session.status_code == 401
    posted = client.post("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert posted.status_code == 405
    for response in (anonymous, wrong, basic, forbidden, wrong_with_session, posted):
        assert b"mailqueue_" not in response.content
        assert response["Cache-Control"] == "no-store"


@pytest.mark.django_db(transaction=True)
def test_a_session_needs_the_configured_permission(configure, smtp_server, client, django_user_model) -> None:
    configure(providers={"smtp": smtp_server.mailer()}, MONITOR={"PERMISSION": "is_superuser"})
    staff = django_user_model.objects.create_user("staff", "staff@example.com", "pw", is_staff=True)
    client.force_login(staff)
    assert client.get("/metrics").status_code == 403
    boss = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(boss)
    response = client.get("/metrics")
    assert response.status_code == 200 and b"mailqueue_queue_messages" in response.content
    # No token is configured: a bearer token is wrong, whatever it says, even beside a good session.
    assert client.get("/metrics", headers={"Authorization": "Bearer anything"}).status_code == 401


@pytest.mark.django_db
def test_openmetrics_when_the_scraper_asks_for_it(monitored, client) -> None:
    accept = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}", "Accept": accept})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    text = response.content.decode()
    assert text.endswith("# EOF\n")
    assert "# UNIT mailqueue_provider_send_duration_seconds seconds" in text
    plain = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert plain["Content-Type"].startswith("text/plain")
    assert "# EOF" not in plain.content.decode()


@pytest.mark.django_db
def test_with_a_prometheus_client_it_was_not_written_for_its_own_encoders_serve(monitored, client, monkeypatch) -> None:
    assert promtext.AVAILABLE, "this suite's prometheus_client is the one mailqueue.promtext was written for"
    monkeypatch.setattr(promtext, "AVAILABLE", False)
    monkeypatch.setattr(promtext, "encode", None)  # never reached
    accept = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}", "Accept": accept})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    families = {family.name for family in openmetrics_families(response.content.decode())}
    assert {"mailqueue_queue_messages", "mailqueue_deliveries", "mailqueue_provider_send_duration_seconds"} <= families
    plain = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert 'mailqueue_queue_messages{queue="default",state="ready"} 0.0' in plain.content.decode()


@pytest.mark.django_db
def test_redis_down_answers_503_without_a_traceback(configure, smtp_server, client) -> None:
    url = closed_port_url()
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=url, MONITOR={"METRICS_TOKEN": TOKEN})
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 503
    text = response.content.decode()
    assert text.startswith("metrics unavailable: Redis cannot be read (")
    assert "Traceback" not in text and "s3cret" not in text and "mailqueue_" not in text
    assert response["Cache-Control"] == "no-store"


# -- a scrape's cost -----------------------------------------------------------------------------------------------


class TurnCountingProxy:
    """A TCP proxy in front of Redis that counts round trips: the client's requests, each burst counted once.

    A client sends one burst and waits for the answer; a pipeline may leave in several writes, and Redis may
    start answering before the last arrives, so the proxy holds what the client sends until it has been quiet
    for a few milliseconds, then forwards it as one request: one round trip. It sees the bytes on the wire, so
    it counts every path the code may take to Redis (the pooled client or a thread's own connection).
    """

    #: A client that sends nothing more for this long is waiting for the answer.
    QUIET = 0.005

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.turns = 0
        self.lock = threading.Lock()
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.listener.getsockname()[1]}/{self.database}"

    database = 0

    def _accept(self) -> None:
        while not self.closing:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()

    def _pump(self, downstream: socket.socket, upstream: socket.socket) -> None:
        with downstream, upstream:
            while not self.closing:
                readable, _, _ = select.select([downstream, upstream], [], [], 0.5)
                if upstream in readable:
                    answer = upstream.recv(65536)
                    if not answer:
                        return
                    downstream.sendall(answer)
                if downstream in readable:
                    request = downstream.recv(65536)
                    if not request:
                        return
                    while select.select([downstream], [], [], self.QUIET)[0]:
                        more = downstream.recv(65536)
                        if not more:
                            return
                        request += more
                    with self.lock:
                        self.turns += 1
                    upstream.sendall(request)

    def close(self) -> None:
        self.closing = True
        self.listener.close()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[TurnCountingProxy]:
    parts = urlsplit(redis_url)
    counting = TurnCountingProxy((parts.hostname or "127.0.0.1", parts.port or 6379))
    counting.database = int(parts.path.strip("/") or 0)
    yield counting
    counting.close()


@pytest.mark.django_db(transaction=True)
def test_a_scrape_costs_the_same_round_trips_with_10_and_10000_messages_waiting(
    configure, smtp_server, client, proxy
) -> None:
    if urlsplit(proxy.url).password is None and urlsplit(os.environ.get("MAILQUEUE_TEST_REDIS_URL", "")).password:
        pytest.skip("the test Redis needs a password the proxy URL does not carry")
    configure(providers={"smtp": smtp_server.mailer()}, BROKER_URL=proxy.url, MONITOR={"METRICS_TOKEN": TOKEN})

    def turns_of_a_scrape() -> tuple[int, Samples]:
        scrape(client)  # connections opened and set up: only a scrape's own turns are counted below
        before = proxy.turns
        samples = scrape(client)
        return proxy.turns - before, samples

    bulk(10)
    small, samples = turns_of_a_scrape()
    assert get(samples, "mailqueue_queue_messages", queue="bulk", state="ready") == 10
    for start in range(10, 10_000, 1000):
        bulk(min(1000, 10_000 - start), start)
    large, samples = turns_of_a_scrape()
    assert get(samples, "mailqueue_queue_messages", queue="bulk", state="ready") == 10_000
    assert small == large, f"{small} round trips with 10 waiting, {large} with 10,000"
    # The counters' HMGET, the overview's pipeline, the writer's lag (one or two): never one per message.
    assert 2 <= small <= 5, f"a scrape took {small} round trips"


# -- the standalone server ----------------------------------------------------------------------------------------


def http_get(url: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read().decode()


def migrated_env(tmp_path: Any) -> dict[str, str]:
    """A process's environment with this test's settings and a migrated database of its own (the outbox's table)."""
    (tmp_path / "standalone_settings.py").write_text(
        "from tests.process_settings import *  # noqa: F403\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', 'NAME': {str(tmp_path / 'db')!r}}}}}\n"
    )
    env = settings_env()
    env.update(
        DJANGO_SETTINGS_MODULE="standalone_settings", PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}", PYTHONUNBUFFERED="1"
    )
    return env


@pytest.mark.parametrize("token", [TOKEN, None], ids=["token", "open"])
def test_the_standalone_server_serves_the_same_metrics(configure, smtp_server, token, tmp_path) -> None:
    monitor = {"METRICS_TOKEN": token} if token else {}
    configure(providers={"smtp": smtp_server.mailer()}, MONITOR=monitor)
    bulk(2)
    env = migrated_env(tmp_path)
    subprocess.run([sys.executable, "-m", "django", "migrate", "-v0"], cwd=ROOT, env=env, check=True, timeout=120)
    process = subprocess.Popen(
        [sys.executable, "-m", "django", "mailqueue", "metrics", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("serving metrics on http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[-1]
        status, headers, text = http_get(url, token)
        assert status == 200, text
        assert headers["Cache-Control"] == "no-store"
        samples = parse(text)
        assert get(samples, "mailqueue_queue_messages", queue="bulk", state="ready") == 2
        if token:
            for refused in (http_get(url), http_get(url, "wrong")):
                assert refused[0] == 401 and "mailqueue_" not in refused[2]
                assert refused[1]["WWW-Authenticate"].startswith("Bearer")
        assert http_get(url.replace("/metrics", "/other"), token)[0] == 404
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "metrics server stopped" in out
    assert "Traceback" not in err


@pytest.mark.urls("project.urls")
@pytest.mark.django_db
def test_including_mailqueue_urls_mounts_metrics_beside_the_dashboard(monitored, client) -> None:
    url = reverse("mailqueue:metrics")
    assert url == "/mailqueue/metrics"
    assert client.get(url).status_code == 401
    response = client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert b"mailqueue_queue_messages" in response.content
