"""workers.pools: choosing a pool and its Dramatiq command line, then ``python -m workers <pool>`` as an
operator runs it, in its own process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.mail import send_mail

from mailqueue.conf import PoolConfig, get_config
from mailqueue.monitoring import queue_depths
from project import settings as project_settings
from tests.servers import SMTPServer
from workers.pools import PROCESS_MODULE, main, select_pool, worker_argv

ROOT = Path(__file__).resolve().parent.parent
OUTBOX = {"outbox": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
POOLS = {
    "urgent": {"queues": ["critical"], "processes": 2, "threads": 4},
    "rest": {"queues": ["default", "bulk"]},
}


@pytest.fixture
def pools(configure: Callable[..., None]) -> None:
    """Three queues in two named pools, one with its own processes and threads."""
    configure(providers=OUTBOX, POOLS=POOLS)


# --- select_pool: which queues a pool consumes ------------------------------------------------------------


def test_a_named_pool_is_the_configured_one(pools: None) -> None:
    assert select_pool(get_config(), "urgent", None) == PoolConfig(
        name="urgent", queues=("critical",), processes=2, threads=4
    )
    assert select_pool(get_config(), "rest", None).queues == ("default", "bulk")


def test_without_pools_each_queue_is_a_pool_of_its_own(configure: Callable[..., None]) -> None:
    configure(providers=OUTBOX)
    config = get_config()
    assert list(config.pools) == ["critical", "default", "bulk"]
    assert select_pool(config, "bulk", None) == PoolConfig(name="bulk", queues=("bulk",))


def test_queues_on_the_command_line_make_an_ad_hoc_pool(pools: None) -> None:
    # The queues win over a pool name: an operator draining two queues at once needs no POOLS entry.
    pool = select_pool(get_config(), "urgent", ["bulk", "critical"])
    assert pool == PoolConfig(name="bulk+critical", queues=("bulk", "critical"))


@pytest.mark.parametrize(
    "name, queues, message",
    [
        ("nope", None, "unknown pool 'nope'; configured pools: urgent, rest"),
        (None, None, "name a pool (urgent, rest) or pass --queues"),
        (None, ["bulk", "mystery", "other"], "unknown queue(s) mystery, other; configured: critical, default, bulk"),
    ],
)
def test_a_wrong_choice_exits_naming_the_configured_ones(
    pools: None, name: str | None, queues: list[str] | None, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        select_pool(get_config(), name, queues)
    assert exit_info.value.code == message


# --- worker_argv: the command of each worker process ------------------------------------------------------


def test_each_worker_process_runs_the_pools_queues_with_its_threads() -> None:
    pool = PoolConfig(name="rest", queues=("default", "bulk"), processes=3, threads=5)
    assert worker_argv(pool) == [
        sys.executable,
        *("-m", PROCESS_MODULE),
        *("--queues", "default", "bulk"),
        *("--threads", "5"),
    ]
    assert PROCESS_MODULE == "workers.process"


def test_the_command_line_overrides_the_pools_threads() -> None:
    pool = PoolConfig(name="bulk", queues=("bulk",), processes=3, threads=5)
    assert worker_argv(pool, threads=16)[-2:] == ["--threads", "16"]


# --- main: the command line, up to the exec -----------------------------------------------------------------


def test_main_prints_each_worker_process_command_on_a_dry_run(pools: None, capsys: Any) -> None:
    main(["urgent", "--threads", "9", "--dry-run"])
    command = " ".join(worker_argv(PoolConfig(name="urgent", queues=("critical",), threads=9)))
    assert capsys.readouterr().out.splitlines() == [command, command]  # the pool's 2 processes
    main(["--queues", "default", "bulk", "--processes", "3", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].split()[-5:] == ["--queues", "default", "bulk", "--threads", "8"]


def test_main_refuses_to_guess_the_settings_module(pools: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE")
    with pytest.raises(SystemExit) as exit_info:
        main(["urgent", "--dry-run"])
    assert exit_info.value.code == "set DJANGO_SETTINGS_MODULE to your project's settings (e.g. mysite.settings)"


def test_main_exits_with_the_reason_a_choice_is_wrong(pools: None, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--queues", "mystery", "--dry-run"])
    assert exit_info.value.code == "unknown queue(s) mystery; configured: critical, default, bulk"
    assert capsys.readouterr().out == ""  # nothing that looks like a command to run


def test_main_rejects_a_malformed_command_line(pools: None, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["urgent", "--threads", "many"])
    assert exit_info.value.code == 2  # argparse's usage error, before Django is touched
    assert "--threads: invalid int value: 'many'" in capsys.readouterr().err


# --- python -m workers, as an operator runs it ----------------------------------------------------------------


def pool_env(namespace: str, redis_url: str, smtp: SMTPServer) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "REDIS_URL": redis_url,
        "MAILQUEUE_NAMESPACE": namespace,
        "DEMO_SMTP_PORT": str(smtp.port),
        "PYTHONPATH": str(ROOT),
    }


def test_dry_run_prints_the_worker_process_commands(namespace, redis_url, smtp_server) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers", "bulk", "--threads", "3", "--dry-run"],
        cwd=ROOT,
        env=pool_env(namespace, redis_url, smtp_server),
        capture_output=True,
        text=True,
        check=True,
    )
    assert [line.split()[1:] for line in result.stdout.splitlines()] == [
        ["-m", "workers.process", "--queues", "bulk", "--threads", "3"]
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


#: A supervisor whose stop signal lands while it starts its worker process (inside Popen, before it knows the
#: process), as a process manager's SIGTERM can right after it started the pool. The worker process stands in for
#: a real one: it exits on SIGTERM, and on its own only after a minute.
SIGNAL_DURING_START = """
import os, signal, subprocess, sys
from workers import supervisor

real_popen = subprocess.Popen

def popen_then_signalled(*args, **kwargs):
    process = real_popen(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)  # handled before Popen returns
    return process

supervisor.subprocess.Popen = popen_then_signalled
child = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(60)"
sys.exit(supervisor.Supervisor("p", [sys.executable, "-c", child], 1).run())
"""


def test_a_stop_signal_during_a_worker_process_start_reaches_it_and_the_pool_exits() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_DURING_START], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20  # not the minute the worker process sleeps when nobody stops it
