"""Fixtures: a private Redis namespace, real SMTP/HTTP providers, real Dramatiq workers."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from mailqueue import signals
from tests.servers import PostmarkAPI, SMTPServer
from workers.testing import InProcessWorker

pytest_plugins = ["tests.wire_paths", "workers.pytest_plugin"]

REDIS_URL = os.environ.get("MAILQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUED = "mailqueue.backend.EmailBackend"


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this test's own; only its keys are deleted afterwards."""
    name = f"mqtest-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def smtp_server() -> Iterator[SMTPServer]:
    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture
def backup_smtp() -> Iterator[SMTPServer]:
    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture
def postmark_api() -> Iterator[PostmarkAPI]:
    api = PostmarkAPI().start()
    yield api
    api.stop()


@pytest.fixture
def configure(settings: Any, namespace: str, redis_url: str) -> Callable[..., None]:
    """Install MAILERS and MAILQUEUE for this test (Django's test env swapped MAILERS for locmem)."""

    def install(
        *,
        providers: dict[str, Any],
        queues: dict[str, Any] | None = None,
        mailers: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        settings.MAILERS = {
            "default": {"BACKEND": QUEUED, "OPTIONS": {"queue": "default"}},
            "transactional": {"BACKEND": QUEUED, "OPTIONS": {"queue": "critical"}},
            "bulk": {"BACKEND": QUEUED, "OPTIONS": {"queue": "bulk"}},
            **(mailers or {}),
            **providers,
        }
        first = list(providers)
        settings.MAILQUEUE = {
            "BROKER_URL": redis_url,
            "NAMESPACE": namespace,
            "QUEUES": queues
            or {
                "critical": {"providers": first, "max_retries": 2, "min_backoff": 50, "max_backoff": 200},
                "default": {"providers": first, "max_retries": 2, "min_backoff": 50, "max_backoff": 200},
                "bulk": {"providers": first, "max_retries": 1, "min_backoff": 50, "max_backoff": 200},
            },
            "PROVIDERS": {alias: {"attempts": 2, "wait_min": 0.01, "wait_max": 0.05} for alias in providers},
            **options,
        }

    return install


@pytest.fixture
def smtp_setup(configure: Callable[..., None], smtp_server: SMTPServer) -> SMTPServer:
    """The usual setup: every queue delivers through one real SMTP server."""
    configure(providers={"smtp": smtp_server.mailer()})
    return smtp_server


class EventRecorder:
    """Keeps every mailqueue signal's event, from the worker's threads too."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, sender: type, event: Any, **kwargs: Any) -> None:
        assert sender is type(event)
        with self.lock:
            self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        with self.lock:
            return [event for event in self.events if isinstance(event, kind)]


@pytest.fixture
def recorder() -> Iterator[EventRecorder]:
    """Every event announced through mailqueue.signals during the test."""
    recorder = EventRecorder()
    for signal in signals.SIGNALS.values():
        signal.connect(recorder, weak=False)
    yield recorder
    for signal in signals.SIGNALS.values():
        signal.disconnect(recorder)


@pytest.fixture
def run_worker() -> Callable[..., InProcessWorker]:
    """A real Dramatiq worker in this process: ``with run_worker(threads=2) as worker: ...; worker.drain()``."""

    def start(threads: int = 2) -> InProcessWorker:
        return InProcessWorker(threads)

    return start


#: The sample application (tests/sample_app) has settings of its own: tests/test_testing.py runs its tests
#: in a process of their own, under Django's runner and under pytest, as an application's suite runs.
collect_ignore = [] if os.environ.get("MAILQUEUE_SAMPLE_APP") else ["sample_app"]
