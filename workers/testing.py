"""A real Dramatiq worker inside the current process, for tests: mailqueue's own and an application's.

``deliver_queued()`` runs one until every configured queue is empty, so a test
can send mail, deliver it through the configured providers, and assert on what
they received. ``InProcessWorker`` is the same worker for a test that wants to
keep it running while it sends, breaks or inspects things.
"""

from __future__ import annotations

from types import TracebackType

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from .actors import worker_broker


class InProcessWorker:
    """A Dramatiq worker consuming every configured queue from threads of this process.

    Use it as a context manager; ``drain()`` waits until the queues are empty.
    """

    def __init__(self, threads: int = 1, *, fresh: bool = True) -> None:
        #: A fresh broker leaves no middleware behind on the process-wide one.
        self.broker: RedisBroker = worker_broker(fresh=fresh)
        self.broker.emit_after("process_boot")  # as Dramatiq's CLI does: starts the time-limit monitor
        self.worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=50)

    def __enter__(self) -> InProcessWorker:
        self.worker.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.worker.stop()

    def drain(self, timeout: float = 20.0) -> None:
        """Wait until every queue (ready, in progress, delayed) is empty.

        Raises ``dramatiq.errors.QueueJoinTimeout`` if they are not within
        ``timeout`` seconds (e.g. a long retry backoff is configured).
        """
        for queue in sorted(self.broker.get_declared_queues()):
            self.broker.join(queue, timeout=int(timeout * 1000))
        self.worker.join()


def deliver_queued(*, timeout: float = 30.0, threads: int = 1) -> None:
    """Deliver everything queued (retries included), then stop the worker.

    Raises ``dramatiq.errors.QueueJoinTimeout`` if the queues are not empty
    within ``timeout`` seconds (e.g. a long retry backoff is configured).
    """
    with InProcessWorker(threads) as worker:
        worker.drain(timeout)
