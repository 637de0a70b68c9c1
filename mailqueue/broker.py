"""The Dramatiq side of Redis: the broker built from settings, actor names, and the message encoder.

What a web process writes (the enqueue) lives in ``mailqueue.enqueue``; this
module holds what both sides must agree on with Dramatiq: the name of each
queue's delivery actor and the JSON format of a message.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from dramatiq.brokers.redis import RedisBroker
from dramatiq.encoder import Encoder
from dramatiq.errors import DecodeError

from .client import redis_client
from .conf import get_config


def actor_name(queue: str) -> str:
    """The Dramatiq actor that delivers ``queue``'s messages."""
    return f"mailqueue.deliver.{queue}"


class MessageEncoder(Encoder):
    """Dramatiq's JSON message format, written and read with orjson.

    Falls back to the json module for what orjson refuses (integers beyond
    64 bits in anymail metadata), so every JSON value still travels.
    """

    def encode(self, data: dict[str, Any]) -> bytes:
        try:
            return orjson.dumps(data)
        except orjson.JSONEncodeError:
            return json.dumps(data, separators=(",", ":")).encode()

    def decode(self, data: bytes) -> dict[str, Any]:
        try:
            decoded: dict[str, Any] = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            raise DecodeError(f"failed to decode message {data!r:.200}", data, error) from None  # type: ignore[no-untyped-call]
        return decoded


#: The one encoder for what mailqueue writes to Redis; workers install it as Dramatiq's global encoder.
MESSAGE_ENCODER = MessageEncoder()


def new_broker(broker_class: type[RedisBroker] = RedisBroker) -> RedisBroker:
    """A new Dramatiq broker on ``redis_client()`` (tests and tools that need their own)."""
    config = get_config()
    return broker_class(
        client=redis_client(),
        namespace=config.namespace,
        heartbeat_timeout=config.heartbeat_timeout,
        maintenance_chance=config.maintenance_chance,
    )
