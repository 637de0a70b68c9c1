"""What an operator watches, read from Redis: queue depth per queue, each provider's health and quota, how each
queue's mail was spread over its providers, and the log writer's lag."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from .client import redis_client
from .conf import Quota, Strategy, get_config
from .keys import ProviderKeys, QueueKeys, events_key, queue_sent_field

#: The log writer's consumer group (mailqueue.logwriter.GROUP; named here so monitoring imports no models).
LOG_GROUP = "mailqueue-log"

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
    #: The provider's quota ("50000/d"), None when it has none.
    quota: str | None = None
    #: Sends admitted in the quota's current period (a day from midnight UTC, or an hour).
    quota_used: int | None = None
    #: Sends the quota still allows in this period; at 0 the provider is skipped until it ends.
    quota_left: int | None = None
    #: Seconds until the period ends and the quota is whole again.
    quota_resets_in: float | None = None

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
            pipe.hmget(keys.quota, "window", "used")
            for back in range(STATS_MINUTES):
                pipe.hmget(keys.stats(minute - back), "sent", "failed")
        replies = pipe.execute()
    health = []
    per_provider = 2 + STATS_MINUTES
    for index, alias in enumerate(aliases):
        (state, failures, reopen_at), quota_state, *minutes = replies[index * per_provider : (index + 1) * per_provider]
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
                **_quota(config.provider(alias).quota, quota_state, now),
            )
        )
    return health


def _quota(quota: Quota | None, state: list[bytes | None], now: float) -> dict[str, Any]:
    """The quota fields of ProviderHealth from the quota hash (its period's number and the sends admitted in it).

    The period is read on this host's clock; admission counts on Redis's, so within a clock skew of a period's
    end the figures may still show the one before.
    """
    if quota is None:
        return {}
    window, used = state
    current = int(now // quota.period)
    spent = int(used or 0) if window is not None and int(float(window)) == current else 0
    return {
        "quota": str(quota),
        "quota_used": spent,
        "quota_left": max(quota.count - spent, 0),
        "quota_resets_in": (current + 1) * quota.period - now,
    }


@dataclass(frozen=True, kw_only=True, slots=True)
class ProviderShare:
    """One provider of a queue: the share of mail its strategy aims at, and the share it had."""

    provider: str
    #: "weighted": the provider's weight, and its part of the queue's weights; None otherwise.
    weight: int | None
    target: float | None
    #: The queue's messages the provider delivered in the last 5 minutes (not other queues').
    sent_5m: int
    #: Its part of what the queue's providers sent for the queue in the last 5 minutes (None: they sent nothing).
    share_5m: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueDistribution:
    """How a queue spreads its mail over its providers, and how the last 5 minutes' mail was spread."""

    queue: str
    strategy: Strategy
    #: "spill-over": seconds from send_mail() a message may wait for a preferred provider.
    latency_budget: float | None
    providers: list[ProviderShare]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def queue_distribution() -> list[QueueDistribution]:
    """Every queue's strategy and each provider's share of the queue's mail in the last 5 minutes, in one round trip.

    A provider's per-minute counters count what it sent for each queue (``settle`` adds one to the queue's field
    in the call that records the delivery): a provider that serves several queues counts each queue's mail in
    that queue's share only.
    """
    config = get_config()
    minute = int(time.time() // 60)
    served: dict[str, list[str]] = {}
    for queue in config.queues.values():
        for alias in queue.providers:
            served.setdefault(alias, []).append(queue.name)
    with redis_client().pipeline(transaction=False) as pipe:
        for alias, queues in served.items():
            keys = ProviderKeys.of(config.namespace, alias)
            for back in range(5):
                pipe.hmget(keys.stats(minute - back), [queue_sent_field(name) for name in queues])
        replies = iter(pipe.execute())
    sent: dict[tuple[str, str], int] = {}
    for alias, queues in served.items():
        for counts in (next(replies) for _ in range(5)):
            for name, count in zip(queues, counts, strict=True):
                sent[(name, alias)] = sent.get((name, alias), 0) + int(count or 0)
    distribution = []
    for queue in config.queues.values():
        total = sum(sent[(queue.name, alias)] for alias in queue.providers)
        weights = sum(queue.weights)
        shares = [
            ProviderShare(
                provider=alias,
                weight=queue.weight(alias) if queue.weights else None,
                target=queue.weight(alias) / weights if weights else None,
                sent_5m=sent[(queue.name, alias)],
                share_5m=sent[(queue.name, alias)] / total if total else None,
            )
            for alias in queue.providers
        ]
        budget = queue.latency_budget if queue.strategy == "spill-over" else None
        distribution.append(
            QueueDistribution(queue=queue.name, strategy=queue.strategy, latency_budget=budget, providers=shares)
        )
    return distribution


@dataclass(frozen=True, kw_only=True, slots=True)
class WriterLag:
    """How far the log writer is behind the events stream."""

    #: Entries in the stream (bounded by LOG["STREAM_MAXLEN"], approximately).
    stream_length: int
    #: Entries not yet handed to any writer (None when Redis cannot say, after a trim past the group).
    undelivered: int | None
    #: Entries handed to a writer and not yet acknowledged (being written, or left by a dead writer).
    pending: int
    #: Seconds since the oldest entry not yet written was appended (None: nothing waiting).
    oldest_age: float | None
    #: False until a writer has created its consumer group.
    group_exists: bool

    @property
    def unwritten(self) -> int | None:
        return None if self.undelivered is None else self.undelivered + self.pending

    def as_dict(self) -> dict[str, int | float | bool | None]:
        return asdict(self) | {"unwritten": self.unwritten}


def writer_lag() -> WriterLag:
    """The log writer's lag, in one round trip (two when nothing is pending but entries wait)."""
    key = events_key(get_config().namespace)
    with redis_client().pipeline(transaction=False) as pipe:
        pipe.xlen(key)
        pipe.xinfo_groups(key)
        pipe.xpending(key, LOG_GROUP)
        length, groups, pending = pipe.execute(raise_on_error=False)
    if isinstance(length, Exception):
        raise length
    group = None
    if not isinstance(groups, Exception):
        group = next((each for each in groups if _text(each["name"]) == LOG_GROUP), None)
    if group is None:
        return WriterLag(
            stream_length=length,
            undelivered=length,
            pending=0,
            oldest_age=_age(_first_id(key, "-")),
            group_exists=False,
        )
    pending_count = int(group["pending"])
    lag = group.get("lag")
    oldest_id: str | None = None
    if pending_count and not isinstance(pending, Exception) and pending.get("min"):
        oldest_id = _text(pending["min"])
    elif lag != 0:
        oldest_id = _first_id(key, "(" + _text(group["last-delivered-id"]))
    return WriterLag(
        stream_length=length,
        undelivered=None if lag is None else int(lag),
        pending=pending_count,
        oldest_age=_age(oldest_id),
        group_exists=True,
    )


def _first_id(key: str, start: str) -> str | None:
    entries = redis_client().xrange(key, min=start, max="+", count=1)
    return _text(entries[0][0]) if entries else None


def _age(stream_id: str | None) -> float | None:
    if stream_id is None:
        return None
    return max(time.time() - int(stream_id.partition("-")[0]) / 1000, 0.0)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
