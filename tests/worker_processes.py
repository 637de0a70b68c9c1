"""Real Dramatiq worker processes, started, killed and stopped by a test.

Each ``WorkerProcess`` is one ``python -m dramatiq workers.bootstrap`` with a
single worker process of its own, so a test can kill exactly one with SIGKILL.
A ``WorkerPool`` is ``python -m workers`` as an operator runs it: a supervisor
and its worker processes, any of which a test can kill.
"""

from __future__ import annotations

import json
import os
import re
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


def child_pids(pid: int) -> list[int]:
    """The running children of process ``pid`` (Linux /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after its ")".
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(entry.name))
    return sorted(children)


class WorkerPool:
    """``python -m workers --queues ... --processes N``: a pool's supervisor and its worker processes."""

    def __init__(self, queues: list[str], *, processes: int, log: Path, threads: int | None = None) -> None:
        self.command = [sys.executable, "-m", "workers", "--queues", *queues, "--processes", str(processes)]
        if threads is not None:
            self.command += ["--threads", str(threads)]
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerPool:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=settings_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def workers(self) -> list[int]:
        """The pids of the pool's worker processes."""
        assert self.process is not None
        return child_pids(self.process.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def broker_ids(self) -> dict[int, str]:
        """Each worker process's Dramatiq broker id, by pid, as the worker processes logged them."""
        found = re.findall(r"worker process (\d+) is consuming .*; Dramatiq broker id (\S+)", self.log())
        return {int(pid): broker_id for pid, broker_id in found}

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the supervisor (it stops its workers gracefully); SIGKILL everything if it does not stop in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for pid in self.workers():
                    os.kill(pid, signal.SIGKILL)
                self.process.kill()
                self.process.wait()
        return self.process.returncode
