"""The services every measurement shares, and the measurements themselves.

``Services`` starts (and always stops) one Redis, one counting sink and, for the database-backed peers, one
database, so every system runs against the same ones. Each measurement runs ``bench.driver`` or a system's
workers in subprocesses with that system's Python and settings, and returns plain numbers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from .systems import ROOT, System


class BenchError(RuntimeError):
    """A measurement could not be made; the message says why, and the report shows it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM the process group this harness started, then SIGKILL it if it does not go."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


# --- process trees: CPU and memory from /proc -----------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending.extend(int(child) for child in children.read().split())
    return found


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its reaped children."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    with open("/proc/stat") as stat:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in stat.readline().split()[1:9])
    ticks = os.sysconf("SC_CLK_TCK")
    # Steal (the hypervisor running someone else) is time these cores were not ours: neither busy nor idle.
    busy = user + nice + system + irq + softirq
    return busy / ticks, (busy + idle + iowait + steal) / ticks


def _rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class ProcessTree:
    """Processes started for one run, sampled for CPU and RSS while they work."""

    processes: list[subprocess.Popen[Any]]
    cpu_by_pid: dict[int, float] = field(default_factory=dict)

    def pids(self) -> list[int]:
        return [pid for process in self.processes for pid in _descendants(process.pid)]

    def cpu(self) -> float:
        # Keep the last reading of processes that have exited, so their work still counts.
        for pid in self.pids():
            self.cpu_by_pid[pid] = max(self.cpu_by_pid.get(pid, 0.0), _cpu_seconds(pid))
        return sum(self.cpu_by_pid.values())

    def worker_rss(self) -> int:
        """RSS of the largest process: a worker, not its small supervisor."""
        return max((_rss_bytes(pid) for pid in self.pids()), default=0)

    def running(self) -> bool:
        return any(process.poll() is None for process in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            _stop(process)


def _delete_matching(client: redis.Redis, pattern: str) -> None:
    """Delete the keys matching ``pattern`` (SCAN, never KEYS: the Redis may be shared)."""
    keys = list(client.scan_iter(match=pattern, count=1000))
    if keys:
        client.delete(*keys)


# --- the shared services -------------------------------------------------------------------------------


@dataclass
class Services:
    """One Redis, one sink, one database; started by ``Services.run()``."""

    redis_url: str
    private_redis: bool
    smtp_port: int
    http_port: int
    work_dir: Path
    database_admin: str | None = None
    #: The sink's and (when private) Redis's processes, whose CPU each drain accounts for.
    sink_pid: int | None = None
    redis_pid: int | None = None
    #: Seconds to keep counting after the last expected message, for late duplicates.
    grace: float = 1.0
    databases: dict[str, str] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @classmethod
    @contextlib.contextmanager
    def run(
        cls, *, redis_url: str | None, postgres_url: str | None, log: Path, grace: float = 1.0
    ) -> Iterator[Services]:
        work_dir = Path(tempfile.mkdtemp(prefix="mqbench-"))
        started: list[subprocess.Popen[Any]] = []
        services: Services | None = None
        try:
            private = redis_url is None
            redis_pid = None
            if redis_url is None:
                redis_url, server = _start_redis(work_dir, log)
                started.append(server)
                redis_pid = server.pid
            smtp_port, http_port = free_port(), free_port()
            sink = subprocess.Popen(
                [sys.executable, "-m", "bench.sink", "--smtp-port", str(smtp_port), "--http-port", str(http_port)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log.open("a"),
                text=True,
                start_new_session=True,
            )
            started.append(sink)
            if sink.stdout is None or sink.stdout.readline().strip() != "ready":
                raise BenchError(f"the SMTP sink did not start; see {log}")
            services = cls(
                redis_url=redis_url,
                private_redis=private,
                smtp_port=smtp_port,
                http_port=http_port,
                work_dir=work_dir,
                database_admin=postgres_url,
                sink_pid=sink.pid,
                redis_pid=redis_pid,
                grace=grace,
            )
            yield services
        finally:
            if services is not None:
                services.drop_databases()
                services.delete_namespace_keys()
            for process in reversed(started):
                _stop(process)
            shutil.rmtree(work_dir, ignore_errors=True)

    # Redis -----------------------------------------------------------------------------------------

    def namespace(self, system: System) -> str:
        return f"mqbench-{self.run_id}-{system.name}"

    def redis_url_for(self, system: System) -> str:
        if not self.private_redis:
            return self.redis_url
        base = self.redis_url.rsplit("/", 1)[0]
        return f"{base}/{system.redis_db}"

    def redis(self, system: System) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url_for(system))

    def clear_redis(self, system: System) -> None:
        client = self.redis(system)
        try:
            if self.private_redis:
                client.flushdb()
            else:
                _delete_matching(client, f"{self.namespace(system)}:*")
        finally:
            client.close()

    def delete_namespace_keys(self) -> None:
        """On a shared Redis, delete every key this run made (all under mqbench-<run id>-)."""
        if self.private_redis:
            return
        client = redis.Redis.from_url(self.redis_url)
        try:
            _delete_matching(client, f"mqbench-{self.run_id}-*")
        finally:
            client.close()

    def key_bytes(self, system: System) -> int:
        """Bytes Redis holds for the system's keys (MEMORY USAGE, every field counted)."""
        client = self.redis(system)
        pattern = "*" if self.private_redis else f"{self.namespace(system)}:*"
        try:
            return sum(int(client.memory_usage(key, samples=0) or 0) for key in client.scan_iter(match=pattern))
        finally:
            client.close()

    # Databases -------------------------------------------------------------------------------------

    def database_for(self, system: System) -> str:
        """A database of the system's own: PostgreSQL when one was given, else a SQLite file."""
        return self.database_named(system.name) if system.uses_database else ":memory:"

    def database_named(self, key: str) -> str:
        """The database for ``key`` (a system, or a measurement's own), created on first use; dropped at the end."""
        if key not in self.databases:
            if self.database_admin:
                name = f"mqbench_{self.run_id}_{key.replace('-', '_')}"
                _postgres(self.database_admin, f'CREATE DATABASE "{name}"')
                self.databases[key] = f"{self.database_admin.rsplit('/', 1)[0]}/{name}"
            else:
                self.databases[key] = str(self.work_dir / f"{key}.sqlite3")
        return self.databases[key]

    def drop_databases(self) -> None:
        if not self.database_admin:
            return
        for url in self.databases.values():
            with contextlib.suppress(BenchError):
                _postgres(self.database_admin, f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    @property
    def database_kind(self) -> str:
        return "PostgreSQL" if self.database_admin else "SQLite"

    # Sink ------------------------------------------------------------------------------------------

    def sink(self, path: str, method: str = "GET") -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.load(response))

    # Subprocess environment ------------------------------------------------------------------------

    def env(self, system: System, *, provider: str = "smtp", settings: Mapping[str, str] = {}) -> dict[str, str]:
        """The environment of the system's processes; ``settings`` overrides ``BENCH_*`` values (bench.settings)."""
        env = {
            key: value for key, value in os.environ.items() if not key.startswith(("BENCH_", "DJANGO_", "VIRTUAL_ENV"))
        }
        env.update(
            DJANGO_SETTINGS_MODULE="bench.settings",
            PYTHONPATH=str(ROOT),
            PYTHONWARNINGS="ignore::DeprecationWarning",
            BENCH_SYSTEM=system.name,
            BENCH_REDIS_URL=self.redis_url_for(system),
            BENCH_NAMESPACE=self.namespace(system),
            BENCH_SMTP_PORT=str(self.smtp_port),
            BENCH_HTTP_PORT=str(self.http_port),
            BENCH_PROVIDER=provider,
            BENCH_DATABASE=self.database_for(system),
            BENCH_WORK_DIR=str(self.work_dir),
        )
        env.update(settings)
        return env


def _start_redis(work_dir: Path, log: Path) -> tuple[str, subprocess.Popen[Any]]:
    server = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if server is None:
        raise BenchError("redis-server is not on PATH (Debian: apt-get install redis-server), or pass --redis-url")
    port = free_port()
    process = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(work_dir), "--logfile", str(work_dir / "redis.log")],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis.from_url(url).ping()
            return url, process
        time.sleep(0.05)
    _stop(process)
    raise BenchError(f"the private redis-server did not answer on port {port}")


def _postgres(admin_url: str, statement: str) -> None:
    """Run one statement as the PostgreSQL admin user, with psql."""
    psql = shutil.which("psql")
    if psql is None:
        raise BenchError("psql is not on PATH")
    result = subprocess.run(
        [psql, admin_url, "-v", "ON_ERROR_STOP=1", "-qc", statement], capture_output=True, text=True
    )
    if result.returncode:
        raise BenchError(f"psql: {result.stderr.strip()}")


def postgres_available(url: str) -> bool:
    psql = shutil.which("psql")
    if psql is None:
        return False
    result = subprocess.run([psql, url, "-qtAc", "select 1"], capture_output=True, text=True, timeout=10)
    return result.returncode == 0


# --- measurements --------------------------------------------------------------------------------------


def driver(
    services: Services, system: System, op: str, *args: str, provider: str = "smtp", settings: Mapping[str, str] = {}
) -> dict[str, Any]:
    """Run ``bench.driver OP`` for ``system``; its JSON result, or BenchError with its error output."""
    result = subprocess.run(
        [str(system.python()), "-m", "bench.driver", op, *args],
        cwd=ROOT,
        env=services.env(system, provider=provider, settings=settings),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"{system.name} {op} failed: {tail}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def reset(services: Services, system: System) -> None:
    """Empty whatever the system queued: its Redis database or namespace, and its tables."""
    if system.uses_database:
        driver(services, system, "clear")
    else:
        services.clear_redis(system)


@dataclass(frozen=True, kw_only=True)
class Drain:
    """One drain run: N messages through the system's workers to the sink."""

    count: int
    received: int
    unique: int
    duplicates: int
    rate: float
    cpu_us: float | None
    #: The sink's and Redis's CPU per message, and the share of all the machine's cores busy, over the drain.
    sink_cpu_us: float | None = None
    redis_cpu_us: float | None = None
    machine_busy: float | None = None
    redis_bytes: int | None = None
    rss_samples: tuple[tuple[int, int], ...] = ()

    @property
    def exact(self) -> bool:
        return self.received == self.count == self.unique and not self.duplicates


def off_on_rates(runs: tuple[tuple[str, Drain, object], ...], side: str) -> list[float]:
    """The drain rates of the ``side`` ("off" or "on") runs of a row that alternates a feature off and on."""
    return [run.rate for kind, run, _ in runs if kind == side]


def off_on_ratio(runs: tuple[tuple[str, Drain, object], ...]) -> float | None:
    """The mean rate with the feature on over the mean rate with it off (None without both)."""
    on, off = off_on_rates(runs, "on"), off_on_rates(runs, "off")
    if not on or not off or not sum(off):
        return None
    return (sum(on) / len(on)) / (sum(off) / len(off))


def _start(
    services: Services, system: System, commands: list[list[str]], provider: str, settings: Mapping[str, str] = {}
) -> ProcessTree:
    env = services.env(system, provider=provider, settings=settings)
    log = services.work_dir / f"{system.name}-workers.log"
    processes = [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True
        )
        for command in commands
    ]
    return ProcessTree(processes)


@dataclass(frozen=True)
class CPUReading:
    """Cumulative CPU seconds at one moment: the workers, the sink, Redis, and the whole machine."""

    received: int
    workers: float
    sink: float
    redis: float
    machine_busy: float
    machine_total: float

    @classmethod
    def now(cls, services: Services, tree: ProcessTree, received: int) -> CPUReading:
        busy, total = _machine_cpu()
        return cls(
            received=received,
            workers=tree.cpu(),
            sink=_cpu_seconds(services.sink_pid) if services.sink_pid else 0.0,
            redis=_cpu_seconds(services.redis_pid) if services.redis_pid else 0.0,
            machine_busy=busy,
            machine_total=total,
        )

    def per_message_since(self, first: CPUReading) -> dict[str, float]:
        """CPU µs per message delivered between ``first`` and this reading, and the machine's busy share."""
        messages = self.received - first.received
        window = self.machine_total - first.machine_total
        return {
            "workers": (self.workers - first.workers) / messages * 1e6,
            "sink": (self.sink - first.sink) / messages * 1e6,
            "redis": (self.redis - first.redis) / messages * 1e6,
            "busy": (self.machine_busy - first.machine_busy) / window if window > 0 else 0.0,
        }


def _wait_for_sink(
    services: Services, tree: ProcessTree | None, count: int, *, stall: float, rss: bool
) -> tuple[dict[str, Any], dict[str, float], list[tuple[int, int]]]:
    """Poll until the sink holds ``count`` messages, nothing arrives for ``stall`` s, or one-shot workers exit.

    Returns the sink's stats, the CPU accounting between the first and the last arrival (workers, sink and
    Redis µs per message; the machine's busy share), and (received, RSS) samples.
    """
    samples: list[tuple[int, int]] = []
    first: CPUReading | None = None
    accounting: dict[str, float] = {}
    last_progress, last_received = time.monotonic(), -1
    while True:
        stats = services.sink("_stats")
        received = stats["received"]
        if tree is not None:
            reading = CPUReading.now(services, tree, received)
            if first is None and received:
                first = reading
            if first is not None and received > first.received:
                accounting = reading.per_message_since(first)
            if rss:
                samples.append((received, tree.worker_rss()))
        if received != last_received:
            last_progress, last_received = time.monotonic(), received
        if received >= count:
            break
        if time.monotonic() - last_progress > stall:
            break
        if tree is not None and not tree.running() and received == services.sink("_stats")["received"]:
            break
        time.sleep(0.2)
    time.sleep(services.grace)  # late duplicates would arrive now
    return services.sink("_stats"), accounting, samples


def drain(
    services: Services,
    system: System,
    *,
    count: int,
    size: str,
    processes: int,
    threads: int,
    provider: str = "smtp",
    rss: bool = False,
    stall: float = 30.0,
    settings: Mapping[str, str] = {},
    alongside: contextlib.AbstractContextManager[Any] | None = None,
) -> Drain:
    """Queue ``count`` messages, then let ``processes`` workers deliver them; check the sink got each once.

    ``settings`` overrides ``BENCH_*`` values for every process of the drain. ``alongside`` is entered before
    the messages are queued and left after the workers stopped: another process running through the drain
    (the message log's writer), which must not change how the drain itself is measured.
    """
    run = f"{services.run_id}-{system.name}-{size}-{processes}"
    reset(services, system)
    services.sink("_reset", "POST")
    with alongside if alongside is not None else contextlib.nullcontext():
        return _drain(services, system, run, count=count, size=size, processes=processes, threads=threads,
                      provider=provider, rss=rss, stall=stall, settings=settings)  # fmt: skip


def _drain(
    services: Services,
    system: System,
    run: str,
    *,
    count: int,
    size: str,
    processes: int,
    threads: int,
    provider: str,
    rss: bool,
    stall: float,
    settings: Mapping[str, str],
) -> Drain:
    redis_bytes = None
    if system.workers is None:
        # Synchronous: the send is the drain; N processes each send their share over one connection.
        share = -(-count // processes)
        commands = [
            [str(system.python()), "-m", "bench.driver", "fill", "--count", str(min(share, count - start)),
             "--start", str(start), "--size", size, "--run", run]
            for start in range(0, count, share)
        ]  # fmt: skip
        tree = _start(services, system, commands, provider, settings)
    else:
        fill = ("fill", "--count", str(count), "--size", size, "--run", run)
        driver(services, system, *fill, provider=provider, settings=settings)
        if not system.uses_database:
            redis_bytes = services.key_bytes(system)
        commands = system.workers(system.python(), processes, threads, services.work_dir)
        tree = _start(services, system, commands, provider, settings)
    try:
        stats, accounting, samples = _wait_for_sink(services, tree, count, stall=stall, rss=rss)
    finally:
        tree.stop()
    span = stats["last"] - stats["first"]
    rate = (stats["received"] - 1) / span if span > 0 else 0.0
    return Drain(
        count=count,
        received=stats["received"],
        unique=stats["unique"],
        duplicates=stats["duplicates"],
        rate=rate,
        cpu_us=accounting.get("workers"),
        sink_cpu_us=accounting.get("sink"),
        redis_cpu_us=accounting.get("redis") if services.redis_pid else None,
        machine_busy=accounting.get("busy"),
        redis_bytes=redis_bytes,
        rss_samples=tuple(samples),
    )


def redis_benchmark(services: Services, *, requests: int) -> dict[str, float]:
    """redis-benchmark LPUSH and RPOP: one client (a round trip each) and 50 clients (the server's rate)."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        raise BenchError("redis-benchmark is not on PATH (Debian: apt-get install redis-tools)")
    port = services.redis_url.rsplit(":", 1)[1].split("/")[0]
    figures = {}
    for clients in (1, 50):
        result = subprocess.run(
            [tool, "-h", "127.0.0.1", "-p", port, "-n", str(requests), "-c", str(clients), "-t", "lpush,rpop",
             "--csv", "--dbnum", "15"],
            capture_output=True,
            text=True,
            check=True,
        )  # fmt: skip
        for line in result.stdout.splitlines():
            cells = [cell.strip('"') for cell in line.split(",")]
            if cells[0] in ("LPUSH", "RPOP"):
                figures[f"{cells[0].lower()}_c{clients}"] = float(cells[1])
    return figures


@dataclass(frozen=True, kw_only=True)
class IdleSizes:
    """The idle-latency measurement: sends every ``interval`` s, quiet spells, and the critical-behind-bulk run."""

    count: int
    interval: float
    spells: int
    quiet: float
    long_quiet: float
    #: Messages queued on ``bulk`` before its pool starts; ``busy_count`` critical sends go while it drains.
    backlog: int
    busy_count: int


def _idle_args(sizes: IdleSizes, run: str, *, busy: bool = False, synchronous: bool = False) -> list[str]:
    common = ["--run", run, "--interval", str(sizes.interval), "--warmup", "3"]
    if busy:
        return [*common, "--count", str(sizes.busy_count), "--mailer", "transactional"]
    if synchronous:
        return [*common, "--count", str(sizes.count)]  # nothing sleeps between its sends: silences change nothing
    return [*common, "--count", str(sizes.count), "--spells", str(sizes.spells), "--quiet", str(sizes.quiet),
            "--long-quiet", str(sizes.long_quiet)]  # fmt: skip


def _pool(system: System, pool: str) -> list[str]:
    # What a Procfile line runs: the pool with its default processes and threads.
    return [str(system.python()), "-m", "workers", pool]


def idle_latency(services: Services, mailqueue: System, django_smtp: System, sizes: IdleSizes) -> dict[str, Any]:
    """Send -> provider accepted, for a queued message on an idle pool and for Django's synchronous send.

    Then the same for a ``critical`` message while another pool drains a ``bulk`` backlog; ``backlog_left``
    says how much bulk mail was still queued when the last critical message arrived (0: the drain had ended).
    """
    results: dict[str, Any] = {}
    reset(services, mailqueue)
    services.sink("_reset", "POST")
    tree = _start(services, mailqueue, [_pool(mailqueue, "default")], "smtp")
    try:
        results["mailqueue"] = driver(services, mailqueue, "idle", *_idle_args(sizes, f"{services.run_id}-idle-mq"))
    finally:
        tree.stop()
    services.sink("_reset", "POST")
    django_args = _idle_args(sizes, f"{services.run_id}-idle-dj", synchronous=True)
    results["django"] = driver(services, django_smtp, "idle", *django_args)
    if sizes.backlog:
        reset(services, mailqueue)
        services.sink("_reset", "POST")
        run = f"{services.run_id}-idle-bulk"
        driver(services, mailqueue, "fill", "--count", str(sizes.backlog), "--size", "small", "--run", run,
               "--mailer", "bulk")  # fmt: skip
        tree = _start(services, mailqueue, [_pool(mailqueue, "bulk"), _pool(mailqueue, "critical")], "smtp")
        try:
            deadline = time.monotonic() + 60
            while services.sink("_stats")["received"] < min(100, sizes.backlog // 10):  # the drain is under way
                if time.monotonic() > deadline:
                    raise BenchError("the bulk pool delivered nothing within 60 s")
                time.sleep(0.05)
            busy = driver(services, mailqueue, "idle", *_idle_args(sizes, f"{services.run_id}-idle-crit", busy=True))
            received = services.sink("_stats")["received"]
        finally:
            tree.stop()
        busy["backlog"] = sizes.backlog
        busy["backlog_left"] = max(sizes.backlog - (received - sizes.busy_count - 3), 0)
        results["busy"] = busy
        reset(services, mailqueue)
    return results
