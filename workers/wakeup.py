"""Wake-ups: an idle consumer waits for the enqueue's PUBLISH instead of sleeping a poll backoff.

The enqueue script publishes on ``<ns>:wake:<queue>`` in the call that queues
(mailqueue/enqueue.py). Each worker process holds one pub/sub connection, on a
daemon thread, subscribed to the wake channel of every queue it consumes, and
sets that queue's ``threading.Event``; the queue's consumer clears the event
before each fetch and waits on it after an empty one
(``workers.dramatiq_redis.DeadLetteringConsumer``). Every subscribed process
wakes, so whichever has room fetches. Pub/sub forgets what it published while a
subscriber was away, so the consumer still polls once per worker timeout, and
falls back to Dramatiq's own poll backoff whenever its channel is not confirmed
subscribed. A re-enqueue by this process (a retry, a deferral, a delayed message
coming due) sets its own consumer's event through ``WakeLocalConsumers``,
without a Redis command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from typing import Any

import redis
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from mailqueue.keys import wake_channel

logger = logging.getLogger(__name__)

#: Seconds the subscriber thread blocks reading before it looks for new channels and for stop (no Redis command).
READ_TIMEOUT = 0.25

#: Reconnection backoff of the subscriber after redis-py's own retries gave up: from the first, doubling, capped.
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 5.0


class Wakeups:
    """One worker process's wake-up events, per queue, and the pub/sub thread that sets them."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}
        #: Wake channel -> queue, for the queues consumed here.
        self._queues_by_channel: dict[str, str] = {}
        #: Queues whose subscription Redis confirmed on the live connection.
        self._listening: set[str] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: Failed connections or subscriptions since one was last confirmed: the reconnection backoff's exponent.
        self._failures = 0

    def event(self, queue_name: str) -> threading.Event:
        """The event that wakes ``queue_name``'s consumer; subscribes to its channel (not for a delay queue)."""
        with self._lock:
            event = self._events.get(queue_name)
            if event is None:
                event = self._events[queue_name] = threading.Event()
                if q_name(queue_name) == queue_name:
                    self._queues_by_channel[wake_channel(self.namespace, queue_name)] = queue_name
                    if self._thread is None and not self._stopping.is_set():
                        self._thread = threading.Thread(target=self._run, name="mailqueue-wakeups", daemon=True)
                        self._thread.start()
            return event

    @property
    def stopped(self) -> bool:
        return self._stopping.is_set()

    def listening(self, queue_name: str) -> bool:
        """True while a PUBLISH on ``queue_name``'s channel reaches this process."""
        return queue_name in self._listening

    def wake(self, queue_name: str) -> None:
        """Wake this process's consumer of ``queue_name``, if it has one."""
        event = self._events.get(queue_name)
        if event is not None:
            event.set()

    def stop(self) -> None:
        """Wake every consumer to poll on its own; the subscriber thread closes its connection within READ_TIMEOUT.

        Not joined: a worker's shutdown need not wait for a daemon thread that holds nothing but that connection.
        """
        self._stopping.set()
        self._listening.clear()
        for event in list(self._events.values()):
            event.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            pubsub = self.client.pubsub()  # type: ignore[no-untyped-call]
            try:
                self._listen(pubsub)
            except (redis.RedisError, OSError) as error:
                # Consumers poll on Dramatiq's backoff meanwhile: nothing waits on a wake-up that cannot come.
                self._listening.clear()
                self._failed(error)
                self._stopping.wait(min(RECONNECT_FIRST * 2 ** (self._failures - 1), RECONNECT_MAX))
            finally:
                self._listening.clear()
                with contextlib.suppress(redis.RedisError, OSError):  # the connection is gone either way
                    pubsub.close()

    def _failed(self, error: Exception) -> None:
        """Log the first failure since the last confirmed subscription; the retries after it at DEBUG."""
        self._failures += 1
        if self._stopping.is_set():
            return  # the worker is shutting down: a connection closed under it is no news
        if self._failures > 1:
            logger.debug("wake-up subscription still failing: %s", error)
        elif isinstance(error, redis.ResponseError):
            # Refused, not lost (an ACL without the channels, a command renamed away): an operator must act.
            logger.error(
                "Redis refused the wake-up subscription (%s): workers poll their queues instead, mail waits up "
                "to a worker timeout; grant the channels (ACL: &%s:wake:*)",
                error,
                self.namespace,
            )
        else:
            logger.warning("wake-up subscription lost (%s): workers poll until it is back", error)

    def _listen(self, pubsub: Any) -> None:
        requested: set[str] = set()
        while not self._stopping.is_set():
            with self._lock:
                new = [channel for channel in self._queues_by_channel if channel not in requested]
            if new:
                pubsub.subscribe(*new)
                requested.update(new)
            message = pubsub.get_message(timeout=READ_TIMEOUT)
            while message is not None:
                self._handle(message)
                message = pubsub.get_message(timeout=0)

    def _handle(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        queue = self._queues_by_channel.get(channel) if isinstance(channel, str) else None
        if queue is None:
            return
        if message.get("type") == "subscribe":
            # Also after redis-py reconnected by itself: what was published while away is fetched now.
            self._listening.add(queue)
            self._failures = 0
        self.wake(queue)


_by_broker: weakref.WeakKeyDictionary[Any, Wakeups] = weakref.WeakKeyDictionary()
_by_broker_lock = threading.Lock()


def wakeups_for(broker: Any) -> Wakeups:
    """The wake-ups of ``broker`` (a Dramatiq RedisBroker) in this process, made on first use."""
    with _by_broker_lock:
        wakeups = _by_broker.get(broker)
        if wakeups is None or wakeups.pid != os.getpid() or wakeups.stopped:
            wakeups = _by_broker[broker] = Wakeups(broker.client, broker.namespace)
        return wakeups


class WakeLocalConsumers(Middleware):
    """Wakes this process's consumer of a queue it just enqueued on; stops the subscriber with the worker."""

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        wakeups = _by_broker.get(broker)
        if wakeups is not None:
            wakeups.wake(message.queue_name)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        wakeups = _by_broker.get(broker)
        if wakeups is not None:
            wakeups.stop()
