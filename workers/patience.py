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

#: Error codes of replies that pass too: Redis cannot persist (MISCONF), lacks replicas (NOREPLICAS), runs a
#: long script (BUSY), is mid-resharding or failover (TRYAGAIN, MASTERDOWN), loading, read-only or full. redis-py
#: gives some of them classes of their own and leaves the rest plain ResponseErrors that start with the code.
OUTAGE_CODES = frozenset({"MISCONF", "NOREPLICAS", "BUSY", "TRYAGAIN", "MASTERDOWN", "LOADING", "READONLY", "OOM"})


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` is Redis being away or refusing writes for a while: waiting helps, nothing is wrong here.

    Not an outage: a refused permission or password, a script error, anything
    unexpected; those need someone to fix something.
    """
    if isinstance(error, REDIS_OUTAGES):
        return True
    if not isinstance(error, redis.ResponseError):
        return False
    code = getattr(error, "status_code", None) or str(error).split(" ", 1)[0]
    return code in OUTAGE_CODES


#: Backoff, in seconds, between tries while Redis is away.
RETRY_MIN = 0.2
RETRY_MAX = 5.0


def until_redis_accepts[T](write: Callable[[], T], what: str) -> T:
    """Run ``write`` until Redis accepts it, backing off between tries; ``what`` names it in the log."""
    wait = RETRY_MIN
    while True:
        try:
            return write()
        except redis.RedisError as error:
            if not is_outage(error):
                raise
            logger.error("Redis did not accept %s (%s); trying again in %.1f s", what, error, wait)
            time.sleep(wait)
            wait = min(wait * 2, RETRY_MAX)
