"""Worker pools: ``python -m workers <pool>`` runs that pool's worker processes, and keeps them running.

A pool is one Procfile line. Its queues, processes and threads come from
``MAILQUEUE["POOLS"]`` (by default one pool per queue), and can be overridden
on the command line, so an operator scales ``bulk`` without touching ``critical``.
The command is the pool's supervisor (workers/supervisor.py); each worker
process is ``python -m workers.process`` (one Dramatiq worker).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import django

from mailqueue.conf import MailQueueConfig, PoolConfig, get_config

from .process import LOG_FORMAT
from .supervisor import Supervisor

#: The module each worker process of a pool runs.
PROCESS_MODULE = "workers.process"


def worker_argv(pool: PoolConfig, *, threads: int | None = None) -> list[str]:
    """The command line of one of ``pool``'s worker processes."""
    return [
        sys.executable,
        "-m",
        PROCESS_MODULE,
        "--queues",
        *pool.queues,
        "--threads",
        str(threads or pool.threads),
    ]


def select_pool(config: MailQueueConfig, name: str | None, queues: Sequence[str] | None) -> PoolConfig:
    """The pool named ``name``, or an ad-hoc one for ``queues``; SystemExit naming the choices."""
    if queues:
        unknown = [queue for queue in queues if queue not in config.queues]
        if unknown:
            raise SystemExit(f"unknown queue(s) {', '.join(unknown)}; configured: {', '.join(config.queues)}")
        return PoolConfig(name="+".join(queues), queues=tuple(queues))
    if name is None:
        raise SystemExit(f"name a pool ({', '.join(config.pools)}) or pass --queues")
    try:
        return config.pools[name]
    except KeyError:
        raise SystemExit(f"unknown pool {name!r}; configured pools: {', '.join(config.pools)}") from None


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and supervise the pool's worker processes until a stop signal."""
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("pool", nargs="?", help="a name from MAILQUEUE['POOLS'] (default: one pool per queue)")
    parser.add_argument("--queues", nargs="+", help="consume these queues instead of a named pool's")
    parser.add_argument("--processes", type=int, help="worker processes (overrides the pool's)")
    parser.add_argument("--threads", type=int, help="threads per process (overrides the pool's)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print each worker process's command instead of running them"
    )
    args = parser.parse_args(argv)

    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise SystemExit("set DJANGO_SETTINGS_MODULE to your project's settings (e.g. mysite.settings)")
    django.setup()
    pool = select_pool(get_config(), args.pool, args.queues)
    command = worker_argv(pool, threads=args.threads)
    processes = args.processes or pool.processes
    if args.dry_run:
        for _ in range(processes):
            print(" ".join(command))  # noqa: T201
        return
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    sys.exit(Supervisor(pool.name, command, processes).run())
