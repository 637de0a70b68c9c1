"""Helpers for an application's own tests that go through the real queue.

``deliver_queued()`` runs a real Dramatiq worker inside the test process until
every configured queue is empty, so a test can send mail, deliver it through
the configured providers, and assert on what they received.
"""

from __future__ import annotations

import dramatiq

from .actors import worker_broker


def deliver_queued(*, timeout: float = 30.0, threads: int = 1) -> None:
    """Deliver everything queued (retries included), then stop the worker.

    Raises ``dramatiq.errors.QueueJoinTimeout`` if the queues are not empty
    within ``timeout`` seconds (e.g. a long retry backoff is configured).
    """
    broker = worker_broker(fresh=True)
    broker.emit_after("process_boot")  # as Dramatiq's CLI does: starts the time-limit monitor
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=50)
    worker.start()
    try:
        for queue in sorted(broker.get_declared_queues()):
            broker.join(queue, timeout=int(timeout * 1000))
        worker.join()
    finally:
        worker.stop()
