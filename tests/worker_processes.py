"""Real Dramatiq worker processes, started, killed and stopped by a test.

Each ``WorkerProcess`` is one ``python -m dramatiq workers.bootstrap`` with a
single worker process of its own, so a test can kill exactly one with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent


def settings_env() -> dict[str, str]:
    """The environment that gives a worker process this test's MAILERS and MAILQUEUE."""
    given = {"MAILERS": settings.MAILERS, "MAILQUEUE": settings.MAILQUEUE}
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.process_settings",
        "MAILQUEUE_TEST_SETTINGS": json.dumps(given),
        "PYTHONPATH": str(ROOT),
    }


class WorkerProcess:
    """One Dramatiq worker process (plus Dramatiq's supervising parent) consuming ``queues``."""

    def __init__(self, queues: list[str], *, threads: int = 4, log: Path | None = None) -> None:
        self.queues = queues
        self.threads = threads
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log: Any = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "workers.bootstrap", "--processes", "1"]
            + ["--threads", str(self.threads), "--queues", *self.queues],
            cwd=ROOT,
            env=settings_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if log is not subprocess.DEVNULL:
            log.close()
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, no requeue, no ack, as a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully (Dramatiq requeues what it prefetched); kill if it does not stop in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
