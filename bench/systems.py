"""The systems the harness compares: mailqueue, the peers, and Django's own backends; and the peers' environments.

A system is the Python that runs it (the project's, or a peer environment with the newest Django the peer
accepts), the ``BENCH_SYSTEM`` name that ``bench.settings`` configures, and how its workers start. The peer
environments are created on first use from the pinned ``bench/peers-*.txt`` files, and recreated when a
file changes.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVS_DIR = ROOT / ".bench"
#: The Python the peer environments are built from: the one running the harness, so every system runs on it.
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


@dataclass(frozen=True, kw_only=True)
class PeerEnv:
    """A virtual environment for peers that accept the same Django."""

    name: str
    requirements: Path

    @property
    def path(self) -> Path:
        return ENVS_DIR / self.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def ensure(self, log: Path) -> Path:
        """Create or update the environment if its requirements changed; return its Python."""
        digest = hashlib.sha256(self.requirements.read_bytes()).hexdigest()
        marker = self.path / ".requirements-sha256"
        if marker.exists() and marker.read_text() == digest and self.python.exists():
            return self.python
        with log.open("a") as out:
            if not self.python.exists():
                subprocess.run([BASE_PYTHON, "-m", "venv", str(self.path)], check=True, stdout=out, stderr=out)
            subprocess.run(
                [str(self.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                 str(self.requirements)],
                check=True,
                stdout=out,
                stderr=out,
            )  # fmt: skip
        marker.write_text(digest)
        return self.python


DJANGO61 = PeerEnv(name="peers-django61", requirements=ROOT / "bench" / "peers-django61.txt")
DJANGO52 = PeerEnv(name="peers-django52", requirements=ROOT / "bench" / "peers-django52.txt")

#: ``worker(python, processes, threads, work_dir)`` -> the commands to start, one process each.
WorkerCommands = Callable[[Path, int, int, Path], list[list[str]]]


def _mailqueue_workers(python: Path, processes: int, threads: int, work_dir: Path) -> list[list[str]]:
    # What `python -m workers <pool>` execs, with the benchmark's settings.
    return [[str(python), "-m", "dramatiq", "workers.bootstrap", "--queues", "default",
             "--processes", str(processes), "--threads", str(threads)]]  # fmt: skip


def _dramatiq_email_workers(python: Path, processes: int, threads: int, work_dir: Path) -> list[list[str]]:
    return [[str(python), "-m", "django", "rundramatiq", "--processes", str(processes), "--threads", str(threads)]]


def _celery_workers(python: Path, processes: int, threads: int, work_dir: Path) -> list[list[str]]:
    return [[str(python), "-m", "celery", "-A", "bench.celery_app", "worker", "--pool", "prefork",
             "--concurrency", str(processes), "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--loglevel", "WARNING"]]  # fmt: skip


def _post_office_workers(python: Path, processes: int, threads: int, work_dir: Path) -> list[list[str]]:
    lockfile = str(work_dir / "post_office")
    return [[str(python), "-m", "django", "send_queued_mail", "--processes", str(processes), "--lockfile", lockfile]]


def _mailer_workers(python: Path, processes: int, threads: int, work_dir: Path) -> list[list[str]]:
    # One pass through the queue per process; processes share it through row locks.
    return [[str(python), "-m", "django", "send_mail"] for _ in range(processes)]


@dataclass(frozen=True, kw_only=True)
class System:
    """One thing the harness measures."""

    name: str
    #: None: the project's own environment (Django 6.1, mailqueue installed).
    env: PeerEnv | None
    #: None: synchronous, sends in the caller (the drain is the send itself).
    workers: WorkerCommands | None = None
    #: Workers exit by themselves once the queue is empty (management commands), rather than waiting for more.
    one_shot: bool = False
    #: Queues in a database, not Redis.
    uses_database: bool = False
    #: Redis database number on the private server, so no two systems share keys.
    redis_db: int = 0
    #: Why a 2-process drain cannot be measured, when it cannot.
    note: str = ""

    def python(self) -> Path:
        return self.env.python if self.env is not None else Path(sys.executable)


MAILQUEUE = System(name="mailqueue", env=None, workers=_mailqueue_workers, redis_db=0)
DJANGO_SMTP = System(name="django-smtp", env=None)
LOCMEM = System(name="locmem", env=None)
PEERS = (
    System(name="django-dramatiq-email", env=DJANGO52, workers=_dramatiq_email_workers, redis_db=1),
    System(name="django-celery-email", env=DJANGO52, workers=_celery_workers, redis_db=2),
    System(name="django-post-office", env=DJANGO61, workers=_post_office_workers, one_shot=True, uses_database=True),
    System(name="django-mailer", env=DJANGO61, workers=_mailer_workers, one_shot=True, uses_database=True),
)
