"""Waiting out a Redis outage, for the writes that must not be given up: giving up would lose a message.

The worker still holds the message (it is in its in-progress set, not yet
acknowledged), so waiting is safe: if the worker dies while it waits, Dramatiq
gives the message to another worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

logger = logging.getLogger(__name__)

#: Redis errors that pass: unreachable, timed out, a replica after a failover, full, or loading its data.
REDIS_OUTAGES: tuple[type[redis.RedisError], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
)

#: Backoff, in seconds, between tries while Redis is away.
RETRY_MIN = 0.2
RETRY_MAX = 5.0


def until_redis_accepts[T](write: Callable[[], T], what: str) -> T:
    """Run ``write`` until Redis accepts it, backing off between tries; ``what`` names it in the log."""
    wait = RETRY_MIN
    while True:
        try:
            return write()
        except REDIS_OUTAGES as error:
            logger.error("Redis did not accept %s (%s); trying again in %.1f s", what, error, wait)
            time.sleep(wait)
            wait = min(wait * 2, RETRY_MAX)
