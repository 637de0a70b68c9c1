"""The delivering half of the test helpers, for mailqueue's own tests and an application's.

``CapturedMail.deliver()`` (``mailqueue.testing``) runs here, registered at
import: every captured message goes through the queue's real actor, so the
real pipeline decides (provider chain, admission, classification, failover,
retries, dead letters), over the capture's in-memory Redis, in the calling
thread. ``deliver_queued()`` and ``InProcessWorker`` run a real Dramatiq
worker on the configured (real) Redis instead, with threads, for tests that
need the worker itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from dramatiq.middleware import CurrentMessage

from mailqueue import testing as mailqueue_testing
from mailqueue.conf import get_config
from mailqueue.signals import MessageDeferred, MessageSent, message_deferred, message_sent

from .actors import worker_broker
from .connections import connections
from .wakeup import wakeups_for


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


class _Outcomes:
    """The outcome hook's events during one ``deliver()``: deliveries are recorded, retries told apart."""

    def __init__(self, capture: mailqueue_testing.CapturedMail) -> None:
        self.capture = capture
        #: Envelope ids whose last put-back was a retry (its backoff is skipped), not a deferral.
        self.retrying: set[str] = set()
        self.sent_events: list[MessageSent] = []

    def sent(self, sender: type, event: MessageSent, **kwargs: Any) -> None:
        self.sent_events.append(event)

    def deferred(self, sender: type, event: MessageDeferred, **kwargs: Any) -> None:
        if event.retry:
            self.retrying.add(event.envelope_id)
        else:
            self.retrying.discard(event.envelope_id)

    def record(self) -> None:
        """Hand the deliveries to the capture (outside the signal, whose receivers' errors are only logged)."""
        for event in self.sent_events:
            self.capture.record_delivery(
                envelope_id=event.envelope_id,
                queue=event.queue,
                mailer=event.mailer,
                provider=event.provider,
                attempt=event.attempt,
            )
        self.sent_events.clear()

    @contextmanager
    def listening(self) -> Iterator[_Outcomes]:
        message_sent.connect(self.sent, weak=False)
        message_deferred.connect(self.deferred, weak=False)
        try:
            yield self
        finally:
            message_sent.disconnect(self.sent)
            message_deferred.disconnect(self.deferred)


def _attempt(broker: RedisBroker, proxy: Any, consumer: Any, capture: mailqueue_testing.CapturedMail) -> None:
    """One attempt, as a worker thread makes it: the queue's actor with the message current, then the ack.

    Dramatiq's middleware chain is left out on purpose: its time limit needs a
    worker's threads, and closing database connections would end a TestCase's transaction.
    """
    actor = broker.get_actor(proxy.actor_name)
    current = CurrentMessage()
    with capture.attempting(proxy.message_id):
        current.before_process_message(broker, proxy)  # type: ignore[no-untyped-call]
        try:
            actor.fn(*proxy.args, **proxy.kwargs)
        finally:
            current.after_process_message(broker, proxy)  # type: ignore[no-untyped-call]
    consumer.ack(proxy)


def _drain(broker: RedisBroker, capture: mailqueue_testing.CapturedMail, outcomes: _Outcomes, timeout: float) -> None:
    """Attempt every ready message; bring delayed ones forward (retries at once, deferrals when due).

    Retries end (a delivery or a dead letter after the queue's max_retries); deferrals are
    only waited for until ``timeout``, so this always returns.
    """
    queues = list(get_config().queues)
    ready = {queue: broker.consume(queue, prefetch=1, timeout=1) for queue in queues}
    deadline = time.monotonic() + timeout
    while True:
        for queue in queues:
            while (proxy := next(ready[queue])) is not None:
                _attempt(broker, proxy, ready[queue], capture)
        in_time = time.monotonic() < deadline
        moved, next_due = 0, None
        for queue in queues:
            # A consumer per pass: the messages not due yet are requeued and this consumer dropped.
            delayed = broker.consume(dq_name(queue), prefetch=10_000, timeout=1)
            waiting = []
            while (proxy := next(delayed)) is not None:
                due = proxy.options.get("eta", 0) / 1000
                if proxy.message_id in outcomes.retrying or (in_time and due <= time.time()):
                    outcomes.retrying.discard(proxy.message_id)
                    # What a worker does with a delayed message that came due: back on its queue, then ack.
                    broker.enqueue(proxy.copy(queue_name=queue))
                    delayed.ack(proxy)
                    moved += 1
                else:
                    waiting.append(proxy)
                    next_due = due if next_due is None else min(next_due, due)
            if waiting:
                delayed.requeue(waiting)
        if moved:
            continue
        if next_due is None:
            return
        wait = max(next_due - time.time(), 0.0)
        if time.monotonic() + wait > deadline:
            return  # deferred past the timeout: left in capture.pending
        time.sleep(wait)


def deliver_captured(
    capture: mailqueue_testing.CapturedMail, providers: mailqueue_testing.Providers, timeout: float
) -> None:
    """``CapturedMail.deliver()``: the real pipeline over the capture's in-memory Redis, in this thread."""
    with capture.delivering(providers), _Outcomes(capture).listening() as outcomes:
        connections.close_all()  # provider backends opened under other settings must not be reused
        broker = worker_broker(fresh=True)
        try:
            _drain(broker, capture, outcomes, timeout)
        finally:
            # The consumers subscribed this broker to its wake-ups: one thread per deliver() would pile up.
            wakeups_for(broker).stop()
            connections.close_all()
            outcomes.record()


mailqueue_testing.register_deliverer(deliver_captured)
