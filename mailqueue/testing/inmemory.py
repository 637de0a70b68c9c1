"""The capture's in-memory Redis (fakeredis, which runs Lua), and reading envelopes back off its queues.

mailqueue's client is pointed at it through ``BROKER_OPTIONS`` only: nothing
on the request path knows it is not talking to a real Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dramatiq.errors import DecodeError

from mailqueue.broker import MESSAGE_ENCODER
from mailqueue.client import redis_client
from mailqueue.conf import get_config
from mailqueue.envelope import Envelope
from mailqueue.exceptions import EnvelopeError, MailQueueImproperlyConfigured
from mailqueue.keys import QueueKeys

try:
    import fakeredis
except ImportError:  # an optional dependency: mailqueue[testing]
    HAVE_FAKEREDIS = False
else:
    HAVE_FAKEREDIS = True


def new_server() -> Any:
    """A Redis of the capture's own, empty; a configuration error naming the extra when fakeredis is missing."""
    if not HAVE_FAKEREDIS:
        raise MailQueueImproperlyConfigured(
            "mailqueue.testing needs fakeredis with Lua support for its in-memory Redis: "
            "pip install 'mailqueue[testing]' (or 'fakeredis[lua]')."
        )
    return fakeredis.FakeServer()


def broker_options(server: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (MAILQUEUE's BROKER_OPTIONS) with every connection redis-py builds going to ``server``."""
    return {**options, "connection_class": fakeredis.FakeRedisConnection, "server": server}


def ready_envelopes() -> Iterator[Envelope]:
    """Every envelope waiting on a queue's ready list, queue by queue (under the capture's settings)."""
    config = get_config()
    client = redis_client()
    for queue in config.queues:
        keys = QueueKeys.of(config.namespace, queue)
        ids = client.lrange(keys.ready, 0, -1)
        if ids:
            yield from _decoded(client.hmget(keys.messages, ids))


def waiting_envelopes() -> Iterator[Envelope]:
    """Every envelope still stored on a queue, ready or delayed: what a delivery has not settled."""
    config = get_config()
    client = redis_client()
    for queue in config.queues:
        keys = QueueKeys.of(config.namespace, queue)
        for key in (keys.messages, keys.delayed_messages):
            yield from _decoded(client.hvals(key))


def _decoded(stored: list[Any]) -> Iterator[Envelope]:
    for data in stored:
        envelope = None if data is None else _envelope_of(data)
        if envelope is not None:
            yield envelope


def _envelope_of(data: bytes | str) -> Envelope | None:
    try:
        return Envelope.decode(MESSAGE_ENCODER.decode(data if isinstance(data, bytes) else data.encode())["args"][0])
    except (DecodeError, EnvelopeError, KeyError, IndexError, TypeError, ValueError):
        return None  # not mailqueue's: a delivery would dead-letter it; nothing to assert on
