"""Worker pools as an operator runs them: ``python -m workers <pool>`` in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.mail import send_mail

from mailqueue.monitoring import queue_depths
from project import settings as project_settings
from tests.servers import SMTPServer

ROOT = Path(__file__).resolve().parent.parent


def pool_env(namespace: str, redis_url: str, smtp: SMTPServer) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "REDIS_URL": redis_url,
        "MAILQUEUE_NAMESPACE": namespace,
        "DEMO_SMTP_PORT": str(smtp.port),
        "PYTHONPATH": str(ROOT),
    }


def test_dry_run_prints_the_dramatiq_command(namespace, redis_url, smtp_server) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers", "bulk", "--threads", "3", "--dry-run"],
        cwd=ROOT,
        env=pool_env(namespace, redis_url, smtp_server),
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split()[1:] == [
        "-m",
        "dramatiq",
        "workers.bootstrap",
        "--queues",
        "bulk",
        "--processes",
        "1",
        "--threads",
        "3",
    ]


def test_a_pool_refuses_to_guess_the_settings_module(namespace, redis_url, smtp_server) -> None:
    env = pool_env(namespace, redis_url, smtp_server)
    del env["DJANGO_SETTINGS_MODULE"]
    result = subprocess.run(
        [sys.executable, "-m", "workers", "bulk"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "set DJANGO_SETTINGS_MODULE" in result.stderr


def test_unknown_pool_names_the_configured_ones(namespace, redis_url, smtp_server) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers", "nope"],
        cwd=ROOT,
        env=pool_env(namespace, redis_url, smtp_server),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "unknown pool 'nope'; configured pools: critical, default, bulk" in result.stderr


def test_a_pool_process_drains_only_its_own_queue(settings, namespace, redis_url, smtp_server) -> None:
    # This test process enqueues with the demo project's configuration, like the web process would.
    settings.MAILERS = {**project_settings.MAILERS, "smtp": smtp_server.mailer()}
    settings.MAILQUEUE = {**project_settings.MAILQUEUE, "BROKER_URL": redis_url, "NAMESPACE": namespace}
    for i in range(10):
        send_mail(f"critical {i}", "b", None, [f"r{i}@example.com"])  # "default" mailer -> critical
    send_mail("bulk", "b", None, ["b@example.com"], using="bulk")

    pool = subprocess.Popen(
        [sys.executable, "-m", "workers", "critical", "--processes", "1", "--threads", "2"],
        cwd=ROOT,
        env=pool_env(namespace, redis_url, smtp_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        received = smtp_server.wait_for(10, timeout=60)
        assert sorted(m.parsed["Subject"] for m in received) == sorted(f"critical {i}" for i in range(10))
        time.sleep(0.5)
        depths = {d.queue: d.ready for d in queue_depths()}
        assert depths == {"critical": 0, "default": 0, "bulk": 1}
    finally:
        pool.send_signal(signal.SIGTERM)  # Dramatiq's main process stops its workers gracefully
        try:
            output, _ = pool.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pool.pid, signal.SIGKILL)
            output, _ = pool.communicate()
    if pool.returncode not in (0, -signal.SIGTERM):
        pytest.fail(f"pool exited with {pool.returncode}:\n{output.decode(errors='replace')}")
