"""Queue depth per queue, read from Redis in one round trip."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .broker import redis_client
from .conf import get_config
from .keys import QueueKeys


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueDepth:
    """How many messages a queue holds, by state."""

    queue: str
    #: Waiting for a worker.
    ready: int
    #: Fetched by a worker and not yet acknowledged.
    in_progress: int
    #: Waiting out a retry backoff.
    delayed: int
    #: In the dead-letter store, waiting for an operator.
    dead: int

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


def queue_depths() -> list[QueueDepth]:
    """Depth of every configured queue, in configuration order."""
    config = get_config()
    names = list(config.queues)
    with redis_client().pipeline(transaction=False) as pipe:
        for name in names:
            keys = QueueKeys.of(config.namespace, name)
            pipe.llen(keys.ready)
            pipe.hlen(keys.messages)
            pipe.hlen(keys.delayed_messages)
            pipe.zcard(keys.dead)
        replies = pipe.execute()
    depths = []
    for index, name in enumerate(names):
        ready, stored, delayed, dead = replies[index * 4 : index * 4 + 4]
        depths.append(
            QueueDepth(queue=name, ready=ready, in_progress=max(stored - ready, 0), delayed=delayed, dead=dead)
        )
    return depths
