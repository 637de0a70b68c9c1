"""One worker process of a pool: Dramatiq's ``Worker`` on the pool's queues, until SIGTERM stops it gracefully.

``python -m workers <pool>`` (workers/supervisor.py) starts one of these per
process of the pool and replaces any that dies. It does what Dramatiq's own
worker process does (``dramatiq`` CLI), minus the forking: Dramatiq's main
process stops every worker when one dies, which is the thing a pool must not do.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Sequence
from types import FrameType

import dramatiq

#: Dramatiq's own log line format, so a pool's output reads like Dramatiq's.
LOG_FORMAT = "[%(asctime)s] [PID %(process)d] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"

#: How long a stopping worker waits for its threads to finish their messages (Dramatiq's default), in ms.
SHUTDOWN_TIMEOUT = 600_000

logger = logging.getLogger("workers.process")


def run(queues: Sequence[str], threads: int, *, parent: int | None = None) -> None:
    """Consume ``queues`` with ``threads`` threads until SIGTERM (or SIGHUP) asks to stop.

    A second SIGTERM stops at once, as Dramatiq's does. SIGINT is ignored: the
    supervisor turns Ctrl-C into one SIGTERM per worker process. With
    ``parent`` (the supervisor's pid), the worker also stops, gracefully,
    when that process is gone, rather than run on unsupervised.
    """
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            logger.warning("stopping now, without waiting for the messages in progress")
            os._exit(1)
        logger.info("stopping: finishing the messages in progress")
        stop.set()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    from .bootstrap import broker  # noqa: PLC0415  (sets up Django: only once the signals are in place)

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    broker.emit_after("process_boot")  # as Dramatiq's CLI does: starts the time-limit monitor
    worker = dramatiq.Worker(broker, queues=set(queues), worker_threads=threads)
    worker.start()
    logger.info(
        "worker process %d is consuming %s with %d thread(s); Dramatiq broker id %s",
        os.getpid(),
        ", ".join(queues),
        threads,
        broker.broker_id,
    )
    while not stop.wait(1):
        if parent is not None and os.getppid() != parent:
            logger.error("the pool's supervisor (pid %d) is gone: stopping", parent)
            stop.set()
    worker.stop(timeout=SHUTDOWN_TIMEOUT)
    broker.close()
    logger.info("worker process %d stopped", os.getpid())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.process", description=__doc__)
    parser.add_argument("--queues", nargs="+", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--parent", type=int, help="the supervisor's pid: stop when it is gone")
    args = parser.parse_args(argv)
    run(args.queues, args.threads, parent=args.parent)


if __name__ == "__main__":
    main()
