"""The SMTP drain with the message log written as it goes, beside the same drain with the log off, in one run.

Issue 11's throughput row: mailqueue's workers drain N small messages with ``LOG["ENABLED"] = False`` and no
writer, and with the log on and one ``manage.py mailqueue log`` process writing it to the bench's database
(PostgreSQL when it answers, else SQLite) all through the drain. Runs alternate (off, on, then on, off) so the
machine's drift does not favour one side. For each logged run it samples the writer's lag with the reader
``mailqueue status`` uses, times how long after the last delivery everything was written, reads the writer's
totals line (events, statements) and its CPU, and counts the rows it wrote.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import redis

from mailqueue.keys import events_key
from mailqueue.monitoring import LOG_GROUP

from .harness import BenchError, Drain, Services, _cpu_seconds, _stop, drain, driver, off_on_rates, off_on_ratio
from .systems import ROOT, System

#: ``manage.py mailqueue log``'s last line (``_written_line``): the run's totals.
TOTALS = re.compile(r"wrote (?P<entries>\d+) event\(s\).* in (?P<statements>\d+) statement\(s\)")
#: Seconds between two lag samples while messages are being delivered.
SAMPLE_EVERY = 0.5
#: Every message of a drain puts two events on the stream: queued (by the fill) and sent (by the worker).
EVENTS_PER_MESSAGE = 2
#: "Keeps up": the oldest unwritten event is never older than this during the drain, and everything is
#: written this soon after the last delivery.
KEEPS_UP_S = 2.0


@dataclass(frozen=True, kw_only=True)
class WriterRun:
    """What the log writer did during one logged drain."""

    #: Stream entries it wrote, and the SQL statements it took (its totals line).
    entries: int
    statements: int
    #: Its CPU per entry written (Django's start-up excluded).
    cpu_us: float | None
    #: From the first delivery until everything was written: the most events unwritten, the oldest one's age.
    max_unwritten: int | None
    max_oldest_s: float | None
    #: Seconds from the last delivery until every event was written; None: it never was (within the wait).
    caught_up_s: float | None
    #: False when no sample fell between the last delivery and that moment: the writer was done by then, at most.
    caught_up_timed: bool
    #: Lag samples taken from the first delivery on.
    samples: int
    #: The rows it left: messages, of them sent, events.
    messages: int
    sent: int
    events: int
    expected: int

    @property
    def per_statement(self) -> float | None:
        return self.entries / self.statements if self.statements else None

    @property
    def rows_match(self) -> bool:
        """One message row per message drained, each sent, and an event row for each of its events."""
        return self.messages == self.sent == self.expected and self.events >= EVENTS_PER_MESSAGE * self.expected

    @property
    def keeps_up(self) -> bool:
        return (
            self.caught_up_s is not None and self.caught_up_s <= KEEPS_UP_S and (self.max_oldest_s or 0.0) <= KEEPS_UP_S
        )


@dataclass(frozen=True, kw_only=True)
class LoggedDrains:
    """The row: drains with the log off and with it written, alternating, same messages and workers."""

    database: str
    count: int
    processes: int
    threads: int
    #: ("off", drain, None) or ("on", drain, writer), in the order they ran.
    runs: tuple[tuple[str, Drain, WriterRun | None], ...]
    #: Why a run does not count: events appended with the log off (the switch did not hold).
    problems: tuple[str, ...] = ()

    def rates(self, side: str) -> list[float]:
        return off_on_rates(self.runs, side)

    @property
    def ratio(self) -> float | None:
        return off_on_ratio(self.runs)

    @property
    def writers(self) -> list[WriterRun]:
        return [writer for _, _, writer in self.runs if writer is not None]

    @property
    def correct(self) -> bool:
        return (
            not self.problems
            and all(run.exact for _, run, _ in self.runs)
            and all(writer.rows_match for writer in self.writers)
        )


class WriterAlongside(contextlib.AbstractContextManager["WriterAlongside"]):
    """One log writer and one lag sampler, running from before the fill until every event is written."""

    def __init__(
        self, services: Services, system: System, *, count: int, settings: dict[str, str], batch: int | None, index: int
    ) -> None:
        self.services, self.system, self.count, self.settings = services, system, count, settings
        self.batch, self.index = batch, index
        self.output = services.work_dir / f"log-writer-{index}.log"
        self.sampler_errors = services.work_dir / f"log-sampler-{index}.log"
        self.files: list[IO[str]] = []
        self.writer: subprocess.Popen[Any] | None = None
        self.sampler: subprocess.Popen[str] | None = None
        self.boot_cpu = 0.0
        self.result: WriterRun | None = None

    def __enter__(self) -> WriterAlongside:
        env = self.services.env(self.system, settings=self.settings)
        command = [str(self.system.python()), "-m", "django", "mailqueue", "log"]
        if self.batch:
            command += ["--batch", str(self.batch)]
        self.files = [self.output.open("w"), self.sampler_errors.open("w")]
        self.writer = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.files[0], stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._await_group()
            self.boot_cpu = _cpu_seconds(self.writer.pid)
            events = str(EVENTS_PER_MESSAGE * self.count)
            self.sampler = subprocess.Popen(
                [str(self.system.python()), "-m", "bench.driver", "loglag", "--count", str(self.count),
                 "--events", events, "--interval", str(SAMPLE_EVERY)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=self.files[1],
                text=True,
                start_new_session=True,
            )  # fmt: skip
            if self.sampler.stdout is None or self.sampler.stdout.readline().strip() != "ready":
                raise BenchError(f"the log writer's lag sampler did not start: {_tail(self.sampler_errors)}")
        except BaseException:
            self._stop_all()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                self.result = self._finish()
        finally:
            self._stop_all()

    def _await_group(self) -> None:
        """Wait until the writer has made its consumer group: it is set up and reading."""
        assert self.writer is not None
        client = self.services.redis(self.system)
        key = events_key(self.services.namespace(self.system))
        deadline = time.monotonic() + 60
        try:
            while True:
                with contextlib.suppress(redis.ResponseError):  # no stream yet: "no such key"
                    if any(group["name"] in (LOG_GROUP, LOG_GROUP.encode()) for group in client.xinfo_groups(key)):
                        return
                if self.writer.poll() is not None:
                    raise BenchError(f"the log writer exited ({self.writer.returncode}): {_tail(self.output)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"the log writer made no consumer group within 60 s: {_tail(self.output)}")
                time.sleep(0.05)
        finally:
            client.close()

    def _finish(self) -> WriterRun:
        assert self.writer is not None and self.sampler is not None
        try:
            out, _ = self.sampler.communicate(timeout=120)
        except subprocess.TimeoutExpired as error:
            raise BenchError("the log writer's lag sampler did not finish within 120 s") from error
        if self.sampler.returncode:
            raise BenchError(f"the log writer's lag sampler failed: {_tail(self.sampler_errors)}")
        lag = json.loads(out.strip().splitlines()[-1])
        cpu = _cpu_seconds(self.writer.pid) - self.boot_cpu
        _stop(self.writer)  # SIGTERM: it finishes the batch in hand and prints its totals
        totals = TOTALS.search(self.output.read_text())
        if totals is None:
            raise BenchError(f"the log writer printed no totals line: {_tail(self.output)}")
        entries, statements = int(totals["entries"]), int(totals["statements"])
        stats = self.services.sink("_stats")
        rows = driver(self.services, self.system, "logrows", settings=self.settings)
        after = [sample for sample in lag["samples"] if sample[0] >= stats["first"]]
        unwritten = [sample[2] for sample in after if sample[2] is not None]
        ages = [sample[4] for sample in after if sample[4] is not None]
        caught_up = lag["caught_up"]
        # The sample before the one that found everything written: if it came after the last delivery, the
        # writer was still behind then, and the catch-up is timed to the sampling step.
        before = lag["samples"][-2][0] if len(lag["samples"]) > 1 else float("-inf")
        return WriterRun(
            entries=entries,
            statements=statements,
            cpu_us=cpu / entries * 1e6 if entries else None,
            max_unwritten=max(unwritten, default=None),
            max_oldest_s=max(ages, default=0.0 if after else None),
            caught_up_s=None if caught_up is None else max(caught_up - stats["last"], 0.0),
            caught_up_timed=before >= stats["last"],
            samples=len(after),
            messages=rows["messages"],
            sent=rows["sent"],
            events=rows["events"],
            expected=self.count,
        )

    def _stop_all(self) -> None:
        for process in (self.sampler, self.writer):
            if process is not None:
                _stop(process)
        for file in self.files:
            file.close()


def _tail(path: Path) -> str:
    """The last line a process wrote: what a failure reports."""
    try:
        lines = path.read_text().strip().splitlines()
    except OSError:
        lines = []
    return (lines or ["(no output)"])[-1]


def measure(
    services: Services, system: System, *, count: int, threads: int, rounds: int, batch: int | None
) -> LoggedDrains:
    """``rounds`` pairs of drains, off then on, then on then off, ...: N small messages, 1 worker process each."""
    database = services.database_named("mailqueue-log")
    on = {"BENCH_LOG": "on", "BENCH_DATABASE": database}
    off = {"BENCH_LOG": "off", "BENCH_DATABASE": database}
    driver(services, system, "migrate", settings=on)
    runs: list[tuple[str, Drain, WriterRun | None]] = []
    problems: list[str] = []
    key = events_key(services.namespace(system))
    for round_ in range(rounds):
        for side in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
            common: dict[str, Any] = {"count": count, "size": "small", "processes": 1, "threads": threads}
            if side == "off":
                run = drain(services, system, **common, settings=off)
                client = services.redis(system)
                try:
                    appended = client.xlen(key)
                finally:
                    client.close()
                if appended:
                    problems.append(f"{appended} event(s) were appended with the log off")
                runs.append((side, run, None))
            else:
                driver(services, system, "logclear", settings=on)
                writer = WriterAlongside(services, system, count=count, settings=on, batch=batch, index=len(runs))
                run = drain(services, system, **common, settings=on, alongside=writer)
                if writer.result is None:
                    raise BenchError("the log writer's figures are missing")
                runs.append((side, run, writer.result))
    return LoggedDrains(
        database=services.database_kind,
        count=count,
        processes=1,
        threads=threads,
        runs=tuple(runs),
        problems=tuple(problems),
    )
