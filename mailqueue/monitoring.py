"""What an operator watches, read from Redis: queue depth per queue, each provider's health and quota, how each
queue's mail was spread over its providers, and the log writer's lag."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.apps import apps
from django.db import DatabaseError
from django.db.models import Count, Min

from .client import redis_client
from .conf import Quota, Strategy, get_config
from .counters import INF, SEND_BUCKETS, bucket_label, counters_key, send_bucket_field, send_sum_field
from .enqueue import READY_AT_OPTION
from .keys import ProviderKeys, QueueKeys, events_key, queue_sent_field
from .settings_values import MailQueueConfig, PoolConfig, ProviderConfig, QueueConfig, RateLimit

logger = logging.getLogger(__name__)

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
            _ask_depth(pipe, QueueKeys.of(config.namespace, name))
        replies = iter(pipe.execute())
    return [_depth(name, replies) for name in names]


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
    with redis_client().pipeline(transaction=False) as pipe:
        for alias in aliases:
            _ask_health(pipe, ProviderKeys.of(config.namespace, alias))
        _ask_stats(pipe, config, {alias: [] for alias in aliases}, now)
        replies = pipe.execute()
    states, stats = replies[:-1], iter(replies[-1])
    return [
        _health(config, alias, states[2 * index], states[2 * index + 1], stats, now, ())[0]
        for index, alias in enumerate(aliases)
    ]


#: KEYS: per provider, its per-minute counter hashes, newest first. ARGV: how many minutes each has (STATS_MINUTES),
#: the number of providers, then per provider: how many queues it serves, then their fields (``queue_sent_field``).
#: Returns per provider: sent and failed in the last 5 minutes, in the last hour, then per queue: its sends this
#: minute, in the minute before, and in the hour. Summed here, not in the client: an hour of minutes for every
#: provider is hundreds of replies to parse at each refresh, and a scrape must stay cheap.
STATS_SCRIPT = """
local totals, key, arg, minutes = {}, 1, 3, tonumber(ARGV[1])
for _ = 1, tonumber(ARGV[2]) do
  local queues = tonumber(ARGV[arg])
  local fields = {"sent", "failed"}
  for q = 1, queues do fields[2 + q] = ARGV[arg + q] end
  arg = arg + queues + 1
  local sums = {0, 0, 0, 0}
  for q = 1, queues do sums[4 + 3 * q - 2], sums[4 + 3 * q - 1], sums[4 + 3 * q] = 0, 0, 0 end
  for back = 0, minutes - 1 do
    local counts = redis.call("hmget", KEYS[key + back], unpack(fields))
    local sent, failed = tonumber(counts[1]) or 0, tonumber(counts[2]) or 0
    if back < 5 then sums[1], sums[2] = sums[1] + sent, sums[2] + failed end
    sums[3], sums[4] = sums[3] + sent, sums[4] + failed
    for q = 1, queues do
      local count = tonumber(counts[2 + q]) or 0
      if back < 2 then sums[4 + 3 * q - 2 + back] = sums[4 + 3 * q - 2 + back] + count end
      sums[4 + 3 * q] = sums[4 + 3 * q] + count
    end
  end
  key = key + minutes
  for _, each in ipairs(sums) do totals[#totals + 1] = each end
end
return totals
"""


def _ask_health(pipe: Any, keys: ProviderKeys) -> None:
    """Queue the commands ``_health`` reads besides the counters: the circuit and the quota."""
    pipe.hmget(keys.circuit, "state", "failures", "reopen_at")
    pipe.hmget(keys.quota, "window", "used")


def _ask_stats(pipe: Any, config: MailQueueConfig, served: dict[str, list[str]], now: float) -> None:
    """Queue one call summing every provider's last hour of per-minute counters (and ``served`` queues' share)."""
    minute = int(now // 60)
    keys: list[str] = []
    args: list[Any] = [STATS_MINUTES, len(served)]
    for alias, queues in served.items():
        provider_keys = ProviderKeys.of(config.namespace, alias)
        keys += (provider_keys.stats(minute - back) for back in range(STATS_MINUTES))
        args += (len(queues), *(queue_sent_field(name) for name in queues))
    pipe.eval(STATS_SCRIPT, len(keys), *keys, *args)


def _health(
    config: MailQueueConfig,
    alias: str,
    circuit: list[bytes | None],
    quota_state: list[bytes | None],
    stats: Iterator[int],
    now: float,
    queues: Sequence[str],
) -> tuple[ProviderHealth, dict[str, tuple[int, int]]]:
    """A provider's health from its circuit, quota and the STATS_SCRIPT totals (consumed from ``stats``), and what
    it sent for each of ``queues`` in the last 60 seconds and the last hour."""
    state, failures, reopen_at = circuit
    sent_5m, failed_5m, sent_1h, failed_1h = (int(next(stats)) for _ in range(4))
    state_name = state.decode() if state else "closed"
    probe_in = max(float(reopen_at) / 1000 - now, 0.0) if state_name == "open" and reopen_at else None
    health = ProviderHealth(
        provider=alias,
        state=state_name,
        failures=int(failures or 0),
        probe_in=probe_in,
        sent_5m=sent_5m,
        failed_5m=failed_5m,
        sent_1h=sent_1h,
        failed_1h=failed_1h,
        **_quota(config.provider(alias).quota, quota_state, now),
    )
    # The last 60 seconds: this minute so far, and the part of the one before that is still within 60 s
    # (its sends taken as spread evenly over it).
    before = 1 - (now % 60) / 60
    per_queue = {}
    for name in queues:
        this_minute, minute_before, hour = (int(next(stats)) for _ in range(3))
        per_queue[name] = (round(this_minute + minute_before * before), hour)
    return health, per_queue


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


#: KEYS: (ready list, messages hash) per queue. ARGV: the ready-at option's name (READY_AT_OPTION). Returns, per
#: queue, when (ms) the message at the head of the ready list, the next one out and the longest waiting, was put
#: there: its ready-at option when it has one (a retry whose delay ran out, a requeue), else its
#: ``message_timestamp`` (send_mail()); 0 when the queue is empty.
#: Both are read from the encoded message's tail, after the envelope (which can be megabytes, and holds the
#: sender's own JSON: anymail metadata keys could be named anything): the timestamp is the last field, so it is
#: matched at the very end; the option after the last "options" object's start, found in the last 64 KiB (only
#: the options, the message id and the timestamp follow it; the options can hold a retry's traceback, a string
#: whose quotes are escaped, so a key inside it is never preceded by a bare '{' or ','). At most 15 digits are
#: taken as a time.
OLDEST_SCRIPT = """
local stamps = {}
local ready_at = '[{,]"' .. ARGV[1] .. '":(%d+)'
for i = 1, #KEYS, 2 do
  local stamp = nil
  local id = redis.call("lindex", KEYS[i], 0)
  if id then
    local data = redis.call("hget", KEYS[i + 1], id)
    if data then
      local from, options = math.max(#data - 65536, 1), nil
      while true do
        local found = string.find(data, '"options":{', from, true)
        if not found then break end
        options, from = found, found + 1
      end
      if options then stamp = string.match(data, ready_at, options + 10) end
      if not stamp or #stamp > 15 then stamp = string.match(data, '"message_timestamp":(%d+)}%s*$') end
      if stamp and #stamp > 15 then stamp = nil end
    end
  end
  stamps[#stamps + 1] = tonumber(stamp) or 0
end
return stamps
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueView:
    """A queue as the operator watches it: its depth, how long its oldest message has waited, its throughput."""

    queue: str
    #: The pool whose workers consume the queue, its processes and threads per process.
    pool: str | None
    processes: int
    threads: int
    strategy: Strategy
    ready: int
    in_progress: int
    delayed: int
    dead: int
    #: When the oldest waiting message was put on the ready list (epoch seconds; None: nothing waits): its
    #: send_mail(), or for a retry or a requeue, when it was put back.
    oldest_enqueued_at: float | None
    #: Seconds it has waited since (on Redis's clock).
    oldest_age: float | None
    #: Messages the queue's providers accepted for it in the last 60 s and the last hour.
    sent_1m: int
    sent_1h: int
    #: Worker processes of its pool that would clear its backlog within MONITOR["SCALE_TARGET"], no more than its
    #: providers' limits let work (see ``desired_workers``).
    desired_workers: int


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimitView:
    """One rate limit's headroom now."""

    #: As configured, e.g. "14/1s (burst 1)".
    limit: str
    burst: int
    #: Sends it would let go at once now (0 to burst).
    tokens: float
    #: Seconds until it lets the next send go (0: now).
    wait: float


@dataclass(frozen=True, kw_only=True, slots=True)
class ProviderView:
    """A provider as the operator watches it: its health and how much of its limits is in use."""

    provider: str
    state: str
    failures: int
    probe_in: float | None
    sent_5m: int
    failed_5m: int
    sent_1h: int
    failed_1h: int
    #: Sends in progress now, across every worker (their leases not expired).
    in_flight: int
    max_concurrency: int | None
    rate_limits: list[RateLimitView]
    quota: str | None
    quota_used: int | None
    quota_left: int | None
    quota_resets_in: float | None
    #: Mean seconds a send to it took, over every send the cluster counters hold (None: none yet or COUNTERS off).
    mean_send: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxView:
    """Messages kept in the database while Redis refused them, waiting for the relay."""

    #: None when the outbox's database cannot be read.
    waiting: int | None
    oldest_at: float | None
    oldest_age: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Overview:
    """Everything the dashboard, ``mailqueue status`` and the /metrics gauges show, read at one moment."""

    #: Redis's clock when it was read (epoch seconds).
    at: float
    #: The dashboard's refresh interval (MONITOR["REFRESH"]).
    refresh: float
    queues: list[QueueView]
    providers: list[ProviderView]
    outbox: OutboxView
    writer: WriterLag

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["writer"] = self.writer.as_dict()
        return data


#: The mean send time assumed for a provider before the counters know it.
DEFAULT_SEND_SECONDS = 1.0


def overview() -> Overview:
    """Read the whole picture: one Redis round trip for queues and providers, one or two for the writer's lag, and
    one database query for the outbox; the same number whatever the queues hold."""
    config = get_config()
    aliases = provider_aliases()
    served: dict[str, list[str]] = {alias: [] for alias in aliases}
    for queue in config.queues.values():
        for alias in queue.providers:
            served[alias].append(queue.name)
    now = time.time()
    counters = counters_key(config.namespace)
    with redis_client().pipeline(transaction=False) as pipe:
        pipe.time()
        for name in config.queues:
            _ask_depth(pipe, QueueKeys.of(config.namespace, name))
        oldest_keys: list[str] = []
        for name in config.queues:
            keys = QueueKeys.of(config.namespace, name)
            oldest_keys += (keys.ready, keys.messages)
        pipe.eval(OLDEST_SCRIPT, len(oldest_keys), *oldest_keys, READY_AT_OPTION)
        _ask_stats(pipe, config, served, now)
        for alias in aliases:
            provider_keys = ProviderKeys.of(config.namespace, alias)
            _ask_health(pipe, provider_keys)
            pipe.zcount(provider_keys.in_flight, "(" + str(int(now * 1000)), "+inf")
            for limit in config.provider(alias).rate_limits:
                pipe.get(provider_keys.rate(limit.count, limit.period, limit.burst))
            pipe.hmget(counters, _send_fields(alias))
        replies = iter(pipe.execute())
    seconds, micros = next(replies)
    redis_now = int(seconds) + int(micros) / 1_000_000
    depths = {name: _depth(name, replies) for name in config.queues}
    stamps = dict(zip(config.queues, next(replies), strict=True))
    stats = iter(next(replies))
    providers: dict[str, ProviderView] = {}
    sent: dict[tuple[str, str], tuple[int, int]] = {}
    for alias in aliases:
        circuit, quota_state = next(replies), next(replies)
        health, per_queue = _health(config, alias, circuit, quota_state, stats, now, served[alias])
        for name, counts in per_queue.items():
            sent[(name, alias)] = counts
        provider = config.provider(alias)
        in_flight = int(next(replies))
        rates = [_headroom(limit, next(replies), redis_now) for limit in provider.rate_limits]
        providers[alias] = ProviderView(
            **{name: getattr(health, name) for name in HEALTH_FIELDS},
            in_flight=in_flight,
            max_concurrency=provider.max_concurrency,
            rate_limits=rates,
            mean_send=_mean(next(replies)),
        )
    queues = []
    for queue in config.queues.values():
        depth = depths[queue.name]
        stamp = int(stamps[queue.name]) / 1000 if int(stamps[queue.name]) else None
        pool = next((pool for pool in config.pools.values() if queue.name in pool.queues), None)
        chosen = [providers[alias] for alias in queue.providers]
        sent_1m = sum(sent[(queue.name, alias)][0] for alias in queue.providers)
        queues.append(
            QueueView(
                queue=queue.name,
                pool=pool.name if pool else None,
                processes=pool.processes if pool else 0,
                threads=pool.threads if pool else 0,
                strategy=queue.strategy,
                ready=depth.ready,
                in_progress=depth.in_progress,
                delayed=depth.delayed,
                dead=depth.dead,
                oldest_enqueued_at=stamp,
                oldest_age=max(redis_now - stamp, 0.0) if stamp is not None else None,
                sent_1m=sent_1m,
                sent_1h=sum(sent[(queue.name, alias)][1] for alias in queue.providers),
                desired_workers=desired_workers(
                    depth, sent_1m, queue, chosen, [config.provider(alias) for alias in queue.providers], pool, config
                ),
            )
        )
    waiting, oldest_at = outbox_summary()
    return Overview(
        at=redis_now,
        refresh=config.monitor.refresh,
        queues=queues,
        providers=[providers[alias] for alias in aliases],
        outbox=OutboxView(
            waiting=waiting,
            oldest_at=oldest_at,
            oldest_age=max(redis_now - oldest_at, 0.0) if oldest_at is not None else None,
        ),
        writer=writer_lag(),
    )


#: The ProviderHealth fields a ProviderView repeats.
HEALTH_FIELDS = tuple(name for name in ProviderHealth.__dataclass_fields__)


def _ask_depth(pipe: Any, keys: QueueKeys) -> None:
    pipe.llen(keys.ready)
    pipe.hlen(keys.messages)
    pipe.hlen(keys.delayed_messages)
    pipe.zcard(keys.dead)


def _depth(name: str, replies: Iterator[Any]) -> QueueDepth:
    """A queue's depth from the four replies ``_ask_depth`` queued."""
    ready, stored, delayed, dead = (next(replies) for _ in range(4))
    return QueueDepth(queue=name, ready=ready, in_progress=max(stored - ready, 0), delayed=delayed, dead=dead)


def outbox_summary() -> tuple[int | None, float | None]:
    """How many messages wait in the outbox, and when the oldest was kept (epoch seconds; None: none waits).

    (None, None) when its database cannot be read: the Redis figures still matter most then (a scrape or a
    refresh that failed whole would hide them), and the database's own monitoring tells why. The model is looked
    up at call time: this module is imported before Django's apps are ready (the log writer's group name, the
    bench).
    """
    config = get_config()
    model = apps.get_model("mailqueue", "OutboxMessage")
    try:
        found = model.objects.using(config.outbox_database).aggregate(waiting=Count("id"), oldest=Min("created_at"))
    except DatabaseError as error:
        logger.warning(
            "The outbox database %r cannot be read (%s): the outbox is left out", config.outbox_database, error
        )
        return None, None
    oldest = found["oldest"]
    return found["waiting"], oldest.timestamp() if oldest is not None else None


def _send_fields(alias: str) -> list[str]:
    """The counters fields of a provider's send-time histogram: its sum, then every bucket."""
    labels = [bucket_label(bound) for bound in SEND_BUCKETS] + [INF]
    return [send_sum_field(alias), *(send_bucket_field(alias, label) for label in labels)]


def _mean(values: list[bytes | None]) -> float | None:
    total, *buckets = values
    count = sum(int(each or 0) for each in buckets)
    return float(total) / count if count and total is not None else None


def _headroom(limit: RateLimit, tat: bytes | None, now: float) -> RateLimitView:
    """A GCRA bucket's headroom: a send may go at tat - (burst - 1) * interval (see ADMIT in workers/admission.py)."""
    interval = limit.interval
    due = float(tat) / 1000 if tat is not None else now
    due = max(due, now)
    tokens = min(max(math.floor((now + limit.burst * interval - due) / interval + 1e-9), 0), limit.burst)
    wait = max(due - (limit.burst - 1) * interval - now, 0.0)
    return RateLimitView(limit=str(limit), burst=limit.burst, tokens=float(tokens), wait=wait)


def desired_workers(
    depth: QueueDepth,
    sent_1m: int,
    queue: QueueConfig,
    views: Sequence[ProviderView],
    providers: Sequence[ProviderConfig],
    pool: PoolConfig | None,
    config: MailQueueConfig,
) -> int:
    """Worker processes of the queue's pool worth running for it now.

    Enough threads to keep up with the mail the queue's providers accepted in the last minute (rate x mean send
    time, Little's law), plus enough to clear what waits (ready, and fetched but not yet sent: Dramatiq prefetches)
    within MONITOR["SCALE_TARGET"]; but no more than the providers can use: a rate-limited provider keeps about
    rate x send time sends in flight, and a thread beyond that only waits for a token. "failover" counts the first
    usable provider (circuit not open, quota not spent), the others every usable one. At least one while anything
    is ready, in progress or delayed (a worker must be there to probe a provider whose circuit is open, or to take
    the delayed messages when they are due); none for an empty queue.

    Nothing here grows with the workers already running (prefetched messages count only as backlog, over the
    target), so an autoscaler fed with it settles instead of chasing its own output.
    """
    if depth.ready + depth.in_progress + depth.delayed == 0:
        return 0
    means = [view.mean_send for view in views if view.mean_send is not None]
    mean_send = sum(means) / len(means) if means else DEFAULT_SEND_SECONDS
    keeping_up = math.ceil(sent_1m / 60 * mean_send)
    backlog = math.ceil((depth.ready + depth.in_progress) * mean_send / config.monitor.scale_target)
    caps = [
        _usable_threads(provider, view.mean_send or DEFAULT_SEND_SECONDS)
        for provider, view in zip(providers, views, strict=True)
        if view.state != "open" and (view.quota_left is None or view.quota_left > 0)
    ]
    if queue.strategy == "failover":
        caps = caps[:1]
    threads = min(keeping_up + backlog, sum(caps)) if caps else 0
    per_process = pool.threads if pool else 1
    return max(math.ceil(threads / per_process), 1)


def _usable_threads(provider: ProviderConfig, mean_send: float) -> float:
    """Concurrent sends a provider can take: its max_concurrency, and about rate x send time under a rate limit."""
    usable = float(provider.max_concurrency) if provider.max_concurrency else math.inf
    if provider.rate_limits:
        rate = min(limit.count / limit.period for limit in provider.rate_limits)
        usable = min(usable, math.ceil(rate * mean_send) + 1)
    return usable
