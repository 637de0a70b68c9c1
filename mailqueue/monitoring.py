"""What an operator watches: queue depth per queue and each provider's health, read from Redis."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from .client import redis_client
from .conf import get_config
from .keys import ProviderKeys, QueueKeys

#: Per-minute counters summed for the "last hour" figures.
STATS_MINUTES = 60


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


@dataclass(frozen=True, kw_only=True, slots=True)
class ProviderHealth:
    """A provider's circuit, as every worker sees it, and its recent counters."""

    provider: str
    #: closed (in use), open (skipped until a probe), half-open (one probe message in flight).
    state: str
    #: Transient failures in a row (the circuit opens at the provider's failure_threshold).
    failures: int
    #: When open: seconds until a probe message is let through.
    probe_in: float | None
    sent_5m: int
    failed_5m: int
    sent_1h: int
    failed_1h: int

    def as_dict(self) -> dict[str, int | str | float | None]:
        return asdict(self)


def provider_aliases() -> list[str]:
    """Every provider some queue delivers through, in configuration order."""
    aliases: dict[str, None] = {}
    for queue in get_config().queues.values():
        aliases.update(dict.fromkeys(queue.providers))
    return list(aliases)


def provider_health() -> list[ProviderHealth]:
    """Health of every provider, in one round trip."""
    config = get_config()
    aliases = provider_aliases()
    now = time.time()
    minute = int(now // 60)
    with redis_client().pipeline(transaction=False) as pipe:
        for alias in aliases:
            keys = ProviderKeys.of(config.namespace, alias)
            pipe.hmget(keys.circuit, "state", "failures", "reopen_at")
            for back in range(STATS_MINUTES):
                pipe.hmget(keys.stats(minute - back), "sent", "failed")
        replies = pipe.execute()
    health = []
    per_provider = 1 + STATS_MINUTES
    for index, alias in enumerate(aliases):
        (state, failures, reopen_at), *minutes = replies[index * per_provider : (index + 1) * per_provider]
        counts = [(int(sent or 0), int(failed or 0)) for sent, failed in minutes]
        state_name = state.decode() if state else "closed"
        probe_in = max(float(reopen_at) / 1000 - now, 0.0) if state_name == "open" and reopen_at else None
        health.append(
            ProviderHealth(
                provider=alias,
                state=state_name,
                failures=int(failures or 0),
                probe_in=probe_in,
                sent_5m=sum(sent for sent, _ in counts[:5]),
                failed_5m=sum(failed for _, failed in counts[:5]),
                sent_1h=sum(sent for sent, _ in counts),
                failed_1h=sum(failed for _, failed in counts),
            )
        )
    return health
