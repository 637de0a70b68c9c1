"""``python -m bench [--smoke]``: mailqueue beside the other Django mail queues and the physical floors, one run.

Starts a private Redis (unless ``--redis-url``), one counting SMTP/HTTP sink and, for the database-backed
peers, PostgreSQL databases of its own (SQLite when no PostgreSQL answers); creates the peers' virtual
environments on first use; measures every system in subprocesses; prints Markdown tables of figures and ratios.
``python -m bench.batch_paths`` is a separate, quicker measurement: the batch enqueue by script and by MULTI/EXEC.
``--only-log`` runs only the drain with the message log written beside the drain with it off (bench.logged_drain).
``--only-monitor`` runs only the operator's-view row: the dashboard JSON and a scrape with 1,000,000 messages
waiting (bench.monitor_cost, in a process of its own: it has its own 10-queue settings).
``--only-counters`` runs only the drain with the cluster counters kept beside the drain without (bench.counted_drain).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from typing import Any

from . import counted_drain, logged_drain, monitor_cost, report
from .harness import (
    BenchError,
    IdleSizes,
    Services,
    drain,
    driver,
    idle_latency,
    postgres_available,
    redis_benchmark,
    reset,
)
from .systems import DJANGO_SMTP, ENVS_DIR, LOCMEM, MAILQUEUE, PEERS, System


@dataclass(frozen=True, kw_only=True)
class Sizes:
    latency: int
    batch: int
    small: int
    large: int
    soak: int
    redis_requests: int
    idle: IdleSizes
    #: Messages in each drain of the message-log row, and how many (off, on) pairs it runs.
    log: int
    log_rounds: int


#: About 3 minutes: 50 s of sends every 250 ms (mailqueue, then Django), ten 3-s silences, one of a minute, and
#: 10 s of critical sends while a bulk pool drains 20,000 messages.
FULL_IDLE = IdleSizes(count=200, interval=0.25, spells=10, quiet=3.0, long_quiet=60.0, backlog=20_000, busy_count=40)
SMOKE_IDLE = IdleSizes(count=4, interval=0.25, spells=1, quiet=1.2, long_quiet=0.0, backlog=200, busy_count=2)
FULL = Sizes(
    latency=2_000,
    batch=10_000,
    small=2_000,
    large=200,
    soak=100_000,
    redis_requests=100_000,
    idle=FULL_IDLE,
    log=5_000,
    log_rounds=2,
)
SMOKE = Sizes(
    latency=50, batch=100, small=40, large=4, soak=0, redis_requests=2_000, idle=SMOKE_IDLE, log=40, log_rounds=1
)


def progress(text: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)  # noqa: T201


def attempt(results: dict[str, Any], key: str, measure: Any) -> None:
    """Store ``measure()``'s result under ``key``, or the reason it could not be made."""
    try:
        results[key] = measure()
    except BenchError as error:
        results[key] = report.Failed(str(error))
        progress(f"  {key}: {error}")


def measure_system(
    services: Services, system: System, sizes: Sizes, args: argparse.Namespace, results: dict[str, Any]
) -> None:
    progress(f"{system.name}: enqueue latency, N={sizes.latency}")
    attempt(results, "latency", lambda: driver(services, system, "latency", "--count", str(sizes.latency)))
    if system is LOCMEM:
        return
    if isinstance(results["latency"], dict):
        results["django"] = results["latency"]["django"]
    reset(services, system)
    if system.workers is not None:
        progress(f"{system.name}: batch send_messages, N={sizes.batch}")
        warmup = str(max(sizes.batch // 10, 1))
        batch = (
            "fill",
            "--count",
            str(sizes.batch),
            "--chunk",
            str(sizes.batch),
            "--run",
            "batch",
            "--warmup-batch",
            warmup,
        )
        attempt(results, "batch", lambda: driver(services, system, *batch))
        reset(services, system)
    for size, count in (("small", sizes.small), ("large", sizes.large)):
        for processes in args.processes:
            key = f"drain_{size}_{processes}"
            if processes > 1 and system.note:
                results[key] = report.Failed(system.note)
                continue
            progress(f"{system.name}: drain {count} {size} messages, {processes} process(es)")
            attempt(
                results,
                key,
                lambda size=size, count=count, processes=processes: drain(
                    services, system, count=count, size=size, processes=processes, threads=args.threads
                ),
            )
    reset(services, system)


def measure_esp(services: Services, sizes: Sizes, args: argparse.Namespace, results: dict[str, Any]) -> None:
    progress(f"anymail ESP (Postmark API on loopback): drain {sizes.small}, 1 process; the same sent synchronously")
    for system, key in ((MAILQUEUE, "esp"), (DJANGO_SMTP, "esp_sync")):
        attempt(
            results.setdefault(system.name, {}),
            key,
            lambda system=system: drain(
                services, system, count=sizes.small, size="small", processes=1, threads=args.threads, provider="esp"
            ),
        )


def measure_log(services: Services, sizes: Sizes, args: argparse.Namespace, results: dict[str, Any]) -> None:
    order = ", ".join(["off, on", "on, off"][round_ % 2] for round_ in range(sizes.log_rounds))
    progress(
        f"mailqueue: drain {sizes.log} small messages, 1 process, message log off / on with one writer "
        f"({services.database_kind}); runs: {order}"
    )
    attempt(
        results,
        "log",
        lambda: logged_drain.measure(
            services, MAILQUEUE, count=sizes.log, threads=args.threads, rounds=sizes.log_rounds, batch=args.log_batch
        ),
    )


def measure_counters(services: Services, sizes: Sizes, args: argparse.Namespace) -> Any:
    progress(f"mailqueue: drain {sizes.log} small messages, 1 process, cluster counters off / on, alternating")
    try:
        return counted_drain.measure(
            services, MAILQUEUE, count=sizes.log, threads=args.threads, rounds=sizes.log_rounds
        )
    except BenchError as error:
        progress(f"  counters: {error}")
        return str(error)


def measure_floors(services: Services, sizes: Sizes, results: dict[str, Any]) -> None:
    floors = results.setdefault("floors", {})
    if services.private_redis:
        progress(f"floor: redis-benchmark LPUSH/RPOP, {sizes.redis_requests} requests")
        attempt(floors, "redis", lambda: redis_benchmark(services, requests=sizes.redis_requests))
    else:
        floors["redis"] = report.Failed("not run against a shared Redis (--redis-url): it would write its own keys")
    for size, count in (("small", sizes.small), ("large", sizes.large)):
        progress(f"floor: raw smtplib, pre-rendered, one connection, {count} {size}")
        services.sink("_reset", "POST")
        args = ("--count", str(count), "--size", size, "--run", f"floor-{size}")
        attempt(floors, f"smtplib_{size}", lambda args=args: driver(services, DJANGO_SMTP, "smtplib", *args))
        stats = services.sink("_stats")
        if stats["unique"] != count:
            floors[f"smtplib_{size}"] = report.Failed(f"sink got {stats['unique']} of {count}")
    for size, count, key in (("small", sizes.small, "rendering"), ("large", sizes.large, "rendering_large")):
        progress(f"stretch: the worker's rendering beside Django's, {count} {size}")
        args = ("--count", str(count), "--size", size, "--run", "rendering")
        attempt(floors, key, lambda args=args: driver(services, MAILQUEUE, "rendering", *args))


def measure_soak(services: Services, sizes: Sizes, args: argparse.Namespace, results: dict[str, Any]) -> None:
    progress(f"mailqueue: worker RSS over a drain of {sizes.soak} messages, 1 process")
    attempt(
        results["mailqueue"],
        "soak",
        lambda: drain(services, MAILQUEUE, count=sizes.soak, size="small", processes=1, threads=args.threads, rss=True),
    )


def measure_idle(services: Services, sizes: Sizes, results: dict[str, Any]) -> None:
    idle = sizes.idle
    progress(
        f"idle latency: one send every {idle.interval * 1000:.0f} ms x {idle.count}, {idle.spells} after "
        f"{idle.quiet:g} s of silence, one after {idle.long_quiet:g} s; Django's synchronous send the same; "
        f"{idle.busy_count} critical sends behind a {idle.backlog}-message bulk drain"
    )
    attempt(results, "idle", lambda: idle_latency(services, MAILQUEUE, DJANGO_SMTP, idle))


def measure_monitor(services: Services, messages: int) -> list[str]:
    """The operator's-view row (bench.monitor_cost) against the run's Redis, as Markdown lines."""
    progress(f"monitor: dashboard JSON and a scrape with {messages:,} messages waiting (filling takes a while)")
    command = [sys.executable, "-m", "bench.monitor_cost", "--json", "--redis-url", services.redis_url]
    done = subprocess.run([*command, "--messages", str(messages)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return [f"Operator's view: not measured: {(done.stderr.strip().splitlines() or ['no output'])[-1]}"]
    cost = monitor_cost.MonitorCost(**json.loads(done.stdout))
    return ["", cost.caption(), "", *monitor_cost.HEADER, *cost.rows()]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no peers: only checks the harness works")
    parser.add_argument(
        "--peers", action=argparse.BooleanOptionalAction, default=None, help="(default: not in --smoke)"
    )
    parser.add_argument("--redis-url", help="use this Redis (keys under mqbench-<id>-*) instead of a private one")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="admin URL for the peers' databases (created and dropped here); SQLite if it does not answer",
    )
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process (Dramatiq systems)")
    parser.add_argument("--processes", type=int, nargs="+", help="worker processes per drain (default: 1 2; smoke: 1)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every message count (not the soak)")
    parser.add_argument("--soak", type=int, help="messages in the worker-RSS drain (0: skip)")
    parser.add_argument("--only", nargs="+", metavar="SYSTEM", help="measure only these systems (and the floors)")
    parser.add_argument(
        "--idle", action=argparse.BooleanOptionalAction, default=True, help="the idle-latency row (default: on)"
    )
    parser.add_argument("--only-idle", action="store_true", help="measure only the idle-latency row")
    parser.add_argument(
        "--log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the drain with the message log written vs off (default: on)",
    )
    parser.add_argument("--only-log", action="store_true", help="measure only the message-log drain row")
    parser.add_argument("--log-rounds", type=int, help="(off, on) drain pairs in the log row (default 2; smoke: 1)")
    parser.add_argument("--log-batch", type=int, metavar="N", help="the log writer's --batch (default: LOG BATCH_SIZE)")
    parser.add_argument(
        "--monitor",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the operator's-view row: dashboard JSON and a scrape, 1,000,000 waiting (default: on, not in --smoke)",
    )
    parser.add_argument("--only-monitor", action="store_true", help="measure only the operator's-view row")
    parser.add_argument(
        "--counters",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the drain with the cluster counters kept vs off, as many messages and pairs as the log row (default: on)",
    )
    parser.add_argument("--only-counters", action="store_true", help="measure only the cluster-counters drain row")
    args = parser.parse_args()

    base = SMOKE if args.smoke else FULL
    sizes = Sizes(
        latency=max(int(base.latency * args.scale), 10),
        batch=max(int(base.batch * args.scale), 10),
        small=max(int(base.small * args.scale), 10),
        large=max(int(base.large * args.scale), 2),
        soak=base.soak if args.soak is None else args.soak,
        redis_requests=base.redis_requests,
        idle=base.idle,
        log=max(int(base.log * args.scale), 10),
        log_rounds=base.log_rounds if args.log_rounds is None else args.log_rounds,
    )
    partial = args.only_idle or args.only_log or args.only_monitor or args.only_counters
    with_monitor = args.only_monitor or (not partial and (not args.smoke if args.monitor is None else args.monitor))
    with_peers = (not args.smoke if args.peers is None else args.peers) and not partial
    with_log = (
        (args.log or args.only_log)
        and not (args.only_idle or args.only_monitor or args.only_counters)
        and sizes.log_rounds > 0
    )
    with_counters = (args.counters or args.only_counters) and not (args.only_idle or args.only_log or args.only_monitor)
    with_counters = with_counters and sizes.log_rounds > 0
    if args.processes is None:
        args.processes = [1] if args.smoke else [1, 2]
    ENVS_DIR.mkdir(exist_ok=True)
    log = ENVS_DIR / "bench.log"
    started = time.monotonic()

    systems = [LOCMEM, MAILQUEUE, DJANGO_SMTP]
    unavailable: dict[str, str] = {}
    if with_peers:
        if args.redis_url:
            parser.error("the peers need the private Redis (Celery's keys cannot be namespaced): drop --redis-url")
        for env in {peer.env for peer in PEERS if peer.env is not None}:
            progress(f"peer environment {env.name}: {env.requirements.name} (first run installs from PyPI; log {log})")
            try:
                env.ensure(log)
            except Exception as error:  # noqa: BLE001  (any install failure means: report the peers as not run)
                for peer in PEERS:
                    if peer.env == env:
                        unavailable[peer.name] = f"could not install {env.requirements.name}: {error}"
        systems += [peer for peer in PEERS if peer.name not in unavailable]

    if args.only:
        systems = [system for system in systems if system.name in args.only or system is LOCMEM]
    if args.only and "mailqueue" not in args.only:
        with_log = with_counters = False
    # The peers' queues and the message log live in PostgreSQL when it answers.
    postgres = args.postgres_url if (with_peers or with_log) and postgres_available(args.postgres_url) else None
    results: dict[str, Any] = {name: {"failed": report.Failed(reason)} for name, reason in unavailable.items()}
    grace = 0.3 if args.smoke else 1.0
    if partial:
        systems = []
    with Services.run(redis_url=args.redis_url, postgres_url=postgres, log=log, grace=grace) as services:
        if (args.idle and not (args.only_log or args.only_monitor or args.only_counters)) or args.only_idle:
            measure_idle(services, sizes, results)
        for system in systems:
            if system.uses_database:
                if not postgres and system.name == "django-mailer":
                    # SQLite has no row locks: two send_mail processes would both send every message.
                    system = replace(system, note="needs PostgreSQL row locks for 2 processes")
                progress(f"{system.name}: migrate ({services.database_kind})")
                try:
                    driver(services, system, "migrate")
                except BenchError as error:
                    results[system.name] = {"failed": report.Failed(str(error))}
                    continue
            measure_system(services, system, sizes, args, results.setdefault(system.name, {}))
        if MAILQUEUE in systems:
            measure_esp(services, sizes, args, results)
        if with_log:
            measure_log(services, sizes, args, results)
        counted = measure_counters(services, sizes, args) if with_counters else None
        if not partial:
            measure_floors(services, sizes, results)
        if sizes.soak and MAILQUEUE in systems:
            measure_soak(services, sizes, args, results)
        monitor = measure_monitor(services, 2_000 if args.smoke else 1_000_000) if with_monitor else []
        database_kind = services.database_kind
    elapsed = time.monotonic() - started
    if not args.only_monitor:
        for line in report.render(results, sizes=sizes, args=args, database=database_kind, elapsed=elapsed):
            print(line)  # noqa: T201
    for line in monitor:
        print(line)  # noqa: T201
    for line in counted_drain.render(counted):
        print(line)  # noqa: T201
    sys.stdout.flush()


if __name__ == "__main__":
    main()
