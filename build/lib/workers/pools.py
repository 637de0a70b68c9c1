"""Worker pools: ``python -m workers <pool>`` runs Dramatiq for that pool's queues.

A pool is one Procfile line. Its queues, processes and threads come from
``MAILQUEUE["POOLS"]`` (by default one pool per queue), and can be overridden
on the command line, so an operator scales ``bulk`` without touching ``critical``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import django

from mailqueue.conf import MailQueueConfig, PoolConfig, get_config

#: The module Dramatiq imports in each worker process.
BOOTSTRAP_MODULE = "workers.bootstrap"


def dramatiq_argv(pool: PoolConfig, *, processes: int | None = None, threads: int | None = None) -> list[str]:
    """The ``dramatiq`` command line that runs ``pool``."""
    return [
        sys.executable,
        "-m",
        "dramatiq",
        BOOTSTRAP_MODULE,
        "--queues",
        *pool.queues,
        "--processes",
        str(processes or pool.processes),
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
    """Parse the command line and replace this process with the Dramatiq workers."""
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("pool", nargs="?", help="a name from MAILQUEUE['POOLS'] (default: one pool per queue)")
    parser.add_argument("--queues", nargs="+", help="consume these queues instead of a named pool's")
    parser.add_argument("--processes", type=int, help="worker processes (overrides the pool's)")
    parser.add_argument("--threads", type=int, help="threads per process (overrides the pool's)")
    parser.add_argument("--dry-run", action="store_true", help="print the dramatiq command instead of running it")
    args = parser.parse_args(argv)

    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise SystemExit("set DJANGO_SETTINGS_MODULE to your project's settings (e.g. mysite.settings)")
    django.setup()
    pool = select_pool(get_config(), args.pool, args.queues)
    command = dramatiq_argv(pool, processes=args.processes, threads=args.threads)
    if args.dry_run:
        print(" ".join(command))  # noqa: T201
        return
    os.execv(command[0], command)
